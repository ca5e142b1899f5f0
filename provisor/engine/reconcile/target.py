"""Reconciling a target: one run from its listing (or its export) to remediation, and the
schedule that runs them.

Does: run one target's reconciliation (``reconcile_target``: open or resume the run, walk the
listing, prove an incremental one or read in full, finish), reconcile from an export, every
target, or the targets whose ``reconcile_every`` has come round (backing off after a failure,
in full at least every ``full_every`` hours).
Does not: store, correlate or remediate itself (``runs``, ``walk``, ``remediation`` do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisor.connectors.base import (
    Capability,
    Connector,
    ConnectorError,
    Unsupported,
)
from provisor.domain.policy import TargetClass, TargetDef
from provisor.engine import debt
from provisor.engine.assess import classify_accounts, identity_states, load_rows
from provisor.engine.connections import open_connector
from provisor.engine.observed import import_observed
from provisor.engine.planner import PLANNER
from provisor.engine.reconcile.remediation import remediate
from provisor.engine.reconcile.runs import (
    BATCH,
    Known,
    ReconcileReport,
    apply_memberships,
    counts,
    known_accounts,
    last_completed,
    missing_accounts,
    open_run,
    remove_gone,
    target_def,
)
from provisor.engine.reconcile.walk import incremental, prove, walk
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.db import one_writer


@dataclass
class _Run:
    """One reconciliation of one target under way: its run, what it reads with, and how it
    ends (``finish``)."""

    workspace: Workspace
    definition: TargetDef
    run: models.ReconcileRun
    report: ReconcileReport
    known: dict[str, Known]
    now: datetime
    remediate_now: bool
    record_debt: bool

    def finish(
        self,
        *,
        unreadable: str | None = None,
        listed: set[str] | None = None,
        accept_gone: bool = False,
    ) -> ReconcileReport:
        return finish(
            self.workspace,
            self.run.id,
            self.definition,
            self.now,
            self.report,
            remediate_now=self.remediate_now,
            unreadable=unreadable,
            listed=listed,
            accept_gone=accept_gone,
            record_debt=self.record_debt,
        )


def finish(
    workspace: Workspace,
    run_id: int,
    target: TargetDef,
    now: datetime,
    report: ReconcileReport,
    *,
    remediate_now: bool,
    unreadable: str | None = None,
    listed: set[str] | None = None,
    accept_gone: bool = False,
    record_debt: bool = True,
) -> ReconcileReport:
    """End a run: take what a full listing did not return out of the store (unless that is
    more than half of it), classify every account, remediate, and record the run's outcome."""
    with workspace.sessions() as session, session.begin():
        if remediate_now:
            one_writer(session, PLANNER)  # it may plan, after writing the audit log
        run = session.get(models.ReconcileRun, run_id)
        assert run is not None
        if listed is not None and unreadable is None:
            gone, unreadable = missing_accounts(session, run, target.name, listed, accept_gone)
            remove_gone(session, target.name, run_id, gone, now, report)
        rows = load_rows(session, [target.name])
        states = identity_states(workspace, session, {r.identity for r in rows if r.identity}, now)
        findings = classify_accounts(
            workspace,
            session,
            [target.name],
            now,
            unreadable={target.name: unreadable} if unreadable else None,
            states=states,
            rows=rows,
        )
        remediate(
            workspace,
            session,
            target,
            findings,
            now,
            report,
            states,
            act=remediate_now,
            unreadable=unreadable is not None,
        )
        _close(session, run, report, unreadable, now)
        if record_debt:
            debt.record_snapshot(workspace, session, now=now, run_id=run_id)
    return report


def _close(
    session: Session,
    run: models.ReconcileRun,
    report: ReconcileReport,
    unreadable: str | None,
    now: datetime,
) -> None:
    report.status = "failed" if unreadable else "completed"
    report.error = unreadable
    run.status, run.finished_at, run.error = report.status, now, unreadable
    run.counts = counts(report) | {
        "gone": report.gone,
        "classes": report.classes,
        "planned": report.planned,
        "tickets": report.tickets,
        "ignored": report.ignored,
        "held": report.held,
    }
    data = {"run": run.id, "mode": run.mode, "status": run.status, "error": unreadable}
    audit.append(
        session, [audit.Entry("reconcile.finished", run.target, data | run.counts)], at=now
    )


