"""Revocation debt: access that desired state says must not exist while observation says it does.

Does: compute the ledger of debt items — one per (identity, target, account, access item) — from
the identities' desired access (the same plan the planner makes: ``plan_identity`` over the
observed-state store) and the operation journal: an ``account`` item for an account that is
enabled while it must be disabled or gone, or still exists after its delete grace; an
``entitlement:<name>`` item for an entitlement held but not granted; a ``sessions`` item for
open sessions observed, or sessions unknown on an account still enabled when it must not be.
Each item carries its age (since the termination, the start of a leave or suspension, the first
removal the journal planned, else the observation), its channel and owner, the target's SLA and
whether it is overdue, and what the journal says about its removal (pending, failed, a manual
task done but not verified). Totals by target class, target and owner are recorded as a
snapshot (reconciliation does at every run) so a trend can be shown.
Access Provisor knows a leaver had in a target that nobody has read since the termination (the
target never read whole, unreadable, or read before it) is an ``access`` item marked unknown
(``known`` false), counted apart: it is neither debt seen nor verified gone.
Does not: change access or the journal. Debt falls only when observation changes — a read-back
after an operation, a reconciliation, an imported user export or a second person's attestation
— never because an operation was sent. Accounts linked to no identity (orphans, unlinked) are
reconciliation's report, not debt: debt is owed by an identity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import aggregate_strings

from provisor.domain.channels import channel
from provisor.domain.debt import (
    DebtItem,
    GroupBy,
    Journal,
    JournalRow,
    Seen,
    TaskRow,
    account_debt,
    days_since,
    summarise,
    totals,
)
from provisor.domain.desired import DesiredAccess, SharedAccess, desired_access
from provisor.domain.lifecycle import ORPHAN_PREFIX, IdentityState, LifecycleState, fold
from provisor.domain.plan import (
    OPEN_STATUSES,
    REMOVAL_KINDS,
    ObservedAccount,
    PlannedOperation,
    plan_identity,
)
from provisor.domain.policy import TargetDef
from provisor.engine import circuit, rescinds
from provisor.engine.identities import load_history, window
from provisor.engine.planner import needs_timeline
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import SEP, chunks, collector_paused, driver_rows

# journal rows that stand for a removal still in hand (not cancelled, not verified)


def _journal(session: Session, identity: str | None, target: str | None) -> Journal:
    op = models.Operation
    query = select(
        op.id,
        op.identity,
        op.target,
        op.account,
        op.kind,
        op.entitlement,
        op.status,
        op.created_at,
        op.not_before,
        op.last_error,
    ).where(op.status.in_(OPEN_STATUSES), op.kind.in_(REMOVAL_KINDS))
    if identity is not None:
        query = query.where(op.identity == identity)
    if target is not None:
        query = query.where(op.target == target)
    rows: dict[tuple[str, str, str, str], list[JournalRow]] = defaultdict(list)
    for r in session.execute(query.order_by(op.id)):
        rows[(r.identity, r.target, r.kind, r.entitlement or "")].append(
            JournalRow(
                r.id,
                r.account,
                r.kind,
                r.entitlement,
                r.status,
                r.created_at,
                r.not_before,
                r.last_error,
            )
        )
    task = models.Task
    tasks = {
        t.operation_id: TaskRow(t.id, t.status, t.done_by, t.done_at)
        for t in session.execute(
            select(task.operation_id, task.id, task.status, task.done_by, task.done_at).where(
                task.status.in_(["open", "done"])
            )
        )
    }
    return Journal(rows, tasks)


def _observed(
    session: Session, targets: Mapping[str, TargetDef], identities: Sequence[str]
) -> dict[str, list[Seen]]:
    """Observed accounts of ``identities`` in ``targets``, with their entitlements."""
    oa = models.ObservedAccount
    query = select(
        oa.id,
        oa.target,
        oa.account,
        oa.identity,
        oa.enabled,
        oa.sessions,
        oa.observed_at,
        oa.source,
    )
    rows: list[Any] = []
    for part in chunks(sorted(identities)):
        found_part = session.execute(query.where(oa.identity.in_(part)))
        # filtered here: a target list in the query would steer it away from the identity index
        rows.extend(r for r in found_part if r.target in targets)
    held: dict[int, set[str]] = defaultdict(set)
    oe = models.ObservedEntitlement
    for part in chunks([r.id for r in rows]):
        for account_id, name in session.execute(
            select(oe.account_id, oe.entitlement).where(oe.account_id.in_(part))
        ):
            held[account_id].add(name)
    found: dict[str, list[Seen]] = defaultdict(list)
    for r in rows:
        found[r.identity].append(
            Seen(
                ObservedAccount(
                    target=r.target,
                    account=r.account,
                    identity=r.identity,
                    enabled=r.enabled,
                    entitlements=frozenset(held.get(r.id, ())),
                    observed_at=r.observed_at,
                    sessions=r.sessions,
                ),
                r.source,
            )
        )
    return found


def _suspects(
    session: Session, targets: Mapping[str, TargetDef], desired: Mapping[str, DesiredAccess]
) -> list[str]:
    """Identities with at least one observed account the plan may want to take something
    from; everyone else's accounts hold only what they should. One pass over the whole store,
    each account with its entitlements joined into one string by the database."""
    oa, oe = models.ObservedAccount, models.ObservedEntitlement
    query = (
        select(oa.identity, oa.target, oa.enabled, aggregate_strings(oe.entitlement, SEP))
        .select_from(oa)
        .outerjoin(oe, oe.account_id == oa.id)
        .where(oa.identity.is_not(None))
        .group_by(oa.id)
    )
    suspects: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for linked, where, enabled, joined in driver_rows(session, query):
        who = str(linked)
        wanted = desired.get(who)
        if wanted is None or who in suspects or where not in targets:
            continue
        access = wanted.targets.get(where)
        if (
            access is None
            or (enabled and not access.enabled)
            or (joined and not access.entitlements.keys() >= set(joined.split(SEP)))
            or (who, where) in seen  # a second account in the target
        ):
            suspects.add(who)
        seen.add((who, where))
    return sorted(suspects)


def _states(
    workspace: Workspace, session: Session, ids: Sequence[str] | None, now: datetime
) -> dict[str, tuple[IdentityState, datetime | None]]:
    """Each identity's current state, and since when it is on leave or suspended."""
    ident = models.Identity
    columns = select(
        ident.external_id,
        ident.state,
        ident.attributes,
        ident.employment_start,
        ident.terminated_at,
        ident.state_since,
        ident.next_change_at,
    )
    rows = []
    if ids is None:
        rows = list(session.execute(columns))
    else:
        for part in chunks(sorted(ids)):
            rows.extend(session.execute(columns.where(ident.external_id.in_(part))))
    detailed = needs_timeline(workspace, session, [r.external_id for r in rows], now)
    history = load_history(session, detailed) if detailed else {}
    found: dict[str, tuple[IdentityState, datetime | None]] = {}
    for r in rows:
        if r.external_id in history:
            state = fold(
                r.external_id,
                history[r.external_id],
                as_of=now,
                rescind_window=window(workspace.config),
            )
        else:
            state = IdentityState(
                identity=r.external_id,
                state=LifecycleState(r.state) if r.state else None,
                attributes=r.attributes or {},
                employment_start=r.employment_start,
                terminated_at=r.terminated_at,
                state_since=r.state_since,
                next_change=r.next_change_at,
                timeline=(),
                as_of=now,
                known_at=None,
            )
        paused = state.state in (LifecycleState.LEAVE, LifecycleState.SUSPENDED)
        found[r.external_id] = (state, state.state_since if paused else None)
    return found


