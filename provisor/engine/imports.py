"""Importing an HR feed: from parsed rows to recorded lifecycle events.

Does: parse a feed file with its workspace mapping (a snapshot kept on disk until compared,
a large one read on several cores: ``spill``), check what needs the store (owners of
non-human identities exist and are human; managers are known, else flagged), turn a snapshot into
the events that make the store match it (hires, moves, conversions, leaves, returns, rehires,
future-dated and missing-person terminations; a pending hire whose start moved rescheduled;
with several feeds, each row merged with the others' word: ``authorities``) or take an events
file as it is, record them with the mass-change guard (a snapshot's batches written behind:
``store.write_behind``), and keep an import record and an audit event with the
counts; place each date given as a local time in the person's zone (the row's, else their
earlier rows', else the store's); take a partial snapshot from a source that is no file
(``record_people``: inbound SCIM) the same way.
Does not: parse formats itself (``provisor.sources.hr``) or compute access.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from provisor.domain.days import Local, Placed, Zones
from provisor.domain.lifecycle import (
    EventKind,
    LifecycleEvent,
    LifecycleState,
    canonical_json,
    new_event,
)
from provisor.engine.authorities import Merger
from provisor.engine.holds import Recent, active_population
from provisor.engine.identities import Outcome, record_events
from provisor.engine.references import References
from provisor.engine.spill import read_snapshot
from provisor.engine.workspace import Workspace
from provisor.errors import ConfigError, FeedError
from provisor.evidence import audit
from provisor.sources.hr import (
    FeedMapping,
    FeedMode,
    FeedRecord,
    When,
    parse_feed,
    parse_lines,
)
from provisor.store.bulk import chunks, collector_paused
from provisor.store.models import Identity, IdentityEvent, Import
from provisor.store.write_behind import writing_behind

Progress = Callable[[str], None]
BATCH = 50_000  # snapshot rows compared and recorded at a time


@dataclass
class ImportReport:
    file: str
    feed: str
    mode: str
    rows_read: int
    rows_accepted: int
    errors: list[str]
    warnings: list[str]
    outcome: Outcome
    import_id: int
    missing: int = 0
    unchanged: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "import": self.import_id,
            "file": self.file,
            "feed": self.feed,
            "mode": self.mode,
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "rows_rejected": len(self.errors),
            "unchanged": self.unchanged,
            "missing_from_snapshot": self.missing,
            "events": self.counts,
            "errors": self.errors,
            "warnings": self.warnings,
            **{k: v for k, v in self.outcome.as_dict().items() if k != "warnings"},
        }


def feed_mapping(workspace: Workspace, feed: str | None) -> tuple[str, FeedMapping]:
    feeds = workspace.config.feeds
    if feed is None:
        feed = "hr" if "hr" in feeds or not feeds else next(iter(feeds))
    if feed not in feeds:
        raise ConfigError(
            f"no feed {feed!r} in provisor.yaml; configured feeds: {', '.join(feeds) or 'none'}"
        )
    return feed, feeds[feed]


@dataclass
class _Known:
    """What the store knows about an identity, as far as a snapshot diff needs it."""

    state: str | None
    kind: str
    feed: str | None
    attributes: dict[str, Any]
    terminated_at: datetime | None
    next_change_at: datetime | None


def _known(session: Any, ids: list[str] | None) -> dict[str, _Known]:
    columns = (
        Identity.external_id,
        Identity.state,
        Identity.kind,
        Identity.feed,
        Identity.attributes,
        Identity.terminated_at,
        Identity.next_change_at,
    )
    result: dict[str, _Known] = {}
    queries = (
        [select(*columns)]
        if ids is None
        else [select(*columns).where(Identity.external_id.in_(p)) for p in chunks(ids)]
    )
    for query in queries:
        for row in session.execute(query):
            result[row[0]] = _Known(row[1], row[2], row[3], row[4] or {}, row[5], row[6])
    return result


def _pending(
    session: Any, kind: EventKind, status: str, now: datetime, ids: list[str] | None = None
) -> dict[str, tuple[str, datetime]]:
    """identity -> key and instant of its accepted future ``kind`` event (or any held one);
    of ``ids`` only, when given."""
    query = select(IdentityEvent.identity, IdentityEvent.key, IdentityEvent.effective_at).where(
        IdentityEvent.kind == kind.value, IdentityEvent.status == status
    )
    if ids is not None:
        query = query.where(IdentityEvent.identity.in_(ids))
    if status == "accepted":
        rescinded = select(IdentityEvent.ref).where(
            IdentityEvent.kind == EventKind.RESCIND.value,
            IdentityEvent.status == "accepted",
            IdentityEvent.ref.is_not(None),
        )
        query = query.where(IdentityEvent.effective_at > now, IdentityEvent.key.not_in(rescinded))
    return {identity: (key, at) for identity, key, at in session.execute(query)}


# States and the hire, looked up once: reading a member from its enum class is slow, and these
# are read for every row of a snapshot.
_ACTIVE = LifecycleState.ACTIVE.value
_TERMINATED = LifecycleState.TERMINATED.value
_PRE_HIRE = LifecycleState.PRE_HIRE.value
_HIRE = EventKind.HIRE
# The events that take an identity from a state (first) to a snapshot row's status (second).
_STEPS: dict[tuple[str, str], tuple[EventKind, ...]] = {
    ("active", "leave"): (EventKind.LEAVE,),
    ("active", "suspended"): (EventKind.SUSPEND,),
    ("leave", "active"): (EventKind.RETURN,),
    ("leave", "suspended"): (EventKind.SUSPEND,),
    ("suspended", "active"): (EventKind.RESUME,),
    ("suspended", "leave"): (EventKind.RESUME, EventKind.LEAVE),
}


# an import's pending terminations, held terminations and hires not started, by identity
Pending = tuple[
    dict[str, tuple[str, datetime]],
    dict[str, tuple[str, datetime]],
    dict[str, tuple[str, datetime]],
]


@dataclass
class _Events:
    """The events a snapshot yields, and what it warns about."""

    source: str
    now: datetime
    zones: Zones
    # dates placed so far, by the date's object and the zone: a file has few distinct dates,
    # each one object while the import runs (the parser's, or the spill's when read back)
    placed: dict[tuple[int, str], tuple[When, Placed]] = field(default_factory=dict)
    events: list[LifecycleEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(
        self,
        r: FeedRecord,
        kind: EventKind,
        when: datetime | Placed,
        attrs: dict[str, Any] | None = None,
        ref: str | None = None,
    ) -> None:
        at, local = (when.at, when.local) if isinstance(when, Placed) else (when, None)
        where = f"{self.source}:{r.line}"
        self.events.append(
            new_event(r.identity, kind, at, self.now, attrs or {}, ref, where, local)
        )

    def place(
        self, r: FeedRecord, value: When | None, *known: Mapping[str, Any] | None
    ) -> Placed | None:
        """``value`` of row ``r`` in time: a local time in the person's zone (the row's, else
        the first of ``known``'s attributes to name one, else the workspace's)."""
        if value is None:
            return None
        where = self.zones.of(r.attributes, *known)
        seen = (id(value), where.key)
        found = self.placed.get(seen)
        if found is None:  # the value kept with it: its id is not reused meanwhile
            found = self.placed[seen] = (value, Placed.of(value, where))
        return found[1]


def _row_events(
    records: list[FeedRecord],
    known: dict[str, _Known],
    at: tuple[str, datetime, Zones, dict[tuple[int, str], tuple[When, Placed]]],
    future_terminations: dict[str, tuple[str, datetime]],
    held_terminations: dict[str, tuple[str, datetime]],
    future_hires: Mapping[str, tuple[str, datetime]] | None = None,
) -> tuple[list[LifecycleEvent], int, list[str]]:
    """The events that bring each row's identity to what the row says (``at``: where the rows
    come from, now, whose zone is which, and the dates placed so far, kept while the rows'
    dates are; the pending terminations, held ones and hires, by identity); how many rows
    change nothing; warnings."""
    hires = future_hires or {}
    found = _Events(*at)
    unchanged = 0
    for r in records:
        before = len(found.events)
        status = r.status or _ACTIVE
        have = known.get(r.identity)
        stored = have.attributes if have is not None else None
        start, end = found.place(r, r.effective, stored), found.place(r, r.end, stored)
        if not _state_events(found, r, status, have, (start, end), hires.get(r.identity)):
            continue
        if status != _TERMINATED and r.identity not in held_terminations:
            _end_events(found, r, end, future_terminations.get(r.identity))
        if len(found.events) == before:
            unchanged += 1
    return found.events, unchanged, found.warnings


def _missing_events(
    session: Any,
    feed: str,
    source: str,
    now: datetime,
    listed: Container[str],
    before: int | None = None,
) -> list[LifecycleEvent]:
    """A termination, now, for each identity of ``feed`` still active (or on leave,
    suspended, not started) that the snapshot does not list, unless one of theirs is held;
    of the identities up to row ``before`` when given (those stored before the import)."""
    held = _pending(session, EventKind.TERMINATE, "held", now)
    query = select(Identity.external_id).where(
        Identity.feed == feed,
        Identity.state.is_not(None),
        Identity.state != LifecycleState.TERMINATED.value,
    )
    if before is not None:
        query = query.where(Identity.id <= before)
    return [
        _missing(identity, source, now)
        for identity in session.execute(query.order_by(Identity.id)).scalars()
        if identity not in listed and identity not in held
    ]


def _missing(identity: str, source: str, now: datetime) -> LifecycleEvent:
    """The termination, now, of someone a snapshot no longer lists."""
    return LifecycleEvent(
        identity, EventKind.TERMINATE, now, now, {}, None, f"{source}: missing from snapshot"
    )


def _state_events(
    found: _Events,
    r: FeedRecord,
    status: str,
    have: _Known | None,
    dates: tuple[Placed | None, Placed | None],
    hire: tuple[str, datetime] | None = None,
) -> bool:
    """The events that bring the stored state to the row's (``dates``: its start and end
    placed in time; ``hire``: the key and instant of a hire not started yet); False when the
    row is ignored (a leaver who was never imported)."""
    now = found.now
    start, end = dates
    if have is None or have.state is None:
        if status == _TERMINATED:
            found.warnings.append(
                f"{found.source}:{r.line} {r.identity} is listed as terminated but was "
                "never imported; ignored"
            )
            return False
        at = start.at if start is not None else now
        # The hire (nearly every row of a first import) is added here rather than by add().
        where = f"{found.source}:{r.line}"
        local = start.local if start is not None else None
        found.events.append(
            new_event(r.identity, _HIRE, at, now, r.attributes or {}, None, where, local)
        )
        if status != _ACTIVE:
            _status_events(r, status, _ACTIVE, max(at, now), found.add, end)
    elif have.state == _TERMINATED:
        if status != _TERMINATED:
            later = start is not None and have.terminated_at and start.at > have.terminated_at
            when: datetime | Placed = start if later and start is not None else now
            found.add(r, EventKind.REHIRE, when, r.attributes)
            if status != _ACTIVE:
                _status_events(r, status, _ACTIVE, max(_at(when), now), found.add, end)
    elif _rescheduled(found, r, status, have, start, hire):
        pass
    else:
        moment = now
        if have.state == _PRE_HIRE and have.next_change_at is not None:
            moment = max(now, have.next_change_at)
        changes = {k: v for k, v in r.attributes.items() if have.attributes.get(k) != v}
        converted = changes.pop("employment_type", None)
        if converted is not None:
            found.add(r, EventKind.CONVERT, moment, {"employment_type": converted})
        if changes:
            found.add(r, EventKind.MOVE, moment, changes)
        _status_events(r, status, have.state, moment, found.add, end)
    return True


def _rescheduled(
    found: _Events,
    r: FeedRecord,
    status: str,
    have: _Known,
    start: Placed | None,
    hire: tuple[str, datetime] | None,
) -> bool:
    """A hire not started yet whose start the row puts at another instant (a start date
    moved, or the same day in another zone): rescinded and recorded again at the new start,
    with the row's attributes, naming the one it replaces. True when it was."""
    if have.state != _PRE_HIRE or status != _ACTIVE or start is None or hire is None:
        return False
    key, at = hire
    if start.at == at:
        return False
    found.add(r, EventKind.RESCIND, found.now, ref=key)
    found.add(r, _HIRE, start, {**have.attributes, **r.attributes}, ref=key)
    return True


