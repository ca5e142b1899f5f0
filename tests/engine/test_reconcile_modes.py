"""Reconciliation's other ways of working, against a real SCIM server: incremental runs that read
only what changed, ``ticket`` remediation handed to the owner, marks that hold an account
until they expire, a manual target reconciled from its own export, and the schedule the
long-running service follows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisor.domain.lifecycle import EventKind
from provisor.engine import marks, reconcile
from provisor.engine.coverage import target_coverage
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.test_scim import make_group
from tests.engine.test_reconcile import raw_patch, raw_user
from tests.engine.test_runner import apply, event, people, plan, server_user

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    leaver_action: disable
    correlation: [email]
    remediation: {{drift: {drift}, orphan: report}}
    {every}
    connection: {{url: "{url}", timeout: 5}}
    entitlements: [{{name: staff}}, {{name: engineering}}]
  - name: ledger
    class: manual
    owner: finance-ops
    correlation: [email]
    entitlements: [{{name: viewer}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}, {{target: ledger, entitlements: [viewer]}}]
  - name: engineering
    when: {{attr: department, equals: Engineering}}
    grant: [{{target: app, entitlements: [engineering]}}]
"""


def make_ws(folder: Path, url: str, *, drift: str = "auto", every: int | None = None) -> Workspace:
    line = f"reconcile_every: {every}" if every else ""
    return scratch_workspace(folder, POLICY.format(url=url, drift=drift, every=line))


@pytest.fixture
def groups(scim_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    return make_group(scim_url, "contractors")


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, groups: str) -> Iterator[Workspace]:
    workspace = make_ws(tmp_path, scim_url)
    yield workspace
    workspace.close()


def ops(ws: Workspace, **where: Any) -> list[models.Operation]:
    with ws.sessions() as session:
        query = select(models.Operation)
        for column, value in where.items():
            query = query.where(getattr(models.Operation, column) == value)
        found = list(session.execute(query.order_by(models.Operation.id)).scalars())
        session.expunge_all()
        return found


def account_of(url: str, identity: str) -> str:
    user = server_user(url, f"{identity.lower()}@example.com")
    assert user is not None
    return str(user["id"])


def provisioned(ws: Workspace, *ids: str, now: datetime = NOW) -> None:
    people(ws, *ids, now=now)
    plan(ws, now)
    assert apply(ws, now).failed == 0


def test_incremental_run_reads_only_what_changed(ws: Workspace, scim_url: str, groups: str) -> None:
    start = datetime.now(UTC)
    provisioned(ws, "E1", "E2", "E3", "E4", "E5", "E6", now=start)
    time.sleep(3.5)  # past the full run's 2 s margin, with "since" cut to the whole second
    full = reconcile.reconcile_target(ws, "app", now=datetime.now(UTC), full=False)
    assert full.mode == "full" and full.read == 6  # the first run is always full
    time.sleep(1.1)
    provisioned(ws, "E7", now=datetime.now(UTC))  # Provisor's own write: the run's canary
    e1, e2 = account_of(scim_url, "E1"), account_of(scim_url, "E2")
    raw_patch(scim_url, f"Groups/{groups}", "add", "members", [{"value": e1}])
    raw_patch(scim_url, f"Users/{e2}", "replace", "active", False)
    later = reconcile.reconcile_target(ws, "app", now=datetime.now(UTC), full=False)
    assert later.mode == "incremental" and later.status == "completed"
    assert later.proof is not None and later.proof.startswith("proven: listed all 1 ")
    # E2's and E7's users changed, E1 only by a group's membership: not every account is
    # read again (a write the runner retried under load may have touched one more)
    assert 2 <= later.read < 7
    assert later.gone == 0  # an incremental run never concludes that unseen accounts left
    found = {f["account"]: f["detail"] for f in later.findings}
    assert "extra contractors" in found[e1]
    assert "disabled, should be enabled" in found[e2]
    with ws.sessions() as session:
        count = session.execute(
            select(models.ObservedAccount).where(models.ObservedAccount.target == "app")
        ).all()
    assert len(count) == 7
    # the change listing has now been shown to work here
    assert "changes-since" in target_coverage(ws, ws.compiled.targets["app"]).read_back