def debt_items(
    workspace: Workspace,
    session: Session,
    now: datetime,
    *,
    identity: str | None = None,
    target: str | None = None,
) -> list[DebtItem]:
    """Every debt item (of one identity or target when named): overdue first, oldest first."""
    # Desired access for the whole population stays in memory until the end, so the cyclic
    # collector would walk it again and again to free nothing: paused, as imports do.
    with collector_paused():
        return _debt_items(workspace, session, now, identity, target)


@dataclass
class Ledger:
    """The debt items of one query, with the counts every presentation shows."""

    items: list[DebtItem]
    # targets whose circuit is open: their debt cannot fall until they answer again
    unavailable: dict[str, circuit.Outage] = field(default_factory=dict)

    @property
    def overdue(self) -> int:
        return sum(1 for i in self.items if i.overdue)

    @property
    def unknown(self) -> int:
        """Items whose access nobody has read since the termination."""
        return sum(1 for i in self.items if not i.known)

    @property
    def identities(self) -> int:
        return len({i.identity for i in self.items})

    def as_dict(self, by: GroupBy | None = None) -> dict[str, Any]:
        counts = {
            "items": len(self.items),
            "overdue": self.overdue,
            "unknown": self.unknown,
            "unavailable": [u.as_dict() for _, u in sorted(self.unavailable.items())],
        }
        if by is not None:
            groups = [g.as_dict() for g in summarise(self.items, by)]
            return {"by": by, **counts, "groups": groups}
        return {**counts, "identities": self.identities, "debt": [i.as_dict() for i in self.items]}


