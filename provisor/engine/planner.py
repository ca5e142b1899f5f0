"""Planning: desired access against observed access, written into the operation journal.

Does: for a selection of identities (one, one target, or everyone), compute desired access from
the materialised identity state and the policy, diff it with the observed-state store, and bring
the journal in line — new operations are added as pending, pending operations the plan no longer
wants are cancelled (never deleted), each change with an audit event; work already in flight,
done but awaiting verification, parked as failed or handed to the owner as a ticket is matched,
not planned again; nothing is planned for an account a person's mark holds (protected,
decommission-later) — then clear the identities' "needs plan" mark. Identities and observed
accounts are read in bulk through the driver (also for assessment, ``provisor.engine.assess``):
a full plan or assessment reads a million accounts.
Does not: execute operations or talk to targets.
"""

from __future__ import annotations

import gc
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import ClauseElement, ColumnElement, Dialect, Select, func, select, update
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import aggregate_strings
from sqlalchemy.types import TypeEngine

from provisor.domain.desired import CompiledPolicy, SharedAccess, desired_access
from provisor.domain.lifecycle import IdentityState, LifecycleState, fold
from provisor.domain.plan import ObservedAccount, PlannedOperation, plan_identity
from provisor.engine.identities import chunks, load_history, window
from provisor.engine.marks import held_accounts
from provisor.engine.tasks import cancel_for as cancel_tasks
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.db import bulk_insert

SEP = "\x1f"  # joins entitlement names in one string; no name contains it


class IdentityRow(NamedTuple):
    """The materialised columns an identity's current state is made of."""

    external_id: str
    state: str | None
    attributes: dict[str, Any]
    employment_start: datetime | None
    terminated_at: datetime | None
    state_since: datetime | None
    next_change_at: datetime | None


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


# --- reading many rows ----------------------------------------------------------------------
# Planning and assessment read hundreds of thousands of identities and accounts at a time; the
# ORM's, and even Core's, per-row and per-value work would cost more than the rest of the job.
# These read through the driver's cursor and convert only the columns that need it, each
# distinct time once.


_COLLECTOR = threading.Lock()
_paused = 0  # bulk jobs under way that paused the collector (threads may overlap)
_restart = False  # whether the collector ran before the first of them


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for bulk work: it makes millions of objects,
    none of them in a cycle, which the collector would otherwise walk again and again as
    they pile up. When the last overlapping job ends the collector runs again if it ran
    before, and the new objects go straight to the oldest generation (``gc.freeze`` then
    ``gc.unfreeze``), where a collection of the young ones would put them after walking
    them all once more — unless the host froze objects of its own, which stay frozen."""
    global _paused, _restart
    with _COLLECTOR:
        if _paused == 0:
            _restart = gc.isenabled()
        _paused += 1
        gc.disable()
    try:
        yield
    finally:
        with _COLLECTOR:
            _paused -= 1
            if _paused == 0 and _restart:
                if gc.get_freeze_count() == 0:
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()


def driver_rows(session: Session, query: ClauseElement) -> Generator[tuple[Any, ...], None, None]:
    """The rows of ``query`` as the driver returns them, without type processing (so its
    bound values must be plain strings and numbers). Pending ORM changes are flushed first,
    as a query through the session would."""
    session.flush()
    connection = session.connection()
    compiled = cast(
        SQLCompiler,
        query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True}),
    )
    params = compiled.params
    unplain = [k for k, v in params.items() if not isinstance(v, str | int | float | None)]
    if unplain:  # bool is an int, and every driver binds it alike
        raise TypeError(f"driver_rows binds plain values only, not {', '.join(unplain)}")
    args: Any = (
        tuple(params[name] for name in compiled.positiontup or ())
        if compiled.positional
        else params
    )
    cursor = connection.connection.cursor()
    try:
        cursor.execute(compiled.string, args)
        while batch := cursor.fetchmany(10000):
            yield from batch
    finally:
        cursor.close()


K = TypeVar("K")
V = TypeVar("V")


class Converted(dict[K, V]):
    """Raw driver values and what each converts to, converted on first lookup (``self[raw]``,
    which costs a plain dict lookup after that): the rows of one read share few distinct
    times and entitlement sets. Holds at most ``limit`` values; cleared when full."""

    def __init__(self, convert: Callable[[K], V], limit: int = 65536) -> None:
        super().__init__()
        self._convert = convert
        self._limit = limit

    def __missing__(self, raw: K) -> V:
        if len(self) >= self._limit:
            self.clear()
        value = self[raw] = self._convert(raw)
        return value


def time_reader(kind: TypeEngine[Any], dialect: Dialect) -> Converted[Any, Any]:
    """Raw driver values of a time column to the aware datetimes the column type gives
    (None stays None)."""
    process = kind.dialect_impl(dialect).result_processor(dialect, None)
    if process is None:
        return Converted(lambda value: value)
    return Converted(lambda value: None if value is None else process(value))


def json_reader(kind: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], dict[str, Any]]:
    """What turns a JSON object column's raw driver value into a dict (a new one each time)."""
    process = kind.dialect_impl(dialect).result_processor(dialect, None)

    def read(value: Any) -> dict[str, Any]:
        if value is None or value == "{}":
            return {}
        found: dict[str, Any] | None = process(value) if process is not None else value
        return found or {}

    return read


