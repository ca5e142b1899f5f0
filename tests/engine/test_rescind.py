"""A rescinded termination against real targets (a SCIM server and slapd).

A target whose delete grace (7 days) is shorter than the rescind window (30) keeps the
leaver's account disabled until the window passes, so a rescind on day 10 finds the same
account and gives back the same groups. An exact rescind: the person moved while terminated
(a back-dated HR correction), so today's policy would give them less; the rescind gives back
exactly what they held when the termination took effect — the same account, the same groups —
says where that differs from today's policy, and hands over to today's policy when the
give-back ends (its days pass, or the person changes again)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import views
from provisor.engine.workspace import Workspace, check_policy
from provisor.sandbox.slapd import Slapd
from provisor.store import models
from tests.connectors.test_ldap import (  # noqa: F401
    Namespace,
    directory_workspace,
    raw_entry,
    slapd,
)
from tests.engine.test_move_grace import LDAP_RULES, groups_of, record, scim_workspace
from tests.engine.test_runner import NOW, POLICY, apply, people, plan, server_user


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    workspace = scim_workspace(tmp_path, scim_url, POLICY)
    yield workspace
    workspace.close()


def joined(ws: Workspace, scim_url: str) -> dict[str, Any]:
    """E1 hired, planned and applied: their account as the server holds it."""
    people(ws, "E1")
    plan(ws)
    apply(ws)
    account = server_user(scim_url, "e1@example.com")
    assert account is not None
    return account


def test_terminate_apply_rescind_apply_gives_back_the_same_account(
    ws: Workspace, scim_url: str
) -> None:
    before = joined(ws, scim_url)
    assert groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}

    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, NOW))
    plan(ws)
    apply(ws)
    day10 = NOW + timedelta(days=10)  # past the 7 grace days, within the 30-day window
    plan(ws, day10)
    apply(ws, day10)
    kept = server_user(scim_url, "e1@example.com")
    assert kept is not None and kept["active"] is False  # disabled, not deleted
    assert groups_of(scim_url, "e1@example.com") == set()

    record(ws, LifecycleEvent("E1", EventKind.RESCIND, day10, day10))
    ops = [
        (op.kind.value, op.entitlement)
        for op, _, _ in plan(ws, day10).operations
        if op.target == "app"
    ]
    assert ("create", None) not in ops and ("enable", None) in ops
    assert apply(ws, day10).failed == 0
    after = server_user(scim_url, "e1@example.com")
    assert after is not None and after["id"] == before["id"] and after["active"] is True
    assert groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}


def test_policy_check_warns_of_a_grace_shorter_than_the_rescind_window(ws: Workspace) -> None:
    warnings = check_policy(ws.path)["warnings"]
    assert (
        len(warnings) == 1
        and "targets[0] app: grace_days 7 is shorter than the rescind" in (warnings[0])
    )
    assert "kept disabled 30 days" in warnings[0]


DAY10 = NOW + timedelta(days=10)  # the rescind: within the 30-day window


def leave_move_rescind(ws: Workspace) -> None:
    """E1 (Engineering) is terminated now and planned (what they held is recorded then),
    moved to Sales back-dated to day 3 while gone, and the termination rescinded on day 10."""
    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, NOW))
    plan(ws)
    apply(ws)
    plan(ws, DAY10)
    apply(ws, DAY10)
    moved = LifecycleEvent(
        "E1", EventKind.MOVE, NOW + timedelta(days=3), DAY10, {"department": "Sales"}
    )
    record(ws, LifecycleEvent("E1", EventKind.RESCIND, DAY10, DAY10))
    record(ws, moved)


def test_a_rescind_gives_back_the_same_account_and_groups_held_then(
    ws: Workspace, scim_url: str
) -> None:
    before = joined(ws, scim_url)
    leave_move_rescind(ws)
    assert groups_of(scim_url, "e1@example.com") == set()  # taken away on leaving

    planned = plan(ws, DAY10)
    restored = planned.restored["E1"]
    assert restored.beyond_policy == ("app:engineering",)  # Sales: today's policy says no
    assert restored.not_given == () and restored.until == DAY10 + timedelta(days=30)
    assert apply(ws, DAY10).failed == 0
    after = server_user(scim_url, "e1@example.com")
    assert after is not None and after["id"] == before["id"] and after["active"] is True
    assert groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}
    why = views.explain_identity(ws, "E1", "app:engineering", now=DAY10)
    assert why["granted"] and why["reasons"] == [
        "given back by a rescind: held at the termination of 2026-06-01 (rule engineering)"
    ]
    assert "today's policy would not grant it" in why["why_not"][0]
    with ws.sessions() as session:
        row = session.execute(
            select(models.Identity).where(models.Identity.external_id == "E1")
        ).scalar_one()
        assert row.review_at == DAY10 + timedelta(days=30)  # planned again when it ends
        actions = list(
            session.execute(
                select(models.AuditEvent.action).where(
                    models.AuditEvent.action == "identity.held_at_termination"
                )
            ).scalars()
        )
        assert actions == ["identity.held_at_termination"]  # recorded once

    ended = DAY10 + timedelta(days=30)  # the give-back ends: today's policy decides
    ops = [
        (o.kind.value, o.entitlement) for o, _, _ in plan(ws, ended).operations if o.target == "app"
    ]
    assert ops == [("remove-entitlement", "engineering")]
    assert apply(ws, ended).failed == 0
    assert groups_of(scim_url, "e1@example.com") == {"staff"}


def test_the_persons_next_change_hands_over_to_todays_policy(ws: Workspace) -> None:
    people(ws, "E1")
    plan(ws)
    apply(ws)
    leave_move_rescind(ws)
    plan(ws, DAY10)
    apply(ws, DAY10)
    later = DAY10 + timedelta(days=2)
    record(ws, LifecycleEvent("E1", EventKind.MOVE, later, later, {"title": "Lead"}))
    planned = plan(ws, later)
    assert planned.restored == {}
    ops = [(o.kind.value, o.entitlement) for o, _, _ in planned.operations if o.target == "app"]
    assert ops == [("remove-entitlement", "engineering")]


def test_a_rescind_before_any_plan_took_nothing_and_gives_todays_policy(ws: Workspace) -> None:
    people(ws, "E1")
    plan(ws)
    apply(ws)
    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, NOW))
    record(ws, LifecycleEvent("E1", EventKind.RESCIND, NOW, NOW))
    planned = plan(ws)
    assert planned.restored == {}
    assert [o for o, _, _ in planned.operations if o.target == "app"] == []


@pytest.fixture
def directory(
    tmp_path: Path,
    slapd: Slapd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Workspace, Namespace]]:
    groups = ("staff", "engineering")
    ws, space = directory_workspace(tmp_path, slapd, monkeypatch, groups, LDAP_RULES)
    yield ws, space
    ws.close()


def members(space: Namespace, group: str) -> list[str]:
    entry = raw_entry(space.server, f"cn={group},{space.groups}", "member") or {}
    return entry.get("member", [])


def test_a_rescind_in_a_directory_unlocks_the_same_entry_with_its_groups(
    directory: tuple[Workspace, Namespace],
) -> None:
    ws, space = directory
    people(ws, "E1")
    plan(ws)
    assert apply(ws).failed == 0
    dn = f"uid=e1@example.com,{space.people}"
    uuid = (raw_entry(space.server, dn, "entryUUID") or {}).get("entryuuid")
    assert uuid and dn in members(space, "engineering")
    leave_move_rescind(ws)
    assert (raw_entry(space.server, dn, "pwdAccountLockedTime") or {}).get("pwdaccountlockedtime")
    assert dn not in members(space, "engineering") and dn not in members(space, "staff")

    planned = plan(ws, DAY10)
    assert planned.restored["E1"].beyond_policy == ("dir:engineering",)
    assert apply(ws, DAY10).failed == 0
    assert (raw_entry(space.server, dn, "entryUUID") or {}).get("entryuuid") == uuid
    locked = raw_entry(space.server, dn, "pwdAccountLockedTime") or {}
    assert not locked.get("pwdaccountlockedtime")
    assert dn in members(space, "engineering") and dn in members(space, "staff")