def ledger(
    workspace: Workspace,
    now: datetime,
    *,
    identity: str | None = None,
    target: str | None = None,
    record: bool = False,
) -> Ledger:
    """The debt now, of one identity or target when named (``NotFoundError`` for a name the
    workspace does not know); ``record`` also records the totals as a snapshot first."""
    if record:
        with workspace.sessions() as session, session.begin():
            record_snapshot(workspace, session, now=now)
    if target is not None and target not in workspace.compiled.targets:
        names = ", ".join(workspace.compiled.targets)
        raise NotFoundError(f"no target {target!r} in the policy; targets: {names}")
    with workspace.sessions() as session:
        if identity is not None and not identity.startswith(ORPHAN_PREFIX):
            known = session.execute(
                select(models.Identity.id).where(models.Identity.external_id == identity)
            ).first()
            if known is None:
                raise NotFoundError(f"no identity {identity!r}; see 'provisor identities'")
        items = debt_items(workspace, session, now, identity=identity, target=target)
        down = circuit.unavailable(session, [target] if target else workspace.compiled.targets)
    return Ledger(
        [
            i if i.target not in down else replace(i, work=f"{i.work}; {down[i.target].says()}")
            for i in items
        ],
        down,
    )


def _debt_items(
    workspace: Workspace,
    session: Session,
    now: datetime,
    identity: str | None,
    target: str | None,
) -> list[DebtItem]:
    compiled = workspace.compiled
    targets = dict(compiled.targets)
    if target is not None:
        targets = {target: targets[target]} if target in targets else {}
    states = _states(workspace, session, None if identity is None else [identity], now)
    shared: SharedAccess = {}
    held = rescinds.held_for(workspace, session, {who: s for who, (s, _) in states.items()})
    desired = {
        who: desired_access(compiled, state, shared, held.get(who))
        for who, (state, _) in states.items()
    }
    suspects = [identity] if identity is not None else _suspects(session, targets, desired)
    observed = _observed(session, targets, suspects)
    journal = _journal(session, identity, target)
    items: list[DebtItem] = []
    for who, seen in observed.items():
        if who not in states:
            continue  # linked to an identity id that does not exist: reconciliation's case
        state, leave_started = states[who]
        planned = plan_identity(state, desired[who], [s.account for s in seen], targets)
        by_account: dict[tuple[str, str], list[PlannedOperation]] = defaultdict(list)
        for op in planned:
            if op.account is not None and op.kind.value in REMOVAL_KINDS:
                by_account[(op.target, op.account)].append(op)
        for entry in seen:
            ops = by_account.get((entry.account.target, entry.account.account))
            if ops:
                target_def = targets[entry.account.target]
                items.extend(
                    account_debt(state, leave_started, target_def, entry, ops, journal, now)
                )
    owed = {(i.identity, i.target) for i in items}
    items.extend(
        i
        for i in _unknown(session, targets, states, now, identity)
        if (i.identity, i.target) not in owed
    )
    items.sort(key=lambda i: (not i.overdue, i.since, i.identity, i.target, i.item))
    return items


