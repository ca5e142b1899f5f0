"""Recording lifecycle events, applying due changes (tick) and releasing held changes.

Does: store new lifecycle events (duplicates by content key are ignored), fold each affected
identity's history into its current state and materialise it, hold deprovisioning transitions
that trip the mass-change guard, mark changed identities for planning, move a person's pending
terminations given as local times when their time zone changes (when recorded, or when a
change dated ahead takes effect at ``tick``), mark due for review those
whose access time alone changes (``tick``), and write an audit event for every recorded event,
state change and hold — all inside the caller's transaction.
Does not: parse files (``provisor.sources``), compute access (``provisor.domain.desired``) or
commit.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from provisor.config.workspace import WorkspaceConfig
from provisor.domain.days import Local, Zones
from provisor.domain.lifecycle import (
    EventKind,
    IdentityKind,
    IdentityState,
    LifecycleEvent,
    LifecycleState,
    canonical_text,
    fold,
    utc_text,
)
from provisor.domain.roles import second_person
from provisor.engine import holds, removal_guard
from provisor.errors import DeniedError, LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.store.bulk import chunks
from provisor.store.db import bulk_insert, json_text
from provisor.store.models import Hold, Identity, IdentityEvent

DEPROVISIONED = frozenset({LifecycleState.TERMINATED.value, LifecycleState.SUSPENDED.value})
_AWAY_STATES = DEPROVISIONED | {LifecycleState.LEAVE.value}
T = TypeVar("T")
# Columns of the rows record_events inserts, in the order of its row tuples.
_EVENT_COLUMNS = (
    "key",
    "identity",
    "kind",
    "effective_at",
    "recorded_at",
    "attributes",
    "ref",
    "source",
    "status",
    "hold_id",
    "import_id",
    "recorded_by",
    "local_time",
)
_IDENTITY_COLUMNS = (
    "external_id",
    "feed",
    "needs_plan",
    "updated_at",
    "flags",
    "kind",
    "state",
    "name",
    "email",
    "manager",
    "owner",
    "attributes",
    "employment_start",
    "terminated_at",
    "state_since",
    "next_change_at",
    "materialized_at",
)


def to_event(row: IdentityEvent) -> LifecycleEvent:
    return LifecycleEvent(
        identity=row.identity,
        kind=EventKind(row.kind),
        effective=row.effective_at,
        recorded=row.recorded_at,
        attributes=row.attributes,
        ref=row.ref,
        source=row.source,
        key=row.key,
        local=row.local_time,
    )


def load_history(
    session: Session, ids: Sequence[str], statuses: Iterable[str] = ("accepted",)
) -> dict[str, list[LifecycleEvent]]:
    history: dict[str, list[LifecycleEvent]] = defaultdict(list)
    wanted = set(statuses)
    for part in chunks(ids):
        # the status is checked here: in the query it could steer the database to the status
        # index, a scan of every accepted event, instead of the few rows of these identities
        rows = session.execute(select(IdentityEvent).where(IdentityEvent.identity.in_(part)))
        for row in rows.scalars():
            if row.status in wanted:
                history[row.identity].append(to_event(row))
    return history


def load_identities(session: Session, ids: Sequence[str]) -> dict[str, Identity]:
    found: dict[str, Identity] = {}
    for part in chunks(ids):
        for row in session.execute(
            select(Identity).where(Identity.external_id.in_(part))
        ).scalars():
            found[row.external_id] = row
    return found


def identity_state(
    session: Session,
    config: WorkspaceConfig,
    identity: str,
    *,
    as_of: datetime,
    known_at: datetime | None = None,
) -> IdentityState:
    """The identity's state as of ``as_of`` as known at ``known_at`` (bitemporal query)."""
    events = load_history(session, [identity]).get(identity, [])
    if not events:
        raise NotFoundError(f"no identity {identity!r}; see 'provisor identities' for the list")
    return fold(identity, events, as_of=as_of, known_at=known_at, rescind_window=window(config))


def window(config: WorkspaceConfig) -> timedelta:
    return timedelta(days=config.lifecycle.rescind_window_days)


def _columns(state: IdentityState, now: datetime) -> dict[str, Any]:
    return _materialised(
        dict(state.attributes),
        state.state,
        state.employment_start,
        state.terminated_at,
        state.state_since,
        state.next_change,
        now,
    )