def _at(when: datetime | Placed) -> datetime:
    return when.at if isinstance(when, Placed) else when


def _end_events(
    found: _Events, r: FeedRecord, end: Placed | None, pending: tuple[str, datetime] | None
) -> None:
    """A future end date becomes a future termination; one at another instant than the one
    pending (another date, or the same day in another zone) rescinds it and names it (so
    that going back to an earlier date records a new termination, not the rescinded one
    again); an end date taken away rescinds the pending one."""
    if end is not None and end.at > found.now:
        if pending is None:
            found.add(r, EventKind.TERMINATE, end)
        elif pending[1] != end.at:
            found.add(r, EventKind.RESCIND, found.now, ref=pending[0])
            found.add(r, EventKind.TERMINATE, end, ref=pending[0])
    elif end is None and pending is not None:
        found.add(r, EventKind.RESCIND, found.now, ref=pending[0])


def _status_events(
    r: FeedRecord,
    status: str,
    current: str,
    when: datetime,
    add: Callable[..., None],
    end: Placed | None,
) -> None:
    """Events that move ``current`` to the row's ``status`` (``end``: its end date)."""
    if status == LifecycleState.TERMINATED and current != LifecycleState.TERMINATED:
        add(r, EventKind.TERMINATE, end or when)
        return
    for kind in _STEPS.get((current, status), ()):
        add(r, kind, when)