def test_ticket_mode_hands_drift_to_the_owner_until_it_is_settled(
    tmp_path: Path, scim_url: str, groups: str
) -> None:
    ws = make_ws(tmp_path, scim_url, drift="ticket")
    try:
        provisioned(ws, "E1")
        e1 = account_of(scim_url, "E1")
        raw_patch(scim_url, f"Groups/{groups}", "add", "members", [{"value": e1}])
        report = reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=1))
        assert report.tickets == 1 and report.planned == 0
        (ticket,) = ops(ws, status="ticket")
        assert (ticket.identity, ticket.kind, ticket.entitlement) == (
            "E1",
            "remove-entitlement",
            "contractors",
        )
        with ws.sessions() as session:
            task = session.execute(
                select(models.Task).where(models.Task.target == "app")
            ).scalar_one()
        assert task.owner == "app-team" and task.status == "open"
        assert "found by reconciliation" in task.instructions
        # a full plan matches the ticket instead of queueing the same fix for the runner
        assert plan(ws, NOW + timedelta(hours=2)).added == 0
        assert ops(ws, target="app", status="pending") == []
        # a second run does not open a second ticket
        assert reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=3)).tickets == 0
        # the owner fixes it in the application: the next run finds nothing and closes it
        raw_patch(scim_url, f"Groups/{groups}", "remove", f'members[value eq "{e1}"]', None)
        settled = reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=4))
        assert settled.classes == {"ok": 1} and settled.cancelled == 1
        assert ops(ws, status="ticket") == []
        with ws.sessions() as session:
            status = select(models.Task.status).where(models.Task.target == "app")
            assert session.execute(status).scalar_one() == "cancelled"
    finally:
        ws.close()


def test_a_mark_holds_an_account_against_every_plan_until_it_expires(
    ws: Workspace, scim_url: str
) -> None:
    provisioned(ws, "E1", "E2")
    e1 = account_of(scim_url, "E1")
    event(ws, "E1", EventKind.TERMINATE, NOW + timedelta(hours=1))
    plan(ws, NOW + timedelta(hours=1))
    assert [o.kind for o in ops(ws, identity="E1", status="pending")]  # the leaver is planned
    until = NOW + timedelta(days=10)
    with ws.sessions() as session, session.begin():
        marks.set_mark(
            ws,
            session,
            "app",
            e1,
            "decommission-later",
            "kept for the audit of Q2",
            by="ann",
            now=NOW + timedelta(hours=2),
            expires=until,
        )
    # marking cancels what was waiting, and no plan adds anything for the account
    assert ops(ws, identity="E1", target="app", status="pending") == []
    cancelled = ops(ws, identity="E1", target="app", status="cancelled")
    assert cancelled and all("decommission-later" in (o.last_error or "") for o in cancelled)
    assert plan(ws, NOW + timedelta(days=1)).added == 0
    held = reconcile.reconcile_target(ws, "app", now=NOW + timedelta(days=1))
    finding = next(f for f in held.findings if f["account"] == e1)
    assert finding["class"] == "terminated-active" and finding["remedy"] == "held by mark"
    assert held.planned == 0
    assert server_user(scim_url, "e1@example.com")["active"] is True  # type: ignore[index]
    # past its expiry the mark no longer applies: the next run plans and the runner disables
    after = until + timedelta(hours=1)
    freed = reconcile.reconcile_target(ws, "app", now=after)
    assert freed.held == 0 and freed.planned >= 1
    assert apply(ws, after).failed == 0
    assert server_user(scim_url, "e1@example.com")["active"] is False  # type: ignore[index]
    with ws.sessions() as session:
        listed = marks.list_marks(session)
        assert marks.mark_dict(listed[0], after)["expired"] is True