def reconcile_target(
    workspace: Workspace,
    target: str,
    *,
    now: datetime,
    full: bool = True,
    connector: Connector | None = None,
    progress: Callable[[int], None] | None = None,
    remediate_now: bool = True,
    batch_size: int = BATCH,
    accept_gone: bool = False,
    record_debt: bool = True,
) -> ReconcileReport:
    """Reconcile one target through its connector; see the package docstring. A full listing
    missing more than half of the stored accounts (and more than ``GONE_GUARD_MIN``) fails
    the run instead of taking them as gone, unless ``accept_gone``."""
    definition = target_def(workspace, target)
    if definition.target_class is TargetClass.MANUAL:
        raise ProvisorError(
            f"{target} is a manual target: reconcile it from its user export with "
            f"'provisor reconcile --target {target} --export FILE.csv'"
        )
    own = connector is None
    if connector is None:
        connector = open_connector(workspace, definition)
        assert connector is not None
    try:
        run = _begin(workspace, definition, connector, full, now, remediate_now, record_debt)
        if Capability.LIST not in connector.capabilities():
            return run.finish(unreadable="the connector cannot list accounts")
        again = partial(
            reconcile_target,
            workspace,
            target,
            now=now,
            full=True,
            connector=connector,
            progress=progress,
            remediate_now=remediate_now,
            batch_size=batch_size,
            accept_gone=accept_gone,
            record_debt=record_debt,
        )
        try:
            return _read(run, connector, batch_size, progress, accept_gone, again)
        except ConnectorError as exc:
            return run.finish(unreadable=str(exc))
    finally:
        if own:
            connector.close()


def _begin(
    workspace: Workspace,
    definition: TargetDef,
    connector: Connector,
    full: bool,
    now: datetime,
    remediate_now: bool,
    record_debt: bool,
) -> _Run:
    """Open the run: incremental when asked and possible, else full (or the full run a dead
    process left unfinished, resumed with its counts)."""
    target = definition.name
    with workspace.sessions() as session, session.begin():
        mode, since = "full", None
        last = last_completed(session, target)
        if not full and last is not None and incremental(connector):
            mode, since = "incremental", last.started_at - timedelta(seconds=2)
        run, resumed = open_run(session, target, mode, since, now)
        report = ReconcileReport(target, run.id, mode, resumed=resumed)
        if resumed:
            done = run.counts or {}
            report.new = int(done.get("new", 0))
            report.changed = int(done.get("changed", 0))
            report.cases_opened = int(done.get("cases_opened", 0))
        known = known_accounts(session, target)
        run_id = run.id
    with workspace.sessions() as session:
        loaded = session.get(models.ReconcileRun, run_id)
        assert loaded is not None
        session.expunge(loaded)
    return _Run(workspace, definition, loaded, report, known, now, remediate_now, record_debt)


def _read(
    run: _Run,
    connector: Connector,
    batch_size: int,
    progress: Callable[[int], None] | None,
    accept_gone: bool,
    read_in_full: Callable[[], ReconcileReport],
) -> ReconcileReport:
    """List the target (or what changed in it) into the store and finish the run; an
    incremental listing that cannot be trusted fails its run and the target is read in full."""
    report, since = run.report, run.run.since
    incremental_run = report.mode == "incremental"
    doubt: str | None = None
    if incremental_run:
        assert since is not None
        records = connector.list_changed(since)  # type: ignore[attr-defined]
    else:
        records = connector.list_accounts()
    args = (run.workspace, run.run, run.definition, records, run.known, run.now, report)
    try:
        listed = walk(*args, batch_size, progress)
    except Unsupported as exc:
        if not incremental_run:
            raise
        doubt, listed = f"{exc}; read in full", set()
    if not incremental_run:
        return run.finish(listed=listed, accept_gone=accept_gone)
    assert since is not None
    changed: Mapping[str, frozenset[str]] = {}
    if doubt is None:
        changed = connector.changed_memberships(since)  # type: ignore[attr-defined]
        doubt = prove(
            run.workspace, report, report.target, since, run.run.started_at, listed, set(changed)
        )
    if doubt is not None:
        run.finish(unreadable=doubt)
        full_report = read_in_full()
        full_report.proof = f"incremental run {report.run} not trusted: {doubt}"
        return full_report
    if changed:
        with run.workspace.sessions() as session, session.begin():
            held = dict(changed)
            report.changed += apply_memberships(session, report.target, held, run.known, run.now)
    return run.finish(listed=None, accept_gone=accept_gone)