@dataclass(frozen=True)
class _Either:
    """In one set or the other (without making a third)."""

    one: Container[str]
    other: Container[str]

    def __contains__(self, item: object) -> bool:
        return item in self.one or item in self.other


@dataclass
class _Tally:
    """What an import found and did, added up batch by batch."""

    accepted: int = 0
    unchanged: int = 0
    missing: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    outcome: Outcome = field(default_factory=Outcome)
    # a snapshot's: the events that deprovision, recorded last; the flags of flagged people
    deferred: list[LifecycleEvent] = field(default_factory=list)
    flags: dict[str, list[str]] = field(default_factory=dict)
    # the dates its rows' dates were placed at so far (``_Events.placed``)
    placed: dict[tuple[int, str], tuple[When, Placed]] = field(default_factory=dict)

    def recorded(self, events: list[LifecycleEvent], outcome: Outcome) -> None:
        self.counts.update(str(e.kind) for e in events)
        total = self.outcome
        total.recorded += outcome.recorded
        total.duplicates += outcome.duplicates
        total.held += outcome.held
        total.hold_id = outcome.hold_id or total.hold_id
        total.hold_reason = outcome.hold_reason or total.hold_reason
        total.changed.extend(outcome.changed)
        total.transitions.update(outcome.transitions)
        total.warnings.extend(outcome.warnings)