def accounts_query(
    columns: Sequence[QueryableAttribute[Any]], *where: ColumnElement[bool]
) -> Select[*tuple[Any, ...]]:
    """``columns`` of the observed accounts matching ``where``, in id order, then the names
    of the entitlements each holds joined by ``SEP`` (None when it holds none): one read,
    cheaper than a join grouped by the database or a second read merged here."""
    oa, oe = models.ObservedAccount, models.ObservedEntitlement
    held = (
        select(aggregate_strings(oe.entitlement, SEP))
        .where(oe.account_id == oa.id)
        .scalar_subquery()
    )
    return select(*columns, held).where(*where).order_by(oa.id)


def names_reader() -> Converted[str | None, frozenset[str]]:
    """Names joined by ``SEP`` (or None for none) to a frozenset; accounts that hold the same
    names (most do) share one."""
    empty: frozenset[str] = frozenset()
    return Converted(lambda joined: empty if joined is None else frozenset(joined.split(SEP)))


def identity_rows(
    session: Session, *where: ColumnElement[bool], ids: Iterable[str] | None = None
) -> list[IdentityRow]:
    """The identities matching ``where`` (and among ``ids`` when given), in no set order."""
    i = models.Identity
    dialect = session.get_bind().dialect
    when = time_reader(i.employment_start.type, dialect)
    attributes = json_reader(i.attributes.type, dialect)
    query = select(
        i.external_id,
        i.state,
        i.attributes,
        i.employment_start,
        i.terminated_at,
        i.state_since,
        i.next_change_at,
    ).where(*where)
    wanted = None if ids is None else set(ids)
    queries = [query]
    if wanted is not None:
        everyone = session.execute(select(func.count()).select_from(i)).scalar_one()
        if 2 * len(wanted) < everyone:
            queries = [query.where(i.external_id.in_(part)) for part in chunks(sorted(wanted))]
            wanted = None
        # else most of them: one scan costs less than looking each one up
    return [
        IdentityRow(who, state, attributes(attrs), when[start], when[end], when[since], when[nxt])
        for q in queries
        for who, state, attrs, start, end, since, nxt in driver_rows(session, q)
        if wanted is None or who in wanted
    ]


def current_states(
    workspace: Workspace, session: Session, rows: Sequence[IdentityRow], now: datetime
) -> dict[str, IdentityState]:
    """Each identity's state as of ``now``: its materialised columns, or its folded history
    when the policy holds time-bound grants of its own (their validity needs the timeline)."""
    compiled = workspace.compiled
    detailed = [r.external_id for r in rows if _needs_timeline(compiled, r.external_id)]
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


def _needs_timeline(compiled: CompiledPolicy, identity: str) -> bool:
    return identity in compiled.assignments or identity in compiled.exceptions


@collector_paused()
def compute_plan(
    workspace: Workspace,
    session: Session,
    *,
    now: datetime,
    identity: str | None = None,
    target: str | None = None,
    changed_only: bool = False,
) -> tuple[list[PlannedOperation], list[str]]:
    """Planned operations for the selection, and the identities that were planned.

    ``changed_only`` plans just the identities marked as needing it (a lifecycle change, a
    new observation) and those holding time-bound grants, which can expire with nothing else
    changing; everyone else's plan is what it was under the same policy."""
    compiled = workspace.compiled
    if target is not None and target not in compiled.targets:
        raise NotFoundError(
            f"no target {target!r} in the policy; targets: {', '.join(compiled.targets)}"
        )
    i = models.Identity
    if identity is not None:
        rows = identity_rows(session, i.external_id == identity)
    elif changed_only:
        timed = set(compiled.assignments) | set(compiled.exceptions)
        found = {r.external_id: r for r in identity_rows(session, i.needs_plan.is_(True))}
        for r in identity_rows(session, ids=timed) if timed else []:
            found[r.external_id] = r
        rows = list(found.values())
    else:
        rows = identity_rows(session)
    rows.sort(key=lambda r: r.external_id)
    if identity is not None and not rows:
        raise NotFoundError(f"no identity {identity!r}; see 'provisor identities'")
    ids = [r.external_id for r in rows]
    selection = [identity] if identity else (ids if changed_only else None)
    observed = observed_for(session, selection, target)
    states = current_states(workspace, session, rows, now)
    targets = dict(compiled.targets)
    if target is not None:
        targets = {target: targets[target]}
    shared: SharedAccess = {}
    ops: list[PlannedOperation] = []
    for who in ids:
        state = states[who]
        desired = desired_access(compiled, state, shared)
        ops.extend(plan_identity(state, desired, observed.get(who, []), targets))
    return ops, ids


