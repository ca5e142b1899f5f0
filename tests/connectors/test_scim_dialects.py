"""SCIM dialects for known vendor behaviour, each against a real ``scim2-server`` behind a proxy
that imitates the vendor's quirk: an application that accepts only Entra-shaped PATCH requests,
and one that returns empty ``members`` on groups but lists a user's groups on the user."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx2
import pytest

from provisor.connectors.base import AccountSpec
from provisor.connectors.scim import ScimConnector
from tests.connectors.faulty_proxy import FaultyProxy, Refuse
from tests.connectors.test_scim import make_group

SPEC = AccountSpec("E1", "ann@example.com", {"name": "Ann Example", "email": "ann@example.com"})


def entra_only(method: str, path: str, body: bytes) -> bytes:
    """An application built for Entra's requests: capitalised ops, members removed by value.

    It refuses RFC-shaped PATCH requests, and stores Entra's removal the way the storage
    underneath understands it."""
    if method != "PATCH":
        return body
    request = json.loads(body)
    operations = []
    for op in request["Operations"]:
        if op["op"] not in ("Add", "Replace", "Remove"):
            raise Refuse(400, f"unsupported op {op['op']!r}")
        if op["op"] == "Remove" and op.get("path") == "members":
            for member in op["value"]:
                operations.append(
                    {"op": "remove", "path": f'members[value eq "{member["value"]}"]'}
                )
        elif op["op"] == "Remove":
            raise Refuse(400, "members are removed by value")
        else:
            operations.append(op)
    return json.dumps(request | {"Operations": operations}).encode()


@pytest.fixture
def entra_app(scim_url: str) -> Iterator[FaultyProxy]:
    make_group(scim_url, "engineering")
    proxy = FaultyProxy(scim_url, on_request=entra_only)
    yield proxy
    proxy.close()


def test_entra_dialect_sends_entra_shapes_and_is_verified(entra_app: FaultyProxy) -> None:
    rfc = ScimConnector("app", {"url": entra_app.url})
    entra = ScimConnector("app", {"url": entra_app.url, "dialect": "entra"})
    try:
        account = entra.create(SPEC)
        rfc.set_enabled(account, False)
        # the RFC shape is refused; a PUT does it, and a read shows it did
        assert [m for m, _, _ in entra_app.requests[-4:]] == ["PATCH", "GET", "PUT", "GET"]
        entra.set_enabled(account, True)
        entra.add_entitlement(account, "engineering")
        entra.set_enabled(account, False)
        record = entra.read(account)
        assert record is not None and record.entitlements == {"engineering"}
        assert not record.enabled
        entra.remove_entitlement(account, "engineering")
        record = entra.read(account)
        assert record is not None and record.entitlements == frozenset()
    finally:
        rfc.close()
        entra.close()
    patches = [json.loads(body) for method, _, body in entra_app.requests if method == "PATCH"]
    sent = [op for p in patches[1:] for op in p["Operations"]]  # [0] is the refused RFC one
    assert [op["op"] for op in sent] == ["Replace", "Add", "Replace", "Remove"]
    assert sent[3] == {"op": "Remove", "path": "members", "value": [{"value": account}]}


def test_unknown_dialect_is_refused_with_the_setting_named() -> None:
    with pytest.raises(Exception, match=r"connection\.dialect"):
        ScimConnector("app", {"url": "http://127.0.0.1:9", "dialect": "okta-ish"})


def user_side_membership(upstream: str) -> Any:
    """Groups answer without members; users carry their groups (read from the real server)."""

    def rewrite(method: str, path: str, status: int, content: bytes) -> bytes:
        if method != "GET" or status != 200 or not content:
            return content
        document = json.loads(content)
        resources = document.get("Resources", [document])
        for resource in resources:
            schemas = resource.get("schemas", [])
            if any(s.endswith(":Group") for s in schemas):
                resource.pop("members", None)
            elif any(s.endswith(":User") for s in schemas) and "id" in resource:
                found = httpx2.get(
                    f"{upstream}/Groups",
                    params={"filter": f'members.value eq "{resource["id"]}"'},
                ).json()
                resource["groups"] = [
                    {"value": g["id"], "display": g["displayName"]}
                    for g in found.get("Resources", [])
                ]
        return json.dumps(document).encode()

    return rewrite


def no_member_filter(method: str, path: str, body: bytes) -> bytes:
    if method == "GET" and "/Groups" in path and "members" in unquote(path):
        raise Refuse(400, "filtering groups on members is not supported")
    return body


def test_user_side_membership_dialect(scim_url: str) -> None:
    make_group(scim_url, "engineering")
    make_group(scim_url, "admins")
    proxy = FaultyProxy(
        scim_url, on_request=no_member_filter, on_response=user_side_membership(scim_url)
    )
    by_group = ScimConnector("app", {"url": proxy.url})
    by_user = ScimConnector("app", {"url": proxy.url, "membership": "user"})
    try:
        account = by_user.create(SPEC)
        by_user.add_entitlement(account, "engineering")
        by_user.add_entitlement(account, "admins")
        by_user.remove_entitlement(account, "admins")
        record = by_user.read(account)
        assert record is not None and record.entitlements == {"engineering"}
        listed = {r.account: r.entitlements for r in by_user.list_accounts()}
        assert listed == {account: frozenset({"engineering"})}
        # preferring the group side changes nothing: only the user side is shown to work
        record = by_group.read(account)
        assert record is not None and record.entitlements == {"engineering"}
        paths = {p.path: p.status for p in by_group.read_paths()}
        assert paths["user-groups"] == "trusted" and paths["member-filter"] != "trusted"
    finally:
        by_group.close()
        by_user.close()
        proxy.close()
