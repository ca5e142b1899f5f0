"""SCIM reads that count as proof only where they are shown to work: a real ``scim2-server``
behind a proxy that imitates one deviation at a time. In every scenario the application's real
state (read from the server itself, behind the proxy) is set against what the connector claims:
it never reports an entitlement gone that the application still holds."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx2
import pytest

from provisor.connectors.base import AccountSpec, ReadPath
from provisor.connectors.scim import ScimConnector
from tests.connectors.faulty_proxy import FaultyProxy, Refuse, Swallow
from tests.connectors.test_scim import make_group

Rewrite = Callable[[str, str, int, bytes], bytes]


def spec(n: int) -> AccountSpec:
    return AccountSpec(f"E{n}", f"user{n}@example.com", {"name": f"User {n}"})


def query(path: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}


def is_member_search(method: str, path: str) -> bool:
    return method == "GET" and "/Groups" in path and "members.value" in unquote(path)


def server_groups(url: str, account: str) -> set[str]:
    """The groups holding ``account``, from the application itself (every group's members)."""
    groups = httpx2.get(f"{url}/Groups", params={"count": 1000}).json().get("Resources", [])
    return {
        g["displayName"] for g in groups if account in {m["value"] for m in g.get("members", [])}
    }


@pytest.fixture
def seeded(scim_url: str) -> tuple[str, list[str]]:
    """Three groups; user0 in engineering and admins, user1 in staff (the controls)."""
    for name in ("engineering", "admins", "staff"):
        make_group(scim_url, name)
    own = ScimConnector("seed", {"url": scim_url})
    try:
        accounts = [own.create(spec(n)) for n in range(2)]
        own.add_entitlement(accounts[0], "engineering")
        own.add_entitlement(accounts[0], "admins")
        own.add_entitlement(accounts[1], "staff")
    finally:
        own.close()
    return scim_url, accounts


def through(url: str, **hooks: Any) -> Iterator[tuple[ScimConnector, FaultyProxy]]:
    proxy = FaultyProxy(url, **hooks)
    connector = ScimConnector("app", {"url": proxy.url})
    try:
        yield connector, proxy
    finally:
        connector.close()
        proxy.close()


def silently_empty(method: str, path: str, status: int, content: bytes) -> bytes:
    """The member filter answered with an empty list, as a server that ignores what it does
    not understand."""
    if is_member_search(method, path) and status == 200:
        return json.dumps(
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                "totalResults": 0,
                "Resources": [],
            }
        ).encode()
    return content


def every_group(upstream: str) -> Rewrite:
    """The member filter ignored: every group comes back."""

    def rewrite(method: str, path: str, status: int, content: bytes) -> bytes:
        if is_member_search(method, path):
            return httpx2.get(f"{upstream}/Groups", params={"count": 1000}).content
        return content

    return rewrite


def refuse_member_filter(method: str, path: str, body: bytes) -> bytes:
    if is_member_search(method, path):
        raise Refuse(400, "filtering groups on members is not supported")
    return body


def no_members(method: str, path: str, status: int, content: bytes) -> bytes:
    """Groups never show their members (listing or read alone); users list no groups."""
    if method != "GET" or status != 200 or not content:
        return content
    document = json.loads(content)
    for resource in document.get("Resources", [document]):
        resource.pop("members", None)
        resource.pop("groups", None)
    return json.dumps(document).encode()


def chain(*rewrites: Rewrite) -> Rewrite:
    def rewrite(method: str, path: str, status: int, content: bytes) -> bytes:
        for step in rewrites:
            content = step(method, path, status, content)
        return content

    return rewrite


def swallow_member_removals(method: str, path: str, body: bytes) -> bytes:
    """The application accepts a membership removal and does not make it."""
    if method == "PATCH" and "/Groups/" in path and b'"remove"' in body:
        raise Swallow()
    return body


@pytest.mark.parametrize(
    "deviation",
    ["silently-empty", "every-group", "refused"],
)
def test_member_filter_deviations_fall_back_and_stay_true(
    seeded: tuple[str, list[str]], deviation: str
) -> None:
    url, (ann, bob) = seeded
    hooks: dict[str, Any] = {
        "silently-empty": {"on_response": silently_empty},
        "every-group": {"on_response": every_group(url)},
        "refused": {"on_request": refuse_member_filter},
    }[deviation]
    for connector, _ in through(url, **hooks):
        paths = {p.path: p for p in connector.read_paths()}
        assert paths["member-filter"].status == "untrusted", paths["member-filter"]
        assert paths["group-listing"].status == "trusted"
        record = connector.read(ann)
        assert record is not None and record.entitlements_shown
        assert record.entitlements == server_groups(url, ann) == {"engineering", "admins"}
        connector.remove_entitlement(ann, "admins")
        after = connector.read(ann)
        assert after is not None and after.entitlements == server_groups(url, ann)
        assert after.entitlements == {"engineering"}
        listed = {r.account: r.entitlements for r in connector.list_accounts()}
        assert listed[bob] == server_groups(url, bob) == {"staff"}


