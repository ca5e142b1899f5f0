"""The removal guard against a real SCIM server: a plan batch that removes too much access in
one target (a policy edit, everyone on leave, a reorganisation) is held whole, never applied by
the runner or ``provisor run`` until approved, and approved whole, by identity or by target, or
rejected. Below the limits nothing is held; leavers stay with the lifecycle guard."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import func, select

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities, reconcile
from provisor.engine.holds import list_holds
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import models
from tests.connectors.test_scim import make_group
from tests.engine.test_reconcile import raw_user, workspace_for
from tests.engine.test_runner import NOW, apply, event, people, plan, setup_workspace

STAFF = [f"E{i}" for i in range(20)]
LATER = NOW + timedelta(hours=1)


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """20 engineers provisioned in the SCIM application (staff and engineering groups)."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    workspace = setup_workspace(tmp_path, scim_url)
    people(workspace, *STAFF)
    plan(workspace)
    report = apply(workspace)
    assert report.failed == 0 and report.verified >= 40
    yield workspace
    workspace.close()


def held(ws: Workspace) -> dict[str, int]:
    with ws.sessions() as session:
        rows = session.execute(
            select(models.Operation.kind, func.count())
            .where(models.Operation.status == "held")
            .group_by(models.Operation.kind)
        )
        return {kind: count for kind, count in rows}


def members(scim_url: str, group: str) -> int:
    found = httpx2.get(f"{scim_url}/Groups", params={"filter": f'displayName eq "{group}"'})
    return len(found.json()["Resources"][0].get("members") or [])


def move(ws: Workspace, ids: list[str], **attributes: str) -> None:
    events = [LifecycleEvent(i, EventKind.MOVE, LATER, LATER, dict(attributes)) for i in ids]
    with ws.sessions() as session, session.begin():
        identities.record_events(session, ws.config, events, origin="test", now=LATER)


def test_a_policy_edit_that_drops_a_rule_is_held_with_its_diff(
    ws: Workspace, scim_url: str, cli: Any
) -> None:
    policy = ws.path / "policy" / "policy.yaml"
    policy.write_text(policy.read_text().split("  - name: engineering\n")[0])
    ws.refresh_policy()
    plan(ws, LATER)
    assert held(ws) == {"remove-entitlement": 20}
    [hold] = list_holds(ws.sessions())
    assert hold["kind"] == "operations" and hold["waiting"] == 20
    assert "target app: 20 removals planned at once" in hold["reason"]
    change = hold["details"]["causes"]["policy_change"]
    assert change["changes"]["rules"]["removed"] == ["engineering"]
    # nothing held runs: not the runner, not the service loop
    assert apply(ws, LATER).verified == 0
    assert cli("--now", LATER.isoformat(), "run", "--once").code in (0, 11)
    assert members(scim_url, "engineering") == 20
    # a plan made meanwhile keeps the batch as it is: held, not planned again
    plan(ws, LATER)
    assert held(ws) == {"remove-entitlement": 20}
    approved = cli("approve", str(hold["hold"]))
    assert approved.code == 0 and "20 operations put in line" in approved.out, approved.err
    assert apply(ws, LATER).verified == 20
    assert members(scim_url, "engineering") == 0
    assert cli("audit", "verify").code == 0


def test_a_policy_edit_undone_before_approval_cancels_what_it_held(ws: Workspace) -> None:
    policy = ws.path / "policy" / "policy.yaml"
    kept = policy.read_text()
    policy.write_text(kept.split("  - name: engineering\n")[0])
    ws.refresh_policy()
    plan(ws, LATER)
    assert held(ws) == {"remove-entitlement": 20}
    policy.write_text(kept)
    ws.refresh_policy()
    synced = plan(ws, LATER)
    assert held(ws) == {} and synced.cancelled == 20
    [closed] = list_holds(ws.sessions(), every=True)
    assert closed["status"] == "superseded" and list_holds(ws.sessions()) == []
    with ws.sessions() as session:
        assert audit.verify(session).ok


def test_a_leaver_in_a_held_batch_goes_ahead(ws: Workspace) -> None:
    policy = ws.path / "policy" / "policy.yaml"
    policy.write_text(policy.read_text().split("  - name: engineering\n")[0])
    ws.refresh_policy()
    event(ws, "E19", EventKind.TERMINATE, LATER)
    plan(ws, LATER)
    with ws.sessions() as session:
        rows = session.execute(
            select(models.Operation.kind, models.Operation.status).where(
                models.Operation.identity == "E19", models.Operation.kind == "disable"
            )
        )
        leaver = {kind: status for kind, status in rows}
    assert leaver == {"disable": "pending"}  # the lifecycle guard's, not held again
    assert held(ws) == {"remove-entitlement": 19}


