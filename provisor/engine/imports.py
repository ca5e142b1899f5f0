"""Importing an HR feed: from parsed rows to recorded lifecycle events.

Does: parse a feed file with its workspace mapping, check what needs the store (owners of
non-human identities exist and are human; managers are known, else flagged), turn a snapshot into
the events that make the store match it (hires, moves, conversions, leaves, returns, rehires,
future-dated and missing-person terminations) or take an events file as it is, record them with
the mass-change guard, and keep an import record and an audit event with the counts; take a
partial snapshot from a source that is no file (``record_people``: inbound SCIM) the same way.
Does not: parse formats itself (``provisor.sources.hr``) or compute access.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from provisor.domain.lifecycle import (
    EventKind,
    LifecycleEvent,
    LifecycleState,
    canonical_json,
    new_event,
)
from provisor.engine.holds import Recent
from provisor.engine.identities import Outcome, record_events
from provisor.engine.workspace import Workspace
from provisor.errors import ConfigError, FeedError
from provisor.evidence import audit
from provisor.sources.hr import (
    FeedMapping,
    FeedMode,
    FeedRecord,
    ParsedFeed,
    RowError,
    parse_feed,
    parse_lines,
)
from provisor.store.bulk import chunks, collector_paused
from provisor.store.models import Identity, IdentityEvent, Import

Progress = Callable[[str], None]


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
) -> dict[str, str]:
    """identity -> key of its accepted future ``kind`` event (or any held one); of ``ids``
    only, when given."""
    query = select(IdentityEvent.identity, IdentityEvent.key).where(
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
    return {identity: key for identity, key in session.execute(query)}


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


@dataclass
class _Events:
    """The events a snapshot yields, and what it warns about."""

    source: str
    now: datetime
    events: list[LifecycleEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(
        self,
        r: FeedRecord,
        kind: EventKind,
        when: datetime,
        attrs: dict[str, Any] | None = None,
        ref: str | None = None,
    ) -> None:
        self.events.append(
            new_event(r.identity, kind, when, self.now, attrs or {}, ref, f"{self.source}:{r.line}")
        )


def _snapshot_events(
    records: list[FeedRecord],
    known: dict[str, _Known],
    feed: str,
    source: str,
    now: datetime,
    future_terminations: dict[str, str],
    held_terminations: dict[str, str],
    rejected: frozenset[str],
    unidentified: int,
) -> tuple[list[LifecycleEvent], int, int, list[str]]:
    found = _Events(source, now)
    unchanged = 0
    for r in records:
        before = len(found.events)
        status = r.status or _ACTIVE
        if not _state_events(found, r, status, known.get(r.identity)):
            continue
        if status != _TERMINATED and r.identity not in held_terminations:
            _end_events(found, r, future_terminations.get(r.identity))
        if len(found.events) == before:
            unchanged += 1
    if unidentified:
        # A rejected row whose id could not be read may be anyone: nobody is taken for a leaver.
        found.warnings.append(
            f"{source}: {unidentified} rejected rows have no readable id, so nobody missing "
            "from this snapshot is terminated; fix those rows and import again"
        )
        known = {}
    listed = ({r.identity for r in records} | rejected) if known else rejected
    missing = 0
    for identity, have in known.items():
        if (
            identity not in listed
            and have.feed == feed
            and have.state not in (None, LifecycleState.TERMINATED)
            and identity not in held_terminations
        ):
            missing += 1
            where = f"{source}: missing from snapshot"
            found.events.append(
                LifecycleEvent(identity, EventKind.TERMINATE, now, now, {}, None, where)
            )
    return found.events, unchanged, missing, found.warnings


def _state_events(found: _Events, r: FeedRecord, status: str, have: _Known | None) -> bool:
    """The events that bring the stored state to the row's; False when the row is ignored
    (a leaver who was never imported)."""
    now = found.now
    if have is None or have.state is None:
        if status == _TERMINATED:
            found.warnings.append(
                f"{found.source}:{r.line} {r.identity} is listed as terminated but was "
                "never imported; ignored"
            )
            return False
        start = r.effective or now
        # The hire (nearly every row of a first import) is added here rather than by add().
        where = f"{found.source}:{r.line}"
        found.events.append(
            new_event(r.identity, _HIRE, start, now, r.attributes or {}, None, where)
        )
        if status != _ACTIVE:
            _status_events(r, status, _ACTIVE, max(start, now), found.add)
    elif have.state == _TERMINATED:
        if status != _TERMINATED:
            later = r.effective and have.terminated_at and r.effective > have.terminated_at
            when = r.effective if later and r.effective else now
            found.add(r, EventKind.REHIRE, when, r.attributes)
            if status != _ACTIVE:
                _status_events(r, status, _ACTIVE, max(when, now), found.add)
    else:
        when = now
        if have.state == _PRE_HIRE and have.next_change_at is not None:
            when = max(now, have.next_change_at)
        changes = {k: v for k, v in r.attributes.items() if have.attributes.get(k) != v}
        converted = changes.pop("employment_type", None)
        if converted is not None:
            found.add(r, EventKind.CONVERT, when, {"employment_type": converted})
        if changes:
            found.add(r, EventKind.MOVE, when, changes)
        _status_events(r, status, have.state, when, found.add)
    return True


def _end_events(found: _Events, r: FeedRecord, pending: str | None) -> None:
    """A future end date becomes a future termination (rescinding a different one pending);
    an end date taken away rescinds the pending one."""
    end = r.end
    if end is not None and end > found.now:
        candidate = LifecycleEvent(r.identity, EventKind.TERMINATE, end, found.now)
        if pending != candidate.key:
            if pending is not None:
                found.add(r, EventKind.RESCIND, found.now, ref=pending)
            found.add(r, EventKind.TERMINATE, end)
    elif end is None and pending is not None:
        found.add(r, EventKind.RESCIND, found.now, ref=pending)


def _status_events(
    r: FeedRecord,
    status: str,
    current: str,
    when: datetime,
    add: Callable[..., None],
) -> None:
    """Events that move ``current`` to the row's ``status``."""
    if status == LifecycleState.TERMINATED and current != LifecycleState.TERMINATED:
        add(r, EventKind.TERMINATE, r.end or when)
        return
    for kind in _STEPS.get((current, status), ()):
        add(r, kind, when)