def test_a_working_member_filter_is_trusted_and_used(seeded: tuple[str, list[str]]) -> None:
    url, (ann, _) = seeded
    for connector, proxy in through(url):
        paths = {p.path: p for p in connector.read_paths()}
        assert paths["member-filter"].status == "trusted"
        before = len(proxy.requests)
        record = connector.read(ann)
        assert record is not None and record.entitlements == {"engineering", "admins"}
        # one read of the user, one member search: no group listing per read
        assert len(proxy.requests) - before == 2


def test_blind_membership_is_never_claimed_gone(seeded: tuple[str, list[str]]) -> None:
    """No path shows members at all, and the application keeps a membership it was asked to
    drop: the connector must say it cannot see, not that the group is gone."""
    url, (ann, _) = seeded
    hooks = {
        "on_response": chain(no_members, silently_empty),
        "on_request": swallow_member_removals,
    }
    for connector, _ in through(url, **hooks):
        paths = {p.path: p.status for p in connector.read_paths()}
        assert "trusted" not in paths.values(), paths
        connector.remove_entitlement(ann, "admins")
        record = connector.read(ann)
        assert "admins" in server_groups(url, ann)  # the application still holds it
        assert record is not None and not record.entitlements_shown
        assert "no membership read is shown to work" in record.unread["entitlements"]
        listed = {r.account: r for r in connector.list_accounts()}
        assert not listed[ann].entitlements_shown