def test_everyone_on_leave_is_held_and_approved_in_part(
    ws: Workspace, scim_url: str, cli: Any
) -> None:
    policy = ws.path / "policy" / "policy.yaml"
    policy.write_text(
        policy.read_text().replace("grace_days: 7\n", "grace_days: 7\n    on_leave: disable\n")
    )
    ws.refresh_policy()
    plan(ws)  # the policy change alone removes nothing
    assert held(ws) == {}
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [LifecycleEvent(i, EventKind.LEAVE, LATER, LATER) for i in STAFF],
            origin="test",
            now=LATER,
        )
    plan(ws, LATER)
    assert held(ws) == {"disable": 20, "revoke-sessions": 20}  # the batch is held whole
    [hold] = list_holds(ws.sessions())
    assert hold["details"]["causes"]["identity_states"] == {"leave": 40}  # removals by state
    number = str(hold["hold"])
    assert cli("approve", number, "--only", "E1,E2").code == 0
    assert apply(ws, LATER).verified == 2
    assert cli("approve", number, "--only", "E404").code == 5  # holds nothing for E404
    rejected = cli("approve", number, "--reject")
    assert rejected.code == 0 and "36 operations cancelled" in rejected.out
    assert held(ws) == {}
    [decided] = list_holds(ws.sessions(), every=True)
    assert decided["status"] == "rejected"
    assert cli("audit", "verify").code == 0


def test_a_reorganisation_is_held_and_released_by_target(ws: Workspace, cli: Any) -> None:
    move(ws, STAFF, department="Sales")
    plan(ws, LATER)
    assert held(ws) == {"remove-entitlement": 20}
    [hold] = list_holds(ws.sessions())
    assert cli("approve", str(hold["hold"]), "--target", "nope").code == 5
    assert cli("approve", str(hold["hold"]), "--target", "app").code == 0
    assert held(ws) == {}


def test_a_few_removals_and_leavers_are_not_held_here(ws: Workspace) -> None:
    move(ws, STAFF[:3], department="Sales")  # 3 removals: under the minimum of 5
    plan(ws, LATER)
    assert held(ws) == {}
    ws.config.guard.max_share = 1.0  # the lifecycle guard lets this mass leaving through
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [LifecycleEvent(i, EventKind.TERMINATE, LATER, LATER) for i in STAFF[3:]],
            origin="test",
            now=LATER,
        )
    plan(ws, LATER)
    assert held(ws) == {}  # leavers were the lifecycle guard's to hold, not this one's


def test_a_target_sets_its_own_limits(ws: Workspace) -> None:
    policy = ws.path / "policy" / "policy.yaml"
    text = policy.read_text().replace(
        "grace_days: 7\n", "grace_days: 7\n    guard: {max_share: 1.0, max_count: 100}\n"
    )
    policy.write_text(text)
    ws.refresh_policy()
    move(ws, STAFF, department="Sales")
    plan(ws, LATER)
    assert held(ws) == {}


def test_a_wave_of_orphans_found_by_reconciliation_is_held(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    """Twelve accounts nobody matches (a correlation gone wrong looks the same): reconciliation
    with ``orphan: auto`` plans their removal, and the guard holds it like any batch."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    ws = workspace_for(tmp_path, scim_url, orphan="auto")
    try:
        people(ws, *STAFF[:5])
        plan(ws)
        apply(ws)
        strays = [raw_user(scim_url, f"stray{i}@example.com") for i in range(12)]
        reconcile.reconcile_target(ws, "app", now=LATER)
        [hold] = list_holds(ws.sessions())
        assert hold["origin"] == "reconciliation" and len(hold["identities"]) == 12
        reconcile.reconcile_target(ws, "app", now=LATER + timedelta(hours=1))
        assert len(list_holds(ws.sessions())) == 1  # in hand: not held a second time
        apply(ws, LATER)
        assert all(httpx2.get(f"{scim_url}/Users/{s}").json()["active"] for s in strays)
        assert cli("approve", str(hold["hold"])).code == 0
        apply(ws, LATER)  # disabled now; deleted once the grace period is over
        assert not any(httpx2.get(f"{scim_url}/Users/{s}").json()["active"] for s in strays)
    finally:
        ws.close()


def test_exceptions_expiring_together_are_held(ws: Workspace) -> None:
    """Twenty people's engineering access rests on exceptions that end on the same day."""
    policy = ws.path / "policy" / "policy.yaml"
    rules = policy.read_text().split("  - name: engineering\n")[0]
    grant = "[{target: app, entitlements: [engineering]}]"
    exceptions = "".join(
        f"  - identity: {i}\n    grant: {grant}\n    approver: E99\n"
        "    justification: migration project\n    granted: 2026-05-01\n    expires: 2026-06-10\n"
        for i in STAFF
    )
    policy.write_text(rules + "exceptions:\n" + exceptions)
    ws.refresh_policy()
    plan(ws, LATER)  # the exceptions still hold: nothing to remove
    assert held(ws) == {}
    ended = NOW + timedelta(days=15)
    plan(ws, ended)
    assert held(ws) == {"remove-entitlement": 20}
    [hold] = list_holds(ws.sessions())
    causes = hold["details"]["causes"]
    assert causes["policy_change"] is None and causes["identity_states"] == {"active": 20}
