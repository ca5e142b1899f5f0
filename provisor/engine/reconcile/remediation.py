"""Remediation: what a reconciliation does about each finding, per the target's policy.

Does: report every finding with its mark; where the target's remediation is ``auto``, plan the
fix in the journal (orphans' removals directly, through the removal guard like any plan
batch; identities through the planner, putting their parked removals back in line); where it
is ``ticket``, open a work item for the owner; cancel orphans' removals and owners' work items
the observation shows are no longer needed.
Does not: classify (``provisor.engine.assess``) or execute anything.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisor.domain.classify import orphan_key, orphan_removal
from provisor.domain.desired import DesiredAccess
from provisor.domain.lifecycle import ORPHAN_PREFIX, IdentityState
from provisor.domain.plan import OPEN_STATUSES, REMOVAL_KINDS, PlannedOperation, plan_identity
from provisor.domain.policy import RemedyMode, TargetDef
from provisor.engine import removal_guard
from provisor.engine.assess import Finding
from provisor.engine.marks import HOLDING_MARKS, active_marks
from provisor.engine.planner import sync_journal
from provisor.engine.reconcile.runs import ReconcileReport
from provisor.engine.tasks import (
    cancel_operations,
    confirm_from_observed,
    instructions,
    open_for,
    requeue_operations,
)
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import chunks

# journal statuses that already stand for a fix in hand
IN_HAND = OPEN_STATUSES


def _in_hand(session: Session, op: PlannedOperation) -> bool:
    """The same work (same identity, target, kind and entitlement) is already in the journal."""
    return (
        session.execute(
            select(models.Operation.id).where(
                models.Operation.identity == op.identity,
                models.Operation.target == op.target,
                models.Operation.kind == op.kind.value,
                (models.Operation.entitlement == op.entitlement)
                if op.entitlement is not None
                else models.Operation.entitlement.is_(None),
                models.Operation.status.in_(IN_HAND),
            )
        ).first()
        is not None
    )


def add_guarded(
    workspace: Workspace, session: Session, ops: Sequence[PlannedOperation], now: datetime
) -> list[models.Operation]:
    """Journal rows for the removals reconciliation decided (orphans), through the removal
    guard like any plan batch: too many at once are written ``held`` under a hold."""
    fresh = [op for op in ops if not _in_hand(session, op)]
    hold, _ = removal_guard.check(
        session,
        workspace.config,
        workspace.compiled.targets,
        fresh,
        policy_change=None,
        now=now,
        origin="reconciliation",
    )
    if hold is None:
        return add_ops(session, fresh, "pending", now)
    audit.append(session, [removal_guard.created_entry(hold)], at=now)
    return add_ops(session, fresh, "held", now, hold)


def add_ops(
    session: Session,
    ops: Sequence[PlannedOperation],
    status: str,
    now: datetime,
    hold: models.Hold | None = None,
) -> list[models.Operation]:
    """Journal rows for ``ops`` unless the same work (same account) is already in hand."""
    added: list[models.Operation] = []
    entries: list[audit.Entry] = []
    for op in ops:
        if _in_hand(session, op):
            continue
        row = models.Operation(
            key=uuid.uuid4().hex,
            identity=op.identity,
            target=op.target,
            account=op.account,
            kind=op.kind.value,
            entitlement=op.entitlement,
            step=op.step,
            reason=op.reason,
            status=status,
            not_before=op.not_before,
            created_at=now,
            updated_at=now,
            hold_id=hold.id if hold is not None else None,
        )
        session.add(row)
        added.append(row)
        entries.append(
            audit.Entry(
                "operation.planned",
                op.identity,
                {
                    "key": row.key,
                    "target": op.target,
                    "account": op.account,
                    "kind": op.kind.value,
                    "entitlement": op.entitlement,
                    "reason": op.reason,
                    "status": status,
                    "by": "reconciliation",
                },
            )
        )
    session.flush()
    audit.append(session, entries, at=now)
    return added


def open_tickets(
    session: Session, target: TargetDef, ops: Sequence[models.Operation], now: datetime
) -> int:
    work = [(op, target, instructions(op, None) + " (found by reconciliation)") for op in ops]
    return len(open_for(session, work, now))


def remediate(
    workspace: Workspace,
    session: Session,
    target: TargetDef,
    findings: Sequence[Finding],
    now: datetime,
    report: ReconcileReport,
    states: dict[str, tuple[IdentityState, DesiredAccess]],
    *,
    act: bool = True,
    unreadable: bool = False,
) -> None:
    """Report the findings with their marks and, when ``act``, apply the target's
    remediation policy. When the target could not be read, nothing already in hand is
    cancelled or confirmed on the strength of this run."""
    wanted = _judge(session, target, findings, now, report, states, act)
    if not act or unreadable:
        return
    _cancel_stale_orphans(session, target, wanted.orphans, now, report)
    report.planned += len(add_guarded(workspace, session, wanted.orphan_auto, now))
    tickets = add_ops(session, wanted.tickets, "ticket", now)
    report.tickets += open_tickets(session, target, tickets, now)
    if wanted.to_plan:
        _plan(workspace, session, target, sorted(wanted.to_plan), now, report)
    source = f"reconcile run {report.run}"
    report.confirmed += confirm_from_observed(session, target.name, source, now)
    # owners' work items the observation shows no longer needed
    settled = {f.row.account for f in findings if f.verdict.classification == "ok"}
    present = {f.row.account for f in findings}
    moot = [
        op
        for op in session.execute(
            select(models.Operation).where(
                models.Operation.target == target.name, models.Operation.status == "ticket"
            )
        ).scalars()
        if op.account is None or op.account in settled or op.account not in present
    ]
    report.cancelled += cancel_operations(
        session, moot, "no longer needed: reconciliation shows it", now
    )


@dataclass
class _Wanted:
    """What the findings call for: identities to plan, orphan removals, owners' tickets."""

    to_plan: set[str] = field(default_factory=set)
    orphan_auto: list[PlannedOperation] = field(default_factory=list)
    tickets: list[PlannedOperation] = field(default_factory=list)
    orphans: set[str] = field(default_factory=set)