def reconcile_export(
    workspace: Workspace, target: str, path: Path, *, now: datetime, remediate_now: bool = True
) -> tuple[ReconcileReport, list[str]]:
    """Reconcile a target from its own user export (manual targets, or any target): import
    the export (which links accounts and opens cases as a live run does), classify and
    remediate. Returns the report and the import's rejected rows."""
    definition = target_def(workspace, target)
    imported = import_observed(workspace, target, path, now=now)
    with workspace.sessions() as session, session.begin():
        run, _ = open_run(session, target, "export", None, now)
        run_id = run.id
        report = ReconcileReport(target, run_id, "export")
        report.read = imported.accounts
        report.new = imported.accounts
        report.cases_opened = imported.cases_opened
        oa = models.ObservedAccount
        session.execute(update(oa).where(oa.target == target).values(reconcile_run=run_id))
    finish(workspace, run_id, definition, now, report, remediate_now=remediate_now)
    return report, imported.errors


def reconcile_targets(
    workspace: Workspace,
    target: str | None,
    *,
    now: datetime,
    full: bool = True,
    remediate_now: bool = True,
    batch_size: int = BATCH,
    accept_gone: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> list[ReconcileReport]:
    """Reconcile ``target``, or every target that is not manual (those are reconciled from
    their exports). Across all targets, one whose connector cannot be opened is reported as a
    failed run and the others still run; a single named target raises instead."""
    names = [target] if target else sorted(workspace.compiled.targets)
    reports: list[ReconcileReport] = []
    for name in names:
        definition = workspace.compiled.targets.get(name)
        manual = definition is not None and definition.target_class is TargetClass.MANUAL
        if target is None and manual:
            continue
        try:
            reports.append(
                reconcile_target(
                    workspace,
                    name,
                    now=now,
                    full=full,
                    remediate_now=remediate_now,
                    batch_size=batch_size,
                    accept_gone=accept_gone,
                    progress=None if progress is None else partial(progress, name),
                )
            )
        except ProvisorError as exc:
            if target is not None:
                raise
            failed = ReconcileReport(name, 0, "full" if full else "incremental")
            failed.status, failed.error = "failed", str(exc)
            reports.append(failed)
    return reports


def reconcile_due(workspace: Workspace, *, now: datetime) -> list[ReconcileReport]:
    """Reconcile every target whose ``reconcile_every`` has passed since its last completed
    run: incrementally where the connector can, in full at least once a day. Manual targets
    are reconciled when their export is imported, never on a schedule. A target that fails
    is reported with its error; the others still run. The debt is recorded once, after all."""
    reports: list[ReconcileReport] = []
    for name, target in sorted(workspace.compiled.targets.items()):
        if target.reconcile_every is None or target.target_class is TargetClass.MANUAL:
            continue
        with workspace.sessions() as session:
            last = last_completed(session, name)
            last_full = last_completed(session, name, "full")
            unfinished = session.execute(
                select(models.ReconcileRun.id).where(
                    models.ReconcileRun.target == name,
                    models.ReconcileRun.mode == "full",
                    models.ReconcileRun.status.in_(["running", "failed"]),
                )
            ).first()
            newest = session.execute(
                select(models.ReconcileRun)
                .where(
                    models.ReconcileRun.target == name,
                    models.ReconcileRun.mode.in_(["full", "incremental"]),
                )
                .order_by(models.ReconcileRun.id.desc())
                .limit(1)
            ).scalar_one_or_none()
        every = timedelta(minutes=target.reconcile_every)
        fresh = last is not None and last.finished_at is not None and now - last.finished_at < every
        if unfinished is None and fresh:
            continue
        if (
            newest is not None
            and newest.status == "failed"
            and newest.finished_at is not None
            and now - newest.finished_at < every
        ):
            continue  # failed lately: tried again when reconcile_every comes round
        full = (
            unfinished is not None
            or last_full is None
            or now - last_full.started_at >= timedelta(hours=target.full_every)
        )
        try:
            reports.append(reconcile_target(workspace, name, now=now, full=full, record_debt=False))
        except Exception as exc:
            failed = ReconcileReport(name, 0, "full" if full else "incremental", "failed")
            failed.error = str(exc) if isinstance(exc, ProvisorError) else repr(exc)
            reports.append(failed)
    runs = [r.run for r in reports if r.run]
    if runs:
        # one debt snapshot for the cycle: each costs a pass over every observed account
        with workspace.sessions() as session, session.begin():
            debt.record_snapshot(workspace, session, now=now, run_id=max(runs))
    return reports
