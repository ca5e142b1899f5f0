"""Revocation debt: the ledger from desired vs observed access and the journal, on SQLite and
PostgreSQL; and a leaver re-enabled behind Provisor's back, in debt until fixed and verified."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select, update

from provisor.domain.debt import DebtItem, summarise
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import debt
from provisor.engine import identities as lifecycle
from provisor.engine.observed import import_observed
from provisor.engine.planner import sync_journal
from provisor.engine.workspace import Workspace
from provisor.sandbox import free_port
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import NOW, apply, event, people, plan, server_user, setup_workspace

POLICY = """\
targets:
  - name: erp
    class: manual
    owner: finance-ops
    sla_days: 2
    entitlements: [{{name: erp-user}}, {{name: approver}}]
  - name: crm
    class: scim
    owner: sales-ops
    leaver_action: delete
    grace_days: 7
    on_leave: disable
    connection: {{url: "{url}"}}
    entitlements: [{{name: staff}}]
rules:
  - name: finance
    when: {{attr: department, equals: Finance}}
    grant: [{{target: erp, entitlements: [erp-user]}}, {{target: crm, entitlements: [staff]}}]
"""

DAY = datetime(2026, 3, 6, 9, tzinfo=UTC)


def at(day: int) -> datetime:
    return datetime(2026, 3, day, 9, tzinfo=UTC)


def record(ws: Workspace, *events: LifecycleEvent) -> None:
    with ws.sessions() as session, session.begin():
        lifecycle.record_events(session, ws.config, list(events), origin="test", now=DAY)


def observe(ws: Workspace, tmp_path: Path, target: str, rows: str, when: datetime) -> None:
    export = tmp_path / f"{target}.csv"
    export.write_text("account,email,enabled,entitlements,sessions\n" + rows)
    report = import_observed(ws, target, export, now=when)
    assert not report.errors and report.unlinked == 0, report


@pytest.fixture
def ws(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """F1 fine, F2 left on 2 March, F3 holds an extra entitlement, F4 on leave since 5 March;
    both targets observed from their exports on 6 March."""
    monkeypatch.setenv("PROVISOR_DATABASE_URL", database_url)
    workspace = scratch_workspace(tmp_path, POLICY.format(url=f"http://127.0.0.1:{free_port()}/v2"))
    workspace.config.lifecycle.rescind_window_days = 0  # the targets' own grace, alone
    hired = datetime(2026, 1, 5, tzinfo=UTC)
    record(
        workspace,
        *(
            LifecycleEvent(
                i,
                EventKind.HIRE,
                hired,
                hired,
                {"email": f"{i.lower()}@example.com", "department": "Finance"},
            )
            for i in ("F1", "F2", "F3", "F4")
        ),
        LifecycleEvent("F2", EventKind.TERMINATE, at(2), at(2)),
        LifecycleEvent("F4", EventKind.LEAVE, at(5), at(5)),
    )
    observe(
        workspace,
        tmp_path,
        "erp",
        "f1,f1@example.com,yes,erp-user,\n"
        "f2,f2@example.com,yes,erp-user,\n"
        "f3,f3@example.com,yes,erp-user;approver,\n"
        "f4,f4@example.com,yes,erp-user,\n",
        DAY,
    )
    observe(
        workspace,
        tmp_path,
        "crm",
        "c1,f1@example.com,yes,staff,\n"
        "c2,f2@example.com,yes,staff,2\n"
        "c3,f3@example.com,yes,staff,0\n"
        "c4,f4@example.com,yes,staff,\n",
        DAY,
    )
    yield workspace
    workspace.close()


def ledger(ws: Workspace, now: datetime, **only: str) -> list[DebtItem]:
    with ws.sessions() as session:
        return debt.debt_items(ws, session, now, **only)


def test_items_with_age_channel_owner_and_sla(ws: Workspace) -> None:
    items = ledger(ws, DAY)
    found = {(i.identity, i.target, i.item): i for i in items}
    assert sorted(found) == [
        ("F2", "crm", "account"),
        ("F2", "crm", "entitlement:staff"),
        ("F2", "crm", "sessions"),
        ("F2", "erp", "account"),
        ("F2", "erp", "entitlement:erp-user"),
        ("F2", "erp", "sessions"),
        ("F3", "erp", "entitlement:approver"),
        ("F4", "crm", "account"),
        ("F4", "crm", "sessions"),
    ]
    leaver = found[("F2", "erp", "account")]
    assert leaver.since == at(2) and leaver.age_days == 4.0 and leaver.overdue
    assert (leaver.target_class, leaver.channel, leaver.owner, leaver.sla_days) == (
        "manual",
        "manual",
        "finance-ops",
        2,
    )
    assert leaver.state == "enabled" and leaver.source == "export erp.csv"
    assert leaver.work == "no removal in the journal yet; 'provisor plan' adds it"
    assert found[("F2", "crm", "sessions")].state == "2 open sessions"
    assert found[("F2", "erp", "sessions")].state == "unknown, on an enabled account"
    extra = found[("F3", "erp", "entitlement:approver")]
    assert extra.since == DAY and not extra.overdue  # unjustified since it was seen
    on_leave = found[("F4", "crm", "account")]
    assert on_leave.since == at(5) and not on_leave.overdue  # 1 day of a 3-day SLA
    assert [i.overdue for i in items] == sorted((i.overdue for i in items), reverse=True)
    assert [i.item for i in ledger(ws, DAY, identity="F3")] == ["entitlement:approver"]
    assert {i.identity for i in ledger(ws, DAY, target="crm")} == {"F2", "F4"}


def test_journal_work_and_the_grace_period(ws: Workspace, tmp_path: Path) -> None:
    with ws.sessions() as session, session.begin():
        sync_journal(ws, session, now=DAY)
    found = {(i.identity, i.target, i.item): i for i in ledger(ws, DAY)}
    assert found[("F2", "crm", "account")].work == "pending"
    assert found[("F3", "erp", "entitlement:approver")].since == DAY  # planned now
    # the leaver's accounts are disabled and stripped (the exports show it); the CRM account
    # must still go once the 7 grace days from the termination are over
    observe(ws, tmp_path, "erp", "f2,f2@example.com,no,,0\n", at(10))
    observe(ws, tmp_path, "crm", "c2,f2@example.com,no,,0\n", at(8))
    assert ledger(ws, at(8), identity="F2") == []
    (late,) = ledger(ws, at(10), identity="F2")
    assert (late.target, late.item, late.since) == ("crm", "account", at(9))
    assert late.state == "exists; deletion was due 2026-03-09"
    assert late.work.startswith("pending, not before 2026-03-09")


def test_summaries_snapshots_and_trend(ws: Workspace, tmp_path: Path) -> None:
    items = ledger(ws, DAY)
    by_owner = {g.key: g for g in summarise(items, "owner")}
    assert by_owner["sales-ops"].items == 5 and by_owner["sales-ops"].overdue == 3
    assert by_owner["finance-ops"].identities == 2 and by_owner["finance-ops"].oldest_days == 4
    assert [g.key for g in summarise(items, "class")] == ["scim", "manual"]
    with ws.sessions() as session, session.begin():
        first = debt.record_snapshot(ws, session, now=DAY, run_id=7)
    observe(ws, tmp_path, "erp", "f1,f1@example.com,yes,erp-user,\n", at(7))
    with ws.sessions() as session, session.begin():
        debt.record_snapshot(ws, session, now=at(7))
    with ws.sessions() as session:
        shots = debt.snapshots(session)
        assert [(s.items, s.reconcile_run) for s in shots] == [(9, 7), (5, None)]
        assert shots[0].id == first.id and shots[0].overdue == 6
        assert shots[0].totals["target"] == {
            "crm": {"items": 5, "overdue": 3},
            "erp": {"items": 4, "overdue": 3},
        }
        recorded = session.execute(
            select(models.AuditEvent).where(models.AuditEvent.action == "debt.recorded")
        ).scalars()
        assert len(list(recorded)) == 2


def test_cli_debt_table_groups_json_and_trend(ws: Workspace, cli: Any, tmp_path: Path) -> None:
    when = ["--workspace", str(tmp_path), "--now", DAY.isoformat()]
    table = cli(*when, "debt")
    assert table.code == 0, table.err
    assert "9 items of debt (6 overdue) across 3 identities" in table.out
    grouped = cli(*when, "debt", "--by", "target", "--json").json()
    assert [(g["key"], g["items"]) for g in grouped["groups"]] == [("crm", 5), ("erp", 4)]
    listed = cli(*when, "debt", "--identity", "F3", "--json").json()
    assert [d["item"] for d in listed["debt"]] == ["entitlement:approver"]
    assert cli(*when, "debt", "--record", "--json").code == 0
    trend = cli(*when, "debt", "--trend", "--json").json()
    assert [s["items"] for s in trend["snapshots"]] == [9]
    assert "Revocation debt over time" in cli(*when, "debt", "--trend").out
    assert cli(*when, "debt", "--by", "colour").code == 2
    assert cli(*when, "debt", "--target", "nope").code == 5
    unknown = cli(*when, "debt", "--identity", "NOBODY")
    assert unknown.code == 5 and "no identity 'NOBODY'" in unknown.err
    assert "Example:" in cli("debt", "--help").out


def test_re_enabled_leaver_is_debt_until_fixed_and_verified(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone re-enables a leaver's account in the application itself. Once observation
    shows it (here the store row a reconciliation writes), it is debt — overdue after the
    SLA — until the runner disables it again and reads that back."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    workspace = setup_workspace(tmp_path, scim_url)
    try:
        people(workspace, "E1")
        plan(workspace)
        apply(workspace)
        event(workspace, "E1", EventKind.TERMINATE)
        plan(workspace)
        apply(workspace)
        # the SCIM removals are read back; the manual target's are with people, unattested:
        # nobody has read it since the termination, so that access is unknown, not gone
        assert [(i.target, i.item, i.known) for i in ledger(workspace, NOW, identity="E1")] == [
            ("paper", "access", False)
        ]
        user = server_user(scim_url, "e1@example.com")
        assert user is not None
        httpx2.patch(
            f"{scim_url}/Users/{user['id']}",
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "active", "value": True}],
            },
        ).raise_for_status()
        with workspace.sessions() as session, session.begin():
            session.execute(
                update(models.ObservedAccount)
                .where(models.ObservedAccount.identity == "E1")
                .values(enabled=True, source="reconcile", observed_at=NOW + timedelta(days=4))
            )
        later = NOW + timedelta(days=4)
        items = [i for i in ledger(workspace, later, identity="E1") if i.known]
        assert [(i.target, i.item, i.overdue) for i in items] == [
            ("app", "account", True),
            ("app", "sessions", True),
        ]
        assert items[0].since == NOW and items[0].work.startswith("no removal in the journal")
        plan(workspace, later)
        assert ledger(workspace, later, identity="E1")[0].work == "pending"
        apply(workspace, later)  # disabled again and read back
        assert [i.target for i in ledger(workspace, later, identity="E1")] == ["paper"]
        assert server_user(scim_url, "e1@example.com")["active"] is False  # type: ignore[index]
    finally:
        workspace.close()


UNOPENABLE = """\
targets:
  - name: app
    class: scim
    owner: app-team
    connection: {url: "http://127.0.0.1:9/v2", token: {env: PROVISOR_TEST_NO_SUCH_TOKEN}}
    entitlements: [{name: staff}]