def _judge(
    session: Session,
    target: TargetDef,
    findings: Sequence[Finding],
    now: datetime,
    report: ReconcileReport,
    states: dict[str, tuple[IdentityState, DesiredAccess]],
    act: bool,
) -> _Wanted:
    """Count and report every finding (marks applied) and gather what the policy asks for."""
    marks = active_marks(session, now)
    wanted = _Wanted()
    classes: dict[str, int] = defaultdict(int)
    for finding in findings:
        r, verdict = finding.row, finding.verdict
        mark = marks.get((r.target, r.account))
        if mark is not None and mark.mark == "ignore":
            report.ignored += 1
            continue
        classes[verdict.classification] += 1
        if verdict.classification == "ok":
            continue
        mode = target.remediation.mode(verdict.classification)
        held = mark is not None and mark.mark in HOLDING_MARKS
        report.held += held
        report.findings.append(
            {
                "target": r.target,
                "account": r.account,
                "identity": r.identity,
                "user_name": r.attributes.get("user_name"),
                "class": verdict.classification,
                "detail": verdict.detail,
                "mark": mark.mark if mark is not None else None,
                "remedy": "held by mark" if held else mode.value,
            }
        )
        if not held and act:
            _want(wanted, target, finding, mode, findings, states, now)
    report.classes = dict(sorted(classes.items()))
    return wanted


def _want(
    wanted: _Wanted,
    target: TargetDef,
    finding: Finding,
    mode: RemedyMode,
    findings: Sequence[Finding],
    states: dict[str, tuple[IdentityState, DesiredAccess]],
    now: datetime,
) -> None:
    r, orphan = finding.row, finding.verdict.classification == "orphan"
    if mode is RemedyMode.AUTO:
        if orphan:
            wanted.orphans.add(orphan_key(r.account))
            wanted.orphan_auto.extend(orphan_removal(target, finding.observed, now))
        elif r.identity:
            wanted.to_plan.add(r.identity)
    elif mode is RemedyMode.TICKET:
        if orphan:
            wanted.tickets.extend(orphan_removal(target, finding.observed, now))
        elif r.identity and r.identity in states:
            state, desired = states[r.identity]
            mine = [
                f.observed
                for f in findings
                if f.row.identity == r.identity and f.row.target == r.target
            ]
            wanted.tickets.extend(
                op
                for op in plan_identity(state, desired, mine, {target.name: target})
                if op.account == r.account
            )


def _cancel_stale_orphans(
    session: Session, target: TargetDef, wanted: set[str], now: datetime, report: ReconcileReport
) -> None:
    """Orphans' removals planned before that no longer apply (linked since, marked, reported)."""
    stale = [
        row
        for row in session.execute(
            select(models.Operation).where(
                models.Operation.target == target.name,
                models.Operation.status.in_(["pending", "ticket", "held"]),
                models.Operation.identity.startswith(ORPHAN_PREFIX, autoescape=True),
            )
        ).scalars()
        if row.identity not in wanted
    ]
    report.cancelled += cancel_operations(
        session, stale, "superseded: the account is no orphan to remove", now
    )
    session.flush()
    closed = removal_guard.close_emptied(session, {row.hold_id for row in stale}, now)
    if closed:
        audit.append(session, closed, at=now)


def _plan(
    workspace: Workspace,
    session: Session,
    target: TargetDef,
    identities: list[str],
    now: datetime,
    report: ReconcileReport,
) -> None:
    """Plan the identities whose accounts need fixing, and put their parked removals back in
    line: the access is still there, so giving up on it silently would leave it in place."""
    for part in chunks(identities):
        session.execute(
            update(models.Identity)
            .where(models.Identity.external_id.in_(part))
            .values(needs_plan=True)
        )
    planned = sync_journal(workspace, session, now=now, changed_only=True)
    report.planned += planned.added
    parked = [
        row
        for part in chunks(identities)
        for row in session.execute(
            select(models.Operation).where(
                models.Operation.target == target.name,
                models.Operation.status == "failed",
                models.Operation.kind.in_(REMOVAL_KINDS),
                models.Operation.identity.in_(part),
            )
        ).scalars()
    ]
    report.requeued += requeue_operations(
        session, parked, f"reconcile run {report.run} still finds the access", now
    )