def test_user_side_groups_are_trusted_once_they_show_a_group(scim_url: str) -> None:
    """An application whose groups never list members but whose users list their groups."""
    for name in ("engineering", "admins"):
        make_group(scim_url, name)

    def user_side(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or not content:
            return content
        document = json.loads(content)
        for resource in document.get("Resources", [document]):
            if "members" in resource or resource.get("displayName") in ("engineering", "admins"):
                resource.pop("members", None)
            elif "userName" in resource and "id" in resource:
                resource["groups"] = [
                    {"value": "x", "display": name}
                    for name in sorted(server_groups(scim_url, resource["id"]))
                ]
        return json.dumps(document).encode()

    own = ScimConnector("seed", {"url": scim_url})
    ann = own.create(spec(0))
    own.add_entitlement(ann, "engineering")
    own.close()
    for connector, _ in through(scim_url, on_response=chain(user_side, silently_empty)):
        paths = {p.path: p.status for p in connector.read_paths()}
        assert paths["user-groups"] == "trusted" and paths["member-filter"] != "trusted"
        record = connector.read(ann)
        assert record is not None and record.entitlements_shown
        assert record.entitlements == {"engineering"}


def lenient_server(upstream: str) -> Rewrite:
    """Answers shaped the way other SCIM implementations shape them: list responses without
    ``totalResults``/``itemsPerPage``, absolute ResourceType endpoints, group members with
    ``display`` and ``$ref``, attributes no schema declares, booleans as strings."""

    def rewrite(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or not content:
            return content
        document = json.loads(content)
        if path.split("?")[0].endswith("/ResourceTypes"):
            document.pop("totalResults", None)
            for item in document.get("Resources", []):
                item["endpoint"] = upstream + item["endpoint"]
        if path.split("?")[0].endswith("/ServiceProviderConfig"):
            document["patch"]["supported"] = "true"
            return json.dumps(document).encode()
        for key in ("totalResults", "itemsPerPage", "startIndex"):
            if "Resources" in document and path.split("?")[0].endswith("/Users"):
                document.pop(key, None)
        for resource in document.get("Resources", [document]):
            resource["x-vendorFlag"] = {"nested": True}
            if "active" in resource:
                resource["active"] = str(resource["active"]).lower()
            for member in resource.get("members", []):
                member["display"] = "someone"
                member["$ref"] = f"{upstream}/Users/{member['value']}"
        return json.dumps(document).encode()

    return rewrite


def test_lenient_reads_of_other_server_shapes(seeded: tuple[str, list[str]]) -> None:
    url, (ann, bob) = seeded
    for connector, _ in through(url, on_response=lenient_server(url)):
        record = connector.read(ann)
        assert record is not None and record.enabled is True
        assert record.entitlements == {"engineering", "admins"}
        listed = {r.account: r for r in connector.list_accounts()}
        assert set(listed) == {ann, bob} and listed[bob].entitlements == {"staff"}
        connector.set_enabled(bob, False)
        connector.remove_entitlement(bob, "staff")
        after = connector.read(bob)
        assert after is not None and not after.enabled and after.entitlements == frozenset()
        assert server_groups(url, bob) == set()


def test_patch_refused_falls_back_to_put_once(seeded: tuple[str, list[str]]) -> None:
    url, (ann, _) = seeded
    for connector, proxy in through(url, on_request=refuse_patch):
        connector.remove_entitlement(ann, "admins")
        connector.set_enabled(ann, False)
        connector.add_entitlement(ann, "staff")
        assert server_groups(url, ann) == {"engineering", "staff"}
        patches = [m for m, _, _ in proxy.requests if m == "PATCH"]
        # the removal's filter form, then its value-list form, both refused; PUT from then on
        assert len(patches) == 2
        record = connector.read(ann)
        assert record is not None and not record.enabled


def refuse_patch(method: str, path: str, body: bytes) -> bytes:
    if method == "PATCH":
        raise Refuse(501, "PATCH is not implemented")
    return body


def test_group_lookup_that_answers_nothing_reads_the_listing(
    seeded: tuple[str, list[str]],
) -> None:
    url, (_, bob) = seeded

    def no_display_filter(method: str, path: str, status: int, content: bytes) -> bytes:
        if method == "GET" and "displayName eq" in unquote(path):
            return json.dumps({"Resources": [], "totalResults": 0}).encode()
        return content

    for connector, _ in through(url, on_response=no_display_filter):
        connector.add_entitlement(bob, "admins")
        assert server_groups(url, bob) == {"staff", "admins"}


def test_user_lookup_filter_ignored_finds_the_right_user(seeded: tuple[str, list[str]]) -> None:
    url, (_, bob) = seeded

    def ignore_user_filter(method: str, path: str, status: int, content: bytes) -> bytes:
        if method == "GET" and "/Users" in path and "userName eq" in unquote(path):
            return httpx2.get(f"{url}/Users").content
        return content

    for connector, _ in through(url, on_response=ignore_user_filter):
        found = connector.find(spec(1))
        assert found is not None and found.account == bob
        assert connector.find(spec(7)) is None


def test_members_left_out_of_listings_are_read_group_by_group(
    seeded: tuple[str, list[str]],
) -> None:
    """Group listings carry no members (as some servers do for large groups) and the member
    filter answers nothing; a group read alone lists its members, so that is what counts."""
    url, (ann, bob) = seeded

    def listing_without_members(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or "/Groups" not in path:
            return content
        document = json.loads(content)
        for resource in document.get("Resources", []):
            resource.pop("members", None)
        return json.dumps(document).encode()

    for connector, _ in through(url, on_response=chain(listing_without_members, silently_empty)):
        # even a listing shown to list members before is caught leaving them out now
        connector.remember([ReadPath("group-listing", "trusted", "lists 3 memberships")], None)
        paths = {p.path: p.status for p in connector.read_paths()}
        assert paths["group-listing"] == "untrusted" and paths["group-read"] == "trusted"
        assert paths["member-filter"] == "untrusted"
        record = connector.read(ann)
        assert record is not None and record.entitlements_shown
        assert record.entitlements == server_groups(url, ann) == {"engineering", "admins"}
        listed = {r.account: r for r in connector.list_accounts()}
        assert listed[bob].entitlements_shown and listed[bob].entitlements == {"staff"}


def users_list_their_groups(upstream: str) -> Rewrite:
    """Users carry their groups (read from the real server); groups keep their members."""

    def rewrite(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or not content or "/Users" not in path:
            return content
        document = json.loads(content)
        for resource in document.get("Resources", [document]):
            if ("id" in resource and "groups" in unquote(path)) or "/Users/" in path:
                resource["groups"] = [
                    {"value": "x", "display": name}
                    for name in sorted(server_groups(upstream, resource["id"]))
                ]
        return json.dumps(document).encode()

    return rewrite


def test_changed_users_keep_their_groups_when_both_sides_work(
    seeded: tuple[str, list[str]],
) -> None:
    """Both the users' own groups and the group listing are trusted: a change listing that did
    not ask for users' groups must still report every changed user's groups."""
    url, (ann, bob) = seeded
    since = datetime.now(UTC) - timedelta(minutes=5)
    for connector, _ in through(url, on_response=users_list_their_groups(url)):
        paths = {p.path: p.status for p in connector.read_paths()}
        assert paths["user-groups"] == "trusted" and paths["group-listing"] == "trusted"
        listed = {r.account: r.entitlements for r in connector.list_changed(since)}
        assert listed[ann] == server_groups(url, ann) == {"engineering", "admins"}
        assert listed[bob] == server_groups(url, bob) == {"staff"}