def _materialised(
    attrs: Mapping[str, Any],
    state: LifecycleState | None,
    employment_start: datetime | None,
    terminated_at: datetime | None,
    state_since: datetime | None,
    next_change: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """The identities columns that hold an identity's state as of ``now``."""
    return {
        "kind": str(attrs.get("kind") or _HUMAN),
        "state": _STATE_VALUE[state],
        "name": attrs.get("name"),
        "email": attrs.get("email"),
        "manager": attrs.get("manager"),
        "owner": attrs.get("owner"),
        "attributes": attrs,
        "employment_start": employment_start,
        "terminated_at": terminated_at,
        "state_since": state_since,
        "next_change_at": next_change,
        "materialized_at": now,
    }


# A status a new hire's snapshot row may put them in right away.
_AWAY = {EventKind.LEAVE: LifecycleState.LEAVE, EventKind.SUSPEND: LifecycleState.SUSPENDED}
# Members looked up once: reading one from its enum class is slow, and these are read per row.
_HIRE, _TERMINATE = EventKind.HIRE, EventKind.TERMINATE
_HUMAN = IdentityKind.HUMAN
_PRE_HIRE, _ACTIVE = LifecycleState.PRE_HIRE, LifecycleState.ACTIVE
_STATE_VALUE: dict[LifecycleState | None, str | None] = {s: s.value for s in LifecycleState}
_STATE_VALUE[None] = None
# What the events table stores as an event's kind, and the action of its audit entry.
_KIND_VALUE = {kind: kind.value for kind in EventKind}
_ACTION = {kind: f"lifecycle.{kind.value}" for kind in EventKind}


def _hired(events: Sequence[LifecycleEvent], now: datetime) -> dict[str, Any] | None:
    """The columns ``fold`` gives a brand-new identity (no row, no history) whose events are
    one hire, at most a leave or suspension (without attributes) from then on, and at most a
    termination still to come; None for any other events, which take the general fold.

    Nearly every identity of a first import is such a hire, and working its state out directly
    is several times cheaper than the fold. The attributes are the hire's own mapping, so the
    caller can encode them once for the event and the identity.
    """
    hire = status = end = None
    for event in events:
        kind = event.kind
        if kind is _HIRE and hire is None:
            hire = event
        elif kind in _AWAY and status is None and not event.attributes:
            status = event
        elif kind is _TERMINATE and end is None and event.effective > now:
            end = event
        else:
            return None
    # A value of None would remove an attribute in the fold rather than set it.
    if hire is None or not isinstance(hire.attributes, dict) or None in hire.attributes.values():
        return None
    start = hire.effective
    if (status is not None and status.effective < start) or (
        end is not None and end.effective < start
    ):
        return None
    upcoming = [e.effective for e in (hire, status, end) if e is not None and e.effective > now]
    next_change = min(upcoming, default=None)
    if start > now:
        state, since, employed = _PRE_HIRE, None, None
    elif status is not None and status.effective <= now:
        state, since, employed = _AWAY[status.kind], status.effective, start
    else:
        state, since, employed = _ACTIVE, start, start
    return _materialised(hire.attributes, state, employed, None, since, next_change, now)


def _audit_data(event: LifecycleEvent, status: str, before: str | None, after: str | None) -> str:
    """canonical_json of a recorded event's audit payload, spelled out in sorted key order (a
    test checks it against canonical_json of the mapping). The attributes are not repeated:
    the event's key is the hash of its whole content, attributes included, so the chain
    commits to them through the key and ``audit verify`` re-hashes every stored event."""
    return (
        f'{{"effective":"{utc_text(event.effective)}",'
        f'"event":"{event.key}","ref":{canonical_text(event.ref)},'
        f'"source":{canonical_text(event.source)},"state_after":{canonical_text(after)},'
        f'"state_before":{canonical_text(before)},"status":"{status}"}}'
    )


@dataclass
class Outcome:
    """What a batch of lifecycle changes did."""

    recorded: int = 0
    duplicates: int = 0
    held: int = 0
    hold_id: int | None = None
    hold_reason: str | None = None
    changed: list[str] = field(default_factory=list)
    transitions: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    operations: int = 0  # operations a decision on an operations hold put in line or cancelled

    @property
    def ends_access(self) -> bool:
        """Whether it moved someone into a state that may take access away at once
        (terminated, suspended, on leave: ``lifecycle.ENDS_ACCESS``)."""
        return any(key.rpartition("->")[2] in _AWAY_STATES for key in self.transitions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "held": self.held,
            "hold": self.hold_id,
            "hold_reason": self.hold_reason,
            "changed": len(self.changed),
            "transitions": dict(sorted(self.transitions.items())),
            "warnings": self.warnings,
        }


def _transition(before: str | None, after: str | None) -> str:
    return f"{before or 'new'}->{after or 'unknown'}"


def _is_deprovisioning(before: str | None, after: str | None) -> bool:
    """A move from a state with access (or pre-hire) to terminated or suspended."""
    return before is not None and before not in DEPROVISIONED and after in DEPROVISIONED


def _guard(
    session: Session,
    config: WorkspaceConfig,
    candidates: list[str],
    origin: str,
    now: datetime,
    outcome: Outcome,
    recent: Callable[[], holds.Recent] | None = None,
    population: int | None = None,
) -> Hold | None:
    earlier = recent() if recent is not None else None
    hold = holds.guard(session, config, len(candidates), origin, now, earlier, population)
    if hold is not None:
        outcome.hold_id, outcome.hold_reason = hold.id, hold.reason
    return hold


@dataclass
class _Recording:
    """The events of one ``record_events`` call as they are sorted out: new ones by identity,
    the identities' rows and accepted history, the columns each identity gets, and the keys
    of the events a hold keeps back."""

    unique: dict[str, LifecycleEvent]
    rows: dict[str, Identity]
    new_by_id: dict[str, list[LifecycleEvent]]
    ids: list[str]
    history: dict[str, list[LifecycleEvent]]
    columns_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    held_keys: set[str] = field(default_factory=set)


def record_events(
    session: Session,
    config: WorkspaceConfig,
    events: Sequence[LifecycleEvent],
    *,
    origin: str,
    now: datetime,
    strict: bool = False,
    import_id: int | None = None,
    flags: dict[str, list[str]] | None = None,
    stored: Container[str] | None = None,
    recent: Callable[[], holds.Recent] | None = None,
    defer: list[LifecycleEvent] | None = None,
    population: int | None = None,
    chain: audit.Chain | None = None,
) -> Outcome:
    """Record ``events`` and bring the affected identities up to date as of ``now``.

    ``defer`` (a large import, recorded a batch at a time): the events of identities they
    would take to terminated or suspended are not recorded but added to ``defer``, for one
    last call with all of them, where the mass-change guard weighs them together against
    ``population`` (the active population before the import wrote anything); ``chain``: the
    audit chain its batches append to, closed by the caller after the last.

    ``recent`` (a source of single changes) counts the source's latest deprovisioning
    transitions with these for the mass-change guard; it is asked only when there are some.

    ``strict`` (one event typed by a person) refuses an event that would have no effect;
    otherwise (feeds, where events may arrive out of order) it is recorded with a warning.
    A rescind outside its window is always refused. ``stored``, from a caller that has read
    them already, holds the id of every identity that has a row, so only those are looked up.
    """
    outcome = Outcome()
    rec = _new_events(session, events, stored, outcome)
    rescind_window = window(config)
    said = _fold_all(rec, config, now, strict, origin)
    _drop_ownerless(session, rec, strict, outcome)
    candidates = [
        i
        for i in rec.ids
        if _is_deprovisioning(
            rec.rows[i].state if i in rec.rows else None, rec.columns_by_id[i]["state"]
        )
    ]
    later: set[str] = set()
    if defer is not None and candidates:
        _defer(rec, candidates, defer)
        later, candidates = set(candidates), []
    # what folding said comes first, but not of the deferred: their last call says it
    outcome.warnings[:0] = [w for i, notes in said.items() if i not in later for w in notes]
    hold = (
        _guard(session, config, candidates, origin, now, outcome, recent, population)
        if candidates
        else None
    )
    if hold is not None:
        _hold_back(rec, candidates, now, rescind_window, outcome)
    outcome.recorded = len(rec.unique) - len(rec.held_keys)
    if rec.ids:
        appending = chain or audit.Chain(session, at=now)
        _write(session, rec, appending, origin, now, hold, import_id, flags, outcome)
        if chain is None:
            appending.close()
    if hold is not None:
        data = {
            "origin": origin,
            "reason": hold.reason,
            "identities": candidates,
            "events": sorted(rec.held_keys),
        }
        audit.append(session, [audit.Entry("hold.created", f"hold {hold.id}", data)], at=now)
    session.flush()
    return outcome


def _fold_all(
    rec: _Recording, config: WorkspaceConfig, now: datetime, strict: bool, origin: str
) -> dict[str, list[str]]:
    """Fold every identity of ``rec`` with its new events (and the terminations a new time
    zone moves: ``_rescheduled``); the warnings by identity, in the order they were folded."""
    rescind_window = window(config)
    said: dict[str, list[str]] = {}
    for identity in rec.ids:
        notes: list[str] = []
        rec.columns_by_id[identity] = _fold_new(rec, identity, now, rescind_window, strict, notes)
        if notes:
            said[identity] = notes
    zones = config.time.zones()
    if zones.personal:
        for identity in rec.ids:
            if _rescheduled(rec, identity, zones, now, origin):
                said[identity] = notes = []
                rec.columns_by_id[identity] = _fold_new(
                    rec, identity, now, rescind_window, strict, notes
                )
    return said


def _new_events(
    session: Session,
    events: Sequence[LifecycleEvent],
    stored: Container[str] | None,
    outcome: Outcome,
) -> _Recording:
    """The events not stored yet (duplicates by key dropped), with what they need."""
    unique: dict[str, LifecycleEvent] = {}
    for event in events:
        unique.setdefault(event.key, event)
    named = sorted({event.identity for event in unique.values()})
    rows = load_identities(session, named if stored is None else [i for i in named if i in stored])
    # An event is only ever stored together with its identity's row (below), so only events of
    # identities that have a row can be stored already: a first import looks none up.
    keys = [key for key, event in unique.items() if event.identity in rows]
    for part in chunks(keys):
        for key in session.execute(
            select(IdentityEvent.key).where(IdentityEvent.key.in_(part))
        ).scalars():
            del unique[key]
    outcome.duplicates = len(events) - len(unique)
    new_by_id: dict[str, list[LifecycleEvent]] = defaultdict(list)
    for event in unique.values():
        new_by_id[event.identity].append(event)
    ids = [identity for identity in named if identity in new_by_id]
    history = load_history(session, [i for i in ids if i in rows])
    return _Recording(unique, rows, new_by_id, ids, history)


def _fold_new(
    rec: _Recording,
    identity: str,
    now: datetime,
    rescind_window: timedelta,
    strict: bool,
    warnings: list[str],
) -> dict[str, Any]:
    """The columns ``identity`` gets with its new events; events without effect are refused
    (``strict``, and rescinds always) or recorded with a warning (into ``warnings``)."""
    new = rec.new_by_id[identity]
    if identity not in rec.rows:
        hired = _hired(new, now)
        if hired is not None:
            return hired
    earlier = rec.history.get(identity, ())
    state = fold(identity, [*earlier, *new], as_of=now, rescind_window=rescind_window)
    notes = {t.event.key: t.note for t in state.timeline if not t.applied}
    if not notes:
        return _columns(state, now)
    refused = [e for e in new if e.key in notes and (strict or e.kind is EventKind.RESCIND)]
    if refused and strict:
        detail = "; ".join(f"{e.kind.value}: {notes[e.key]}" for e in refused)
        raise LifecycleError(f"{identity}: {detail}")
    for event in refused:
        warnings.append(f"{identity}: {event.kind.value} refused: {notes[event.key]}")
        del rec.unique[event.key]
    if refused:
        rec.new_by_id[identity] = new = [e for e in new if e not in refused]
        state = fold(identity, [*earlier, *new], as_of=now, rescind_window=rescind_window)
    for event in new:
        if event.key in notes and event.kind is not EventKind.RESCIND:
            warnings.append(
                f"{identity}: {event.kind.value} effective "
                f"{(event.local or event.effective.isoformat())[:10]} recorded but has no effect: "
                f"{notes[event.key]}"
            )
    return _columns(state, now)


def _rescheduled(rec: _Recording, identity: str, zones: Zones, now: datetime, origin: str) -> bool:
    """When ``identity``'s new events change their time zone, their pending terminations
    given as local times (an end date: the end of the last working day) move to the same local
    time in the new zone (or to now, when that has passed there): each is rescinded and
    recorded again at the new instant, naming the one it replaces. True when any moved."""
    row = rec.rows.get(identity)
    if row is None:
        return False
    before = zones.of(row.attributes)
    after = zones.of(rec.columns_by_id[identity]["attributes"])
    if before.key == after.key:
        return False
    events = [*rec.history.get(identity, ()), *rec.new_by_id[identity]]
    again = replaced_in_zone(identity, events, (before, after), now, origin)
    for new in again:
        if new.key not in rec.unique:
            rec.unique[new.key] = new
            rec.new_by_id[identity].append(new)
    return bool(again)


def replaced_in_zone(
    identity: str,
    events: Sequence[LifecycleEvent],
    zones: tuple[ZoneInfo, ZoneInfo],
    now: datetime,
    origin: str,
) -> list[LifecycleEvent]:
    """The events that move ``identity``'s pending terminations given as local times from
    one zone to the other (``zones``: before, after): each rescinded and recorded again at the
    same local time in the new zone (or now, when that has passed there), naming the one it
    replaces — so a move back records a termination of its own, never the rescinded one."""
    before, after = zones
    voided = {e.ref for e in events if e.kind is EventKind.RESCIND and e.ref}
    found: list[LifecycleEvent] = []
    why = f"{origin}: time zone {before.key} -> {after.key}"
    for event in events:
        if event.kind is not EventKind.TERMINATE or event.local is None:
            continue
        if event.effective <= now or event.key in voided:
            continue
        at = max(Local.parse(event.local).instant(after), now)
        if at == event.effective:
            continue
        found.append(LifecycleEvent(identity, EventKind.RESCIND, now, now, {}, event.key, why))
        found.append(
            LifecycleEvent(
                identity,
                EventKind.TERMINATE,
                at,
                now,
                event.attributes,
                event.key,
                why,
                local=event.local,
            )
        )
    return found


def _defer(rec: _Recording, candidates: list[str], defer: list[LifecycleEvent]) -> None:
    """Take ``candidates`` and their events out of ``rec``, into ``defer``."""
    left = set(candidates)
    for identity in candidates:
        for event in rec.new_by_id.pop(identity):
            del rec.unique[event.key]
            defer.append(event)
        del rec.columns_by_id[identity]
    rec.ids = [i for i in rec.ids if i not in left]


def _drop_ownerless(session: Session, rec: _Recording, strict: bool, outcome: Outcome) -> None:
    """Refuse the events of non-human identities left without an accountable owner."""
    for identity, why in _ownerless(session, rec.columns_by_id).items():
        if strict:
            raise LifecycleError(f"{identity}: {why}")
        outcome.warnings.append(f"{identity}: refused: {why}")
        for event in rec.new_by_id.pop(identity):
            del rec.unique[event.key]
        del rec.columns_by_id[identity]
        rec.ids.remove(identity)


def _hold_back(
    rec: _Recording,
    candidates: list[str],
    now: datetime,
    rescind_window: timedelta,
    outcome: Outcome,
) -> None:
    """Keep the due terminations and suspensions of ``candidates`` back for the hold (with
    the rescind of the termination a held one replaces: a rejected hold leaves the earlier
    one standing), and fold the candidates again without them."""
    for identity in candidates:
        replaced: set[str] = set()
        for event in rec.new_by_id[identity]:
            if event.kind in (EventKind.TERMINATE, EventKind.SUSPEND) and event.effective <= now:
                rec.held_keys.add(event.key)
                if event.kind is EventKind.TERMINATE and event.ref:
                    replaced.add(event.ref)
        for event in rec.new_by_id[identity]:
            if event.kind is EventKind.RESCIND and event.ref in replaced:
                rec.held_keys.add(event.key)
        accepted = [e for e in rec.new_by_id[identity] if e.key not in rec.held_keys]
        earlier = rec.history.get(identity, ())
        state = fold(identity, [*earlier, *accepted], as_of=now, rescind_window=rescind_window)
        rec.columns_by_id[identity] = _columns(state, now)
    outcome.held = len(rec.held_keys)


@dataclass
class _Slice:
    """The rows one slice of identities writes."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    entries: list[audit.Entry] = field(default_factory=list)
    # who records them: a person who caused a hold may not decide it
    recorded_by: str = field(default_factory=audit.current_actor)


def _write(
    session: Session,
    rec: _Recording,
    chain: audit.Chain,
    origin: str,
    now: datetime,
    hold: Hold | None,
    import_id: int | None,
    flags: dict[str, list[str]] | None,
    outcome: Outcome,
) -> None:
    """Store the events, insert new identities and update known ones, with audit entries —
    in slices, so a large import never holds every row, event and entry at once."""
    feed = origin_feed(origin)
    hold_id = hold.id if hold is not None else None
    moves: dict[tuple[str | None, str | None], int] = {}
    for part in chunks(rec.ids, _SLICE):
        batch = _Slice()
        for identity in part:
            columns = rec.columns_by_id.pop(identity)
            row = rec.rows.get(identity)
            before, after = (row.state if row is not None else None), columns["state"]
            encoded = _stage_events(batch, rec, identity, before, after, hold_id, import_id)
            own_flags = flags.get(identity) if flags else None
            if row is None:
                batch.inserts.append(_new_row(identity, feed, columns, encoded, own_flags, now))
            else:
                if own_flags is not None:
                    columns["flags"] = own_flags
                for name, value in columns.items():
                    setattr(row, name, value)
                row.needs_plan = True
                row.updated_at = now
            if before != after:
                moves[before, after] = moves.get((before, after), 0) + 1
        outcome.changed.extend(part)
        bulk_insert(session, IdentityEvent, _EVENT_COLUMNS, batch.events)
        bulk_insert(session, Identity, _IDENTITY_COLUMNS, batch.inserts)
        chain.add(batch.entries)
    for (before, after), count in moves.items():
        outcome.transitions[_transition(before, after)] += count


def _stage_events(
    batch: _Slice,
    rec: _Recording,
    identity: str,
    before: str | None,
    after: str | None,
    hold_id: int | None,
    import_id: int | None,
) -> dict[int, str]:
    """Add ``identity``'s new events and their audit entries to ``batch``; returns each
    attributes mapping's JSON by id (a new hire's row reuses its hire's)."""
    encoded: dict[int, str] = {}
    by = batch.recorded_by
    for event in rec.new_by_id[identity]:
        held = event.key in rec.held_keys
        status = "held" if held else "accepted"
        # the canonical JSON the event's key was hashed from is valid JSON to store
        attributes = encoded[id(event.attributes)] = event.attributes_json
        batch.events.append(
            (
                event.key,
                identity,
                _KIND_VALUE[event.kind],
                event.effective,
                event.recorded,
                attributes,
                event.ref,
                event.source,
                status,
                hold_id if held else None,
                import_id,
                by,
                event.local,
            )
        )
        data = _audit_data(event, status, before, after)
        batch.entries.append(audit.Entry(_ACTION[event.kind], identity, data))
    return encoded


_NO_FLAGS = json_text([])
# identities written at a time: their events, rows and audit entries are held until written;
# fewer, larger inserts cost the database less per row than many small ones
_SLICE = 10_000


def _new_row(
    identity: str,
    feed: str | None,
    columns: dict[str, Any],
    encoded: dict[int, str],
    flags: list[str] | None,
    now: datetime,
) -> tuple[Any, ...]:
    """The insert row of an identity seen for the first time (``_IDENTITY_COLUMNS`` order)."""
    attrs = columns["attributes"]
    return (
        identity,
        feed,
        True,
        now,
        json_text(flags) if flags is not None else _NO_FLAGS,
        columns["kind"],
        columns["state"],
        columns["name"],
        columns["email"],
        columns["manager"],
        columns["owner"],
        encoded.get(id(attrs)) or json_text(attrs),
        columns["employment_start"],
        columns["terminated_at"],
        columns["state_since"],
        columns["next_change_at"],
        now,
    )


def _ownerless(session: Session, columns_by_id: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Non-human identities (service accounts, API keys, bots) without an accountable human
    owner, with the reason; these changes are not recorded."""
    wanted = {
        identity: columns["owner"]
        for identity, columns in columns_by_id.items()
        if columns["kind"] != "human" and columns["state"] != LifecycleState.TERMINATED
    }
    if not wanted:
        return {}
    kinds = {i: c["kind"] for i, c in columns_by_id.items()}
    missing = sorted({o for o in wanted.values() if o and o not in kinds})
    for part in chunks(missing):
        query = select(Identity.external_id, Identity.kind).where(Identity.external_id.in_(part))
        kinds.update((i, k) for i, k in session.execute(query))
    problems: dict[str, str] = {}
    for identity, owner in wanted.items():
        kind = columns_by_id[identity]["kind"]
        if not owner:
            problems[identity] = f"a {kind} needs an accountable owner (--set owner=PERSON-ID)"
        elif kinds.get(owner) != "human":
            what = "unknown" if owner not in kinds else f"a {kinds[owner]}, not a person"
            problems[identity] = f"owner {owner} of this {kind} is {what}"
    return problems


def origin_feed(origin: str) -> str | None:
    """Feed name from an origin like ``import hr:file.csv``; None for hand-typed events."""
    if origin.startswith("import "):
        return origin[len("import ") :].split(":", 1)[0]
    return None


def _refresh(
    session: Session,
    config: WorkspaceConfig,
    rows: dict[str, Identity],
    now: datetime,
    outcome: Outcome,
    action: str,
    skip_keys: set[str] | None = None,
) -> list[audit.Entry]:
    """Re-fold ``rows`` from their accepted events and materialise them as of ``now``."""
    history = load_history(session, sorted(rows))
    entries: list[audit.Entry] = []
    for identity, row in rows.items():
        events = [e for e in history.get(identity, []) if not skip_keys or e.key not in skip_keys]
        state = fold(identity, events, as_of=now, rescind_window=window(config))
        before = row.state
        for name, value in _columns(state, now).items():
            setattr(row, name, value)
        row.needs_plan = True
        row.review_at = None  # the plan about to be made sets it again when still needed
        row.updated_at = now
        after = row.state
        outcome.changed.append(identity)
        if before != after:
            outcome.transitions[_transition(before, state.state)] += 1
            entries.append(
                audit.Entry(action, identity, {"state_before": before, "state_after": after})
            )
    return entries


def tick(session: Session, config: WorkspaceConfig, *, now: datetime) -> Outcome:
    """Apply every change that has become due (one taking a person to another time zone
    places their pending local-time terminations again there first); hold a mass
    deprovisioning for approval."""
    outcome = Outcome()
    due = list(
        session.execute(
            select(Identity)
            .where(or_(Identity.next_change_at <= now, Identity.review_at <= now))
            .order_by(Identity.external_id)
        ).scalars()
    )
    if not due:
        return outcome
    rows = {row.external_id: row for row in due}
    history = load_history(session, sorted(rows))
    if _zones_moved(session, config, rows, history, now):
        history = load_history(session, sorted(rows))
    candidates: list[str] = []
    due_deprovisioning: dict[str, list[str]] = {}
    for identity, row in rows.items():
        state = fold(identity, history.get(identity, []), as_of=now, rescind_window=window(config))
        if _is_deprovisioning(row.state, state.state):
            candidates.append(identity)
            due_deprovisioning[identity] = [
                e.key
                for e in history.get(identity, [])
                if e.kind in (EventKind.TERMINATE, EventKind.SUSPEND)
                and row.materialized_at < e.effective <= now
            ]
    hold = _guard(session, config, candidates, "tick", now, outcome) if candidates else None
    held: set[str] = set()
    if hold is not None:
        held = {k for keys in due_deprovisioning.values() for k in keys}
        session.execute(
            update(IdentityEvent)
            .where(IdentityEvent.key.in_(sorted(held)))
            .values(status="held", hold_id=hold.id)
        )
        outcome.held = len(held)
    entries = _refresh(session, config, rows, now, outcome, "identity.state-changed", held)
    if hold is not None:
        entries.append(
            audit.Entry(
                "hold.created",
                f"hold {hold.id}",
                {
                    "origin": "tick",
                    "reason": hold.reason,
                    "identities": candidates,
                    "events": sorted(held),
                },
            )
        )
    audit.append(session, entries, at=now)
    return outcome


def _zones_moved(
    session: Session,
    config: WorkspaceConfig,
    rows: dict[str, Identity],
    history: dict[str, list[LifecycleEvent]],
    now: datetime,
) -> bool:
    """Changes now due that move people to another time zone (a move dated ahead): their
    pending local-time terminations placed again there, recorded as any change is. True when
    any were."""
    zones = config.time.zones()
    found: list[LifecycleEvent] = []
    for identity, row in rows.items():
        events = history.get(identity, [])
        state = fold(identity, events, as_of=now, rescind_window=window(config))
        before, after = zones.of(row.attributes or {}), zones.of(state.attributes)
        if before.key != after.key:
            found += replaced_in_zone(identity, events, (before, after), now, "tick")
    if found:
        record_events(session, config, found, origin="tick", now=now)
    return bool(found)


def decide_hold(
    session: Session,
    config: WorkspaceConfig,
    hold_id: int,
    *,
    approve: bool,
    only: Sequence[str] | None,
    targets: Sequence[str] | None = None,
    now: datetime,
    actor: str | None = None,
    four_eyes: bool = False,
) -> Outcome:
    """Approve (apply) or reject the held changes of ``hold_id``: all, or ``only`` some ids
    (and, for a plan batch the removal guard held, only some ``targets``). With ``four_eyes``
    (an authenticated decision through the service) the person who caused the hold may not
    decide it."""
    held = session.get(Hold, hold_id)
    if four_eyes and held is not None:
        who = actor or audit.current_actor()
        if not all(second_person(causer, who) for causer in holds.causers(session, held)):
            raise DeniedError(f"hold {hold_id} was caused by {who}; another person decides it")
    if held is not None and held.kind == "operations":
        return _decide_operations(session, held, approve, only, targets, now, actor)
    if targets:
        raise LifecycleError(f"hold {hold_id} holds lifecycle events: --target does not apply")
    decided = holds.release(
        session, hold_id, approve=approve, only=only, actor=actor or audit.current_actor(), now=now
    )
    chosen, remaining = decided.chosen, decided.remaining
    verdict = "approved" if approve else "rejected"
    outcome = Outcome(recorded=len(chosen) if approve else 0)
    ids = sorted({r.identity for r in chosen})
    entries = [
        audit.Entry(
            f"hold.{verdict}",
            f"hold {hold_id}",
            {"identities": ids, "events": [r.key for r in chosen], "remaining": remaining},
        )
    ]
    if approve:
        rows = load_identities(session, ids)
        entries += _refresh(session, config, rows, now, outcome, "identity.state-changed")
    audit.append(session, entries, actor=actor, at=now)
    return outcome


def _decide_operations(
    session: Session,
    hold: Hold,
    approve: bool,
    only: Sequence[str] | None,
    targets: Sequence[str] | None,
    now: datetime,
    actor: str | None,
) -> Outcome:
    """Put a held plan batch (or part of it) in line, or cancel it; audited."""
    who = actor or audit.current_actor()
    released = removal_guard.release(
        session, hold, approve=approve, identities=only, targets=targets, actor=who, now=now
    )
    verdict = "approved" if approve else "rejected"
    data = {
        "kind": "operations",
        "operations": sorted(r.key for r in released.chosen),
        "identities": sorted({r.identity for r in released.chosen}),
        "targets": sorted({r.target for r in released.chosen}),
        "remaining": released.remaining,
    }
    audit.append(
        session, [audit.Entry(f"hold.{verdict}", f"hold {hold.id}", data)], actor=who, at=now
    )
    return Outcome(operations=len(released.chosen))


def latest_termination_key(session: Session, identity: str) -> str | None:
    return session.execute(
        select(IdentityEvent.key)
        .where(
            IdentityEvent.identity == identity,
            IdentityEvent.kind == EventKind.TERMINATE.value,
            IdentityEvent.status == "accepted",
        )
        .order_by(IdentityEvent.effective_at.desc())
        .limit(1)
    ).scalar_one_or_none()