def _last_reads(session: Session, targets: Mapping[str, TargetDef]) -> dict[str, datetime]:
    """When each target was last read whole: a full or export reconciliation that completed,
    or (manual targets) an imported user export. Incremental runs do not count: a change
    listing shows what changed, not that everything else is gone."""
    run = models.ReconcileRun
    found: dict[str, datetime] = {}
    query = (
        select(run.target, func.max(run.finished_at))
        .where(run.status == "completed", run.mode.in_(("full", "export")))
        .group_by(run.target)
    )
    for name, finished in session.execute(query):
        if name in targets and finished is not None:
            found[name] = finished
    event = models.AuditEvent
    imports = (
        select(event.subject, func.max(event.at))
        .where(event.action == "observed.imported")
        .group_by(event.subject)
    )
    for name, at in session.execute(imports):
        if name in targets and at is not None and (name not in found or at > found[name]):
            found[name] = at
    return found


def _blind_membership(session: Session, targets: Mapping[str, TargetDef]) -> dict[str, str]:
    """Targets with entitlements whose probed membership reads (``target_read_paths``) are
    none of them trusted: reads there never show an entitlement gone. With why."""
    paths: dict[str, list[models.TargetReadPath]] = defaultdict(list)
    for row in session.execute(select(models.TargetReadPath)).scalars():
        if row.path != "sessions" and not row.path.startswith("computed:"):
            paths[row.target].append(row)
    return {
        name: "; ".join(f"{r.path}: {r.detail}" for r in rows)
        for name, rows in paths.items()
        if name in targets
        and targets[name].entitlements
        and not any(r.status == "trusted" for r in rows)
    }


def _failures(session: Session, targets: Mapping[str, TargetDef]) -> dict[str, str]:
    """The error of each target's latest reconciliation, where it failed."""
    run = models.ReconcileRun
    latest = select(run.target, func.max(run.id)).group_by(run.target).subquery()
    query = select(run.target, run.error).join(latest, run.id == latest.c[1])
    return {
        name: error
        for name, error in session.execute(query.where(run.status == "failed"))
        if name in targets and error
    }


def _unknown(
    session: Session,
    targets: Mapping[str, TargetDef],
    states: Mapping[str, tuple[IdentityState, datetime | None]],
    now: datetime,
    identity: str | None,
) -> list[DebtItem]:
    """Leavers whose access in a target nobody has read since their termination: neither a
    whole read of the target (``_last_reads``), nor an observation of their account, nor a
    removal of theirs verified by read-back, came after it. Only where Provisor knows of their
    access there (an account observed, or any operation of theirs in the journal); accounts it
    never knew of are reconciliation's orphans."""
    last_read = _last_reads(session, targets)
    oldest = min(
        (last_read.get(t, datetime.min.replace(tzinfo=now.tzinfo)) for t in targets), default=None
    )
    leavers = {
        who: state.terminated_at
        for who, (state, _) in states.items()
        if state.state is LifecycleState.TERMINATED
        and state.terminated_at is not None
        and state.terminated_at <= now
        and (identity is None or who == identity)
        and (oldest is None or state.terminated_at > oldest)
    }
    if not leavers:
        return []
    seen, accounts = _last_seen(session, sorted(leavers))
    failures = _failures(session, targets)
    blind = _blind_membership(session, targets)
    items: list[DebtItem] = []
    for (who, where), read_at in sorted(seen.items()):
        target = targets.get(where)
        due = leavers.get(who)
        if target is None or due is None:
            continue
        whole = last_read.get(where)
        read = (whole is not None and whole >= due) or (read_at is not None and read_at >= due)
        if read and where not in blind:
            continue
        if read:
            why = f"read since the termination, but its memberships cannot be read: {blind[where]}"
        elif where in failures:
            why = f"the target cannot be read: {failures[where]}"
        elif whole is None:
            why = "the target has never been read whole (no full reconciliation or export)"
        else:
            why = f"last read whole {whole.date().isoformat()}, before the termination"
        state = f"unknown: {why}" if read else f"unknown: not read since the termination; {why}"
        held = ", ".join(sorted(accounts.get((who, where), []))) or "?"
        items.append(_unknown_item(who, target, held, due, state, read_at, now))
    return items


