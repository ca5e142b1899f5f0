"""Identity lifecycle: events with effective dates folded into a state, bitemporally.

Does: define lifecycle states and events, give every event a content key (so a duplicate is the
same event), and compute an identity's state, attributes, employment period and timeline as of
any valid time and any knowledge time, by folding its events in effective-date order. The fold
is a pure function of the *set* of events, so arrival order and duplicates never change the
outcome. Transitions that are not possible at their point in time are kept in the timeline with
a note and change nothing.
Does not: read or write storage, decide whether a change must be held for approval, or know
anything about access.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any


class LifecycleState(StrEnum):
    PRE_HIRE = "pre-hire"
    ACTIVE = "active"
    LEAVE = "leave"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


class EventKind(StrEnum):
    HIRE = "hire"
    MOVE = "move"
    CONVERT = "convert"
    LEAVE = "leave"
    RETURN = "return"
    SUSPEND = "suspend"
    RESUME = "resume"
    TERMINATE = "terminate"
    REHIRE = "rehire"
    RESCIND = "rescind"


# Changes after which access may have to go at once (policy decides what leave and suspend
# take away): the engine plans them before other work.
ENDS_ACCESS = frozenset({EventKind.TERMINATE, EventKind.SUSPEND, EventKind.LEAVE})


class IdentityKind(StrEnum):
    HUMAN = "human"
    SERVICE_ACCOUNT = "service_account"
    API_KEY = "api_key"
    BOT = "bot"


# Standard attributes every identity may carry; anything else is kept as a free-form attribute.
STANDARD_ATTRIBUTES = (
    "name",
    "email",
    "department",
    "title",
    "location",
    "cost_centre",
    "manager",
    "employment_type",
    "kind",
    "owner",
)

# When two events share an effective instant, they apply in this order: someone hired and moved
# on the same day is moved after the hire; a same-day termination comes after everything else,
# and a same-day rehire after the termination it follows.
_KIND_ORDER = {
    EventKind.HIRE: 0,
    EventKind.CONVERT: 1,
    EventKind.MOVE: 2,
    EventKind.RETURN: 3,
    EventKind.RESUME: 4,
    EventKind.LEAVE: 5,
    EventKind.SUSPEND: 6,
    EventKind.TERMINATE: 7,
    EventKind.REHIRE: 8,
    EventKind.RESCIND: 9,
}

_ALLOWED_FROM: dict[EventKind, frozenset[LifecycleState | None]] = {
    EventKind.HIRE: frozenset({None, LifecycleState.PRE_HIRE}),
    EventKind.MOVE: frozenset(
        {LifecycleState.ACTIVE, LifecycleState.LEAVE, LifecycleState.SUSPENDED}
    ),
    EventKind.CONVERT: frozenset(
        {LifecycleState.ACTIVE, LifecycleState.LEAVE, LifecycleState.SUSPENDED}
    ),
    EventKind.LEAVE: frozenset({LifecycleState.ACTIVE}),
    EventKind.RETURN: frozenset({LifecycleState.LEAVE}),
    EventKind.SUSPEND: frozenset({LifecycleState.ACTIVE, LifecycleState.LEAVE}),
    EventKind.RESUME: frozenset({LifecycleState.SUSPENDED}),
    EventKind.TERMINATE: frozenset(
        {LifecycleState.ACTIVE, LifecycleState.LEAVE, LifecycleState.SUSPENDED}
    ),
    EventKind.REHIRE: frozenset({LifecycleState.TERMINATED}),
}

_STATE_AFTER: dict[EventKind, LifecycleState | None] = {
    EventKind.HIRE: LifecycleState.ACTIVE,
    EventKind.MOVE: None,  # unchanged
    EventKind.CONVERT: None,
    EventKind.LEAVE: LifecycleState.LEAVE,
    EventKind.RETURN: LifecycleState.ACTIVE,
    EventKind.SUSPEND: LifecycleState.SUSPENDED,
    EventKind.RESUME: LifecycleState.ACTIVE,
    EventKind.TERMINATE: LifecycleState.TERMINATED,
    EventKind.REHIRE: LifecycleState.ACTIVE,
}

DEFAULT_RESCIND_WINDOW = timedelta(days=30)
# Identity ids never start with this: the operation journal names an orphan account's
# operations (an account linked to no identity) "orphan:<account>".
ORPHAN_PREFIX = "orphan:"


@lru_cache(maxsize=65536)  # a feed's days in each of its people's zones
def _utc_text(value: datetime) -> str:
    # Only ever given UTC datetimes: two equal instants in other zones would share an entry.
    return value.isoformat()


def utc_text(value: datetime) -> str:
    """``utc(value).isoformat()``, remembered: events and audit entries spell the same few
    instants (today, the hire dates of a feed) over and over."""
    return _utc_text(utc(value))


def utc(value: datetime | date) -> datetime:
    """Return ``value`` as an aware UTC datetime; a bare date means midnight UTC of that day."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
).encode