def _check_references(
    parsed: ParsedFeed, session: Any, file_ids: set[str], now: datetime
) -> tuple[list[FeedRecord], list[RowError], list[RowError], dict[str, list[str]]]:
    """Owners must be known humans (row refused otherwise); unknown managers, people who are
    their own manager and chains of managers that come back round are flagged."""
    owners = {r.attributes.get("owner") for r in parsed.records}
    refs = owners | {r.attributes.get("manager") for r in parsed.records}
    wanted = sorted(str(v) for v in refs if v and v not in file_ids)
    referenced = _known(session, wanted)
    stored = {k: v.kind for k, v in referenced.items()}
    # The kind of each identity named as an owner: the stored one, else its row's in this file.
    named = {str(v) for v in owners if v}
    kinds = {
        r.identity: str(r.attributes.get("kind") or "human")
        for r in parsed.records
        if r.identity in named
    }
    kinds.update(stored)
    accepted: list[FeedRecord] = []
    errors: list[RowError] = []
    warnings: list[RowError] = []
    flags: dict[str, list[str]] = {}
    for r in parsed.records:
        owner = r.attributes.get("owner")
        if owner and kinds.get(str(owner)) != "human":
            why = "is not a known identity" if owner not in kinds else "is not a human"
            errors.append(
                RowError(
                    parsed.file,
                    r.line,
                    "owner",
                    f"owner {owner} {why}; a non-human identity needs an accountable human owner",
                )
            )
            continue
        manager = r.attributes.get("manager")
        if manager and manager not in file_ids and manager not in stored:
            warnings.append(
                RowError(
                    parsed.file,
                    r.line,
                    "manager",
                    f"manager {manager} is unknown; accepted and flagged",
                )
            )
            flags[r.identity] = [f"unknown manager {manager}"]
        accepted.append(r)
    loops = _manager_loops(session, accepted, referenced)
    for r in accepted:
        loop = loops.get(r.identity)
        if loop is None:
            continue
        why = (
            "is their own manager"
            if len(loop) == 1
            else "is in a loop of managers: " + " -> ".join([*loop, loop[0]])
        )
        warnings.append(RowError(parsed.file, r.line, "manager", f"{r.identity} {why}; flagged"))
        flags.setdefault(r.identity, []).append(
            "own manager" if len(loop) == 1 else "manager loop " + " -> ".join(loop)
        )
    return accepted, errors, warnings, flags


def _manager_loops(
    session: Any, records: list[FeedRecord], referenced: dict[str, _Known]
) -> dict[str, list[str]]:
    """Identities of ``records`` whose chain of managers comes back to them, each with its
    loop. The chain follows this file's rows, then the store (one query per level of people
    only the store knows)."""
    boss = {r.identity: str(m) for r in records if (m := r.attributes.get("manager"))}
    level, asked = referenced, set(referenced)
    while level:
        wanted: set[str] = set()
        for identity, known in level.items():
            manager = (known.attributes or {}).get("manager")
            if manager and identity not in boss:
                boss[identity] = str(manager)
                if manager not in boss and manager not in asked:
                    wanted.add(str(manager))
        asked |= wanted
        level = _known(session, sorted(wanted)) if wanted else {}
    loops: dict[str, list[str]] = {}
    done: set[str] = set()
    for start in boss:
        path: list[str] = []
        on_path: set[str] = set()
        at: str | None = start
        while at is not None and at not in done and at not in on_path:
            path.append(at)
            on_path.add(at)
            at = boss.get(at)
        if at is not None and at in on_path:
            loop = path[path.index(at) :]
            for member in loop:
                loops[member] = loop[loop.index(member) :] + loop[: loop.index(member)]
        done |= on_path
    return loops


