"""Calendar days and local times as HR means them, and the instants they stand for.

HR systems give days ("end_date 2026-12-31": the last working day) and wall-clock times in
somebody's local time, not instants. Does: say which time zone is a person's (``Zones``: an
identity attribute holding an IANA zone name, else a mapping from their location, else the
workspace's zone); read a day rule (``DayRule``: start of day, end of day, or a fixed local time
such as 18:00; ``rule_for``: which one an event's date takes) and a value as given in a feed
or on the command line (``parse_value``, ``read_when``: a bare date is a day, a date-time
without an offset a local wall time, one with an offset an instant taken as given); keep a
local time as text (``Local``: "2026-12-31T24:00" is the end of that day), turn it into the
instant it means in a zone (``Local.instant``), and show an instant with its zone
(``shown``). Local times that a
daylight-saving change skips are read with the offset from before the change (02:30 on a
spring-forward night is 03:30 in summer time: the instant is as far from the day's start as
the wall clock says); local times it repeats mean their first occurrence.
Does not: read files or the store, or decide whose attributes to ask (``sources.hr`` and
the engine do).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from provisor.domain.lifecycle import EventKind

DAY_SECONDS = 86_400
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)
_RULE = re.compile(r"(?P<hour>[01]?\d|2[0-4]):(?P<minute>[0-5]\d)")
_LOCAL = re.compile(
    r"(?P<day>\d{4}-\d{2}-\d{2})T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
)


class TimeError(ValueError):
    """A time zone, day rule or local time that cannot be read; the message says which."""


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (such as Europe/London); ``TimeError`` when unknown."""
    text = name.strip()
    try:
        if not text or text.startswith(("/", ".")) or ".." in text:
            raise ValueError
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise TimeError(
            f"unknown time zone {name!r}; expected an IANA name such as Europe/London"
        ) from None


@dataclass(frozen=True)
class DayRule:
    """When, on a given day, something dated that day takes effect: at ``seconds`` after the
    day's local start (0: its start; 86,400: its end, the next day's start)."""

    seconds: int

    @classmethod
    def read(cls, text: str) -> DayRule:
        """``start_of_day``, ``end_of_day`` or a local time ``HH:MM`` (24:00 is the end)."""
        value = text.strip().lower()
        if value == "start_of_day":
            return START_OF_DAY
        if value == "end_of_day":
            return END_OF_DAY
        found = _RULE.fullmatch(value)
        if found is None:
            raise TimeError(
                f"{text!r} is no day rule; expected start_of_day, end_of_day or a local time "
                "such as 18:00"
            )
        seconds = int(found["hour"]) * 3600 + int(found["minute"]) * 60
        if seconds > DAY_SECONDS:
            raise TimeError(f"{text!r} is no time of day; the latest is 24:00 (end_of_day)")
        return cls(seconds)

    def on(self, day: date) -> Local:
        return Local(day, self.seconds)

    def __str__(self) -> str:
        if self.seconds == 0:
            return "start_of_day"
        if self.seconds == DAY_SECONDS:
            return "end_of_day"
        return f"{self.seconds // 3600:02d}:{self.seconds % 3600 // 60:02d}"


START_OF_DAY = DayRule(0)
END_OF_DAY = DayRule(DAY_SECONDS)


