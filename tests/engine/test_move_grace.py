"""Post-move grace against a real SCIM server and slapd: access a move takes away is kept for
the target's (or entitlement's) grace — said so by explain and plan — then removed and verified
gone; a leaver gets none, but where a target keeps it explicitly (leaver_grace_days)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select

from provisor.domain.desired import compile_policy, desired_access
from provisor.domain.lifecycle import EventKind, LifecycleEvent, fold
from provisor.domain.plan import ObservedAccount, plan_identity
from provisor.domain.policy import Policy
from provisor.engine import debt, identities, views
from provisor.engine.workspace import Workspace
from provisor.sandbox.slapd import Slapd
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.test_ldap import directory_workspace, slapd  # noqa: F401
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import NOW, POLICY, apply, people, plan, server_user

# the rules of test_runner.POLICY for an LDAP target "dir"
LDAP_RULES = """\
rules:
  - name: staff
    when: {attr: employment_type, equals: employee}
    grant: [{target: dir, entitlements: [staff]}]
  - name: engineering
    when: {attr: department, equals: Engineering}
    grant: [{target: dir, entitlements: [engineering]}]
"""
GRACE = POLICY.replace("    grace_days: 7\n", "    grace_days: 7\n    move_grace_days: 5\n")


def scim_workspace(folder: Path, url: str, policy: str) -> Workspace:
    """A workspace on SQLite with ``policy`` (``test_runner.POLICY`` changed) for the SCIM
    server at ``url``, its groups made."""
    make_group(url, "staff")
    make_group(url, "engineering")
    return scratch_workspace(folder, policy.format(url=url, timeout=3))


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    workspace = scim_workspace(tmp_path, scim_url, GRACE)
    yield workspace
    workspace.close()


def groups_of(url: str, user_name: str) -> set[str]:
    """The groups the server itself lists the user in (read from each group)."""
    user = server_user(url, user_name)
    assert user is not None
    found = httpx2.get(f"{url}/Groups").json().get("Resources", [])
    return {
        g["displayName"]
        for g in found
        if any(m.get("value") == user["id"] for m in g.get("members") or [])
    }


def record(ws: Workspace, event: LifecycleEvent) -> None:
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session, ws.config, [event], origin="test", now=event.recorded, strict=True
        )


def test_a_movers_old_access_is_kept_for_the_grace_then_removed(
    ws: Workspace, scim_url: str
) -> None:
    people(ws, "E1")
    plan(ws)
    apply(ws)
    assert groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}
    record(ws, LifecycleEvent("E1", EventKind.MOVE, NOW, NOW, {"department": "Sales"}))

    day = NOW + timedelta(days=1)
    planned = plan(ws, day)
    ops = [(op.kind.value, op.entitlement) for op, _, _ in planned.operations]
    assert ("remove-entitlement", "engineering") not in ops  # kept by grace
    assert planned.graces == {"E1": NOW + timedelta(days=5)}  # and said so with the plan
    why = views.explain_identity(ws, "E1", "app:engineering", now=day)
    assert why["granted"] and why["reasons"] == [
        "kept by grace until 2026-06-06 12:00 UTC (after the move of 2026-06-01)"
    ]
    with ws.sessions() as session:
        row = session.execute(
            select(models.Identity).where(models.Identity.external_id == "E1")
        ).scalar_one()
        assert row.review_at == NOW + timedelta(days=5)  # planned again then
        assert row.next_change_at is None  # the lifecycle's own next change is untouched
    apply(ws, day)
    assert groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}
    assert debt.ledger(ws, day, identity="E1").items == []  # kept by grace: owed to nobody

    # the grace ends: tick marks E1 for planning, and the removal is verified on the server
    end = NOW + timedelta(days=5)
    with ws.sessions() as session, session.begin():
        identities.tick(session, ws.config, now=end)
    ops = [(op.kind.value, op.entitlement) for op, _, _ in plan(ws, end).operations]
    assert ("remove-entitlement", "engineering") in ops
    # still held on the server: owed, and not said gone before a read-back shows it
    owed = debt.ledger(ws, end, identity="E1").items
    assert [(i.target, i.item) for i in owed] == [("app", "entitlement:engineering")]
    done = apply(ws, end)
    assert done.verified >= 1 and done.failed == 0
    assert groups_of(scim_url, "e1@example.com") == {"staff"}
    why = views.explain_identity(ws, "E1", "app:engineering", now=end)
    assert not why["granted"]
    assert debt.ledger(ws, end, identity="E1").items == []  # verified gone by the read-back


def test_a_leaver_gets_no_grace(ws: Workspace, scim_url: str) -> None:
    people(ws, "E1")
    plan(ws)
    apply(ws)
    record(ws, LifecycleEvent("E1", EventKind.MOVE, NOW, NOW, {"department": "Sales"}))
    later = NOW + timedelta(hours=1)
    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, later, later))
    ops = [(op.kind.value, op.entitlement) for op, _, _ in plan(ws, later).operations]
    assert ("remove-entitlement", "engineering") in ops and ("disable", None) in ops
    apply(ws, later)
    assert groups_of(scim_url, "e1@example.com") == set()
    user = server_user(scim_url, "e1@example.com")
    assert user is not None and user["active"] is False


def test_a_leaver_keeps_access_only_where_policy_says_so_explicitly(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    kept = GRACE.replace(
        "    move_grace_days: 5\n", "    move_grace_days: 5\n    leaver_grace_days: 3\n"
    )
    ws = scim_workspace(tmp_path, scim_url, kept)
    try:
        people(ws, "E1")
        plan(ws)
        apply(ws)
        record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, NOW))
        day = NOW + timedelta(days=1)
        planned = plan(ws, day)
        ops = [(op.target, op.kind.value) for op, _, _ in planned.operations]
        assert not any(target == "app" for target, _ in ops)  # kept: app says so
        assert planned.graces == {"E1": NOW + timedelta(days=3)}
        why = views.explain_identity(ws, "E1", "app:engineering", now=day)
        assert why["granted"] and why["reasons"] == [
            "kept by grace until 2026-06-04 12:00 UTC (after the termination of 2026-06-01)"
        ]
        apply(ws, day)
        assert groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}
        ended = NOW + timedelta(days=3)
        owed = debt.ledger(ws, ended + timedelta(days=1), target="app").as_dict()
        assert owed["items"] > 0 and owed["overdue"] == 0  # owed from the grace's end
        ops = [(op.target, op.kind.value) for op, _, _ in plan(ws, ended).operations]
        assert ("app", "disable") in ops and ("app", "remove-entitlement") in ops
        apply(ws, ended)
        assert groups_of(scim_url, "e1@example.com") == set()
    finally:
        ws.close()


def test_a_grace_never_breaks_separation_of_duties_nor_adds_what_was_never_held() -> None:
    """Moving from payroll to vendors keeps ``erp:pay`` by grace — but not beside
    ``erp:vendor``, which SoD forbids together; and a grace item not held is not added."""
    policy = compile_policy(
        Policy.model_validate(
            {
                "targets": [
                    {
                        "name": "erp",
                        "class": "manual",
                        "owner": "erp-team",
                        "move_grace_days": 10,
                        "entitlements": [{"name": "pay"}, {"name": "vendor"}, {"name": "audit"}],
                    }
                ],
                "rules": [
                    {
                        "name": "p",
                        "when": {"attr": "department", "equals": "Payroll"},
                        "grant": [{"target": "erp", "entitlements": ["pay", "audit"]}],
                    },
                    {
                        "name": "v",
                        "when": {"attr": "department", "equals": "Vendors"},
                        "grant": [{"target": "erp", "entitlements": ["vendor"]}],
                    },
                ],
                "sod": [{"name": "pay-vendor", "conflicts": ["erp:pay", "erp:vendor"]}],
            }
        )
    )
    hired = LifecycleEvent(
        "E1",
        EventKind.HIRE,
        NOW - timedelta(days=90),
        NOW - timedelta(days=90),
        {"name": "E1", "department": "Payroll"},
    )
    moved = LifecycleEvent("E1", EventKind.MOVE, NOW, NOW, {"department": "Vendors"})
    state = fold("E1", [hired, moved], as_of=NOW + timedelta(days=1))
    erp = desired_access(policy, state).targets["erp"]
    assert set(erp.entitlements) == {"vendor", "audit"}  # audit kept, pay withheld
    assert "pay-vendor" in erp.withheld["pay"]
    # held on the target: only vendor (audit was never there): the grace adds nothing
    seen = ObservedAccount("erp", "e1", "E1", True, frozenset({"vendor", "pay"}), NOW)
    ops = {
        (op.kind.value, op.entitlement)
        for op in plan_identity(state, desired_access(policy, state), [seen], policy.targets)
    }
    assert ("add-entitlement", "audit") not in ops
    assert ("remove-entitlement", "pay") in ops  # SoD: not kept


def test_in_a_directory_a_movers_old_group_is_kept_then_removed(
    tmp_path: Path,
    slapd: Slapd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws, space = directory_workspace(
        tmp_path,
        slapd,
        monkeypatch,
        ("staff", "engineering"),
        LDAP_RULES,
        "    move_grace_days: 5\n",
    )
    try:
        people(ws, "E1")
        plan(ws)
        assert apply(ws).failed == 0
        dn = f"uid=e1@example.com,{space.people}"
        record(ws, LifecycleEvent("E1", EventKind.MOVE, NOW, NOW, {"department": "Sales"}))
        day = NOW + timedelta(days=1)
        plan(ws, day)
        assert apply(ws, day).failed == 0
        assert dn in space.members("engineering")  # kept by grace
        ended = NOW + timedelta(days=5)
        ops = [(op.kind.value, op.entitlement) for op, _, _ in plan(ws, ended).operations]
        assert ops == [("remove-entitlement", "engineering")]
        assert apply(ws, ended).failed == 0
        assert dn not in space.members("engineering") and dn in space.members("staff")
    finally:
        ws.close()