def import_feed(
    workspace: Workspace,
    path: Path,
    *,
    feed: str | None = None,
    mode: FeedMode | None = None,
    now: datetime,
    progress: Progress | None = None,
) -> ImportReport:
    # An import allocates a few containers per row (records, events, rows to write) and frees
    # few of them before its batch ends, so the cyclic collector would run again and again to
    # find nothing: it is paused (a third of the parsing time, a tenth of the whole on a large
    # feed) and restarted afterwards if it was running.
    with collector_paused():
        feed_name, mapping = feed_mapping(workspace, feed)
        if mode is not None:
            mapping = mapping.model_copy(update={"mode": mode})
        say = progress or (lambda _stage: None)
        if mapping.mode is FeedMode.SNAPSHOT:
            return _import_snapshot(workspace, path, feed_name, mapping, now, say)
        return _import_events(workspace, path, feed_name, mapping, now, say)


def _lookup(session: Any) -> Callable[[list[str]], dict[str, Any]]:
    return lambda ids: _known(session, ids)


def _import_snapshot(
    workspace: Workspace,
    path: Path,
    feed_name: str,
    mapping: FeedMapping,
    now: datetime,
    say: Progress,
) -> ImportReport:
    """A snapshot, read once and kept on disk, then compared and recorded ``BATCH`` rows at a
    time: memory stays bounded whatever its size. Changes that take people to terminated or
    suspended (and the people missing from it) are recorded last, all together, so the
    mass-change guard weighs the whole snapshot as one."""
    say("reading")
    zone_attribute = workspace.config.time.zone_attribute
    parsed, spill = read_snapshot(path, mapping, batch=BATCH, zone_attribute=zone_attribute)
    try:
        rejected = set(parsed.rejected_ids)
        references = spill.references
        references.leave_out(rejected)
        listed = _Either(references.ids, rejected)  # anyone with a row, valid or not
        with workspace.sessions() as session, session.begin():
            record = _started(session, path, feed_name, mapping, now)
            say("checking")
            references.settle(_lookup(session))
            population = active_population(session)  # before this import changes it
            stored = set(session.execute(select(Identity.external_id)).scalars())
            before = session.execute(select(func.max(Identity.id))).scalar()
            pending = _pendings(session, now)
            say("comparing")
            tally = _Tally(errors=[str(e) for e in parsed.errors])
            tally.warnings = [str(w) for w in parsed.warnings]
            source = f"import {feed_name}:{path.name}"
            where = f"{feed_name}:{path.name}"
            merger = _merger(workspace, session, feed_name, now)
            # the batches' inserts are written while the next ones are worked out
            with writing_behind(session):
                chain = audit.Chain(session, at=now)
                at = (record, chain, source, where, now)
                for batch in spill.batches(rejected, BATCH):
                    _snapshot_batch(
                        workspace, session, batch, stored, pending, at, references, tally, merger
                    )
                chain.close()
            say("recording")
            missing: list[LifecycleEvent] = []
            if parsed.unidentified_rejects:
                # a rejected row whose id could not be read may be anyone: nobody is a leaver
                tally.warnings.append(
                    f"{where}: {parsed.unidentified_rejects} rejected rows have no readable id, "
                    "so nobody missing from this snapshot is terminated; fix those rows and "
                    "import again"
                )
            elif merger is not None:
                missing = _merged_missing(workspace, session, merger, listed, pending, at, tally)
            elif before is not None:  # nobody was stored before: nobody is missing
                missing = _missing_events(session, feed_name, where, now, listed, before)
            tally.missing = len(missing)
            last = record_events(
                session,
                workspace.config,
                [*tally.deferred, *missing],
                origin=source,
                now=now,
                import_id=record.id,
                flags=tally.flags,
                population=population,
            )
            tally.recorded(missing, last)
            return _finished(session, record, path, feed_name, mapping, parsed.rows_read, tally)
    finally:
        spill.close()


