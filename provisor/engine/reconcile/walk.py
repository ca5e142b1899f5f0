"""Walking a target's listing into the store, and proving a change listing.

Does: correlate and store the accounts a listing returns, batch by batch, each batch with its
checkpoint and the correlation cases it opens; say whether a connector can list what changed;
judge an incremental listing by its canaries — the accounts and memberships Provisor itself
changed in the window, which the listing must show.
Does not: decide what the accounts mean (classification and remediation do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.connectors.base import (
    AccountRecord,
    Connector,
)
from provisor.domain.plan import OpKind
from provisor.domain.policy import TargetDef
from provisor.engine import readpaths
from provisor.engine.correlate import Correlator, Match, open_case
from provisor.engine.reconcile.runs import CANARY_KINDS, Known, ReconcileReport, counts, write_batch
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import models


@dataclass
class _Walk:
    """One listing being stored: batches of accounts with their correlation, the cases to
    open, and the checkpoint written with each batch."""

    workspace: Workspace
    run_id: int
    target: TargetDef
    known: dict[str, Known]
    now: datetime
    report: ReconcileReport
    correlator: Correlator
    done: int
    last: str | None
    batch: list[tuple[AccountRecord, Match]] = field(default_factory=list)
    cases: list[tuple[AccountRecord, Match]] = field(default_factory=list)

    def take(self, record: AccountRecord, resumed_run: bool) -> None:
        previous = self.known.get(record.account)
        if resumed_run and previous is not None and previous.run == self.run_id:
            # stored by the interrupted attempt: compared again (it may have changed since),
            # written only where it did
            self.report.skipped += 1
        else:
            self.report.read += 1
            self.done += 1
        match = self.correlator.correlate(
            record.account,
            record.user_name,
            record.external_id,
            record.attributes,
            previous.identity if previous else None,
        )
        if match.case_reason is not None:
            self.cases.append((record, match))
            match = Match(match.identity, match.how, open_case=-1)
        self.batch.append((record, match))

    def flush(self) -> None:
        report, name = self.report, self.target.name
        with self.workspace.sessions() as session, session.begin():
            row = session.get(models.ReconcileRun, self.run_id)
            assert row is not None
            for record, match in self.cases:
                if record.account not in self.correlator.waiting:
                    user = record.user_name
                    case = open_case(session, name, record.account, user, match, self.now)
                    self.correlator.waiting[record.account] = case.id
                    report.cases_opened += 1
            write_batch(session, row, name, self.batch, self.known, self.now, report)
            if self.batch:
                self.last = self.batch[-1][0].account
            row.checkpoint = {"done": self.done, "last": self.last}
            row.counts = counts(report)
            data = {"run": self.run_id, "done": self.done, "last": self.last, **row.counts}
            audit.append(session, [audit.Entry("reconcile.progress", name, data)], at=self.now)
        self.batch, self.cases = [], []


def walk(
    workspace: Workspace,
    run: models.ReconcileRun,
    target: TargetDef,
    records: Iterator[AccountRecord],
    known: dict[str, Known],
    now: datetime,
    report: ReconcileReport,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> set[str]:
    """Correlate and store accounts batch by batch, checkpointing each batch; the accounts
    the listing returned."""
    with workspace.sessions() as session:
        correlator = Correlator.load(session, target)
    checkpoint = dict(run.checkpoint or {})
    done = int(checkpoint.get("done", 0)) if report.resumed else 0
    last = checkpoint.get("last")
    state = _Walk(workspace, run.id, target, known, now, report, correlator, done, last)
    seen: set[str] = set()
    for record in records:
        if record.account in seen:
            continue  # listed twice (a page boundary moved while listing)
        seen.add(record.account)
        if len(record.account) > 512:
            report.errors.append(f"{target.name}: account id longer than 512 characters skipped")
            continue
        state.take(record, report.resumed)
        if len(state.batch) >= batch_size:
            state.flush()
            if progress is not None:
                progress(state.done)
    if state.batch or state.cases:
        state.flush()
    if progress is not None:
        progress(state.done)
    return seen


def incremental(connector: Connector) -> bool:
    return callable(getattr(connector, "list_changed", None)) and callable(
        getattr(connector, "changed_memberships", None)
    )


def canaries_of(session: Session, target: str, since: datetime, until: datetime) -> set[str]:
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


def membership_canaries(
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


def prove(
    workspace: Workspace,
    report: ReconcileReport,
    target: str,
    since: datetime,
    started: datetime,
    listed: set[str],
    groups: set[str],
) -> str | None:
    """Judge an incremental listing by its canaries (``canaries_of``, and the memberships of
    ``membership_canaries``, shown by the account or its group among ``groups`` changed);
    sets ``report.proof``. Returns why the run cannot be trusted (it is then read in full)."""
    with workspace.sessions() as session:
        canaries = canaries_of(session, target, since, started)
        members = membership_canaries(session, target, since, started)
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
