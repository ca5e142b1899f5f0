"""The REST connector against a real RabbitMQ management API, and against a small sample app for
the paging and authentication styles RabbitMQ lacks.

RabbitMQ comes from ``PROVISOR_TEST_RABBITMQ_URL`` (``http://USER:PASSWORD@HOST:PORT`` of a
management API, AMQP on ``PROVISOR_TEST_RABBITMQ_AMQP_PORT``, default 5672) or is started here,
one throwaway node per test worker. If neither works the tests fail; they are never skipped.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import pika
import pika.exceptions
import pytest

from provisor.connectors.base import (
    AccountSpec,
    Capability,
    Conflict,
    Connector,
    NotFound,
    PermanentError,
    RetryableError,
    Unsupported,
)
from provisor.connectors.rest import RestConnector
from provisor.connectors.rest_spec import profile_names, render, render_text
from provisor.errors import ProvisorError
from provisor.sandbox.rabbitmq import RabbitNode
from provisor.testing import ConnectorContract
from tests.connectors.faulty_proxy import Fault, FaultyProxy
from tests.connectors.rest_sample_app import SampleApp

FULL = {"configure": ".*", "write": ".*", "read": ".*"}
NAMES = {"messaging": "vhost:/", "monitoring": "tag:monitoring"}


# --- RabbitMQ ---------------------------------------------------------------------------------


@dataclass
class Rabbit:
    url: str
    username: str
    password: str
    amqp_host: str
    amqp_port: int

    def admin(self) -> httpx2.Client:
        auth = httpx2.BasicAuth(self.username, self.password)
        return httpx2.Client(base_url=self.url, auth=auth, timeout=60)

    def settings(self, **more: Any) -> dict[str, Any]:
        return {
            "profile": "rabbitmq",
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "entitlements": dict(NAMES),
            **more,
        }


@pytest.fixture(scope="session")
def rabbit() -> Iterator[Rabbit]:
    configured = os.environ.get("PROVISOR_TEST_RABBITMQ_URL")
    if configured:
        parts = urlsplit(configured)
        host = parts.hostname or "127.0.0.1"
        netloc = host + (f":{parts.port}" if parts.port else "")
        found = Rabbit(
            urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")),
            parts.username or "guest",
            parts.password or "guest",
            host,
            int(os.environ.get("PROVISOR_TEST_RABBITMQ_AMQP_PORT", "5672")),
        )
        with found.admin() as client:
            try:
                answer = client.get("/api/overview").status_code
            except httpx2.TransportError as exc:
                pytest.fail(f"PROVISOR_TEST_RABBITMQ_URL does not answer: {exc}")
            if answer != 200:
                pytest.fail(f"PROVISOR_TEST_RABBITMQ_URL: GET /api/overview answered {answer}")
        yield found
        return
    try:
        node = RabbitNode().start()
    except ProvisorError as exc:
        pytest.fail(f"cannot start a RabbitMQ node for the REST connector tests: {exc}")
    try:
        yield Rabbit(node.url, node.username, node.password, "127.0.0.1", node.amqp_port)
    finally:
        node.stop()


@pytest.fixture
def prefix() -> str:
    return f"rt{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rest(rabbit: Rabbit) -> Iterator[RestConnector]:
    connector = RestConnector("rabbit", rabbit.settings())
    yield connector
    connector.close()


def set_password(rabbit: Rabbit, user: str, password: str) -> None:
    """Out-of-band, as an administrator: a password we know, tags kept."""
    with rabbit.admin() as client:
        tags = client.get(f"/api/users/{user}").json()["tags"]
        assert client.put(
            f"/api/users/{user}", json={"password": password, "tags": tags}
        ).is_success


def grant_vhost(rabbit: Rabbit, user: str) -> None:
    with rabbit.admin() as client:
        assert client.put(f"/api/permissions/%2F/{user}", json=FULL).is_success


class AmqpSession:
    """A real AMQP 0-9-1 connection as ``user``, kept alive by a thread that answers the
    broker (so a forced close completes at once, as with a live client)."""

    def __init__(self, rabbit: Rabbit, user: str, password: str) -> None:
        parameters = pika.ConnectionParameters(
            rabbit.amqp_host,
            rabbit.amqp_port,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
            socket_timeout=5,
        )
        self.connection = pika.BlockingConnection(parameters)
        self.stop = threading.Event()
        self.closed_by_broker = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            while not self.stop.is_set() and self.connection.is_open:
                self.connection.process_data_events(time_limit=0.05)
        except pika.exceptions.ConnectionClosedByBroker:
            self.closed_by_broker.set()
        except pika.exceptions.AMQPError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        with contextlib.suppress(pika.exceptions.AMQPError):
            if self.connection.is_open:
                self.connection.close()


def can_log_in(rabbit: Rabbit, user: str, password: str) -> bool:
    """Whether AMQP accepts the password (a refused virtual host still means it did)."""
    try:
        session = AmqpSession(rabbit, user, password)
    except pika.exceptions.ProbableAuthenticationError:
        return False
    except pika.exceptions.ProbableAccessDeniedError:
        return True
    session.close()
    return True


def rabbit_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def seed_users(rabbit: Rabbit, names: list[str], password: str = "seeded-password") -> None:
    """Many users in one request (a definitions import), each with a working password."""
    users = [
        {
            "name": name,
            "password_hash": rabbit_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        }
        for name in names
    ]
    with rabbit.admin() as client:
        assert client.post("/api/definitions", json={"users": users}).is_success


def bulk_delete(rabbit: Rabbit, names: list[str]) -> None:
    with rabbit.admin() as client:
        client.post("/api/users/bulk-delete", json={"users": names})


def spec(prefix: str, n: int = 0, enabled: bool = True) -> AccountSpec:
    return AccountSpec(f"E-{prefix}-{n}", f"{prefix}_{n}", {"name": f"User {n}"}, enabled)


# --- RabbitMQ: the connector's own tests ---------------------------------------------------------


def test_profile_ships_with_the_package() -> None:
    assert "rabbitmq" in profile_names()


def test_user_lifecycle_with_vhosts_and_tags(rabbit: Rabbit, rest: RestConnector, prefix: str):
    account = rest.create(spec(prefix))
    assert account == f"{prefix}_0"
    record = rest.read(account)
    assert record is not None and record.enabled and record.entitlements == frozenset()
    assert record.sessions == 0 and record.user_name == account
    set_password(rabbit, account, "known-password")
    with rabbit.admin() as client:
        before = client.get(f"/api/users/{account}").json()
    rest.add_entitlement(account, "messaging")  # the mapped name of vhost:/
    rest.add_entitlement(account, "tag:administrator")  # a raw name in the kind's pattern
    rest.add_entitlement(account, "monitoring")
    rest.add_entitlement(account, "monitoring")  # idempotent
    record = rest.read(account)
    assert record is not None
    assert record.entitlements == {"messaging", "tag:administrator", "monitoring"}
    with rabbit.admin() as client:
        after = client.get(f"/api/users/{account}").json()
        permission = client.get(f"/api/permissions/%2F/{account}").json()
    assert sorted(after["tags"]) == ["administrator", "monitoring"]
    assert {k: permission[k] for k in FULL} == FULL
    # writing the tags (a PUT of the user) kept the password
    assert after["password_hash"] == before["password_hash"]
    assert can_log_in(rabbit, account, "known-password")
    rest.remove_entitlement(account, "tag:administrator")
    rest.remove_entitlement(account, "messaging")
    rest.remove_entitlement(account, "messaging")  # already gone: not an error
    record = rest.read(account)
    assert record is not None and record.entitlements == {"monitoring"}
    assert can_log_in(rabbit, account, "known-password")
    found = rest.find(spec(prefix))
    assert found is not None and found.account == account
    with pytest.raises(Conflict):
        rest.create(spec(prefix))
    rest.delete(account)
    assert rest.read(account) is None and rest.find(spec(prefix)) is None
    rest.delete(account)  # already gone: not an error


def test_read_back_of_an_unmapped_or_partial_grant(rabbit: Rabbit, rest: RestConnector, prefix):
    account = rest.create(spec(prefix))
    with rabbit.admin() as client:
        read_only = {"configure": "", "write": "", "read": ".*"}
        assert client.put(f"/api/permissions/%2F/{account}", json=read_only).is_success
    # read-only is not what "messaging" means: reported under its raw name
    assert rest.read(account).entitlements == {"vhost:/"}  # type: ignore[union-attr]
    rest.add_entitlement(account, "messaging")  # the PUT gives the full permissions
    assert rest.read(account).entitlements == {"messaging"}  # type: ignore[union-attr]
    rest.delete(account)


def test_structured_entitlement_value(rabbit: Rabbit, prefix: str) -> None:
    readers = {"kind": "vhost", "vhost": "/", "configure": "", "write": "", "read": ".*"}
    settings = rabbit.settings(entitlements={"readers": readers})
    with contextlib.closing(RestConnector("rabbit", settings)) as rest:
        account = rest.create(spec(prefix))
        rest.add_entitlement(account, "readers")
        with rabbit.admin() as client:
            permission = client.get(f"/api/permissions/%2F/{account}").json()
        assert (permission["configure"], permission["write"], permission["read"]) == ("", "", ".*")
        assert rest.read(account).entitlements == {"readers"}  # type: ignore[union-attr]
        rest.delete(account)


def test_disabled_user_cannot_connect(rabbit: Rabbit, rest: RestConnector, prefix: str) -> None:
    account = rest.create(spec(prefix))
    rest.add_entitlement(account, "messaging")
    rest.add_entitlement(account, "monitoring")
    set_password(rabbit, account, "known-password")
    session = AmqpSession(rabbit, account, "known-password")
    try:
        rest.set_enabled(account, False)
        assert session.closed_by_broker.wait(5)  # disabling closed the open connection too
        record = rest.read(account)
        # the management listing catches up with closed connections a moment later; until it
        # does, the read counts the session as open (never as gone before it shows so)
        deadline = time.monotonic() + 15
        while record is not None and record.sessions and time.monotonic() < deadline:
            time.sleep(0.2)
            record = rest.read(account)
        assert record is not None and not record.enabled and record.sessions == 0
        assert record.entitlements == {"messaging", "monitoring"}  # access kept, login locked
        assert not can_log_in(rabbit, account, "known-password")
        with rabbit.admin() as client:
            answer = client.get("/api/whoami", auth=httpx2.BasicAuth(account, "known-password"))
        assert answer.status_code == 401
        rest.set_enabled(account, False)  # again: still disabled, no error
        rest.set_enabled(account, True)
        record = rest.read(account)
        assert record is not None and record.enabled
        assert record.entitlements == {"messaging", "monitoring"}
        # enabling set a new random password nobody knows: the old one stays dead
        assert not can_log_in(rabbit, account, "known-password")
    finally:
        session.close()
        rest.delete(account)


LIMIT_STYLE = {  # the alternative documented in docs/connectors/rest.md
    "account": {"enabled": {"field": "limits.max-connections", "disabled_when": [0]}},
    "endpoints": {
        "disable": [
            {
                "method": "PUT",
                "path": "/api/user-limits/{account}/max-connections",
                "body": {"value": 0},
            },
            {"method": "DELETE", "path": "/api/connections/username/{account}"},
        ],
        "enable": [{"method": "DELETE", "path": "/api/user-limits/{account}/max-connections"}],
    },
}


def test_disable_by_connection_limit_keeps_the_password(rabbit: Rabbit, prefix: str) -> None:
    settings = rabbit.settings(api=LIMIT_STYLE)
    with contextlib.closing(RestConnector("rabbit", settings)) as rest:
        account = rest.create(spec(prefix))
        rest.add_entitlement(account, "messaging")
        set_password(rabbit, account, "known-password")
        rest.set_enabled(account, False)
        assert not rest.read(account).enabled  # type: ignore[union-attr]
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
            AmqpSession(rabbit, account, "known-password")
        rest.set_enabled(account, True)
        rest.set_enabled(account, True)
        assert rest.read(account).enabled  # type: ignore[union-attr]
        AmqpSession(rabbit, account, "known-password").close()  # the same password again
        rest.delete(account)


def test_created_locked(rest: RestConnector, prefix: str) -> None:
    account = rest.create(spec(prefix, enabled=False))
    record = rest.read(account)
    assert record is not None and not record.enabled
    rest.delete(account)


def test_sessions_counted_revoked_and_verified(
    rabbit: Rabbit, rest: RestConnector, prefix: str
) -> None:
    account = rest.create(spec(prefix))
    rest.add_entitlement(account, "messaging")
    set_password(rabbit, account, "known-password")
    sessions = [AmqpSession(rabbit, account, "known-password") for _ in range(2)]
    try:
        record = rest.read(account)
        assert record is not None and record.sessions == 2
        started = time.monotonic()
        rest.revoke_sessions(account)
        took = time.monotonic() - started
        record = rest.read(account)
        assert record is not None and record.sessions == 0, f"revoked in {took:.3f} s"
        assert all(s.closed_by_broker.wait(5) for s in sessions)
        rest.revoke_sessions(account)  # nothing open: not an error
        # the password still works: revoking ends sessions, not the account
        assert can_log_in(rabbit, account, "known-password")
    finally:
        for session in sessions:
            session.close()
        rest.delete(account)


def test_list_ignoring_paging_still_lists_everyone_once(rabbit: Rabbit, prefix: str) -> None:
    """RabbitMQ ignores paging parameters: a description asking for pages of 100 gets the
    whole list each time, and the connector notices the repeated page instead of looping."""
    names = [f"{prefix}_{n}" for n in range(250)]
    seed_users(rabbit, names)
    paged = {"endpoints": {"list": {"paging": {"style": "page", "size": 100}}}}
    try:
        with contextlib.closing(RestConnector("rabbit", rabbit.settings(api=paged))) as rest:
            listed = [r.account for r in rest.list_accounts()]
        mine = [a for a in listed if a.startswith(f"{prefix}_")]
        assert sorted(mine) == sorted(names)
        assert len(listed) == len(set(listed))
    finally:
        bulk_delete(rabbit, names)


def test_listing_brings_entitlements_and_sessions_in_bulk(
    rabbit: Rabbit, rest: RestConnector, prefix: str
) -> None:
    first, second = rest.create(spec(prefix, 1)), rest.create(spec(prefix, 2))
    rest.add_entitlement(first, "messaging")
    rest.add_entitlement(second, "monitoring")
    try:
        listed = {r.account: r for r in rest.list_accounts()}
        assert listed[first].entitlements == {"messaging"}
        assert listed[second].entitlements == {"monitoring"}
        assert listed[first].sessions == 0 and listed[first].enabled
    finally:
        rest.delete(first)
        rest.delete(second)


def test_a_removal_goes_through_when_the_kept_alive_connection_closes_under_it(
    rabbit: Rabbit, rest: RestConnector, prefix: str
) -> None:
    """RabbitMQ may close a kept-alive connection as the next request goes out on it (seen
    after a 400 answer): the removal, idempotent, is sent once more and lands."""
    proxy = FaultyProxy(rabbit.url)
    through = RestConnector("rabbit", rabbit.settings(url=proxy.url))
    account = rest.create(spec(prefix))
    try:
        through.add_entitlement(account, "messaging")
        proxy.queue(Fault(drop=True, methods=frozenset({"DELETE"})))
        through.remove_entitlement(account, "messaging")
        deletes = [path for method, path, _ in proxy.requests if method == "DELETE"]
        assert len(deletes) == 2 and proxy.injected == 1
        assert rest.read(account).entitlements == set()  # type: ignore[union-attr]
    finally:
        through.close()
        proxy.close()
        rest.delete(account)


def test_rabbitmq_errors_are_mapped(rabbit: Rabbit, rest: RestConnector, prefix: str) -> None:
    account = rest.create(spec(prefix))
    # 400 vhost_or_user_not_found on a user that is not there: not found, permanent
    with pytest.raises(NotFound, match="HTTP 400"):
        rest.add_entitlement(f"{prefix}_ghost", "messaging")
    rest.remove_entitlement(f"{prefix}_ghost", "messaging")  # nothing to remove
    with pytest.raises(PermanentError, match="'vhost:no-such-vhost' does not exist"):
        rest.add_entitlement(account, "vhost:no-such-vhost")
    with pytest.raises(PermanentError, match="'no_such_entitlement' is unknown"):
        rest.add_entitlement(account, "no_such_entitlement")
    with pytest.raises(PermanentError, match="not one of administrator"):
        rest.add_entitlement(account, "tag:superuser")
    with pytest.raises(Unsupported, match="cannot be renamed"):
        rest.update(account, AccountSpec("E", f"{prefix}_renamed"))
    assert rest.update(account, spec(prefix)) == account  # no change asked: nothing to do
    with pytest.raises(NotFound):
        rest.set_enabled(f"{prefix}_ghost", False)
    bad = RestConnector("rabbit", rabbit.settings(password="wrong-password"))
    with pytest.raises(PermanentError, match="HTTP 401") as caught:
        bad.read(account)
    assert not isinstance(caught.value, RetryableError)
    assert "wrong-password" not in str(caught.value)
    bad.close()
    rest.delete(account)


def test_refused_connection_is_retryable(rabbit: Rabbit) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = RestConnector("down", rabbit.settings(url=f"http://127.0.0.1:{port}", timeout=2))
    with pytest.raises(RetryableError, match="down: read x"):
        down.read("x")
    down.close()


def test_concurrent_tag_changes_on_one_account_lose_nothing(
    rabbit: Rabbit, rest: RestConnector, prefix: str
) -> None:
    account = rest.create(spec(prefix))
    tags = ["tag:administrator", "tag:monitoring", "tag:policymaker", "tag:management"]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda tag: rest.add_entitlement(account, tag), tags))
    record = rest.read(account)
    assert record is not None
    assert record.entitlements == {"tag:administrator", "monitoring", "tag:policymaker",
                                   "tag:management"}  # fmt: skip
    rest.delete(account)


# --- the contract ------------------------------------------------------------------------------


class TestContract(ConnectorContract):
    renames = False  # RabbitMQ users cannot be renamed

    @pytest.fixture
    def connector(self, rabbit: Rabbit) -> Iterator[Connector]:
        connector = RestConnector("rabbit", rabbit.settings())
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self) -> tuple[str, str]:
        return ("messaging", "monitoring")

    @pytest.fixture
    def open_session(self, rabbit: Rabbit) -> Callable[[str, AccountSpec], Callable[[], None]]:
        def open_(account: str, spec: AccountSpec) -> Callable[[], None]:
            set_password(rabbit, account, "session-password")
            grant_vhost(rabbit, account)
            return AmqpSession(rabbit, account, "session-password").close

        return open_

    @pytest.fixture
    def seed_accounts(self, rabbit: Rabbit) -> Callable[[Connector, list[AccountSpec]], None]:
        def seed(connector: Connector, specs: list[AccountSpec]) -> None:
            seed_users(rabbit, [s.user_name for s in specs])

        return seed


# --- the sample app: paging and authentication styles --------------------------------------------

PAGING = {
    "page": {
        "path": "/users",
        "items": "users",
        "paging": {"style": "page", "size": 100, "total": "total"},
    },
    "offset": {"path": "/by-offset/users", "items": "data", "paging": {"style": "offset"}},
    "cursor": {
        "path": "/by-cursor/users",
        "items": "data",
        "paging": {"style": "cursor", "next_cursor": "meta.next", "size": 100},
    },
    "link": {
        "path": "/by-link/users",
        "paging": {"style": "link", "size": 100, "size_param": "per_page"},
    },
}


def sample_api(style: str = "page", auth: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "auth": auth or {"type": "basic"},
        "account": {
            "id": "id",
            "user_name": "userName",
            "external_id": "externalId",
            "enabled": {"field": "active", "enabled_when": [True]},
            "attributes": {"name": "displayName", "email": "email", "title": "title"},
        },
        "endpoints": {
            "list": copy.deepcopy(PAGING[style]),
            "get": {"path": "/users/{account}"},
            "find": {
                "path": "/users",
                "query": {"userName": "{user_name}", "externalId": "{identity}"},
                "items": "users",
            },
            "create": {
                "method": "POST",
                "path": "/users",
                "body": {
                    "userName": "{user_name}",
                    "externalId": "{identity}",
                    "displayName": "{attributes.name}",
                    "email": "{attributes.email}",
                    "active": "{enabled}",
                    "password": "{password}",
                },
            },
            "update": {
                "method": "PATCH",
                "path": "/users/{account}",
                "body": {
                    "userName": "{user_name}",
                    "externalId": "{identity}",
                    "displayName": "{attributes.name}",
                    "email": "{attributes.email}",
                    "title": "{attributes.title}",
                },
            },
            "disable": {"method": "PATCH", "path": "/users/{account}", "body": {"active": False}},
            "enable": {"method": "PATCH", "path": "/users/{account}", "body": {"active": True}},
            "delete": {"method": "DELETE", "path": "/users/{account}"},
            "list_sessions": {"path": "/users/{account}/sessions"},
            "revoke_sessions": {"method": "DELETE", "path": "/users/{account}/sessions"},
        },
        "entitlements": {
            "kinds": {
                "group": {
                    "pattern": "group:{group}",
                    "add": {"method": "PUT", "path": "/groups/{group}/members/{account}"},
                    "remove": {"method": "DELETE", "path": "/groups/{group}/members/{account}"},
                    "read": {"path": "/users/{account}/groups"},
                    "read_all": {"path": "/memberships", "account": "user"},
                    "exists": {"path": "/groups/{group}"},
                }
            },
            "names": {"developers": "group:dev"},
        },
    }


@pytest.fixture
def sample() -> Iterator[SampleApp]:
    with SampleApp() as app:
        yield app


def sample_connector(app: SampleApp, style: str = "page", **settings: Any) -> RestConnector:
    base: dict[str, Any] = {"api": sample_api(style), "url": app.url}
    if app.auth == "basic":
        base |= {"username": app.username, "password": app.password}
    return RestConnector("sample", base | settings)


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "link"])
def test_every_paging_style_walks_every_page(sample: SampleApp, style: str) -> None:
    sample.seed(250)
    connector = sample_connector(sample, style)
    sample.requests.clear()
    listed = [r.user_name for r in connector.list_accounts()]
    assert sorted(listed) == sorted(f"seed{n}" for n in range(250))
    pages = [p for m, p in sample.requests if p.endswith("users")]
    assert len(pages) == 3  # pages of 100

    connector.close()


def test_check_reads_one_page_of_accounts_and_nothing_else(sample: SampleApp) -> None:
    """A check (a circuit's probe among others) reaches the target without the full read's
    bulk listings of memberships and sessions."""
    sample.seed(250)
    connector = sample_connector(sample)
    sample.requests.clear()
    connector.check()
    assert [p for _, p in sample.requests] == [sample.requests[0][1]]
    assert sample.requests[0][1].endswith("users")
    connector.close()


def test_link_to_another_server_is_not_followed(sample: SampleApp) -> None:
    sample.seed(150)
    api = sample_api("link")
    api["endpoints"]["list"]["query"] = {"link_host": "http://elsewhere.invalid:9"}
    connector = RestConnector(
        "sample",
        {"api": api, "url": sample.url, "username": sample.username, "password": sample.password},
    )
    with pytest.raises(PermanentError, match="another server"):
        list(connector.list_accounts())
    connector.close()


def test_sample_lifecycle_with_attributes_groups_and_sessions(sample: SampleApp) -> None:
    connector = sample_connector(sample)
    assert Capability.UPDATE in connector.capabilities()
    ann = AccountSpec("E1", "ann", {"name": "Ann", "email": "ann@example.org"})
    account = connector.create(ann)
    record = connector.read(account)
    assert record is not None and record.external_id == "E1" and record.enabled
    assert record.attributes == {"name": "Ann", "email": "ann@example.org", "title": None}
    assert connector.find(AccountSpec("E1", "other-name")).account == account  # type: ignore[union-attr]
    renamed = AccountSpec("E1", "ann.b", {"name": "Ann B", "title": "Lead"})
    assert connector.update(account, renamed) == account
    record = connector.read(account)
    assert record is not None and record.user_name == "ann.b"
    assert record.attributes["title"] == "Lead"
    connector.add_entitlement(account, "developers")
    connector.add_entitlement(account, "group:ops")
    assert connector.read(account).entitlements == {"developers", "group:ops"}  # type: ignore[union-attr]
    connector.remove_entitlement(account, "developers")
    connector.remove_entitlement(account, "developers")
    with pytest.raises(PermanentError, match="does not exist in the target"):
        connector.add_entitlement(account, "group:finance")
    connector.set_enabled(account, False)
    assert not connector.read(account).enabled  # type: ignore[union-attr]
    sample.sessions[account] = 3
    assert connector.read(account).sessions == 3  # type: ignore[union-attr]
    connector.revoke_sessions(account)
    assert connector.read(account).sessions == 0  # type: ignore[union-attr]
    locked = connector.create(AccountSpec("E2", "bo", {}, enabled=False))
    assert not connector.read(locked).enabled  # type: ignore[union-attr]
    connector.delete(account)
    connector.delete(account)
    assert connector.read(account) is None
    connector.close()


def test_oauth2_token_is_cached_and_fetched_again_once_on_401() -> None:
    with SampleApp("oauth2") as app:
        api = sample_api(auth={"type": "oauth2", "endpoint": "/oauth/token", "scope": "users"})
        settings = {"api": api, "url": app.url, "client_id": app.client_id}
        connector = RestConnector("sample", settings | {"client_secret": app.client_secret})
        for n in range(5):
            connector.create(AccountSpec(f"E{n}", f"user{n}", {}))
        assert app.tokens_issued == 1
        app.revoke_tokens()  # the server forgets the token before its expiry
        assert len(list(connector.list_accounts())) == 5
        assert app.tokens_issued == 2
        connector.close()
        body = dict(api, auth={"type": "oauth2", "endpoint": "/oauth/token", "client_auth": "body"})
        wrong = RestConnector(
            "sample", {**settings, "api": body, "client_secret": "not-the-secret"}
        )
        with pytest.raises(PermanentError, match="token endpoint answered HTTP 401") as caught:
            wrong.read("1000")
        assert "not-the-secret" not in str(caught.value)
        assert not isinstance(caught.value, RetryableError)
        wrong.close()


def test_oauth2_token_renewed_before_it_expires() -> None:
    with SampleApp("oauth2", token_life=1) as app:
        api = sample_api(auth={"type": "oauth2", "endpoint": f"{app.url}/oauth/token"})
        connector = RestConnector(
            "sample",
            {"api": api, "url": app.url, "client_id": app.client_id,
             "client_secret": app.client_secret},
        )  # fmt: skip
        connector.read("1")
        time.sleep(1.0)
        connector.read("1")
        assert app.tokens_issued == 2
        connector.close()


def test_bearer_token() -> None:
    with SampleApp("bearer") as app:
        api = sample_api(auth={"type": "bearer"})
        good = RestConnector("sample", {"api": api, "url": app.url, "token": app.token})
        assert good.read(good.create(AccountSpec("E1", "ann", {}))) is not None
        bad = RestConnector("sample", {"api": api, "url": app.url, "token": "wrong-token"})
        with pytest.raises(PermanentError, match="HTTP 401") as caught:
            bad.read("1000")
        assert "wrong-token" not in str(caught.value)
        good.close()
        bad.close()


def test_sample_error_mapping(sample: SampleApp) -> None:
    connector = sample_connector(sample)
    sample.fail_next(429, {"Retry-After": "7"})
    with pytest.raises(RetryableError) as caught:
        connector.read("1")
    assert caught.value.retry_after == 7.0
    sample.fail_next(503)
    with pytest.raises(RetryableError, match="HTTP 503"):
        connector.read("1")
    assert connector.read("999999") is None
    connector.create(AccountSpec("E1", "ann", {}))
    with pytest.raises(Conflict, match="taken"):
        connector.create(AccountSpec("E2", "ann", {}))
    connector.close()


def test_generated_password_is_redacted_from_errors(sample: SampleApp) -> None:
    sample.fail_next(400, body={"error": "placeholder"})  # the first create is refused...
    connector = sample_connector(sample)
    with pytest.raises(PermanentError, match="HTTP 400"):
        connector.create(AccountSpec("E1", "ann", {}))
    echoed: list[str] = []

    def echo(app: SampleApp = sample) -> None:
        original = app._route

        def route(method: str, parts: list[str], query: dict[str, str], body: Any) -> Any:
            if method == "POST" and body and body.get("password"):
                echoed.append(body["password"])
                return 400, {"error": f"password {body['password']} is not allowed"}
            return original(method, parts, query, body)

        app._route = route  # type: ignore[method-assign]

    echo()
    with pytest.raises(PermanentError, match=r"password \*\*\* is not allowed") as caught:
        connector.create(AccountSpec("E1", "ann", {}))
    assert echoed and echoed[0] not in str(caught.value)
    connector.close()


def test_concurrent_workers_share_one_connector(sample: SampleApp) -> None:
    connector = sample_connector(sample)

    def one(n: int) -> str:
        account = connector.create(AccountSpec(f"E{n}", f"user{n}", {}))
        connector.add_entitlement(account, "developers")
        connector.set_enabled(account, n % 2 == 0)
        return account

    with ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(one, range(80)))
    records = {r.account: r for r in connector.list_accounts()}
    assert set(records) == set(accounts)
    assert all(r.entitlements == {"developers"} for r in records.values())
    assert sum(r.enabled for r in records.values()) == 40
    connector.close()


class TestSampleContract(ConnectorContract):
    """The contract against the sample app too: a target that renames accounts, maps
    attributes and keeps the identity id, listed page by page."""

    paged_accounts = 600  # six pages; the 2,500-account listing runs against RabbitMQ

    @pytest.fixture
    def connector(self, sample: SampleApp) -> Iterator[Connector]:
        connector = sample_connector(sample)
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self) -> tuple[str, str]:
        return ("developers", "group:ops")

    @pytest.fixture
    def open_session(self, sample: SampleApp) -> Callable[[str, AccountSpec], Callable[[], None]]:
        def open_(account: str, spec: AccountSpec) -> Callable[[], None]:
            sample.open_session(account)
            return lambda: None

        return open_

    @pytest.fixture
    def seed_accounts(self, sample: SampleApp) -> Callable[[Connector, list[AccountSpec]], None]:
        return lambda connector, specs: sample.add_users([s.user_name for s in specs])


# --- the description -----------------------------------------------------------------------------


def test_bad_descriptions_name_the_field(sample: SampleApp) -> None:
    api = sample_api()
    api["endpoints"]["list"]["paging"]["style"] = "pages"
    with pytest.raises(PermanentError, match=r"endpoints\.list\.paging\.style"):
        RestConnector("sample", {"api": api, "url": sample.url, "username": "u"})
    api = sample_api()
    api["endpoints"]["delete"]["path"] = "/users/{acount}"
    with pytest.raises(PermanentError, match=r"endpoints\.delete: unknown placeholder \{acount\}"):
        RestConnector("sample", {"api": api, "url": sample.url, "username": "u"})
    api = sample_api()
    del api["endpoints"]["enable"]
    with pytest.raises(PermanentError, match="disable and enable come together"):
        RestConnector("sample", {"api": api, "url": sample.url, "username": "u"})
    with pytest.raises(PermanentError, match="not a shipped REST profile; known: rabbitmq"):
        RestConnector("x", {"profile": "../rabbitmq"})
    with pytest.raises(PermanentError, match="needs its API description"):
        RestConnector("x", {"url": sample.url})
    with pytest.raises(PermanentError, match="unknown connection setting"):
        RestConnector("x", {"profile": "rabbitmq", "usrname": "a"})
    with pytest.raises(PermanentError, match="matches no entitlement kind"):
        RestConnector("x", {"profile": "rabbitmq", "username": "a", "entitlements": {"a": "b"}})


def test_api_file(tmp_path: Any, sample: SampleApp) -> None:
    import yaml

    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(sample_api() | {"url": sample.url}))
    connector = RestConnector(
        "sample", {"api_file": str(path), "username": sample.username, "password": sample.password}
    )
    assert connector.read(connector.create(AccountSpec("E1", "ann", {}))) is not None
    connector.close()


def test_templates_are_plain_substitution() -> None:
    context = {"account": "a/b", "record": {"tags": ["x", "y"], "n": 3}, "vhost": "/"}
    assert render_text("/api/permissions/{vhost}/{account}", context, path=True) == (
        "/api/permissions/%2F/a%2Fb"
    )
    assert render_text("/u/{account}", {"account": ".."}, path=True) == "/u/%2E%2E"
    assert render({"tags": "{record.tags}", "n": "{record.n}", "s": "n={record.n}"}, context) == {
        "tags": ["x", "y"],
        "n": 3,
        "s": "n=3",
    }
    assert render("^a{2}{{literal}}$", context) == "^a{2}{literal}$"
    assert render("{__class__}", context) is None  # names are looked up, never evaluated
    with pytest.raises(PermanentError, match="needs a value for"):
        render_text("/u/{account}", {"account": ""}, path=True)