def _pendings(session: Any, now: datetime) -> Pending:
    """Everyone's pending terminations, held terminations and hires not started."""
    return (
        _pending(session, EventKind.TERMINATE, "accepted", now),
        _pending(session, EventKind.TERMINATE, "held", now),
        _pending(session, EventKind.HIRE, "accepted", now),
    )


def _merger(workspace: Workspace, session: Any, feed: str, now: datetime) -> Merger | None:
    """Several feeds for one population (``sources.match``): what merges this feed's rows
    with the others' (``provisor.engine.authorities``); None when each feed stands alone."""
    config = workspace.config
    if not config.sources.match:
        return None
    return Merger(session, config.sources, config.feeds, feed, now)


def _merged_missing(
    workspace: Workspace,
    session: Any,
    merger: Merger,
    listed: Container[str],
    pending: Pending,
    at: tuple[Import, audit.Chain, str, str, datetime],
    tally: _Tally,
) -> list[LifecycleEvent]:
    """With several feeds: the people this snapshot no longer lists, as the feeds that still
    list them say (their changes go with the deferred ones), and a termination, now, of each
    no feed lists any more (unless one of theirs is held)."""
    _record, _chain, _source, where, now = at
    still, gone = merger.dropped(listed)
    zones = workspace.config.time.zones()
    known = _known(session, sorted({r.identity for r in still} | set(gone)))
    events, _unchanged, said = _row_events(
        still, known, (where, now, zones, tally.placed), *pending
    )
    tally.deferred += events
    tally.warnings += said + merger.said()
    held = pending[1]
    return [
        _missing(who, where, now)
        for who in gone
        if who not in held
        and (have := known.get(who)) is not None
        and have.state not in (None, LifecycleState.TERMINATED.value)
    ]