@dataclass
class JournalSync:
    operations: list[tuple[PlannedOperation, str, int]]  # (op, "new" | "pending", journal id)
    cancelled: int
    # journal id -> why, for planned work matched by a parked (failed) row: shown with the
    # plan, since it will not run by itself
    parked: dict[int, str] = field(default_factory=dict)

    @property
    def added(self) -> int:
        return sum(1 for _, status, _ in self.operations if status == "new")

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
OPEN_STATUSES = ("ticket", "pending", "running", "succeeded", "failed", "unverifiable")
CANCELLABLE = ("pending", "ticket")


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
    need it are planned; see ``compute_plan``. A new policy version always plans everyone."""
    if workspace.note_policy_version(session):
        changed_only = False
    ops, ids = compute_plan(
        workspace, session, now=now, identity=identity, target=target, changed_only=changed_only
    )
    held = held_accounts(session, now)
    if held:
        ops = [op for op in ops if op.account is None or (op.target, op.account) not in held]
    open_rows: dict[tuple[str, str, str, str], list[models.Operation]] = {}
    for row in _open_ops(session, ids, target):
        key = (row.identity, row.target, row.kind, row.entitlement or "")
        open_rows.setdefault(key, []).append(row)
    result: list[tuple[PlannedOperation, str, int]] = []
    parked: dict[int, str] = {}
    entries: list[audit.Entry] = []
    new_rows: list[tuple[PlannedOperation, str]] = []  # (op, journal key)
    for op in ops:
        existing = _take(open_rows.get(op.match_key, []), op.account)
        if existing is not None and existing.status not in CANCELLABLE:
            result.append((op, existing.status, existing.id))
            if existing.status == "failed":
                parked[existing.id] = existing.last_error or "no error recorded"
            continue
        if existing is not None and existing.status == "ticket":
            result.append((op, "ticket", existing.id))
            continue
        if existing is not None:
            # A grace period counted from "now" started when the removal was first planned;
            # one counted from a termination date follows that date if HR corrects it.
            not_before = op.not_before
            if op.grace_from_now and existing.not_before is not None:
                not_before = existing.not_before
            if existing.not_before != not_before or existing.reason != op.reason:
                existing.not_before, existing.reason, existing.updated_at = (
                    not_before,
                    op.reason,
                    now,
                )
            result.append((op, "pending", existing.id))
            continue
        journal_key = uuid.uuid4().hex
        new_rows.append((op, journal_key))
        entries.append(audit.Entry("operation.planned", op.identity, _op_data(op, journal_key)))
    added = _add_pending(session, new_rows, now)
    stale_rows = [r for rows in open_rows.values() for r in rows if r.status in CANCELLABLE]
    for stale in stale_rows:
        mark = held.get((stale.target, stale.account or ""))
        stale.status = "cancelled"
        stale.updated_at = now
        stale.last_error = (
            f"account marked {mark.mark}: {mark.reason}"
            if mark is not None
            else "superseded: the current plan no longer needs it"
        )
        entries.append(
            audit.Entry(
                "operation.cancelled",
                stale.identity,
                {
                    "key": stale.key,
                    "target": stale.target,
                    "kind": stale.kind,
                    "entitlement": stale.entitlement,
                    "why": stale.last_error,
                },
            )
        )
    session.flush()
    cancel_tasks(session, [stale.id for stale in stale_rows], now)
    result.extend((op, "new", added[journal_key]) for op, journal_key in new_rows)
    for part in chunks(ids):
        session.execute(
            update(models.Identity)
            .where(models.Identity.external_id.in_(part))
            .values(needs_plan=False)
        )
    audit.append(session, entries, at=now)
    result.sort(key=lambda r: (r[0].identity, r[0].target, r[0].step, r[0].entitlement or ""))
    return JournalSync(result, len(stale_rows), parked)


def _add_pending(
    session: Session, new_rows: Sequence[tuple[PlannedOperation, str]], now: datetime
) -> dict[str, int]:
    """Add the new operations to the journal as pending, each under its key; returns the id
    of each key. One plain insert: a first plan of a large population adds hundreds of
    thousands, and the ORM's per-object work would cost more than the rest of the plan."""
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
                "pending",
                op.not_before,
                0,
                now,
                now,
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