# canonical_json of a string: what the encoder above does with one, without its method call.
_canonical_text = json.encoder.encode_basestring


def canonical_json(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no spaces, UTF-8 kept as is."""
    # None (an absent ref or state) is common in keys and audit entries, and the encoder only
    # short-cuts strings.
    return "null" if value is None else _canonical(value)


def canonical_text(value: str | None) -> str:
    """canonical_json of a string or None, for the many short ones keys and audit entries hold."""
    if value is None:
        return "null"
    return _canonical_text(value) if type(value) is str else _canonical(value)


def _mapping_encoder() -> Callable[[dict[str, Any]], str]:
    """canonical_json of a dict through one C encoder made once, where the json module has
    one: ``JSONEncoder.encode`` makes a new one for every call, which is a third of encoding
    the attributes of an HR row. The same encoder (same settings) gives the same text; a test
    compares the two."""
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _canonical
    # No circular-reference check (markers=None): attributes are parsed JSON or feed values,
    # and a cycle would still end in a RecursionError rather than in wrong output.
    try:
        encode = make(None, str, _canonical_text, None, ":", ",", True, False, True)
    except TypeError:  # a json module whose C encoder takes other arguments
        return _canonical

    def canonical_mapping(value: dict[str, Any]) -> str:
        return "".join(encode(value, 0))

    return canonical_mapping


canonical_mapping = _mapping_encoder()
_KIND_JSON = {kind: canonical_json(str(kind)) for kind in EventKind}


def event_key(
    identity: str,
    kind: EventKind,
    effective: datetime,
    attributes: Mapping[str, Any],
    ref: str | None = None,
) -> str:
    """Content key of an event: the same change reported twice has the same key."""
    return _key(identity, kind, effective, canonical_json(dict(attributes)), ref)


def _key(
    identity: str, kind: EventKind, effective: datetime, attributes_json: str, ref: str | None
) -> str:
    # The canonical JSON of {"identity", "kind", "effective", "attributes", "ref"}, spelled out
    # in sorted key order so that the attributes' JSON (which audit entries reuse) is encoded
    # once per event; a test checks it against canonical_json of the whole.
    kind_json = _KIND_JSON.get(kind) or canonical_json(str(kind))
    body = (
        f'{{"attributes":{attributes_json},"effective":"{utc_text(effective)}",'
        f'"identity":{canonical_text(identity)},"kind":{kind_json},'
        f'"ref":{canonical_text(ref)}}}'
    )
    return hashlib.sha256(body.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class LifecycleEvent:
    """One reported lifecycle change of one identity, effective at ``effective``."""

    identity: str
    kind: EventKind
    effective: datetime
    recorded: datetime
    attributes: Mapping[str, Any] = field(default_factory=dict)
    ref: str | None = None
    source: str = ""
    key: str = ""
    # the local time ``effective`` was given as (``days.Local`` text, 2026-12-31T24:00), when it
    # was one: in another zone it is another instant. Not part of the key.
    local: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "effective", utc(self.effective))
        object.__setattr__(self, "recorded", utc(self.recorded))
        if not self.key:
            key = _key(self.identity, self.kind, self.effective, self.attributes_json, self.ref)
            object.__setattr__(self, "key", key)

    @property
    def attributes_json(self) -> str:
        """The attributes as canonical JSON, as the key hashes them."""
        cached: str | None = self.__dict__.get("_attributes_json")
        if cached is None:
            cached = canonical_mapping(dict(self.attributes))
            # Kept beside the fields (not one of them: equality and repr ignore it).
            object.__setattr__(self, "_attributes_json", cached)
        return cached

    def sort_key(self) -> tuple[datetime, int, str]:
        return (self.effective, _KIND_ORDER[self.kind], self.key)


def new_event(
    identity: str,
    kind: EventKind,
    effective: datetime,
    recorded: datetime,
    attributes: Mapping[str, Any],
    ref: str | None,
    source: str,
    local: str | None = None,
) -> LifecycleEvent:
    """``LifecycleEvent(identity, kind, effective, recorded, attributes, ref, source, "",
    local)``, built
    without the frozen-dataclass ``__init__`` (which sets each field through
    ``object.__setattr__``): an import makes one per changed row, and that constructor is a
    quarter of the cost of making an event. It must set every field the constructor sets, and
    the same key (a test compares the two)."""
    event = object.__new__(LifecycleEvent)
    effective = utc(effective)
    attributes_json = canonical_mapping(
        attributes if type(attributes) is dict else dict(attributes)
    )
    event.__dict__.update(
        identity=identity,
        kind=kind,
        effective=effective,
        recorded=utc(recorded),
        attributes=attributes,
        ref=ref,
        source=source,
        key=_key(identity, kind, effective, attributes_json, ref),
        local=local,
        _attributes_json=attributes_json,
    )
    return event


@dataclass(frozen=True)
class TimelineEntry:
    """What one event did (or why it did nothing) in the fold."""

    event: LifecycleEvent
    applied: bool
    state_before: LifecycleState | None
    state_after: LifecycleState | None
    changes: Mapping[str, tuple[Any, Any]]
    note: str = ""


@dataclass(frozen=True)
class Rescinded:
    """A termination voided by a rescind: which, when each took effect, and when the person
    next changed after the rescind (``None``: not yet)."""

    termination: str  # the termination event's key
    terminated_at: datetime
    at: datetime  # the rescind's effective instant
    changed_at: datetime | None = None


@dataclass(frozen=True)
class IdentityState:
    """An identity as of ``as_of`` (valid time), as known at ``known_at`` (record time)."""

    identity: str
    state: LifecycleState | None
    attributes: Mapping[str, Any]
    employment_start: datetime | None
    terminated_at: datetime | None
    state_since: datetime | None
    next_change: datetime | None
    timeline: tuple[TimelineEntry, ...]
    as_of: datetime
    known_at: datetime | None
    # a pre-hire's start: when the hire takes effect (known from the history only)
    starts_at: datetime | None = None
    # the latest rescind that voided a termination (known from the history only)
    rescinded: Rescinded | None = None

    @property
    def kind(self) -> str:
        return str(self.attributes.get("kind") or IdentityKind.HUMAN)

    @property
    def exists(self) -> bool:
        return self.state is not None

    def anomalies(self) -> list[TimelineEntry]:
        return [t for t in self.timeline if not t.applied]


def _merge(attributes: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    diff: dict[str, tuple[Any, Any]] = {}
    for name, value in changes.items():
        old = attributes.get(name)
        if value is None:
            if name in attributes:
                del attributes[name]
                diff[name] = (old, None)
        elif old != value:
            attributes[name] = value
            diff[name] = (old, value)
    return diff


def _voided(
    events: list[LifecycleEvent], window: timedelta
) -> tuple[dict[str, LifecycleEvent], dict[str, str]]:
    """The event each rescind voids (by the rescind's key), and a note for each rescind that
    voids nothing.

    A rescind names the termination it cancels (``ref``) or, without one, cancels the latest
    termination effective at or before it. It only counts within ``window`` of the termination's
    effective date; later, the person must be rehired instead. A rescind may also name a hire
    that has not taken effect yet (a start date moved: the hire is recorded again at the new
    one); one that has taken effect cannot be undone so.
    """
    voided: dict[str, LifecycleEvent] = {}
    notes: dict[str, str] = {}
    rescinds = [e for e in events if e.kind is EventKind.RESCIND]
    if not rescinds:
        return voided, notes
    terminations = sorted(
        (e for e in events if e.kind is EventKind.TERMINATE), key=LifecycleEvent.sort_key
    )
    hires = {e.key: e for e in events if e.kind is EventKind.HIRE}
    for rescind in sorted(rescinds, key=LifecycleEvent.sort_key):
        hire = hires.get(rescind.ref or "")
        if hire is not None:
            # a hire not yet in effect when the rescind was made (and as of when it is)
            if hire.effective > max(rescind.effective, rescind.recorded):
                voided[rescind.key] = hire
            else:
                notes[rescind.key] = "the hire has taken effect; terminate instead"
            continue
        if rescind.ref:
            candidates = [t for t in terminations if t.key == rescind.ref]
        else:
            candidates = [t for t in terminations if t.effective <= rescind.effective][-1:]
        if not candidates:
            notes[rescind.key] = "no termination to rescind"
            continue
        target = candidates[0]
        if rescind.effective - target.effective > window:
            notes[rescind.key] = (
                f"rescind window of {window.days} days after the termination effective "
                f"{target.effective.date().isoformat()} has passed; rehire instead"
            )
            continue
        voided[rescind.key] = target
    return voided, notes


def _known_events(
    identity: str, events: Iterable[LifecycleEvent], known: datetime | None
) -> list[LifecycleEvent]:
    """The identity's events recorded by ``known`` (all when None), each key once (the first
    recording of a change twice recorded), in effective order."""
    unique: dict[str, LifecycleEvent] = {}
    for event in events:
        if event.identity != identity:
            raise ValueError(f"event {event.key} belongs to {event.identity}, not {identity}")
        if known is not None and event.recorded > known:
            continue
        seen = unique.get(event.key)
        if seen is None or event.recorded < seen.recorded:
            unique[event.key] = event
    return sorted(unique.values(), key=LifecycleEvent.sort_key)


def _refusal(
    event: LifecycleEvent,
    before: LifecycleState | None,
    voided: Container[str],
    ordered: Sequence[LifecycleEvent],
) -> str | None:
    """Why ``event`` does not take effect from state ``before``, or None when it does."""
    if event.key in voided:
        return "rescinded: never took effect"
    withdrawn_offer = (
        event.kind is EventKind.TERMINATE
        and before is None
        and any(e.kind is EventKind.HIRE and e.effective > event.effective for e in ordered)
    )
    if before not in _ALLOWED_FROM[event.kind] and not withdrawn_offer:
        shown = before.value if before is not None else "unknown (no hire recorded)"
        return f"{event.kind.value} is not possible from state {shown}"
    return None


def _took_back(voided: LifecycleEvent | None, rescind: LifecycleEvent) -> Rescinded | None:
    """What ``rescind`` took back when it voided a termination that had taken effect."""
    if voided is None or voided.kind is not EventKind.TERMINATE:
        return None
    if voided.effective > rescind.effective:
        return None  # a pending termination called off: nothing had ended
    return Rescinded(voided.key, voided.effective, rescind.effective)


def fold(
    identity: str,
    events: Iterable[LifecycleEvent],
    *,
    as_of: datetime,
    known_at: datetime | None = None,
    rescind_window: timedelta = DEFAULT_RESCIND_WINDOW,
) -> IdentityState:
    """Fold an identity's events into its state as of ``as_of``, counting only events recorded
    at or before ``known_at`` (all events when ``None``). Duplicates (same key) count once."""
    as_of = utc(as_of)
    known = utc(known_at) if known_at is not None else None
    ordered = _known_events(identity, events, known)
    voiding, rescind_notes = _voided(ordered, rescind_window)
    voided = {t.key for t in voiding.values()}

    state: LifecycleState | None = None
    attributes: dict[str, Any] = {}
    employment_start: datetime | None = None
    terminated_at: datetime | None = None
    state_since: datetime | None = None
    next_change: datetime | None = None
    starts_at: datetime | None = None
    rescinded: Rescinded | None = None
    timeline: list[TimelineEntry] = []

    for event in ordered:
        if event.effective > as_of:
            counts = event.kind is not EventKind.RESCIND and event.key not in voided
            if next_change is None and counts:
                next_change = event.effective
            if event.kind is EventKind.HIRE and state is None and event.key not in voided:
                # A known future hire: the person exists in pre-hire with the hire's attributes.
                state = LifecycleState.PRE_HIRE
                starts_at = event.effective
                _merge(attributes, event.attributes)
            continue
        before = state
        if event.kind is EventKind.RESCIND:
            note = rescind_notes.get(event.key, "")
            timeline.append(TimelineEntry(event, not note, before, before, {}, note))
            rescinded = _took_back(voiding.get(event.key), event) or rescinded
            continue
        refused = _refusal(event, before, voided, ordered)
        if refused is not None:
            timeline.append(TimelineEntry(event, False, before, before, {}, refused))
            continue
        changes = _merge(attributes, event.attributes)
        after = _STATE_AFTER[event.kind] or before
        if event.kind in (EventKind.HIRE, EventKind.REHIRE):
            employment_start = event.effective
            terminated_at = None
        elif event.kind is EventKind.TERMINATE:
            terminated_at = event.effective
        if after != before:
            state_since = event.effective
        if rescinded is not None and rescinded.changed_at is None and (changes or after != before):
            rescinded = replace(rescinded, changed_at=event.effective)
        state = after
        timeline.append(TimelineEntry(event, True, before, after, changes))

    return IdentityState(
        identity=identity,
        state=state,
        attributes=attributes,
        employment_start=employment_start,
        terminated_at=terminated_at,
        state_since=state_since,
        next_change=next_change,
        starts_at=starts_at,
        rescinded=rescinded,
        timeline=tuple(timeline),
        as_of=as_of,
        known_at=known,
    )