def _snapshot_batch(
    workspace: Workspace,
    session: Any,
    batch: list[FeedRecord],
    stored: Container[str],
    pending: Pending,
    at: tuple[Import, audit.Chain, str, str, datetime],
    references: References,
    tally: _Tally,
    merger: Merger | None = None,
) -> None:
    """One batch of a snapshot (``stored``: who the store holds; ``pending``: everyone's
    future and held terminations): checked, merged with the other feeds' word (``merger``),
    compared with the store, recorded — but what it deprovisions and the non-human
    identities, which go to ``tally.deferred``."""
    record, chain, source, where, now = at
    records, errors, warnings, flagged = references.check(batch)
    tally.accepted += len(records)
    tally.errors += [str(e) for e in errors]
    tally.warnings += [str(w) for w in warnings]
    if merger is not None:
        records = merger.merge(records, where)
        flagged = {merger.identity_of(who): flags for who, flags in flagged.items()}
        tally.warnings += merger.said()
    tally.flags.update(flagged)
    known = _known(session, [r.identity for r in records if r.identity in stored])
    zones = workspace.config.time.zones()
    events, unchanged, said = _row_events(
        records, known, (where, now, zones, tally.placed), *pending
    )
    tally.unchanged += unchanged
    tally.warnings += said
    # non-human identities go last too: their owner may be a person of a later batch
    later = {r.identity for r in records if (r.attributes.get("kind") or "human") != "human"}
    later |= {who for who, have in known.items() if have.kind != "human"}
    now_events = [e for e in events if e.identity not in later]
    tally.deferred += [e for e in events if e.identity in later]
    outcome = record_events(
        session,
        workspace.config,
        now_events,
        origin=source,
        now=now,
        import_id=record.id,
        flags=flagged,
        stored=known,
        defer=tally.deferred,
        chain=chain,
    )
    tally.recorded(events, outcome)
    # what this batch loaded and wrote is flushed: the session need not keep it (but the
    # import's record and the audit chain's head, which the chain moves on)
    for held in list(session.identity_map.values()):
        if held is not record and held is not chain.head:
            session.expunge(held)


def _import_events(
    workspace: Workspace,
    path: Path,
    feed_name: str,
    mapping: FeedMapping,
    now: datetime,
    say: Progress,
) -> ImportReport:
    """An events file: every valid row is an event, recorded as written, all at once."""
    say("reading")
    parsed = parse_feed(path, mapping, zone_attribute=workspace.config.time.zone_attribute)
    with workspace.sessions() as session, session.begin():
        record = _started(session, path, feed_name, mapping, now)
        say("checking")
        references = References(parsed.file)
        references.add(parsed.records)
        references.settle(_lookup(session))
        records, errors, warnings, flags = references.check(parsed.records)
        tally = _Tally(accepted=len(records))
        tally.errors = [str(e) for e in (*parsed.errors, *errors)]
        tally.warnings = [str(w) for w in (*parsed.warnings, *warnings)]
        say("comparing")
        where = f"{feed_name}:{path.name}"
        events = _file_events(session, workspace.config.time.zones(), records, where, now)
        say("recording")
        outcome = record_events(
            session,
            workspace.config,
            events,
            origin=f"import {where}",
            now=now,
            import_id=record.id,
            flags=flags,
        )
        tally.recorded(events, outcome)
        return _finished(session, record, path, feed_name, mapping, parsed.rows_read, tally)