rules:
  - name: staff
    when: {attr: employment_type, equals: employee}
    grant: [{target: app, entitlements: [staff]}]
"""


def test_a_target_never_read_is_unknown_not_gone(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's connector cannot even be opened: nothing was ever read there. A leaver's
    access in it is unknown — counted, shown, and 'debt' exits 16 — never 'verified gone'."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROVISOR_TEST_NO_SUCH_TOKEN", raising=False)
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    workspace = scratch_workspace(tmp_path, UNOPENABLE)
    try:
        people(workspace, "E1", "E2")
        plan(workspace)
        assert cli("--now", NOW.isoformat(), "apply").code == 11  # names the target
        event(workspace, "E1", EventKind.TERMINATE)
        plan(workspace)
    finally:
        workspace.close()
    later = (NOW + timedelta(days=1)).isoformat()
    result = cli("--now", later, "debt", "--json")
    assert result.code == 16, result.out + result.err
    data = result.json()
    assert data["unknown"] == 1
    [item] = data["debt"]
    assert (item["identity"], item["target"], item["item"], item["known"]) == (
        "E1",
        "app",
        "access",
        False,
    )
    assert "never been read whole" in item["state"]
    table = cli("--now", later, "debt")
    assert table.code == 16 and "1 of them unknown" in table.out
    assert "No revocation debt" not in table.out