@dataclass(frozen=True, order=True)
class Local:
    """A local wall-clock time: ``seconds`` after the start of ``day`` (up to 86,400, the end
    of the day), in whichever zone is the person's."""

    day: date
    seconds: int

    def instant(self, where: tzinfo) -> datetime:
        """The instant this local time is in ``where``, in UTC; the first or last instant
        a datetime holds when it lies beyond them (the end of 9999-12-31, HR's "no end
        date", is the last one)."""
        try:
            wall = datetime.combine(self.day, time()) + timedelta(seconds=self.seconds)
            return wall.replace(tzinfo=where).astimezone(UTC)
        except OverflowError:
            return _LAST if self.day.year > 1 else _FIRST

    @property
    def text(self) -> str:
        """As stored and shown: ``2026-12-31T24:00`` (seconds only when there are some)."""
        hours, rest = divmod(self.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        clock = f"{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
        return f"{self.day.isoformat()}T{clock}"

    @classmethod
    def parse(cls, text: str) -> Local:
        """The inverse of ``text``."""
        found = _LOCAL.fullmatch(text)
        if found is None:
            raise TimeError(f"{text!r} is no local time such as 2026-12-31T24:00")
        seconds = int(found["hour"]) * 3600 + int(found["minute"]) * 60
        seconds += int(found["second"] or 0)
        if seconds > DAY_SECONDS:
            raise TimeError(f"{text!r} is no local time: the latest is T24:00")
        return cls(date.fromisoformat(found["day"]), seconds)

    def __str__(self) -> str:
        return self.text


def read_when(value: datetime | date, rule: DayRule) -> Local | datetime:
    """A value as given: a date is a day, taken by ``rule``; a date-time without an offset is
    a local wall time; one with an offset is the instant it says (in UTC)."""
    if not isinstance(value, datetime):
        return rule.on(value)
    if value.tzinfo is None:
        midnight = datetime.combine(value.date(), time())
        return Local(value.date(), int((value - midnight).total_seconds()))
    return value.astimezone(UTC)


def parse_value(text: str) -> date | datetime:
    """ISO 8601 text as ``read_when`` takes it: a date, or a date-time with or without an
    offset; ``TimeError`` otherwise."""
    raw = text.strip()
    try:
        if "T" not in raw and " " not in raw and ":" not in raw:
            return date.fromisoformat(raw)
        return datetime.fromisoformat(raw)
    except ValueError:
        raise TimeError(
            f"{text!r} is not a date; use YYYY-MM-DD or an ISO 8601 date-time"
        ) from None


def rule_for(kind: EventKind, start: DayRule, end: DayRule) -> DayRule:
    """The day rule of an event's date: ``end`` (the last working day's) for a termination,
    ``start`` for a hire or rehire, the start of the day for any other change."""
    if kind is EventKind.TERMINATE:
        return end
    if kind is EventKind.HIRE or kind is EventKind.REHIRE:
        return start
    return START_OF_DAY


# a marker: a location not looked up yet (an instance of its own, never one of the zones)
_UNKNOWN = ZoneInfo.no_cache("UTC")


class Zones:
    """Whose zone is which: ``attribute`` (an identity attribute holding a zone name), else
    ``locations`` (an identity's ``location`` to a zone name, matched without regard to
    case), else ``default``. Asked for every row of a feed: what it has worked out once (a
    location's zone, a zone name's) it keeps."""

    def __init__(
        self,
        default: str = "UTC",
        attribute: str | None = None,
        locations: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.default = default
        self.attribute = attribute
        self.home = zone(default)
        # whether people can have zones of their own (else everyone's is ``default``)
        self.personal = attribute is not None or bool(locations)
        self._places = {place.strip().casefold(): zone(name) for place, name in locations}
        self._seen_places: dict[str, ZoneInfo | None] = {}

    def given(self, attributes: Mapping[str, Any] | None) -> ZoneInfo | None:
        """The zone ``attributes`` name (by the zone attribute, else the location), or None
        when they name none (a zone attribute naming no zone names none: feeds and typed
        events are refused such a value before it is stored)."""
        if not attributes:
            return None
        if self.attribute is not None:
            value = attributes.get(self.attribute)
            if isinstance(value, str) and value.strip():
                try:
                    return zone(value)
                except TimeError:
                    pass  # stored before the attribute held zones: it names none
        if self._places:
            place = attributes.get("location")
            if isinstance(place, str):
                seen = self._seen_places
                found = seen.get(place, _UNKNOWN)
                if found is _UNKNOWN:
                    if len(seen) > 10_000:
                        seen.clear()
                    found = seen[place] = self._places.get(place.strip().casefold())
                return found
        return None

    def of(self, *attributes: Mapping[str, Any] | None) -> ZoneInfo:
        """The zone of a person: the first of ``attributes`` (newest first) that names one,
        else the workspace's."""
        if self.personal:
            for each in attributes:
                found = self.given(each)
                if found is not None:
                    return found
        return self.home


@dataclass(frozen=True)
class Placed:
    """A date or date-time placed in time: the instant, the local time it was given as (None
    when it was given as an instant), and the zone it was placed in."""

    at: datetime
    local: str | None
    where: ZoneInfo

    @classmethod
    def of(cls, value: Local | datetime, where: ZoneInfo) -> Placed:
        if isinstance(value, Local):
            return cls(value.instant(where), value.text, where)
        return cls(value, None, where)

    def __str__(self) -> str:
        return shown(self.at, self.where)


def resolve(value: Local | datetime, where: ZoneInfo) -> datetime:
    """The instant of a value as ``read_when`` gives it."""
    return value.instant(where) if isinstance(value, Local) else value


def shown(value: datetime | str | None, where: ZoneInfo | None = None, empty: str = "") -> str:
    """An instant (or its ISO 8601 text, as views hand it over) as people read it, saying its
    zone: ``2026-12-31 16:00 PST (America/Los_Angeles)``, or in UTC when no zone is given;
    ``empty`` when there is none."""
    if value is None or value == "":
        return empty
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if where is None or where.key == "UTC":
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    local = value.astimezone(where)
    return f"{local.strftime('%Y-%m-%d %H:%M')} {local.tzname()} ({where.key})"