def _file_events(
    session: Any, zones: Zones, records: list[FeedRecord], where: str, now: datetime
) -> list[LifecycleEvent]:
    """An events file's rows as events; a local time is placed in the person's zone as the
    row says it, else as their earlier rows in the file, else as the store does."""
    found = _Events(where, now, zones)
    stored: dict[str, _Known] = {}
    if zones.personal:
        local = {r.identity for r in records if isinstance(r.effective, Local)}
        stored = _known(session, sorted(local))
    earlier: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.event is None or r.effective is None:
            continue
        have = stored.get(r.identity)
        before = earlier.setdefault(r.identity, {})
        placed = found.place(r, r.effective, before, have.attributes if have else None)
        found.add(r, r.event, placed or now, r.attributes, r.ref)
        before.update(r.attributes)
    return found.events


def _started(
    session: Any, path: Path, feed_name: str, mapping: FeedMapping, now: datetime
) -> Import:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    record = Import(
        file=str(path), sha256=digest, feed=feed_name, mode=mapping.mode.value, started_at=now
    )
    session.add(record)
    session.flush()
    return record


def _finished(
    session: Any,
    record: Import,
    path: Path,
    feed_name: str,
    mapping: FeedMapping,
    rows_read: int,
    tally: _Tally,
) -> ImportReport:
    """The import's report, kept on its record and in the audit log."""
    outcome = tally.outcome
    report = ImportReport(
        file=str(path),
        feed=feed_name,
        mode=mapping.mode.value,
        rows_read=rows_read,
        rows_accepted=tally.accepted,
        errors=tally.errors,
        warnings=tally.warnings + outcome.warnings,
        outcome=outcome,
        import_id=record.id,
        missing=tally.missing,
        unchanged=tally.unchanged,
        counts=dict(tally.counts),
    )
    record.finished_at = record.started_at  # the import's time, as every event of it has
    record.counts = {k: v for k, v in report.as_dict().items() if k not in ("errors", "warnings")}
    audit.record(
        session,
        "import.completed",
        f"import {record.id}",
        {**record.counts, "sha256": record.sha256, "errors": len(tally.errors)},
    )
    return report


def record_people(
    workspace: Workspace,
    session: Any,
    people: list[dict[str, Any]],
    *,
    feed: str,
    source: str,
    managed: Container[str],
    now: datetime,
    recent: Callable[[], Recent] | None = None,
) -> Outcome:
    """Bring the identities of ``people`` (snapshot rows, as records) to the state and
    attributes the rows give, with the checks and the mass-change guard of a feed import: a
    partial snapshot, where nobody absent is taken for a leaver. A ``managed`` attribute a row
    no longer has is cleared. Invalid rows refuse the whole batch (``FeedError`` naming each
    field), since the caller answers for it as one request."""
    mapping = workspace.config.feeds.get(feed) or FeedMapping()
    mapping = mapping.model_copy(update={"mode": FeedMode.SNAPSHOT, "extra_attributes": "keep"})
    text = "\n".join(canonical_json(p) for p in people)
    parsed = parse_lines(
        text, mapping, name=source, zone_attribute=workspace.config.time.zone_attribute
    )
    ids = sorted({r.identity for r in parsed.records})
    references = References(parsed.file)
    references.add(parsed.records)
    references.settle(_lookup(session))
    records, ref_errors, _, flags = references.check(parsed.records)
    errors = [*parsed.errors, *ref_errors]
    if errors:
        raise FeedError("; ".join(str(e) for e in errors))
    known = _known(session, ids)
    for r in records:
        have = known.get(r.identity)
        if have is not None:
            for name in have.attributes:
                if name in managed and name not in r.attributes:
                    r.attributes[name] = None  # cleared at the source
    events, _, warnings = _row_events(
        records,
        known,
        (source, now, workspace.config.time.zones(), {}),
        _pending(session, EventKind.TERMINATE, "accepted", now, ids),
        _pending(session, EventKind.TERMINATE, "held", now, ids),
        _pending(session, EventKind.HIRE, "accepted", now, ids),
    )
    outcome = record_events(
        session,
        workspace.config,
        events,
        origin=source,
        now=now,
        flags=flags,
        stored=known,
        recent=recent,
    )
    outcome.warnings[:0] = warnings
    return outcome
