"""The inbound SCIM server: scim2-tester and scim-sanity against a running service, and the
request shapes Microsoft Entra ID and Okta send, applied to identities' lifecycles."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from provisor.domain import scim_people
from provisor.engine import operators
from provisor.store.models import Identity
from tests.api.conftest import Service


def scim_token(service: Service, name: str = "idp") -> str:
    now = datetime.now(UTC)
    with service.workspace.sessions() as session, session.begin():
        operators.add_operator(session, name, roles=["operator"], by="test", now=now)
        secret, _ = operators.create_token(
            session, name, name="idp", scopes=["scim"], expires_at=None, by="test", now=now
        )
    return secret


def test_scim2_tester_passes_every_check(service: Service) -> None:
    token = scim_token(service)
    with httpx2.Client(
        base_url=service.url + "/scim/v2",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as http:
        results = check_server(SyncSCIMClient(http))
    counts = Counter(r.status.name for r in results)
    failed = [
        f"{r.resource_type} {r.title}: {(r.reason or '')[:300]}"
        for r in results
        if r.status not in (Status.SUCCESS, Status.SKIPPED)
    ]
    print(f"scim2-tester: {dict(counts)}")
    assert not failed, "\n".join(failed)
    assert counts["SUCCESS"] >= 60


# --- requests as Microsoft Entra ID and Okta send them -------------------------------------

REQUESTS = Path(__file__).parent / "scim_requests"
# the fixtures' attribute names -> the identity attributes a SCIM User sets
ATTRIBUTES = {
    "email": "email",
    "department": "department",
    "costCenter": "cost_centre",
    "title": "title",
    "familyName": "family_name",
    "givenName": "given_name",
    "userName": "user_name",
    "employeeNumber": "employee_number",
    "organization": "organization",
    "displayName": "name",
    "externalId": "external_id",
    "manager": "manager",
    "groups": "groups",
}


def _substitute(text: str, saved: dict[str, str]) -> str:
    for name, value in saved.items():
        text = text.replace("{" + name + "}", value)
    return text


def _identity_of(service: Service, key: str) -> str | None:
    """The identity fed by the SCIM User whose userName, externalId or employeeNumber is
    ``key`` (the fixtures name people so)."""
    from sqlalchemy import select

    from provisor.store.models import ScimResource

    with service.workspace.sessions() as session:
        for row in session.execute(
            select(ScimResource).where(ScimResource.kind == "User")
        ).scalars():
            extension = row.data.get(scim_people.ENTERPRISE) or {}
            names = {
                str(row.data.get("userName") or "").casefold(),
                str(row.data.get("externalId") or ""),
                str(extension.get("employeeNumber") or ""),
                str(row.identity),
            }
            if key.casefold() in names or key in names:
                return row.identity
        # a deleted User: its identity is still there
        known = session.execute(
            select(Identity.external_id).where(Identity.external_id == key)
        ).scalar_one_or_none()
        return known


@pytest.mark.parametrize("fixture", sorted(p.name for p in REQUESTS.glob("*.json")))
def test_identity_provider_requests_have_their_effect(service: Service, fixture: str) -> None:
    spec = json.loads((REQUESTS / fixture).read_text())
    assert spec["source"].startswith("http"), "each fixture names its public source"
    token = scim_token(service)
    saved: dict[str, str] = {}
    with httpx2.Client(
        base_url=service.url + "/scim/v2",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
        timeout=30,
    ) as http:
        for number, step in enumerate(spec["steps"], 1):
            body = step.get("body")
            content = _substitute(json.dumps(body), saved).encode() if body is not None else None
            answer = http.request(step["method"], _substitute(step["path"], saved), content=content)
            allowed = {step["expect_status"]}
            if step["method"] == "PATCH" and step["expect_status"] in (200, 204):
                # RFC 7644 §3.5.2 allows either; Provisor answers 200 and the resource
                allowed = {200, 204}
            assert answer.status_code in allowed, (number, step["path"], answer.text)
            assert '"password"' not in answer.text  # never echoed
            if step.get("save_as"):
                saved[step["save_as"]] = answer.json()["id"]
    effect = spec["effect"]
    identity = _identity_of(service, effect["identity"])
    if effect["state"] is None:
        assert identity is None  # a probe leaves nobody behind
        return
    assert identity is not None, f"no identity for {effect['identity']}"
    from provisor.engine.views import show_identity

    shown = show_identity(
        service.workspace, identity, as_of=None, known_at=None, now=datetime.now(UTC)
    )
    assert shown["state"] == effect["state"], shown
    attributes = shown["attributes"]
    for name, expected in effect["attributes"].items():
        if name in ("active", "password"):
            continue  # the state says it; a password is never kept (checked below)
        if name == "manager" and expected is not None:
            expected = _identity_of(service, expected)
        if name == "groups" and expected == []:
            expected = None
        got = attributes.get(ATTRIBUTES[name])
        assert got == expected, (name, got, expected, attributes)
    with service.workspace.sessions() as session:
        from sqlalchemy import text

        dump = " ".join(
            str(r) for r in session.execute(text("select data from scim_resources")).scalars()
        )
        events = " ".join(
            str(r)
            for r in session.execute(text("select attributes from identity_events")).scalars()
        )
    assert "password" not in dump.lower() and "password" not in events.lower()


def test_the_identity_providers_joiner_and_leaver_are_planned_at_once(
    erp_workspace: Path,
) -> None:
    """A User made, then deactivated, through SCIM wakes the service's runner each time (the
    periodic cycle is an hour away): the joiner's access is planned within seconds, and so is
    the leaver's end of it — here the joiner's pending work items cancelled, nothing granted."""
    from sqlalchemy import select

    from provisor.store.models import Operation
    from tests.api.conftest import serving
    from tests.engine.test_workers import until

    def statuses(who: str) -> set[str]:
        with running.workspace.sessions() as session:
            found = session.execute(select(Operation.status).where(Operation.identity == who))
            return set(found.scalars())

    with serving(erp_workspace, runner=True) as running:
        headers = {"Authorization": f"Bearer {scim_token(running)}"}
        with httpx2.Client(base_url=running.url + "/scim/v2", headers=headers) as scim:
            user = {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", scim_people.ENTERPRISE],
                "userName": "zed@example.com",
                "externalId": "Z1",
                "active": True,
                "name": {"givenName": "Zed", "familyName": "Zebra"},
                "emails": [{"value": "zed@example.com", "primary": True}],
                scim_people.ENTERPRISE: {"department": "Finance", "employeeNumber": "Z1"},
            }
            made = scim.post("/Users", json=user)
            assert made.status_code == 201, made.text
            who = _identity_of(running, "Z1")
            assert who is not None
            assert until(lambda: "pending" in statuses(who), 15), statuses(who)
            patch = {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "active", "value": False}],
            }
            changed = scim.patch(f"/Users/{made.json()['id']}", json=patch)
            assert changed.status_code == 200, changed.text
            assert until(lambda: statuses(who) == {"cancelled"}, 15), statuses(who)
