"""Reconciliation runs and the observed store they write.

Does: open a run (or continue a full run a dead process left unfinished) and find the last
completed one; hold a run's report; read what the observed store holds for a target in one
query; store one batch of accounts as read (new, changed, or only stamped with the run),
replace who holds each changed group, and take accounts a full listing did not return out of
the store — unless that is more than half of them.
Does not: read targets, correlate or classify.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import aggregate_strings

from provisor.connectors.base import (
    AccountRecord,
)
from provisor.domain.lifecycle import utc
from provisor.domain.plan import OpKind
from provisor.domain.policy import TargetDef
from provisor.domain.readback import kept_entitlements
from provisor.engine.correlate import Match
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import SEP, chunks

BATCH = 500  # accounts per transaction, and per checkpoint
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


class Known(NamedTuple):
    id: int
    identity: str | None
    enabled: bool
    sessions: int | None
    attributes: dict[str, Any]
    entitlements: frozenset[str]
    run: int | None
    source: str


def target_def(workspace: Workspace, name: str) -> TargetDef:
    target = workspace.compiled.targets.get(name)
    if target is None:
        names = ", ".join(workspace.compiled.targets) or "none"
        raise NotFoundError(f"no target {name!r} in the policy; targets: {names}")
    return target


def known_accounts(session: Session, target: str) -> dict[str, Known]:
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
        r[1]: Known(
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


def observed_attributes(record: AccountRecord) -> dict[str, Any]:
    """An account record as the observed store keeps it (the runner's read-back shape)."""
    return {
        "user_name": record.user_name,
        "external_id": record.external_id,
        "mapped": dict(record.attributes),
    }


def open_run(
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


def last_completed(session: Session, target: str, mode: str | None = None) -> Any:
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


def counts(report: ReconcileReport) -> dict[str, Any]:
    return {
        "read": report.read,
        "skipped": report.skipped,
        "new": report.new,
        "changed": report.changed,
        "cases_opened": report.cases_opened,
    } | ({"proof": report.proof} if report.proof else {})


def write_batch(
    session: Session,
    run: models.ReconcileRun,
    target: str,
    batch: Sequence[tuple[AccountRecord, Match]],
    known: dict[str, Known],
    now: datetime,
    report: ReconcileReport,
) -> None:
    """Store one batch of accounts as read, stamped with the run (caller's transaction)."""
    source = f"reconcile run {run.id}"
    stamp = {"observed_at": now, "source": source, "reconcile_run": run.id}
    stamps: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    new_rows: list[dict[str, Any]] = []
    ents_for: dict[str, frozenset[str]] = {}
    for record, match in batch:
        attrs = observed_attributes(record)
        seen = known.get(record.account)
        if seen is not None and not record.entitlements_shown:
            record = replace(record, entitlements=kept_entitlements(record, seen.entitlements))
        values = {
            "identity": match.identity,
            "enabled": record.enabled,
            "attributes": attrs,
            "sessions": record.sessions,
        }
        if seen is None:
            new_rows.append({"target": target, "account": record.account, **values, **stamp})
            ents_for[record.account] = record.entitlements
            continue
        if _differs(seen, record, match, attrs):
            changes.append({"id": seen.id, **values, **stamp})
            if seen.entitlements != record.entitlements:
                ents_for[record.account] = record.entitlements
        else:
            stamps.append({"id": seen.id, **stamp})
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
        _insert_new(session, target, new_rows, ents_for, known, run.id, source)
    for rows in (changes, stamps):
        if rows:
            session.execute(update(models.ObservedAccount), rows)
    if ents_for:
        _replace_entitlements(session, ents_for, known, now)
    report.new += len(new_rows)
    report.changed += len(changes)


def _differs(seen: Known, record: AccountRecord, match: Match, attrs: dict[str, Any]) -> bool:
    return (
        seen.identity != match.identity
        or seen.enabled != record.enabled
        or seen.sessions != record.sessions
        or seen.attributes != attrs
        or seen.entitlements != record.entitlements
    )


def _insert_new(
    session: Session,
    target: str,
    new_rows: list[dict[str, Any]],
    ents_for: dict[str, frozenset[str]],
    known: dict[str, Known],
    run_id: int,
    source: str,
) -> None:
    oa = models.ObservedAccount
    session.execute(insert(oa), new_rows)
    ids: dict[str, int] = {
        account: account_id
        for account, account_id in session.execute(
            select(oa.account, oa.id).where(
                oa.target == target, oa.account.in_([r["account"] for r in new_rows])
            )
        )
    }
    for row in new_rows:
        account = row["account"]
        known[account] = Known(
            ids[account],
            row["identity"],
            row["enabled"],
            row["sessions"],
            row["attributes"],
            ents_for[account],
            run_id,
            source,
        )


def _replace_entitlements(
    session: Session, ents_for: dict[str, frozenset[str]], known: dict[str, Known], now: datetime
) -> None:
    oe = models.ObservedEntitlement
    account_ids = [known[a].id for a in ents_for]
    session.execute(delete(oe).where(oe.account_id.in_(account_ids)))
    grants = [
        {"account_id": known[a].id, "entitlement": e, "observed_at": now}
        for a, names in ents_for.items()
        for e in sorted(names)
    ]
    if grants:
        session.execute(insert(oe), grants)


def apply_memberships(
    session: Session,
    target: str,
    changed: dict[str, frozenset[str]],
    known: dict[str, Known],
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


def missing_accounts(
    session: Session,
    run: models.ReconcileRun,
    target: str,
    listed: set[str],
    accept_gone: bool,
) -> tuple[list[tuple[int, str]], str | None]:
    """The stored accounts a full listing did not return (not those an export, an
    attestation or a read-back during the run put there); or none, with why, when that is
    more than half of them and ``accept_gone`` was not given."""
    oa = models.ObservedAccount
    gone: list[tuple[int, str]] = []
    stored = 0
    for i, a, source, seen_at in session.execute(
        select(oa.id, oa.account, oa.source, oa.observed_at).where(oa.target == target)
    ):
        stored += 1
        if a in listed or source.startswith("export") or source == "attestation":
            continue
        if source == "read-back" and utc(seen_at) >= utc(run.started_at):
            continue  # written by an apply while this run was listing
        gone.append((i, a))
    if not accept_gone and len(gone) > GONE_GUARD_MIN and len(gone) > stored / 2:
        return [], (
            f"the listing returned {len(listed)} accounts but {len(gone)} of the "
            f"{stored} stored ones are missing from it: not taken as gone (check the "
            "connector's scope and credentials; 'provisor reconcile --accept-gone' "
            "accepts it)"
        )
    return gone, None


def remove_gone(
    session: Session,
    target: str,
    run_id: int,
    gone: list[tuple[int, str]],
    now: datetime,
    report: ReconcileReport,
) -> None:
    """Take accounts gone from the target out of the store (audited)."""
    if not gone:
        return
    oa, oe = models.ObservedAccount, models.ObservedEntitlement
    for part in chunks([i for i, _ in gone]):
        session.execute(delete(oe).where(oe.account_id.in_(part)))
        session.execute(delete(oa).where(oa.id.in_(part)))
    report.gone = len(gone)
    data = {"run": run_id, "accounts": len(gone), "first": sorted(a for _, a in gone)[:100]}
    audit.append(session, [audit.Entry("observed.gone", target, data)], at=now)


def list_runs(
    session: Session,
    *,
    target: str | None = None,
    targets: Sequence[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Reconciliation runs, newest first (of one target, or of ``targets`` when given)."""
    query = select(models.ReconcileRun).order_by(models.ReconcileRun.id.desc())
    if target:
        query = query.where(models.ReconcileRun.target == target)
    if targets is not None:
        query = query.where(models.ReconcileRun.target.in_(list(targets)))

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return [
        {
            "id": run.id,
            "target": run.target,
            "mode": run.mode,
            "status": run.status,
            "since": when(run.since),
            "started_at": when(run.started_at),
            "finished_at": when(run.finished_at),
            "counts": run.counts,
            "error": run.error,
        }
        for run in session.execute(query.limit(limit).offset(offset)).scalars()
    ]