def test_manual_target_reconciles_from_its_export(ws: Workspace, tmp_path: Path) -> None:
    people(ws, "E1", "E2")
    event(ws, "E2", EventKind.TERMINATE, NOW)
    export = tmp_path / "ledger-users.csv"
    export.write_text(
        "account,email,enabled,entitlements\n"
        "u1,e1@example.com,yes,viewer\n"
        "u2,E2@Example.com ,yes,viewer\n"  # a leaver still enabled in the application
        "ghost,nobody@example.com,yes,viewer\n"
        "bad,x@example.com,maybe,\n",
        encoding="utf-8",
    )
    report, errors = reconcile.reconcile_export(ws, "ledger", export, now=NOW + timedelta(hours=1))
    assert report.mode == "export" and report.status == "completed"
    # a row that cannot be read whole is reported, and its account kept as present: it must
    # not read as removed
    assert errors == [f"{export}:5 enabled: 'maybe' is not a yes/no; bad kept as present"]
    found = {f["account"]: (f["class"], f["remedy"]) for f in report.findings}
    assert found["u2"] == ("terminated-active", "auto")
    assert found["ghost"] == ("orphan", "report")
    assert found["bad"] == ("orphan", "report")
    assert "u1" not in found  # as desired
    # the leaver's removal goes to the owner as a work item through the journal
    pending = ops(ws, identity="E2", target="ledger", status="pending")
    assert pending and {o.account for o in pending} == {"u2"}
    with pytest.raises(Exception, match="manual target"):
        reconcile.reconcile_target(ws, "ledger", now=NOW)


def test_schedule_runs_due_targets_incrementally_and_in_full_once_a_day(
    tmp_path: Path, scim_url: str, groups: str
) -> None:
    ws = make_ws(tmp_path, scim_url, every=60)
    try:
        provisioned(ws, "E1")
        first = reconcile.reconcile_due(ws, now=NOW)
        assert [(r.target, r.mode, r.status) for r in first] == [("app", "full", "completed")]
        with ws.sessions() as session:  # one debt snapshot for the cycle, with its run
            shots = session.execute(select(models.DebtSnapshot.reconcile_run)).scalars().all()
        assert shots == [first[0].run]
        assert reconcile.reconcile_due(ws, now=NOW + timedelta(minutes=30)) == []
        second = reconcile.reconcile_due(ws, now=NOW + timedelta(minutes=61))
        assert [(r.mode, r.status) for r in second] == [("incremental", "completed")]
        third = reconcile.reconcile_due(ws, now=NOW + timedelta(days=1, minutes=5))
        assert [r.mode for r in third] == ["full"]
    finally:
        ws.close()
    # an unreachable target is reported failed; the run is resumed in full next time
    broken = make_ws(tmp_path / "broken", "http://127.0.0.1:9/v2", every=5)
    try:
        (failed,) = reconcile.reconcile_due(broken, now=NOW)
        assert failed.status == "failed" and failed.error
        # tried again when reconcile_every comes round, not every cycle
        assert reconcile.reconcile_due(broken, now=NOW + timedelta(minutes=1)) == []
        (again,) = reconcile.reconcile_due(broken, now=NOW + timedelta(minutes=6))
        assert again.mode == "full" and again.resumed
    finally:
        broken.close()


def test_run_loop_reconciles_due_targets(
    tmp_path: Path, scim_url: str, groups: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_ws(tmp_path, scim_url, every=60)
    ws.close()
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    raw_user(scim_url, "stranger@example.com")
    result = cli("--now", NOW.isoformat(), "run", "--once", "--json")
    assert result.code == 0, result.err
    assert '"reconciled": {"app": "completed"}' in result.out
    with make_ws(tmp_path, scim_url, every=60).sessions() as session:
        runs = session.execute(select(models.ReconcileRun.mode)).scalars().all()
    assert runs == ["full"]