@dataclass
class _FeedEvents:
    """A feed's events, with the rows that changed nothing, the people missing from a
    snapshot, the identities known to have a row (None: not read) and warnings."""

    events: list[LifecycleEvent]
    unchanged: int = 0
    missing: int = 0
    stored: Container[str] | None = None
    warnings: list[str] = field(default_factory=list)


def _feed_events(
    session: Any,
    mode: FeedMode,
    records: list[FeedRecord],
    feed_name: str,
    path: Path,
    now: datetime,
    parsed: ParsedFeed,
    rejected: frozenset[str],
) -> _FeedEvents:
    """The lifecycle events a feed's accepted rows stand for: a snapshot compared with what is
    stored, or an events file taken as written."""
    if mode is FeedMode.SNAPSHOT:
        known = _known(session, None)
        events, unchanged, missing, warnings = _snapshot_events(
            records,
            known,
            feed_name,
            f"{feed_name}:{path.name}",
            now,
            _pending(session, EventKind.TERMINATE, "accepted", now),
            _pending(session, EventKind.TERMINATE, "held", now),
            rejected,
            parsed.unidentified_rejects,
        )
        # every identity that has a row is known: the recording looks up no other
        return _FeedEvents(events, unchanged, missing, known, warnings)
    else:
        where = f"{feed_name}:{path.name}"
        events = [
            LifecycleEvent(
                r.identity, r.event, r.effective, now, r.attributes, r.ref, f"{where}:{r.line}"
            )
            for r in records
            if r.event is not None and r.effective is not None
        ]
    return _FeedEvents(events)


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
    # none of them until it ends, so the cyclic collector would run again and again to find
    # nothing: it is paused (a third of the parsing time, a tenth of the whole on a large
    # feed) and restarted afterwards if it was running.
    with collector_paused():
        return _import(workspace, path, feed, mode, now, progress)


def _import(
    workspace: Workspace,
    path: Path,
    feed: str | None,
    mode: FeedMode | None,
    now: datetime,
    progress: Progress | None,
) -> ImportReport:
    feed_name, mapping = feed_mapping(workspace, feed)
    if mode is not None:
        mapping = mapping.model_copy(update={"mode": mode})
    say = progress or (lambda _stage: None)
    say("reading")
    parsed = parse_feed(path, mapping)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = f"import {feed_name}:{path.name}"
    with workspace.sessions() as session, session.begin():
        record = Import(
            file=str(path), sha256=digest, feed=feed_name, mode=mapping.mode.value, started_at=now
        )
        session.add(record)
        session.flush()
        say("checking")
        file_ids = {r.identity for r in parsed.records}
        records, ref_errors, ref_warnings, flags = _check_references(parsed, session, file_ids, now)
        rejected = parsed.rejected_ids
        if ref_errors:
            rejected = rejected | (file_ids - {r.identity for r in records})
        errors = [str(e) for e in (*parsed.errors, *ref_errors)]
        warnings = [str(w) for w in (*parsed.warnings, *ref_warnings)]
        say("comparing")
        found = _feed_events(session, mapping.mode, records, feed_name, path, now, parsed, rejected)
        events, unchanged, missing = found.events, found.unchanged, found.missing
        warnings += found.warnings
        say("recording")
        outcome = record_events(
            session,
            workspace.config,
            events,
            origin=source,
            now=now,
            import_id=record.id,
            flags=flags,
            stored=found.stored,
        )
        counts = {str(kind): n for kind, n in Counter(e.kind for e in events).items()}
        report = ImportReport(
            file=str(path),
            feed=feed_name,
            mode=mapping.mode.value,
            rows_read=parsed.rows_read,
            rows_accepted=len(records),
            errors=errors,
            warnings=warnings + outcome.warnings,
            outcome=outcome,
            import_id=record.id,
            missing=missing,
            unchanged=unchanged,
            counts=counts,
        )
        record.finished_at = now
        record.counts = {
            k: v for k, v in report.as_dict().items() if k not in ("errors", "warnings")
        }
        audit.record(
            session,
            "import.completed",
            f"import {record.id}",
            {**record.counts, "sha256": digest, "errors": len(errors)},
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
    parsed = parse_lines(text, mapping, name=source)
    ids = sorted({r.identity for r in parsed.records})
    records, ref_errors, _, flags = _check_references(parsed, session, set(ids), now)
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
    events, _, _, warnings = _snapshot_events(
        records,
        known,
        feed,
        source,
        now,
        _pending(session, EventKind.TERMINATE, "accepted", now, ids),
        _pending(session, EventKind.TERMINATE, "held", now, ids),
        frozenset(),
        0,
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
