"""Planning: desired access against observed access, written into the operation journal.

Does: for a selection of identities (one, one target, or everyone), compute desired access from
the materialised identity state and the policy, diff it with the observed-state store, and bring
the journal in line — new operations are added as pending, pending operations the plan no longer
wants are cancelled (never deleted), each change with an audit event; work already in flight,
done but awaiting verification, parked as failed or handed to the owner as a ticket is matched,
not planned again; nothing is planned for an account a person's mark holds (protected,
decommission-later) — then clear the identities' "needs plan" mark, set when each whose
access time alone will change (a move's or a leaver's grace ends, a pre-start window opens, a
rescind's give-back ends) is reviewed, and record what new leavers held (``rescinds``).
Identities and observed accounts are read in bulk through the driver (also for assessment,
``provisor.engine.assess``): a full plan or assessment reads a million accounts.
Does not: execute operations or talk to targets.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from provisor.domain.desired import DesiredAccess, Restoration, SharedAccess, desired_access
from provisor.domain.lifecycle import EventKind, IdentityState, LifecycleState, fold
from provisor.domain.plan import OPEN_STATUSES, ObservedAccount, PlannedOperation, plan_identity
from provisor.domain.policy import TargetDef
from provisor.engine import names, removal_guard, rescinds
from provisor.engine.identities import load_history, window
from provisor.engine.marks import held_accounts
from provisor.engine.tasks import cancel_for as cancel_tasks
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import (
    IdentityRow,
    accounts_query,
    chunks,
    collector_paused,
    driver_rows,
    identity_rows,
    json_reader,
    names_reader,
    time_reader,
)
from provisor.store.db import bulk_insert, one_writer

# planning is one at a time per workspace; a transaction that may plan after writing other
# things (the audit log's head) takes this first, so two never wait on each other
PLANNER = "provisor.plan"


def state_from_row(row: models.Identity | IdentityRow, now: datetime) -> IdentityState:
    """The materialised state of ``row`` as an ``IdentityState`` (without its timeline)."""
    return IdentityState(
        identity=row.external_id,
        state=LifecycleState(row.state) if row.state else None,
        attributes=row.attributes or {},
        employment_start=row.employment_start,
        terminated_at=row.terminated_at,
        state_since=row.state_since,
        next_change=row.next_change_at,
        timeline=(),
        as_of=now,
        known_at=None,
    )


def current_states(
    workspace: Workspace, session: Session, rows: Sequence[IdentityRow], now: datetime
) -> dict[str, IdentityState]:
    """Each identity's state as of ``now``: its materialised columns, or its folded history
    when it needs it (``needs_timeline``)."""
    detailed = needs_timeline(workspace, session, [r.external_id for r in rows], now)
    history = load_history(session, detailed) if detailed else {}
    rescind = window(workspace.config)
    found: dict[str, IdentityState] = {}
    for row in rows:
        events = history.get(row.external_id)
        found[row.external_id] = (
            fold(row.external_id, events, as_of=now, rescind_window=rescind)
            if events is not None
            else state_from_row(row, now)
        )
    return found


def observed_for(
    session: Session, identities: Sequence[str] | None, target: str | None = None
) -> dict[str, list[ObservedAccount]]:
    """Observed accounts linked to ``identities`` (all linked accounts when None)."""
    oa = models.ObservedAccount
    dialect = session.get_bind().dialect
    seen_at = time_reader(oa.observed_at.type, dialect)
    attributes = json_reader(oa.attributes.type, dialect)
    columns = (
        oa.target,
        oa.account,
        oa.identity,
        oa.enabled,
        oa.sessions,
        oa.attributes,
        oa.observed_at,
    )
    where: list[ColumnElement[bool]] = [oa.identity.is_not(None)]
    if target is not None:
        where.append(oa.target == target)
    parts = (
        [where]
        if identities is None
        else [[*where, oa.identity.in_(part)] for part in chunks(list(identities))]
    )
    names = names_reader()
    found: dict[str, list[ObservedAccount]] = defaultdict(list)
    for conditions in parts:
        query = accounts_query(columns, *conditions)
        for name, account, who, enabled, sessions, attrs, when, held in driver_rows(session, query):
            found[who].append(
                ObservedAccount(
                    target=name,
                    account=account,
                    identity=who,
                    enabled=bool(enabled),
                    entitlements=names[held],
                    observed_at=seen_at[when],
                    sessions=sessions,
                    attributes=attributes(attrs),
                )
            )
    return found


def _moved_since(session: Session, since: datetime, now: datetime) -> set[str]:
    """Identities with a move or conversion that took effect after ``since``."""
    e = models.IdentityEvent
    query = select(e.identity).where(
        e.kind.in_((EventKind.MOVE.value, EventKind.CONVERT.value)),
        e.status == "accepted",
        e.effective_at > since,
        e.effective_at <= now,
    )
    return set(session.execute(query.distinct()).scalars())


def needs_timeline(
    workspace: Workspace, session: Session, ids: Sequence[str], now: datetime
) -> list[str]:
    """Those of ``ids`` whose desired access needs their folded history, not only their
    materialised columns: time-bound grants of their own (their validity needs the
    timeline), a move recent enough that its grace may keep access it took away, a hire
    not started yet where accounts are made before the start (its start is known from the
    history only), a rescinded termination whose give-back may be in force, a leaver whose
    policy keeps some of their access for a while."""
    compiled = workspace.compiled
    direct = compiled.assignments.keys() | compiled.exceptions.keys()
    moved: set[str] = set()
    if compiled.longest_move_grace:
        moved = _moved_since(session, now - timedelta(days=compiled.longest_move_grace), now)
    if compiled.longest_prestart:  # a hire's start is read from the timeline, not the row
        i = models.Identity
        query = select(i.external_id).where(i.state == LifecycleState.PRE_HIRE.value)
        moved |= set(session.execute(query).scalars())
    moved |= rescinds.restoring(workspace, session, now)
    if compiled.longest_leaver_grace:  # what a leaver held is read from the timeline
        i = models.Identity
        query = select(i.external_id).where(
            i.state == LifecycleState.TERMINATED.value,
            i.terminated_at > now - timedelta(days=compiled.longest_leaver_grace),
        )
        moved |= set(session.execute(query).scalars())
    return [who for who in ids if who in direct or who in moved]


@collector_paused()
def compute_plan(
    workspace: Workspace,
    session: Session,
    *,
    now: datetime,
    identity: str | None = None,
    target: str | None = None,
    changed_only: bool = False,
    before_observed: Callable[[list[str]], None] | None = None,
    timed: dict[str, DesiredAccess] | None = None,
    naming: names.Naming | None = None,
) -> tuple[list[PlannedOperation], list[str]]:
    """Planned operations for the selection, and the identities that were planned.

    ``changed_only`` plans just the identities marked as needing it (a lifecycle change, a
    new observation) and those holding time-bound grants, which can expire with nothing else
    changing; everyone else's plan is what it was under the same policy. ``before_observed``
    is called with the identities just before their observed accounts are read; ``timed``
    gets the desired access of each identity whose access time alone will change (a move's
    grace ends, a pre-start window opens: ``DesiredAccess.review_at``); with ``naming``,
    people with access get the generated values they lack (``names.assign``), and it gets
    what that did."""
    compiled = workspace.compiled
    if target is not None and target not in compiled.targets:
        raise NotFoundError(
            f"no target {target!r} in the policy; targets: {', '.join(compiled.targets)}"
        )
    i = models.Identity
    if identity is not None:
        rows = identity_rows(session, i.external_id == identity)
    elif changed_only:
        own_grants = set(compiled.assignments) | set(compiled.exceptions)
        found = {r.external_id: r for r in identity_rows(session, i.needs_plan.is_(True))}
        for r in identity_rows(session, ids=own_grants) if own_grants else []:
            found[r.external_id] = r
        rows = list(found.values())
    else:
        rows = identity_rows(session)
    rows.sort(key=lambda r: r.external_id)
    if identity is not None and not rows:
        raise NotFoundError(f"no identity {identity!r}; see 'provisor identities'")
    ids = [r.external_id for r in rows]
    selection = [identity] if identity else (ids if changed_only else None)
    if before_observed is not None:
        before_observed(ids)
    observed = observed_for(session, selection, target)
    states = current_states(workspace, session, rows, now)
    targets = dict(compiled.targets)
    if target is not None:
        targets = {target: targets[target]}
    held = rescinds.held_for(workspace, session, states)
    shared: SharedAccess = {}
    if not compiled.policy.generated:  # each person's desired access planned, then dropped
        ops: list[PlannedOperation] = []
        for who in ids:
            state = states[who]
            desired = desired_access(compiled, state, shared, held.get(who))
            if desired.review_at is not None and timed is not None:
                timed[who] = desired
            ops.extend(plan_identity(state, desired, observed.get(who, []), targets))
        return ops, ids
    wanted = {who: desired_access(compiled, states[who], shared, held.get(who)) for who in ids}
    if timed is not None:
        timed.update((who, d) for who, d in wanted.items() if d.review_at is not None)
    return _plan_named(workspace, session, states, wanted, observed, targets, now, naming), ids


def _plan_named(
    workspace: Workspace,
    session: Session,
    states: dict[str, IdentityState],
    wanted: dict[str, DesiredAccess],
    observed: dict[str, list[ObservedAccount]],
    targets: dict[str, TargetDef],
    now: datetime,
    naming: names.Naming | None,
) -> list[PlannedOperation]:
    """The plan where the policy generates attributes: people with access lacking a value
    get one (when ``naming`` takes what that did), everyone's values join their attributes,
    and no account is made in a target named by a value a person could not be given."""
    policy = workspace.compiled.policy
    if naming is not None:
        keep = window(workspace.config)  # a leaver's names wait while a rescind may come
        made = names.assign(session, policy, states, wanted, now, keep)
        naming.entries.extend(made.entries)
        naming.unnamed.update(made.unnamed)
    unnamed = naming.unnamed if naming is not None else {}
    named = names.with_values(session, policy, states)
    ops: list[PlannedOperation] = []
    for who, desired in wanted.items():
        lacking = unnamed.get(who, {})
        planned = plan_identity(named[who], desired, observed.get(who, []), targets)
        # only what would make an account under a name is held back: removals always go
        ops.extend(
            op
            for op in planned
            if op.account is not None or targets[op.target].user_name_from not in lacking
        )
    return ops


@dataclass
class JournalSync:
    operations: list[tuple[PlannedOperation, str, int]]  # (op, "new" | "pending", journal id)
    cancelled: int
    # journal id -> why, for planned work matched by a parked (failed) row: shown with the
    # plan, since it will not run by itself
    parked: dict[int, str] = field(default_factory=dict)
    # identity -> when the first grace ends that keeps access a move took away from them
    graces: dict[str, datetime] = field(default_factory=dict)
    # identity -> what a rescind gives back, where it differs from today's policy, until when
    restored: dict[str, Restoration] = field(default_factory=dict)
    # identity -> generated attribute -> why they could not be given one (nothing is planned
    # in the targets it names)
    unnamed: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def added(self) -> int:
        return sum(1 for _, status, _ in self.operations if status == "new")

    def summary(self) -> dict[str, Any]:
        """The plan as JSON-ready data: its operations and counts, what grace keeps (until
        when), and what a rescind gives back (and where that differs from today's policy)."""
        return {
            "operations": self.as_rows(),
            "added": self.added,
            "cancelled": self.cancelled,
            "kept_by_grace": {who: t.isoformat() for who, t in sorted(self.graces.items())},
            "restored": {who: r.as_json() for who, r in sorted(self.restored.items())},
            "unnamed": dict(sorted(self.unnamed.items())),
        }

    def as_rows(self) -> list[dict[str, Any]]:
        """The planned operations as JSON-ready rows, in plan order."""
        return [
            {
                "id": journal_id,
                "journal": status,
                "identity": op.identity,
                "target": op.target,
                "step": op.step,
                "operation": op.kind.value,
                "entitlement": op.entitlement,
                "account": op.account,
                "reason": op.reason,
                "not_before": op.not_before.isoformat() if op.not_before else None,
                "parked": self.parked.get(journal_id),
            }
            for op, status, journal_id in self.operations
        ]


# Journal rows that stand for work already under way, parked, or handed to the target's owner
# as a ticket: a plan that needs the same work again matches them instead of adding a
# duplicate. Only "pending" and "ticket" ones can be cancelled.
CANCELLABLE = ("pending", "ticket", "held")


def _open_ops(
    session: Session, ids: Sequence[str], target: str | None
) -> Iterator[models.Operation]:
    for part in chunks(list(ids)):
        query = select(models.Operation).where(
            models.Operation.identity.in_(part), models.Operation.status.in_(OPEN_STATUSES)
        )
        if target is not None:
            query = query.where(models.Operation.target == target)
        yield from session.execute(query.order_by(models.Operation.id)).scalars()


def _take(rows: list[models.Operation], account: str | None) -> models.Operation | None:
    """The journal row for a planned operation on ``account``: same account first, then one
    whose account is not known yet (a create's later steps), else any for a new account."""
    for wanted in (account, None):
        for row in rows:
            if row.account == wanted:
                rows.remove(row)
                return row
    return rows.pop(0) if rows and account is None else None


@collector_paused()
def sync_journal(
    workspace: Workspace,
    session: Session,
    *,
    now: datetime,
    identity: str | None = None,
    target: str | None = None,
    changed_only: bool = False,
) -> JournalSync:
    """Compute the plan for the selection and make the journal's pending operations match it.

    With ``changed_only`` (the long-running service, between full plans) only identities that
    need it are planned; see ``compute_plan``. A new policy version always plans everyone.
    One planner at a time per workspace (any number of processes): two at once would both
    add the same new operations."""
    one_writer(session, PLANNER)
    first: list[audit.Entry] = []  # the policy's change, appended with the plan's entries
    new_policy = workspace.note_policy_version(session, first)
    if new_policy:
        changed_only = False
    open_rows: dict[tuple[str, str, str, str], list[models.Operation]] = {}
    timed: dict[str, DesiredAccess] = {}
    naming = names.Naming()
    ops, ids = compute_plan(
        workspace,
        session,
        now=now,
        identity=identity,
        target=target,
        changed_only=changed_only,
        before_observed=_journal_reader(session, target, open_rows),
        timed=timed,
        naming=naming,
    )
    held = held_accounts(session, now)
    if held:
        ops = [op for op in ops if op.account is None or (op.target, op.account) not in held]
    result: list[tuple[PlannedOperation, str, int]] = []
    parked: dict[int, str] = {}
    entries: list[audit.Entry] = [*first, *naming.entries]
    new_rows: list[tuple[PlannedOperation, str]] = []  # (op, journal key)
    for op in ops:
        existing = _take(open_rows.get(op.match_key, []), op.account)
        if existing is None:
            journal_key = uuid.uuid4().hex
            new_rows.append((op, journal_key))
            data = _op_data(op, journal_key)
            entries.append(audit.Entry("operation.planned", op.identity, data))
            continue
        result.append((op, _matched(op, existing, now), existing.id))
        if existing.status == "failed":
            parked[existing.id] = existing.last_error or "no error recorded"
    hold, leaving = removal_guard.check(
        session,
        workspace.config,
        workspace.compiled.targets,
        [op for op, _ in new_rows],
        policy_change=workspace.policy_change if new_policy else None,
        now=now,
    )
    if hold is not None:
        _mark_held(entries, hold.id, leaving)
        entries.append(removal_guard.created_entry(hold))
    added = _add_pending(session, new_rows, now, hold, leaving)
    stale_rows = _still_cancellable(
        session, [r for rows in open_rows.values() for r in rows if r.status in CANCELLABLE]
    )
    entries.extend(_cancel_stale(stale_rows, held, now))
    session.flush()
    entries.extend(removal_guard.close_emptied(session, {r.hold_id for r in stale_rows}, now))
    cancel_tasks(session, [stale.id for stale in stale_rows], now)
    result.extend((op, "new", added[journal_key]) for op, journal_key in new_rows)
    _planned(session, ids, timed)
    selected = None if identity is None and not changed_only else ids
    entries.extend(rescinds.record_held(workspace, session, selected, now))
    result.sort(key=lambda r: (r[0].identity, r[0].target, r[0].step, r[0].entitlement or ""))
    audit.append(session, entries, at=now)  # last: the audit log's head is held to the commit
    graces = {who: d.grace_until for who, d in timed.items() if d.grace_until}
    restored = {who: d.restored for who, d in timed.items() if d.restored}
    return JournalSync(result, len(stale_rows), parked, graces, restored, naming.unnamed)


def _planned(session: Session, ids: Sequence[str], timed: dict[str, DesiredAccess]) -> None:
    """The identities just planned need no plan until something changes; each whose access
    time alone will change (a move's grace ends, a pre-start window opens) is reviewed then
    (``review_at``: ``tick`` marks it for planning)."""
    i = models.Identity
    for part in chunks(ids):
        session.execute(update(i).where(i.external_id.in_(part)).values(needs_plan=False))
    for who, desired in timed.items():
        at = desired.review_at
        if at is None:
            continue
        session.execute(
            update(i)
            .where(i.external_id == who)
            .where(or_(i.review_at.is_(None), i.review_at > at))
            .values(review_at=at)
        )


def _journal_reader(
    session: Session,
    target: str | None,
    open_rows: dict[tuple[str, str, str, str], list[models.Operation]],
) -> Callable[[list[str]], None]:
    """What reads the identities' open operations into ``open_rows`` (by match key) before
    the observed store is read: a runner records an operation done and its read-back in one
    transaction, so whichever side of it the two reads fall, the work is seen either still
    open or done and observed — never neither."""

    def read(ids: list[str]) -> None:
        for row in _open_ops(session, ids, target):
            key = (row.identity, row.target, row.kind, row.entitlement or "")
            open_rows.setdefault(key, []).append(row)

    return read


def _mark_held(entries: list[audit.Entry], hold: int, leaving: Collection[str]) -> None:
    """Name the hold in the audit entries of the operations it holds (not the leavers')."""
    for entry in entries:
        planned = entry.action == "operation.planned" and isinstance(entry.data, dict)
        if planned and entry.subject not in leaving and isinstance(entry.data, dict):
            entry.data["held"] = hold


def _matched(op: PlannedOperation, existing: models.Operation, now: datetime) -> str:
    """How the journal already holds ``op``: work in hand, parked or ticketed keeps its status;
    a pending or held row takes the plan's reason and date (and stays held)."""
    if existing.status not in ("pending", "held"):  # in hand, parked or ticketed: as it is
        return existing.status
    # A grace period counted from "now" started when the removal was first planned; one
    # counted from a termination date follows that date if HR corrects it.
    not_before = op.not_before
    if op.grace_from_now and existing.not_before is not None:
        not_before = existing.not_before
    if existing.not_before != not_before or existing.reason != op.reason:
        existing.not_before, existing.reason, existing.updated_at = not_before, op.reason, now
    return existing.status


def _still_cancellable(session: Session, rows: list[models.Operation]) -> list[models.Operation]:
    """The rows, read again and locked, that are still waiting: a runner may have claimed
    one since the plan read it (it is running, maybe written already) and a cancel must never
    overwrite that. A runner claiming one after this waits for the plan's transaction."""
    op = models.Operation
    for part in chunks([r.id for r in rows]):
        query = select(op).where(op.id.in_(part)).with_for_update()
        session.execute(query.execution_options(populate_existing=True)).scalars().all()
    return [r for r in rows if r.status in CANCELLABLE]


def _cancel_stale(
    stale_rows: list[models.Operation],
    held: dict[tuple[str, str], models.AccountMark],
    now: datetime,
) -> list[audit.Entry]:
    """Cancel pending work the plan no longer wants (or a mark now holds)."""
    entries = []
    for stale in stale_rows:
        mark = held.get((stale.target, stale.account or ""))
        stale.status = "cancelled"
        stale.updated_at = now
        stale.last_error = (
            f"account marked {mark.mark}: {mark.reason}"
            if mark is not None
            else "superseded: the current plan no longer needs it"
        )
        data = {
            "key": stale.key,
            "target": stale.target,
            "kind": stale.kind,
            "entitlement": stale.entitlement,
            "why": stale.last_error,
        }
        entries.append(audit.Entry("operation.cancelled", stale.identity, data))
    return entries


def _add_pending(
    session: Session,
    new_rows: Sequence[tuple[PlannedOperation, str]],
    now: datetime,
    hold: models.Hold | None = None,
    leaving: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Add the new operations to the journal as pending (``held`` with their hold when the
    removal guard stopped the batch, but for identities ``leaving``), each under its key;
    returns the id of each key. One plain insert: a first plan of a large population adds
    hundreds of thousands, and the ORM's per-object work would cost more than the rest."""
    if not new_rows:
        return {}
    bulk_insert(
        session,
        models.Operation,
        (
            "key",
            "identity",
            "target",
            "account",
            "kind",
            "entitlement",
            "step",
            "reason",
            "status",
            "not_before",
            "attempts",
            "created_at",
            "updated_at",
            "hold_id",
        ),
        [
            (
                key,
                op.identity,
                op.target,
                op.account,
                op.kind.value,
                op.entitlement,
                op.step,
                op.reason,
                "pending" if hold is None or op.identity in leaving else "held",
                op.not_before,
                0,
                now,
                now,
                None if hold is None or op.identity in leaving else hold.id,
            )
            for op, key in new_rows
        ],
    )
    o = models.Operation
    ids: dict[str, int] = {}
    for part in chunks([key for _, key in new_rows]):
        ids.update((k, i) for k, i in session.execute(select(o.key, o.id).where(o.key.in_(part))))
    return ids


def _op_data(op: PlannedOperation, key: str) -> dict[str, Any]:
    return {
        "key": key,
        "target": op.target,
        "account": op.account,
        "kind": op.kind.value,
        "entitlement": op.entitlement,
        "reason": op.reason,
        "not_before": op.not_before.isoformat() if op.not_before else None,
    }
