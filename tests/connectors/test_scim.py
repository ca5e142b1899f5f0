"""The SCIM connector against a real SCIM 2.0 server (the ``scim2-server`` package)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest

from provisor.connectors import scim as scim_module
from provisor.connectors.base import (
    AccountSpec,
    Conflict,
    PermanentError,
    RetryableError,
    Unavailable,
)
from provisor.connectors.http import retry_after
from provisor.connectors.scim import ScimConnector
from provisor.sandbox.scim import GROUP_SCHEMA, ScimApp
from provisor.testing import ConnectorContract
from tests.connectors.faulty_proxy import Fault, FaultyProxy


def make_group(url: str, name: str) -> str:
    response = httpx2.post(f"{url}/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture
def scim(scim_url: str) -> Iterator[ScimConnector]:
    make_group(scim_url, "engineering")
    make_group(scim_url, "admins")
    connector = ScimConnector("app", {"url": scim_url})
    yield connector
    connector.close()


def spec(identity: str = "E1", user: str = "ann@example.com") -> AccountSpec:
    return AccountSpec(identity, user, {"name": "Ann Example", "email": user})


def test_user_lifecycle_with_groups(scim: ScimConnector) -> None:
    account = scim.create(spec())
    record = scim.read(account)
    assert record is not None and record.enabled and record.entitlements == frozenset()
    assert record.external_id == "E1" and record.user_name == "ann@example.com"
    scim.add_entitlement(account, "engineering")
    scim.add_entitlement(account, "admins")
    assert scim.read(account).entitlements == {"engineering", "admins"}  # type: ignore[union-attr]
    scim.remove_entitlement(account, "admins")
    scim.set_enabled(account, False)
    record = scim.read(account)
    assert record is not None and not record.enabled and record.entitlements == {"engineering"}
    found = scim.find(spec())
    assert found is not None and found.account == account
    scim.delete(account)
    assert scim.read(account) is None
    scim.delete(account)  # already gone is not an error


def test_uniqueness_conflict_and_unknown_group(scim: ScimConnector) -> None:
    scim.create(spec())
    with pytest.raises(Conflict):
        scim.create(spec("E2"))
    account = scim.create(spec("E3", "cy@example.com"))
    with pytest.raises(PermanentError, match="group 'nosuch' does not exist"):
        scim.add_entitlement(account, "nosuch")


def test_put_fallback_when_patch_is_off(scim_url: str) -> None:
    make_group(scim_url, "engineering")
    connector = ScimConnector("app", {"url": scim_url, "patch": False})
    try:
        account = connector.create(spec())
        connector.add_entitlement(account, "engineering")
        connector.set_enabled(account, False)
        record = connector.read(account)
        assert record is not None and not record.enabled
        assert record.entitlements == {"engineering"}
        connector.remove_entitlement(account, "engineering")
        assert connector.read(account).entitlements == frozenset()  # type: ignore[union-attr]
    finally:
        connector.close()


def test_list_walks_every_page(scim: ScimConnector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scim_module, "PAGE", 40)
    accounts = [scim.create(spec(f"E{i}", f"user{i}@example.com")) for i in range(130)]
    scim.add_entitlement(accounts[7], "engineering")
    listed = {r.account: r for r in scim.list_accounts()}
    assert set(listed) == set(accounts)
    assert listed[accounts[7]].entitlements == {"engineering"}


def test_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connector = ScimConnector("down", {"url": f"http://127.0.0.1:{port}/v2", "timeout": 2})
    with pytest.raises(RetryableError, match="down: discovery"):
        connector.read("x")
    connector.close()


def test_a_kept_alive_connection_closed_under_a_read_is_read_again_a_create_is_not(
    scim_server: str, scim_url: str
) -> None:
    """The server closes the kept-alive connection as a request goes out on it (its idle
    timeout, or after an error answer): the read is sent once more; a create the server may
    have carried out is not, and fails retryable."""
    proxy = FaultyProxy(scim_server)
    connector = ScimConnector("app", {"url": proxy.url + scim_url.removeprefix(scim_server)})
    try:
        account = connector.create(spec())
        proxy.queue(Fault(drop=True, methods=frozenset({"GET"})))
        assert connector.read(account) is not None
        reads = [path for method, path, _ in proxy.requests if method == "GET" and account in path]
        assert len(reads) == 2 and proxy.injected == 1
        proxy.queue(Fault(drop=True, methods=frozenset({"POST"})))
        with pytest.raises(Unavailable, match="Server disconnected"):
            connector.create(spec("E2", "bob@example.com"))
        creates = [path for method, path, _ in proxy.requests if method == "POST"]
        assert len(creates) == 2  # Ann's, then Bob's once: never sent twice
    finally:
        connector.close()
        proxy.close()


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after("7") == 7.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert retry_after("not a date") is None
    assert retry_after(None) is None


def test_bearer_token_is_sent_and_a_wrong_one_is_permanent() -> None:
    with ScimApp(bearer_token="s3cret") as app:
        good = ScimConnector("app", {"url": app.url, "token": "s3cret"})
        bad = ScimConnector("app", {"url": app.url, "token": "wrong"})
        try:
            assert good.read(good.create(spec())) is not None
            with pytest.raises(PermanentError, match="HTTP 401") as caught:
                bad.read("x")
            assert not isinstance(caught.value, RetryableError)
            assert "s3cret" not in str(caught.value) and "wrong" not in str(caught.value)
        finally:
            good.close()
            bad.close()


def test_etag_conflict_is_retryable_and_the_retry_rereads(
    scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PUT, the read resource's version goes out as If-Match; a change made in between
    answers 412, which is retried, and the retry reads the new version first."""
    connector = ScimConnector("app", {"url": scim_url, "patch": False})
    try:
        account = connector.create(spec())
        real_send = connector._send
        meddled = []

        def send_then_meddle(what: str, method: str, path: str, *args: Any, **kw: Any) -> Any:
            found = real_send(what, method, path, *args, **kw)
            if not meddled and method == "GET" and path.endswith(f"/Users/{account}"):
                meddled.append(True)  # someone else edits the user right after our read
                httpx2.patch(
                    f"{scim_url}/Users/{account}",
                    json={
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [
                            {"op": "replace", "path": "displayName", "value": "Edited Elsewhere"}
                        ],
                    },
                ).raise_for_status()
            return found

        monkeypatch.setattr(connector, "_send", send_then_meddle)
        with pytest.raises(RetryableError, match="HTTP 412"):
            connector.set_enabled(account, False)
        connector.set_enabled(account, False)
        record = connector.read(account)
        assert record is not None and not record.enabled
    finally:
        connector.close()


class TestContract(ConnectorContract):
    """The shared connector contract against a real ``scim2-server``."""

    paged_accounts = 2500

    @pytest.fixture
    def connector(self, scim_url: str) -> Iterator[ScimConnector]:
        make_group(scim_url, "engineering")
        make_group(scim_url, "admins")
        connector = ScimConnector("app", {"url": scim_url})
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self) -> tuple[str, str]:
        return ("engineering", "admins")

    @pytest.fixture
    def open_session(self) -> None:
        return None  # SCIM has no sessions


def test_changes_since_a_moment(scim: ScimConnector, scim_url: str) -> None:
    import time

    first = scim.create(spec())
    time.sleep(1.1)  # meta.lastModified has whole-second comparisons on some servers
    since = datetime.now(UTC)
    time.sleep(0.05)
    second = scim.create(spec("E2", "bo@example.com"))
    scim.add_entitlement(first, "engineering")
    changed = {r.account for r in scim.list_changed(since)}
    assert changed == {second}
    assert scim.changed_memberships(since) == {"engineering": frozenset({first})}
    assert scim.changed_memberships(datetime.now(UTC) + timedelta(hours=1)) == {}
