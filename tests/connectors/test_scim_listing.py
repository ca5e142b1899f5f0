"""Listing a SCIM target fast without losing accounts: pages read ahead, a server that answers
fewer than asked or no total, a listing that changes while it is read, attribute names in any
case, and records equal to what reading each account one by one gives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from provisor.connectors import scim as scim_module
from provisor.connectors.base import AccountSpec, PermanentError, RetryableError
from provisor.connectors.scim import ScimConnector
from tests.connectors.faulty_proxy import Fault, FaultyProxy
from tests.connectors.test_scim import make_group


def spec(n: int) -> AccountSpec:
    return AccountSpec(
        f"E{n}",
        f"user{n}@example.com",
        {"name": f"User {n}", "email": f"user{n}@example.com", "title": f"Title {n % 3}"},
        enabled=n % 4 != 0,
    )


def searches(proxy: FaultyProxy, endpoint: str) -> list[dict[str, str]]:
    """The query parameters of every GET the client sent to ``endpoint``."""
    found = []
    for method, path, _ in proxy.requests:
        parts = urlsplit(path)
        if method == "GET" and parts.path.endswith(endpoint):
            found.append({k: v[0] for k, v in parse_qs(parts.query).items()})
    return found


@pytest.fixture
def people(scim_url: str) -> Iterator[tuple[ScimConnector, list[str]]]:
    """23 users, some disabled, every third in engineering, every fifth in admins too."""
    make_group(scim_url, "engineering")
    make_group(scim_url, "admins")
    connector = ScimConnector("app", {"url": scim_url})
    accounts = [connector.create(spec(n)) for n in range(23)]
    for n, account in enumerate(accounts):
        if n % 3 == 0:
            connector.add_entitlement(account, "engineering")
        if n % 5 == 0:
            connector.add_entitlement(account, "admins")
    yield connector, accounts
    connector.close()


def test_listing_reads_ahead_and_matches_reading_each_account(
    people: tuple[ScimConnector, list[str]], scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector, accounts = people
    monkeypatch.setattr(scim_module, "PAGE", 4)
    proxy = FaultyProxy(scim_url)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        listed = list(lister.list_accounts())
    finally:
        lister.close()
        proxy.close()
    assert sorted(r.account for r in listed) == sorted(accounts)  # each once
    assert {r.account: r for r in listed} == {a: connector.read(a) for a in accounts}
    pages = searches(proxy, "/Users")
    assert sorted(int(p["startIndex"]) for p in pages) == list(range(1, 24, 4))
    assert {p["count"] for p in pages} == {"4"}
    assert "groups" not in pages[0]["attributes"] and "userName" in pages[0]["attributes"]
    groups = searches(proxy, "/Groups")
    listings = [p for p in groups if "filter" not in p]
    assert len(listings) == 1  # every group's members at once
    probes = [p for p in groups if "filter" in p]
    assert len(probes) == 1 and "members.value" in probes[0]["filter"]  # the filter's check


def test_a_server_answering_fewer_than_asked_is_followed_page_by_page(
    people: tuple[ScimConnector, list[str]], scim_url: str
) -> None:
    """The server keeps to 5 per page without saying so, and one page comes back short."""
    _, accounts = people
    short_once: list[bool] = []

    def cap(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or "/Users" not in path or status != 200:
            return content
        document = json.loads(content)
        if "Resources" not in document:
            return content  # one user read alone
        keep = 5
        if "startIndex=6" in path and not short_once:
            short_once.append(True)
            keep = 3  # the listing moved under this page
        document["Resources"] = document["Resources"][:keep]
        document["itemsPerPage"] = len(document["Resources"])
        return json.dumps(document).encode()

    proxy = FaultyProxy(scim_url, on_response=cap)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        listed = [r.account for r in lister.list_accounts()]
    finally:
        lister.close()
        proxy.close()
    assert sorted(listed) == sorted(accounts) and len(listed) == len(accounts)
    starts = [int(p["startIndex"]) for p in searches(proxy, "/Users")]
    assert {1, 6, 9, 14, 19} <= set(starts)  # re-planned from where the short page ended


def test_a_server_without_totals_is_read_to_the_end(
    people: tuple[ScimConnector, list[str]], scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, accounts = people
    monkeypatch.setattr(scim_module, "PAGE", 10)

    def no_total(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or "startIndex" not in path:
            return content
        document = json.loads(content)
        document.pop("totalResults", None)
        return json.dumps(document).encode()

    proxy = FaultyProxy(scim_url, on_response=no_total)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        listed = [r.account for r in lister.list_accounts()]
    finally:
        lister.close()
        proxy.close()
    assert sorted(listed) == sorted(accounts)


def test_attribute_names_in_any_case_and_booleans_as_strings(
    people: tuple[ScimConnector, list[str]], scim_url: str
) -> None:
    connector, accounts = people

    def shout(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or "/Users" not in path:
            return content

        def upper(value: Any) -> Any:
            if isinstance(value, dict):
                return {k.upper(): upper(v) for k, v in value.items()}
            if isinstance(value, list):
                return [upper(v) for v in value]
            return value

        document = json.loads(content)
        for user in document.get("Resources", []):
            if "active" in user:
                user["active"] = "True" if user["active"] else "False"
        return json.dumps(upper(document)).encode()

    proxy = FaultyProxy(scim_url, on_response=shout)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        listed = {r.account: r for r in lister.list_accounts()}
    finally:
        lister.close()
        proxy.close()
    assert listed == {a: connector.read(a) for a in accounts}
    assert sum(not r.enabled for r in listed.values()) == 6


def test_a_failing_page_fails_the_listing_with_the_status(
    people: tuple[ScimConnector, list[str]], scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scim_module, "PAGE", 5)
    proxy = FaultyProxy(scim_url)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        listing = lister.list_accounts()
        first = next(listing)  # the server config, the groups and the first pages are read
        proxy.queue(Fault(status=503, headers={"Retry-After": "3"}))
        with pytest.raises(RetryableError, match="HTTP 503") as caught:
            list(listing)
        assert caught.value.retry_after == 3.0
        assert first.account in people[1]
    finally:
        lister.close()
        proxy.close()


def test_a_user_without_a_boolean_active_is_refused(scim_url: str) -> None:
    writer = ScimConnector("app", {"url": scim_url})
    writer.create(spec(1))
    writer.close()

    def garble(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or "/Users" not in path:
            return content
        document = json.loads(content)
        for user in document.get("Resources", []):
            user["active"] = "maybe"
        return json.dumps(document).encode()

    proxy = FaultyProxy(scim_url, on_response=garble)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        with pytest.raises(PermanentError, match="active='maybe'"):
            list(lister.list_accounts())
    finally:
        lister.close()
        proxy.close()


@pytest.mark.parametrize("changed", [3, scim_module.MEMBERSHIP_SEARCHES + 1])
def test_changed_users_get_their_groups_by_search_or_from_one_read(
    scim_url: str, monkeypatch: pytest.MonkeyPatch, changed: int
) -> None:
    """A few changed users: one group search each; many: every group's members read once.
    (Two groups with members give the member filter its controls, so it is trusted.)"""
    make_group(scim_url, "engineering")
    make_group(scim_url, "admins")
    connector = ScimConnector("app", {"url": scim_url})
    since = datetime.now(UTC) - timedelta(seconds=5)
    accounts = [connector.create(spec(n)) for n in range(changed)]
    connector.add_entitlement(accounts[0], "engineering")
    connector.add_entitlement(accounts[1], "admins")
    connector.close()
    proxy = FaultyProxy(scim_url)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        listed = {r.account: r.entitlements for r in lister.list_changed(since)}
    finally:
        lister.close()
        proxy.close()
    assert set(listed) == set(accounts)
    assert listed[accounts[0]] == {"engineering"} and listed[accounts[-1]] == frozenset()
    member_searches = [
        p for p in searches(proxy, "/Groups") if "members.value" in unquote(p.get("filter", ""))
    ]
    listings = [p.get("attributes") for p in searches(proxy, "/Groups") if "filter" not in p]
    if changed <= scim_module.MEMBERSHIP_SEARCHES:
        assert len(member_searches) == changed + 1  # one each, and the filter's check
        assert listings == ["displayName,members"]  # the check's one read of every group
    else:
        assert len(member_searches) == 1  # the filter's check only
        assert listings == ["displayName,members"] * 2  # the check's, then the members'


def test_the_page_size_keeps_to_the_servers_maximum(scim_url: str) -> None:
    def small_max(method: str, path: str, status: int, content: bytes) -> bytes:
        if not path.endswith("/ServiceProviderConfig"):
            return content
        document = json.loads(content)
        document["filter"]["maxResults"] = 7
        return json.dumps(document).encode()

    proxy = FaultyProxy(scim_url, on_response=small_max)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        assert list(lister.list_accounts()) == []
        assert list(lister.list_accounts()) == []
    finally:
        lister.close()
        proxy.close()
    assert {p["count"] for p in searches(proxy, "/Users")} == {"7"}
    config_reads = [p for m, p, _ in proxy.requests if p.endswith("/ServiceProviderConfig")]
    assert len(config_reads) == 1  # once per connector


def test_listing_an_unreachable_server_is_retryable() -> None:
    lister = ScimConnector("down", {"url": "http://127.0.0.1:9/v2", "timeout": 2})
    try:
        with pytest.raises(RetryableError, match="down: discovery"):
            list(lister.list_accounts())
    finally:
        lister.close()


def test_listing_stopped_early_leaves_nothing_running(
    people: tuple[ScimConnector, list[str]], scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scim_module, "PAGE", 3)
    proxy = FaultyProxy(scim_url)
    lister = ScimConnector("app", {"url": proxy.url})
    try:
        listing = lister.list_accounts()
        next(listing)
        listing.close()
        assert len(searches(proxy, "/Users")) <= 1 + scim_module.READ_AHEAD
        running = [t for t in threading.enumerate() if t.name.startswith("scim-list")]
        assert running == []
    finally:
        lister.close()
        proxy.close()
