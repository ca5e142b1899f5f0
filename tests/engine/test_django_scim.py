"""End to end against a second SCIM server implementation, ``django-scim2`` (a Django
application's own users and groups), run for real: a joiner with groups, a mover, a leaver,
reconciliation and the leaver's evidence. Its quirks are real ones: it says it supports no
filter, computes displayName from name parts, keeps meta.lastModified at the creation time,
answers a member removal by filter in the path with success and does nothing, and lists its
resource types without totals and with endpoints from the host's root."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisor.domain.lifecycle import EventKind
from provisor.engine import readpaths, reconcile
from provisor.engine.leavers import verify_leaver
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.django_scim_app.launch import DjangoScimApp
from tests.engine.test_proof_scim import move
from tests.engine.test_runner import apply, event, people, plan, statuses

NOW = datetime.now(UTC).replace(microsecond=0)

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    leaver_action: disable
    connection: {{url: "{url}", token: {{env: DJANGO_SCIM_TOKEN}}, timeout: 10}}
    entitlements: [{{name: staff}}, {{name: engineering}}, {{name: sales}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
  - name: engineering
    when: {{attr: department, equals: Engineering}}
    grant: [{{target: app, entitlements: [engineering]}}]
  - name: sales
    when: {{attr: department, equals: Sales}}
    grant: [{{target: app, entitlements: [sales]}}]
"""


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[DjangoScimApp]:
    with DjangoScimApp() as running:
        monkeypatch.setenv("DJANGO_SCIM_TOKEN", running.token)
        for name in ("staff", "engineering", "sales"):
            running.group(name)
        yield running


@pytest.fixture
def ws(tmp_path: Path, app: DjangoScimApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    workspace = scratch_workspace(tmp_path, POLICY.format(url=app.url))
    yield workspace
    workspace.close()


def user(app: DjangoScimApp, user_name: str) -> dict[str, Any]:
    listed = app.get("Users")["Resources"]
    assert isinstance(listed, list)
    found = [u for u in listed if u["userName"] == user_name]
    assert len(found) == 1, listed
    return dict(found[0])


def groups_of(app: DjangoScimApp, account: str) -> set[str]:
    """Every group holding ``account``, read from the groups themselves."""
    listed = app.get("Groups")["Resources"]
    assert isinstance(listed, list)
    return {g["displayName"] for g in listed if account in {str(m["value"]) for m in g["members"]}}


def test_joiner_mover_leaver_reconcile_and_evidence(
    ws: Workspace, app: DjangoScimApp, tmp_path: Path
) -> None:
    people(ws, "E1", "E2", now=NOW)
    plan(ws, NOW)
    joined = apply(ws, NOW)
    assert joined.failed == 0 and joined.retrying == 0, joined.errors
    ann = user(app, "e1@example.com")
    account = str(ann["id"])
    assert ann["externalId"] == "E1" and ann["active"] is True
    assert groups_of(app, account) == {"staff", "engineering"}
    # displayName is the server's own (made from name parts): one update teaches that, and
    # no update is planned for it again
    later = NOW + timedelta(minutes=1)
    plan(ws, later)
    assert apply(ws, later).failed == 0
    recorded = {p.path: p.status for p in readpaths.load(ws, "app")}
    assert recorded.get("computed:name") == "computed"
    assert not [op for op, status, _ in plan(ws, later).operations if status != "verified"]

    moved = NOW + timedelta(minutes=2)
    move(ws, "E1", "Sales", moved)
    plan(ws, moved)
    report = apply(ws, moved)
    assert report.failed == 0, report.errors
    assert groups_of(app, account) == {"staff", "sales"}  # removal by filter is a no-op here

    left = NOW + timedelta(minutes=3)
    event(ws, "E1", EventKind.TERMINATE, now=left)
    plan(ws, left)
    gone = apply(ws, left)
    assert gone.failed == 0, gone.errors
    assert user(app, "e1@example.com")["active"] is False
    assert groups_of(app, account) == set()
    assert "failed" not in statuses(ws)

    full = reconcile.reconcile_target(ws, "app", now=left + timedelta(minutes=1))
    assert full.status == "completed" and full.read == 2
    assert set(full.classes) == {"ok"}
    # no filters here, so no change listing: an incremental run reads in full and says why
    again = reconcile.reconcile_target(ws, "app", now=left + timedelta(minutes=2), full=False)
    assert again.mode == "full" and again.status == "completed"
    assert again.proof is not None and "does not support filters" in again.proof

    written = verify_leaver(ws, "E1", now=lambda: left + timedelta(hours=1), out_dir=tmp_path)
    assert written.outcome == "pass", written.failures
    with ws.sessions() as session:
        kinds = {
            (r.kind, r.status)
            for r in session.execute(
                select(models.Operation).where(models.Operation.identity == "E1")
            ).scalars()
        }
    assert ("remove-entitlement", "verified") in kinds and ("disable", "verified") in kinds


def test_a_removal_the_application_ignores_is_never_verified(
    ws: Workspace, app: DjangoScimApp
) -> None:
    """A membership removal answered with success and not made (this server's answer to a
    filter in the path) is read back: never verified while the member is still there."""
    people(ws, "E1", now=NOW)
    plan(ws, NOW)
    apply(ws, NOW)
    account = str(user(app, "e1@example.com")["id"])
    from provisor.connectors.scim import ScimConnector

    rfc_only = ScimConnector("app", {"url": app.url, "token": app.token})
    rfc_only._remove_by_value = False  # as if it had learned the filter form works here
    try:
        rfc_only.remove_entitlement(account, "engineering")
        record = rfc_only.read(account)
    finally:
        rfc_only.close()
    assert "engineering" in groups_of(app, account)  # the application kept it
    assert record is not None and "engineering" in record.entitlements