def _last_seen(
    session: Session, leavers: Sequence[str]
) -> tuple[dict[tuple[str, str], datetime | None], dict[tuple[str, str], list[str]]]:
    """Per (leaver, target): when the least recently read of their accounts was read, or where
    no account is stored (deleted, or never seen) when a removal was last read back; and the
    accounts stored."""
    observed: dict[tuple[str, str], datetime] = {}
    verified: dict[tuple[str, str], datetime | None] = {}
    accounts: dict[tuple[str, str], list[str]] = defaultdict(list)
    oa, op = models.ObservedAccount, models.Operation
    for part in chunks(leavers):
        for who, where, account, at in session.execute(
            select(oa.identity, oa.target, oa.account, oa.observed_at).where(oa.identity.in_(part))
        ):
            key = (str(who), str(where))
            accounts[key].append(str(account))
            observed[key] = min(at, observed.get(key, at))
        for who, where, last in session.execute(
            select(op.identity, op.target, func.max(op.verified_at))
            .where(op.identity.in_(part))
            .group_by(op.identity, op.target)
        ):
            verified[(str(who), str(where))] = last
    seen = {key: observed.get(key, verified.get(key)) for key in verified.keys() | observed.keys()}
    return seen, accounts


def _unknown_item(
    who: str,
    target: TargetDef,
    account: str,
    due: datetime,
    state: str,
    read_at: datetime | None,
    now: datetime,
) -> DebtItem:
    return DebtItem(
        identity=who,
        target=target.name,
        account=account,
        item="access",
        target_class=target.target_class.value,
        channel=channel(target),
        owner=target.owner,
        since=due,
        age_days=days_since(due, now),
        sla_days=target.sla_days,
        overdue=now > due + timedelta(days=target.sla_days),
        state=state,
        observed_at=read_at or due,
        source="none since the termination",
        work=f"'provisor reconcile --target {target.name} --full' reads it",
        known=False,
    )


def record_snapshot(
    workspace: Workspace, session: Session, *, now: datetime, run_id: int | None = None
) -> models.DebtSnapshot:
    """Compute the debt now and keep its totals (with an audit event, same transaction)."""
    items = debt_items(workspace, session, now)
    snapshot = models.DebtSnapshot(
        at=now,
        reconcile_run=run_id,
        items=len(items),
        overdue=sum(1 for i in items if i.overdue),
        totals=totals(items),
    )
    session.add(snapshot)
    session.flush()
    audit.append(
        session,
        [
            audit.Entry(
                "debt.recorded",
                "debt",
                {
                    "snapshot": snapshot.id,
                    "reconcile_run": run_id,
                    "items": snapshot.items,
                    "overdue": snapshot.overdue,
                    "totals": snapshot.totals,
                },
            )
        ],
        at=now,
    )
    return snapshot


def snapshots(
    session: Session, *, since: datetime | None = None, limit: int = 60
) -> list[models.DebtSnapshot]:
    """The newest ``limit`` snapshots (from ``since``), oldest first."""
    query = select(models.DebtSnapshot)
    if since is not None:
        query = query.where(models.DebtSnapshot.at >= since)
    query = query.order_by(models.DebtSnapshot.at.desc(), models.DebtSnapshot.id.desc())
    return list(reversed(session.execute(query.limit(limit)).scalars().all()))
