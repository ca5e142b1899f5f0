"""Reconciliation: read a target whole (or what changed), judge every account, act per policy.

Does: walk a target's accounts through its connector — every account (``full``), or, when the
connector offers ``list_changed``/``changed_memberships`` and a run has completed before, only
what changed since (``incremental``) — correlating each account to an identity
(``provisor.engine.correlate``), writing the observed-state store in batches stamped with the
run, and keeping a checkpoint (accounts done, the last one) with every batch so a run killed
part way is resumed by the next reconciliation of the target; at the end of a full run, accounts
the listing did not return are gone from the store — unless that is more than half of them,
which fails the run instead. A manual target is reconciled from an import of its own user
export. Then every account of the target is classified (``provisor.engine.assess``)
and the target's remediation policy applied per class — ``auto`` plans the fix in the operation
journal, ``report`` only reports, ``ticket`` opens a work item for the target's owner — except
where a person's mark says otherwise (protected: never touched; decommission-later: reported,
left alone until the mark expires; ignore: not reported); a target that could not be read
cancels and confirms nothing. Each run ends with the revocation debt totals recorded (a
scheduled cycle records them once, after all its targets), and every change is audited in the
transaction that makes it. Scheduled reconciliation runs targets whose ``reconcile_every`` has
elapsed, backing off after a failure.
Does not: write to targets (the runner executes what was planned), or resume inside a
connector's listing: the connector protocol has no resumable cursor, so a resumed run lists
again from the start, comparing again (and writing only where they changed) the accounts the
interrupted run already stored.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import aggregate_strings

from provisor.connectors.base import (
    AccountRecord,
    Capability,
    Connector,
    ConnectorError,
    Unsupported,
)
from provisor.domain.classify import orphan_key, orphan_removal
from provisor.domain.desired import DesiredAccess
from provisor.domain.lifecycle import ORPHAN_PREFIX, IdentityState, utc
from provisor.domain.plan import REMOVAL_KINDS, OpKind, PlannedOperation, plan_identity
from provisor.domain.policy import RemedyMode, TargetClass, TargetDef
from provisor.domain.readback import kept_entitlements
from provisor.engine import debt, readpaths
from provisor.engine.assess import Finding, classify_accounts, identity_states, load_rows
from provisor.engine.connections import open_connector
from provisor.engine.correlate import Correlator, Match, open_case
from provisor.engine.marks import HOLDING_MARKS, active_marks
from provisor.engine.observed import import_observed
from provisor.engine.planner import sync_journal
from provisor.engine.tasks import (
    cancel_operations,
    confirm_from_observed,
    instructions,
    open_for,
    requeue_operations,
)
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError, ProvisorError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import SEP, chunks

BATCH = 500  # accounts per transaction, and per checkpoint
# journal statuses that already stand for a fix in hand
IN_HAND = ("ticket", "pending", "running", "succeeded", "failed", "unverifiable")
# user-level writes whose account a change listing of their window must show
CANARY_KINDS = (OpKind.CREATE.value, OpKind.UPDATE.value, OpKind.ENABLE.value, OpKind.DISABLE.value)
GONE_GUARD_MIN = 20  # more accounts than this, and over half the target, missing: refused


@dataclass
class ReconcileReport:
    target: str
    run: int
    mode: str  # full | incremental | export
    status: str = "running"  # completed | failed
    resumed: bool = False
    read: int = 0  # accounts read from the target by this process
    skipped: int = 0  # already stored by the interrupted run this one resumed
    new: int = 0
    changed: int = 0
    gone: int = 0
    cases_opened: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    held: int = 0  # marked protected or decommission-later: reported, not remediated
    planned: int = 0  # operations added to the journal
    tickets: int = 0  # work items opened for the owner
    cancelled: int = 0
    confirmed: int = 0  # owners' work items this observation verified
    requeued: int = 0  # parked removals put back in line: the access is still there
    findings: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error: str | None = None
    # incremental runs: whether the change listing showed every account Provisor changed in
    # its window ("proven: ..."), had none to check ("unproven: ..."), or missed some
    proof: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Known(NamedTuple):
    id: int
    identity: str | None
    enabled: bool
    sessions: int | None
    attributes: dict[str, Any]
    entitlements: frozenset[str]
    run: int | None
    source: str


def _target(workspace: Workspace, name: str) -> TargetDef:
    target = workspace.compiled.targets.get(name)
    if target is None:
        names = ", ".join(workspace.compiled.targets) or "none"
        raise NotFoundError(f"no target {name!r} in the policy; targets: {names}")
    return target


def _known(session: Session, target: str) -> dict[str, _Known]:
    """Every observed account of ``target`` with its entitlements, in one query."""
    oa, oe = models.ObservedAccount, models.ObservedEntitlement
    query = (
        select(
            oa.id,
            oa.account,
            oa.identity,
            oa.enabled,
            oa.sessions,
            oa.attributes,
            oa.reconcile_run,
            oa.source,
            aggregate_strings(oe.entitlement, SEP),
        )
        .select_from(oa)
        .outerjoin(oe, oe.account_id == oa.id)
        .where(oa.target == target)
        .group_by(oa.id)
    )
    return {
        r[1]: _Known(
            r[0],
            r[2],
            r[3],
            r[4],
            r[5] or {},
            frozenset(r[8].split(SEP)) if r[8] else frozenset(),
            r[6],
            r[7],
        )
        for r in session.execute(query)
    }


def _attributes(record: AccountRecord) -> dict[str, Any]:
    """An account record as the observed store keeps it (the runner's read-back shape)."""
    return {
        "user_name": record.user_name,
        "external_id": record.external_id,
        "mapped": dict(record.attributes),
    }


def _open_run(
    session: Session, target: str, mode: str, since: datetime | None, now: datetime
) -> tuple[models.ReconcileRun, bool]:
    """The run to continue (a full run a dead process left unfinished), or a new one."""
    run = None
    if mode == "full":
        run = session.execute(
            select(models.ReconcileRun)
            .where(
                models.ReconcileRun.target == target,
                models.ReconcileRun.mode == "full",
                models.ReconcileRun.status.in_(["running", "failed"]),
            )
            .order_by(models.ReconcileRun.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    if run is not None:
        run.status, run.error = "running", None
        audit.append(
            session,
            [
                audit.Entry(
                    "reconcile.resumed",
                    target,
                    {"run": run.id, "checkpoint": run.checkpoint, "counts": run.counts},
                )
            ],
            at=now,
        )
        return run, True
    run = models.ReconcileRun(
        target=target, mode=mode, status="running", since=since, started_at=now, checkpoint={}
    )
    session.add(run)
    session.flush()
    audit.append(
        session,
        [
            audit.Entry(
                "reconcile.started",
                target,
                {"run": run.id, "mode": mode, "since": since.isoformat() if since else None},
            )
        ],
        at=now,
    )
    return run, False


def _last_completed(session: Session, target: str, mode: str | None = None) -> Any:
    """The newest completed run that read the target itself (an imported export does not
    say what changed in the target since)."""
    query = select(models.ReconcileRun).where(
        models.ReconcileRun.target == target, models.ReconcileRun.status == "completed"
    )
    if mode is not None:
        query = query.where(models.ReconcileRun.mode == mode)
    else:
        query = query.where(models.ReconcileRun.mode.in_(["full", "incremental"]))
    return session.execute(
        query.order_by(models.ReconcileRun.id.desc()).limit(1)
    ).scalar_one_or_none()


def _incremental(connector: Connector) -> bool:
    return callable(getattr(connector, "list_changed", None)) and callable(
        getattr(connector, "changed_memberships", None)
    )


def _write_batch(
    session: Session,
    run: models.ReconcileRun,
    target: str,
    batch: Sequence[tuple[AccountRecord, Match]],
    known: dict[str, _Known],
    now: datetime,
    report: ReconcileReport,
) -> None:
    """Store one batch of accounts as read, stamped with the run (caller's transaction)."""
    source = f"reconcile run {run.id}"
    stamps: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    new_rows: list[dict[str, Any]] = []
    ents_for: dict[str, frozenset[str]] = {}
    for record, match in batch:
        attrs = _attributes(record)
        seen = known.get(record.account)
        if seen is not None and not record.entitlements_shown:
            record = replace(record, entitlements=kept_entitlements(record, seen.entitlements))
        if seen is None:
            new_rows.append(
                {
                    "target": target,
                    "account": record.account,
                    "identity": match.identity,
                    "enabled": record.enabled,
                    "attributes": attrs,
                    "sessions": record.sessions,
                    "observed_at": now,
                    "source": source,
                    "reconcile_run": run.id,
                }
            )
            ents_for[record.account] = record.entitlements
            continue
        if (
            seen.identity != match.identity
            or seen.enabled != record.enabled
            or seen.sessions != record.sessions
            or seen.attributes != attrs
            or seen.entitlements != record.entitlements
        ):
            changes.append(
                {
                    "id": seen.id,
                    "identity": match.identity,
                    "enabled": record.enabled,
                    "attributes": attrs,
                    "sessions": record.sessions,
                    "observed_at": now,
                    "source": source,
                    "reconcile_run": run.id,
                }
            )
            if seen.entitlements != record.entitlements:
                ents_for[record.account] = record.entitlements
        else:
            stamps.append(
                {"id": seen.id, "observed_at": now, "source": source, "reconcile_run": run.id}
            )
        known[record.account] = seen._replace(
            identity=match.identity,
            enabled=record.enabled,
            sessions=record.sessions,
            attributes=attrs,
            entitlements=record.entitlements,
            run=run.id,
            source=source,
        )
    if new_rows:
        session.execute(insert(models.ObservedAccount), new_rows)
        ids: dict[str, int] = {
            account: account_id
            for account, account_id in session.execute(
                select(models.ObservedAccount.account, models.ObservedAccount.id).where(
                    models.ObservedAccount.target == target,
                    models.ObservedAccount.account.in_([r["account"] for r in new_rows]),
                )
            )
        }
        for row in new_rows:
            account = row["account"]
            known[account] = _Known(
                ids[account],
                row["identity"],
                row["enabled"],
                row["sessions"],
                row["attributes"],
                ents_for[account],
                run.id,
                source,
            )
    if changes:
        session.execute(update(models.ObservedAccount), changes)
    if stamps:
        session.execute(update(models.ObservedAccount), stamps)
    if ents_for:
        account_ids = [known[a].id for a in ents_for]
        session.execute(
            delete(models.ObservedEntitlement).where(
                models.ObservedEntitlement.account_id.in_(account_ids)
            )
        )
        grants = [
            {"account_id": known[a].id, "entitlement": e, "observed_at": now}
            for a, names in ents_for.items()
            for e in sorted(names)
        ]
        if grants:
            session.execute(insert(models.ObservedEntitlement), grants)
    report.new += len(new_rows)
    report.changed += len(changes)


def _walk(
    workspace: Workspace,
    run: models.ReconcileRun,
    target: TargetDef,
    records: Iterator[AccountRecord],
    known: dict[str, _Known],
    now: datetime,
    report: ReconcileReport,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> set[str]:
    """Correlate and store accounts batch by batch, checkpointing each batch; the accounts
    the listing returned."""
    with workspace.sessions() as session:
        correlator = Correlator.load(session, target)
    run_id = run.id
    checkpoint = dict(run.checkpoint or {})
    done = int(checkpoint.get("done", 0)) if report.resumed else 0
    batch: list[tuple[AccountRecord, Match]] = []
    cases: list[tuple[AccountRecord, Match]] = []
    seen: set[str] = set()

    def flush() -> None:
        nonlocal batch, cases
        with workspace.sessions() as session, session.begin():
            row = session.get(models.ReconcileRun, run_id)
            assert row is not None
            for record, match in cases:
                if record.account not in correlator.waiting:
                    case = open_case(
                        session, target.name, record.account, record.user_name, match, now
                    )
                    correlator.waiting[record.account] = case.id
                    report.cases_opened += 1
            _write_batch(session, row, target.name, batch, known, now, report)
            last = batch[-1][0].account if batch else checkpoint.get("last")
            row.checkpoint = {"done": done, "last": last}
            row.counts = _counts(report)
            audit.append(
                session,
                [
                    audit.Entry(
                        "reconcile.progress",
                        target.name,
                        {"run": run_id, "done": done, "last": last, **row.counts},
                    )
                ],
                at=now,
            )
        batch, cases = [], []

    for record in records:
        if record.account in seen:
            continue  # listed twice (a page boundary moved while listing)
        seen.add(record.account)
        if len(record.account) > 512:
            report.errors.append(f"{target.name}: account id longer than 512 characters skipped")
            continue
        previous = known.get(record.account)
        if report.resumed and previous is not None and previous.run == run_id:
            # stored by the interrupted attempt: compared again (it may have changed since),
            # written only where it did
            report.skipped += 1
        else:
            report.read += 1
            done += 1
        match = correlator.correlate(
            record.account,
            record.user_name,
            record.external_id,
            record.attributes,
            previous.identity if previous else None,
        )
        if match.case_reason is not None:
            cases.append((record, match))
            match = Match(match.identity, match.how, open_case=-1)
        batch.append((record, match))
        if len(batch) >= batch_size:
            flush()
            if progress is not None:
                progress(done)
    if batch or cases:
        flush()
    if progress is not None:
        progress(done)
    return seen


def _counts(report: ReconcileReport) -> dict[str, Any]:
    return {
        "read": report.read,
        "skipped": report.skipped,
        "new": report.new,
        "changed": report.changed,
        "cases_opened": report.cases_opened,
    } | ({"proof": report.proof} if report.proof else {})


def _canaries(session: Session, target: str, since: datetime, until: datetime) -> set[str]:
    """Accounts Provisor itself changed in ``target`` between ``since`` and ``until`` (a write
    verified by read-back: created, updated, enabled or disabled): a change listing for that
    window that leaves any of them out cannot be trusted."""
    op = models.Operation
    query = select(op.account).where(
        op.target == target,
        op.status == "verified",
        op.kind.in_(CANARY_KINDS),
        op.verified_at >= since,
        op.verified_at < until,
        op.account.is_not(None),
        # written: no note, or an adoption that stamped the account (other notes: no write)
        op.last_error.is_(None) | op.last_error.contains("stamped"),
    )
    return {str(a) for a in session.execute(query).scalars()}


def _membership_canaries(
    session: Session, target: str, since: datetime, until: datetime
) -> set[tuple[str, str]]:
    """Memberships Provisor itself added or removed in ``target`` between ``since`` and
    ``until`` (verified by read-back): the change listing must show the account, or the group
    among the groups changed."""
    op = models.Operation
    query = select(op.account, op.entitlement).where(
        op.target == target,
        op.status == "verified",
        op.kind.in_((OpKind.ADD_ENTITLEMENT.value, OpKind.REMOVE_ENTITLEMENT.value)),
        op.verified_at >= since,
        op.verified_at < until,
        op.account.is_not(None),
        op.entitlement.is_not(None),
        op.last_error.is_(None),
    )
    return {(str(a), str(e)) for a, e in session.execute(query)}


def _apply_memberships(
    session: Session,
    target: str,
    changed: dict[str, frozenset[str]],
    known: dict[str, _Known],
    now: datetime,
) -> int:
    """Replace who holds each changed group with what the target says now; accounts changed."""
    touched: set[int] = set()
    oe = models.ObservedEntitlement
    for group, holders in changed.items():
        want = {known[a].id for a in holders if a in known}
        have = {
            account_id
            for account_id in session.execute(
                select(oe.account_id)
                .join(models.ObservedAccount, models.ObservedAccount.id == oe.account_id)
                .where(models.ObservedAccount.target == target, oe.entitlement == group)
            ).scalars()
        }
        for gone in have - want:
            session.execute(delete(oe).where(oe.account_id == gone, oe.entitlement == group))
            touched.add(gone)
        if want - have:
            session.execute(
                insert(oe),
                [{"account_id": i, "entitlement": group, "observed_at": now} for i in want - have],
            )
            touched |= want - have
    return len(touched)


# --- remediation --------------------------------------------------------------------------


def _add_ops(
    session: Session,
    ops: Sequence[PlannedOperation],
    status: str,
    now: datetime,
) -> list[models.Operation]:
    """Journal rows for ``ops`` unless the same work (same account) is already in hand."""
    added: list[models.Operation] = []
    entries: list[audit.Entry] = []
    for op in ops:
        existing = session.execute(
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
        if existing is not None:
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


def _open_tickets(
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
    marks = active_marks(session, now)
    to_plan: set[str] = set()
    orphan_auto: list[PlannedOperation] = []
    ticket_ops: list[PlannedOperation] = []
    wanted_orphans: set[str] = set()
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
        if held or not act:
            continue
        if mode is RemedyMode.AUTO:
            if verdict.classification == "orphan":
                wanted_orphans.add(orphan_key(r.account))
                orphan_auto.extend(orphan_removal(target, finding.observed, now))
            elif r.identity:
                to_plan.add(r.identity)
        elif mode is RemedyMode.TICKET:
            if verdict.classification == "orphan":
                ticket_ops.extend(orphan_removal(target, finding.observed, now))
            elif r.identity and r.identity in states:
                state, desired = states[r.identity]
                mine = [
                    f.observed
                    for f in findings
                    if f.row.identity == r.identity and f.row.target == r.target
                ]
                ticket_ops.extend(
                    op
                    for op in plan_identity(state, desired, mine, {target.name: target})
                    if op.account == r.account
                )
    report.classes = dict(sorted(classes.items()))
    if not act or unreadable:
        return
    # orphans' removals planned before that no longer apply (linked since, marked, reported)
    stale = [
        row
        for row in session.execute(
            select(models.Operation).where(
                models.Operation.target == target.name,
                models.Operation.status.in_(["pending", "ticket"]),
                models.Operation.identity.startswith(ORPHAN_PREFIX, autoescape=True),
            )
        ).scalars()
        if row.identity not in wanted_orphans
    ]
    report.cancelled += cancel_operations(
        session, stale, "superseded: the account is no orphan to remove", now
    )
    report.planned += len(_add_ops(session, orphan_auto, "pending", now))
    tickets = _add_ops(session, ticket_ops, "ticket", now)
    report.tickets += _open_tickets(session, target, tickets, now)
    if to_plan:
        for part in chunks(sorted(to_plan)):
            session.execute(
                update(models.Identity)
                .where(models.Identity.external_id.in_(part))
                .values(needs_plan=True)
            )
        planned = sync_journal(workspace, session, now=now, changed_only=True)
        report.planned += planned.added
        # removals parked after their last attempt are tried again: the access is still
        # there, so giving up on it silently would leave it in place
        parked = [
            row
            for part in chunks(sorted(to_plan))
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


# --- the run ------------------------------------------------------------------------------


def _finish(
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
    with workspace.sessions() as session, session.begin():
        run = session.get(models.ReconcileRun, run_id)
        assert run is not None
        gone: list[tuple[int, str]] = []
        oa = models.ObservedAccount
        if listed is not None and unreadable is None:
            stored = 0
            for i, a, source, seen_at in session.execute(
                select(oa.id, oa.account, oa.source, oa.observed_at).where(oa.target == target.name)
            ):
                stored += 1
                if a in listed or source.startswith("export") or source == "attestation":
                    continue
                if source == "read-back" and utc(seen_at) >= utc(run.started_at):
                    continue  # written by an apply while this run was listing
                gone.append((i, a))
            if not accept_gone and len(gone) > GONE_GUARD_MIN and len(gone) > stored / 2:
                unreadable = (
                    f"the listing returned {len(listed)} accounts but {len(gone)} of the "
                    f"{stored} stored ones are missing from it: not taken as gone (check the "
                    "connector's scope and credentials; 'provisor reconcile --accept-gone' "
                    "accepts it)"
                )
                gone = []
        if gone:
            for part in chunks([i for i, _ in gone]):
                session.execute(
                    delete(models.ObservedEntitlement).where(
                        models.ObservedEntitlement.account_id.in_(part)
                    )
                )
                session.execute(delete(oa).where(oa.id.in_(part)))
            report.gone = len(gone)
            if gone:
                audit.append(
                    session,
                    [
                        audit.Entry(
                            "observed.gone",
                            target.name,
                            {
                                "run": run_id,
                                "accounts": len(gone),
                                "first": sorted(a for _, a in gone)[:100],
                            },
                        )
                    ],
                    at=now,
                )
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
        report.status = "failed" if unreadable else "completed"
        report.error = unreadable
        run.status, run.finished_at, run.error = report.status, now, unreadable
        run.counts = _counts(report) | {
            "gone": report.gone,
            "classes": report.classes,
            "planned": report.planned,
            "tickets": report.tickets,
            "ignored": report.ignored,
            "held": report.held,
        }
        audit.append(
            session,
            [
                audit.Entry(
                    "reconcile.finished",
                    target.name,
                    {"run": run_id, "mode": run.mode, "status": run.status, "error": unreadable}
                    | run.counts,
                )
            ],
            at=now,
        )
        if record_debt:
            debt.record_snapshot(workspace, session, now=now, run_id=run_id)
    return report


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
    """Reconcile one target through its connector; see the module docstring. A full listing
    missing more than half of the stored accounts (and more than ``GONE_GUARD_MIN``) fails
    the run instead of taking them as gone, unless ``accept_gone``."""
    definition = _target(workspace, target)
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
        with workspace.sessions() as session, session.begin():
            mode, since = "full", None
            last = _last_completed(session, target)
            if not full and last is not None and _incremental(connector):
                mode, since = "incremental", last.started_at - timedelta(seconds=2)
            run, resumed = _open_run(session, target, mode, since, now)
            run_id = run.id
            report = ReconcileReport(target, run_id, mode, resumed=resumed)
            if resumed:
                counts = run.counts or {}
                report.new = int(counts.get("new", 0))
                report.changed = int(counts.get("changed", 0))
                report.cases_opened = int(counts.get("cases_opened", 0))
            known = _known(session, target)
        with workspace.sessions() as session:
            loaded = session.get(models.ReconcileRun, run_id)
            assert loaded is not None
            session.expunge(loaded)
            run = loaded
        finish = partial(
            _finish,
            workspace,
            run_id,
            definition,
            now,
            report,
            remediate_now=remediate_now,
            record_debt=record_debt,
        )
        if Capability.LIST not in connector.capabilities():
            return finish(unreadable="the connector cannot list accounts")
        try:
            doubt: str | None = None
            if mode == "incremental":
                assert since is not None
                records = connector.list_changed(since)  # type: ignore[attr-defined]
            else:
                records = connector.list_accounts()
            try:
                listed = _walk(
                    workspace, run, definition, records, known, now, report, batch_size, progress
                )
            except Unsupported as exc:
                if mode != "incremental":
                    raise
                doubt, listed = f"{exc}; read in full", set()
            changed: Mapping[str, frozenset[str]] = {}
            if mode == "incremental":
                assert since is not None
                if doubt is None:
                    changed = connector.changed_memberships(since)  # type: ignore[attr-defined]
                    doubt = _prove(
                        workspace, report, target, since, run.started_at, listed, set(changed)
                    )
                if doubt is not None:
                    finish(unreadable=doubt)
                    full_report = reconcile_target(
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
                    full_report.proof = f"incremental run {run_id} not trusted: {doubt}"
                    return full_report
                if changed:
                    with workspace.sessions() as session, session.begin():
                        report.changed += _apply_memberships(
                            session, target, dict(changed), known, now
                        )
        except ConnectorError as exc:
            return finish(unreadable=str(exc))
        return finish(listed=listed if mode == "full" else None, accept_gone=accept_gone)
    finally:
        if own:
            connector.close()


def _prove(
    workspace: Workspace,
    report: ReconcileReport,
    target: str,
    since: datetime,
    started: datetime,
    listed: set[str],
    groups: set[str],
) -> str | None:
    """Judge an incremental listing by its canaries (``_canaries``, and the memberships of
    ``_membership_canaries``, shown by the account or its group among ``groups`` changed);
    sets ``report.proof``. Returns why the run cannot be trusted (it is then read in full)."""
    with workspace.sessions() as session:
        canaries = _canaries(session, target, since, started)
        members = _membership_canaries(session, target, since, started)
        passed_before = readpaths.change_filter_shown(session, target)
    window = f"since {since.isoformat(timespec='seconds')}"
    unseen = sorted(f"{e} of {a}" for a, e in members if a not in listed and e not in groups)
    if unseen:
        report.proof = f"failed: missed {len(unseen)} of {len(members)} memberships"
        return (
            f"the change listing {window} shows neither the account nor the group for "
            f"{len(unseen)} of the {len(members)} memberships Provisor changed in that window "
            f"({', '.join(unseen[:3])}): its change filters cannot be trusted here; read in full"
        )
    missed = sorted(canaries - listed)
    if missed:
        report.proof = f"failed: missed {len(missed)} of {len(canaries)}"
        return (
            f"the change listing {window} left out {len(missed)} of the {len(canaries)} "
            f"accounts Provisor changed in that window ({', '.join(missed[:3])}): its change "
            "filter cannot be trusted here; read in full"
        )
    if canaries or members:
        report.proof = f"proven: listed all {len(canaries)} accounts Provisor changed {window}" + (
            f" and showed all {len(members)} memberships it changed" if members else ""
        )
        return None
    report.proof = f"unproven: Provisor changed no account {window} to check the listing with"
    if not passed_before:
        return (
            "the change filter has never been shown to list an account Provisor changed; "
            "read in full until it has"
        )
    return None


def reconcile_export(
    workspace: Workspace, target: str, path: Path, *, now: datetime, remediate_now: bool = True
) -> tuple[ReconcileReport, list[str]]:
    """Reconcile a target from its own user export (manual targets, or any target): import
    the export (which links accounts and opens cases as a live run does), classify and
    remediate. Returns the report and the import's rejected rows."""
    definition = _target(workspace, target)
    imported = import_observed(workspace, target, path, now=now)
    with workspace.sessions() as session, session.begin():
        run, _ = _open_run(session, target, "export", None, now)
        run_id = run.id
        report = ReconcileReport(target, run_id, "export")
        report.read = imported.accounts
        report.new = imported.accounts
        report.cases_opened = imported.cases_opened
        oa = models.ObservedAccount
        session.execute(update(oa).where(oa.target == target).values(reconcile_run=run_id))
    _finish(workspace, run_id, definition, now, report, remediate_now=remediate_now)
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
            last = _last_completed(session, name)
            last_full = _last_completed(session, name, "full")
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
