"""HR feed files (snapshot or events, CSV or JSON Lines) parsed into records, row by row.

Does: read a feed file as UTF-8 (with or without BOM), map its columns to Provisor fields,
normalise values (trimmed, NFC; a date as the local time its day rule gives, a date-time as
a local wall time or, with an offset, an instant: ``provisor.domain.days``) and validate
each row on its own (required fields, the mapping's declared ones included; no control
character in any value; lengths within the store's and the mapping's limits; a time zone
attribute naming a zone), so a bad row is reported by file, line
and column and skipped while the other rows still come through. A whole file is refused
(``FeedError``) only when it cannot be read, lacks required columns, or is a snapshot that
names nobody. A large CSV text may be read in parts, each on its own (``csv_parts`` says
where to cut, ``parse_csv_part`` reads one), and put together as one reading gives it
(``combine``).
Does not: read or write storage, compare records with stored identities, or check that a
manager or owner exists; the engine does all of that with the records this module returns.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from provisor.domain.days import (
    START_OF_DAY,
    DayRule,
    Local,
    TimeError,
    parse_value,
    read_when,
    rule_for,
    zone,
)
from provisor.domain.lifecycle import (
    ORPHAN_PREFIX,
    STANDARD_ATTRIBUTES,
    EventKind,
    IdentityKind,
)
from provisor.errors import FeedError

When = Local | datetime  # a local time, or an instant in UTC


class FeedMode(StrEnum):
    SNAPSHOT = "snapshot"  # every person, as they are now; someone absent has left
    EVENTS = "events"  # one lifecycle change per row, several rows per person allowed


_BASE_FIELDS = ("id", *STANDARD_ATTRIBUTES)
_MODE_FIELDS: dict[FeedMode, tuple[str, ...]] = {
    FeedMode.SNAPSHOT: (*_BASE_FIELDS, "status", "start_date", "end_date"),
    FeedMode.EVENTS: (*_BASE_FIELDS, "event", "effective", "ref"),
}
_FIELDS = frozenset(_MODE_FIELDS[FeedMode.SNAPSHOT] + _MODE_FIELDS[FeedMode.EVENTS])
_REQUIRED: dict[FeedMode, tuple[str, ...]] = {
    FeedMode.SNAPSHOT: ("id", "name"),
    FeedMode.EVENTS: ("id", "event", "effective"),
}
# Lengths the store keeps for these fields (identities and events tables).
_MAX_LENGTH = {"id": 128, "name": 256, "email": 320, "manager": 128, "owner": 128, "ref": 64}
# Control characters (NUL and the like; tab and line breaks are text) are refused in values:
# no field means them, and some databases refuse them (PostgreSQL's JSON: NUL).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_STATUSES = ("active", "leave", "suspended", "terminated")
_KINDS = tuple(k.value for k in IdentityKind)
_NON_HUMAN = frozenset(_KINDS) - {IdentityKind.HUMAN.value}
_EVENT_KINDS = {k.value: k for k in EventKind}
# One @, a non-empty local part, a domain with a dot inside it, and no spaces.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
# An accepted effective date this far from today is probably a typo, so it is warned about.
_WARN_PAST = timedelta(days=5 * 365)
_WARN_FUTURE = timedelta(days=2 * 365)
# strptime directives that read a time of day (or a zone)
_TIME_DIRECTIVE = re.compile(r"%[HIMSfpzZcX]")
_NONE: dict[str, Any] = {}


def _day(value: Local | datetime) -> date:
    """The calendar day a value is on (an instant's, in UTC)."""
    return value.day if isinstance(value, Local) else value.date()


def _rough(value: Local | datetime) -> datetime:
    """An instant near a value, for warnings: a local time as if in UTC."""
    return value.instant(UTC) if isinstance(value, Local) else value


class FeedMapping(BaseModel):
    """How to read one HR feed (from the workspace configuration): mode, format, column names."""

    model_config = ConfigDict(extra="forbid")

    mode: FeedMode = FeedMode.SNAPSHOT
    # "auto" decides by file extension: .csv, or .jsonl / .ndjson / .json (one object a line).
    format: Literal["auto", "csv", "jsonl"] = "auto"
    # Provisor field -> column name in the file; a field not listed is read from its own name.
    columns: dict[str, str] = Field(default_factory=dict)
    # A strptime format for every date column; None means ISO 8601 (date or date-time).
    date_format: str | None = None
    # In the person's local time (``time`` in provisor.yaml), a start_date begins at the start
    # of its day or at a local time such as 09:00; an end_date is the last working day, so
    # access ends at the end of its day unless set to start_of_day or a local time (18:00).
    # An events feed's effective date takes end_at for a terminate, start_at for a hire or
    # rehire, and the start of its day for any other event. Date-times are taken as written.
    start_at: str = "start_of_day"
    end_at: str = "end_of_day"
    delimiter: str = ","
    # Columns that are no Provisor field become free-form attributes ("keep") or are dropped.
    extra_attributes: Literal["keep", "ignore"] = "keep"
    # Fields or columns a row must have besides the mode's own (e.g. the attributes targets
    # correlate on: [email]); in an events feed, hires and rehires must.
    required: list[str] = Field(default_factory=list)
    # The longest value kept, in characters: per field or column, and for every other value.
    max_length: dict[str, int] = Field(default_factory=dict)
    max_value_length: int = Field(default=1024, ge=1)

    @field_validator("max_length")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = sorted(name for name, limit in value.items() if limit < 1)
        if bad:
            raise ValueError(f"a length limit is at least 1 (see {', '.join(bad)})")
        return value

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - _FIELDS)
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(unknown)}; fields are {', '.join(sorted(_FIELDS))}"
            )
        cleaned: dict[str, str] = {}
        for name, column in value.items():
            column = _nfc(column.strip())
            if not column:
                raise ValueError(f"field {name} is mapped to an empty column name")
            cleaned[name] = column
        return cleaned

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1 or value in '"\r\n':
            raise ValueError("the delimiter is one character, neither a quote nor a line break")
        return value

    @field_validator("start_at", "end_at")
    @classmethod
    def _day_rule(cls, value: str) -> str:
        return str(DayRule.read(value))

    @field_validator("date_format")
    @classmethod
    def _strptime_format(cls, value: str | None) -> str | None:
        if value is not None and "%" not in value:
            raise ValueError("date_format is a strptime format such as %d/%m/%Y")
        return value


@dataclass(frozen=True)
class RowError:
    """One problem with one row (or, for warnings, something worth a look) of a feed file."""

    file: str
    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        if self.column is None:
            return f"{self.file}:{self.line}: {self.reason}"
        return f"{self.file}:{self.line} {self.column}: {self.reason}"


@dataclass(frozen=True)
class FeedRecord:
    """One valid row of a feed.

    ``line`` is where the record starts in the file. ``effective`` is the event's effective
    date in events mode and the hire date (``start_date``) in snapshot mode; ``end`` is the
    snapshot's termination date (``end_date``), past or planned, and None in events mode.
    Each is a local time (``Local``: a date taken by the feed's day rule, or a date-time
    written without an offset), which the engine places in the person's zone, or an instant
    (written with an offset), in UTC.
    """

    line: int
    identity: str
    event: EventKind | None
    effective: When | None
    status: str | None
    attributes: dict[str, Any]
    ref: str | None = None
    end: When | None = None


@dataclass(frozen=True)
class ParsedFeed:
    """Everything read from one feed file: the valid records and every row that was not."""

    file: str
    mode: FeedMode
    rows_read: int
    records: list[FeedRecord]
    errors: list[RowError]
    warnings: list[RowError]
    # ids of rejected rows, and how many rejected rows had no readable id: a snapshot import
    # must not take a person whose row was rejected for someone who left.
    rejected_ids: frozenset[str] = frozenset()
    unidentified_rejects: int = 0


Sink = Callable[[list[FeedRecord]], None]


def parse_feed(
    path: Path,
    mapping: FeedMapping,
    *,
    display_name: str | None = None,
    sink: Sink | None = None,
    batch: int = 20_000,
    zone_attribute: str | None = None,
) -> ParsedFeed:
    """Parse and validate the feed at ``path``; ``display_name`` names it in every message.
    With ``sink``, valid records go to it ``batch`` at a time as they are read, so that no
    more are held at once, and the result holds none: the records of an id that turns out
    to be on several rows (``rejected_ids``) have gone to the sink too, and it is the
    caller's to leave them out. ``zone_attribute``: the attribute holding people's time
    zones (its values are checked)."""
    file, fmt, text = feed_text(path, mapping, display_name)
    return parse_text(
        text, fmt, mapping, file=file, sink=sink, batch=batch, zone_attribute=zone_attribute
    )


def parse_text(
    text: str,
    fmt: Literal["csv", "jsonl"],
    mapping: FeedMapping,
    *,
    file: str,
    sink: Sink | None = None,
    batch: int = 20_000,
    zone_attribute: str | None = None,
) -> ParsedFeed:
    """``parse_feed`` of a feed's text already read (``feed_text``)."""
    parser = _RowParser(file, mapping, zone_attribute)
    if sink is not None:
        parser.stream(sink, batch)
    parser.inspect(text)
    if fmt == "csv":
        _parse_csv(text, parser)
    else:
        _parse_jsonl(text, parser)
    if sink is not None:
        parser.hand_over()
    part = parser.part()
    refuse_empty(file, mapping, part.rows_read)
    return combine(file, mapping, [part])


def refuse_empty(file: str, mapping: FeedMapping, rows_read: int) -> None:
    """A snapshot that names nobody is refused whole: importing it would terminate
    everyone."""
    if mapping.mode is FeedMode.SNAPSHOT and rows_read == 0:
        raise FeedError(
            f"{file}: the snapshot has no people; importing it would terminate everyone, "
            "so it is refused"
        )


def feed_text(
    path: Path, mapping: FeedMapping, display_name: str | None = None
) -> tuple[str, Literal["csv", "jsonl"], str]:
    """A feed file's name in messages, its format and its whole text (``FeedError`` when it
    cannot be read or its format cannot be told)."""
    file = display_name if display_name is not None else str(path)
    fmt = mapping.format
    if fmt == "auto":
        found = _FORMAT_BY_SUFFIX.get(path.suffix.lower())
        if found is None:
            raise FeedError(
                f"{file}: cannot tell the format from the extension '{path.suffix}'; name the "
                "file .csv or .jsonl, or set format: csv or format: jsonl in the feed mapping"
            )
        fmt = "csv" if found == "csv" else "jsonl"
    return file, fmt, _read_text(path, file)


def parse_lines(
    text: str, mapping: FeedMapping, *, name: str, zone_attribute: str | None = None
) -> ParsedFeed:
    """Parse and validate JSON Lines already in memory, by the rules of a feed file: a source
    that is no file (the inbound SCIM server's people) is checked exactly as a feed is."""
    parser = _RowParser(name, mapping, zone_attribute)
    parser.inspect(text)
    _parse_jsonl(text, parser)
    return combine(name, mapping, [parser.part()])


def _now() -> datetime:
    return datetime.now(UTC)


def _control_in(value: Any) -> str | None:
    """The first control character in a value (text, or text inside a list or object)."""
    if isinstance(value, str):
        found = _CONTROL.search(value)
        return found.group() if found else None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        for item in value:
            found_in = _control_in(item)
            if found_in is not None:
                return found_in
    return None


def _nfc(value: str) -> str:
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def _read_text(path: Path, file: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FeedError(f"{file}: cannot read the feed: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FeedError(
            f"{file}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}, "
            f"line {line}); export the feed as UTF-8"
        ) from exc
    # Whole-text NFC equals value-by-value NFC for CSV: delimiters, quotes and line breaks are
    # starters that compose with nothing, so no normalisation crosses a field boundary.
    return unicodedata.normalize("NFC", text)


def new_record(
    line: int,
    identity: str,
    event: EventKind | None,
    effective: When | None,
    status: str | None,
    attributes: dict[str, Any],
    ref: str | None,
    end: When | None,
) -> FeedRecord:
    """A FeedRecord built without the frozen-dataclass ``__init__``, which sets each field
    through ``object.__setattr__`` and costs a sixth of the time spent on a valid row. It must
    set every field of FeedRecord (a test compares it with the real constructor)."""
    record = object.__new__(FeedRecord)
    record.__dict__.update(
        line=line,
        identity=identity,
        event=event,
        effective=effective,
        status=status,
        attributes=attributes,
        ref=ref,
        end=end,
    )
    return record


class _RowParser:
    """Turns one row's values into a record or row errors, and collects both.

    Readers hand over each row as ``values``: the fields this mode reads, by field name, then
    the extra columns kept as attributes, by column name; non-empty trimmed values only. With
    it come ``present`` (every column the row has, empty or not) and ``errors`` (problems the
    reader already found). The row handlers pop the record's own fields out of ``values``,
    and what remains is the record's attributes. Valid rows are the common case, so the
    checks run straight through and build messages only for what is wrong.
    """

    def __init__(self, file: str, mapping: FeedMapping, zone_attribute: str | None) -> None:
        self.file = file
        self.zone_attribute = zone_attribute
        self.mode = mapping.mode
        self.fields = _MODE_FIELDS[mapping.mode]
        self.column = {name: mapping.columns.get(name, name) for name in _FIELDS}
        declared = tuple(n for n in mapping.required if n not in _REQUIRED[mapping.mode])
        for name in declared:
            self.column.setdefault(name, name)
        # a snapshot row always needs the declared fields; an events row, on a hire or rehire
        snapshot = mapping.mode is FeedMode.SNAPSHOT
        self.required = _REQUIRED[mapping.mode] + (declared if snapshot else ())
        self.declared = () if snapshot else declared
        self.required_set = frozenset(self.required)
        # The length limits of the fields this mode reads.
        self.limits = [(n, limit) for n, limit in _MAX_LENGTH.items() if n in self.fields]
        self.value_limits = dict(mapping.max_length)
        self.max_value_length = mapping.max_value_length
        # Set by ``inspect``: whether any value may hold a control character or be too long
        # (most files have neither, and their rows are then not scanned value by value).
        self.controls = False
        self.long_values = False
        # the row being handled spans several lines (a quoted value with line breaks): its
        # values may be long although no line is
        self.spans_lines = False
        self.keep_extra = mapping.extra_attributes == "keep"
        self.delimiter = mapping.delimiter
        self.date_format = mapping.date_format
        if mapping.date_format is None:
            self.date_hint = "YYYY-MM-DD or an ISO 8601 date-time"
        else:
            example = datetime(2024, 1, 31, 9, 30).strftime(mapping.date_format)
            self.date_hint = f"{mapping.date_format} (e.g. {example})"
        self.start_rule = DayRule.read(mapping.start_at)
        self.end_rule = DayRule.read(mapping.end_at)
        # a format without a time of day gives dates (taken by a day rule); with one, local
        # wall times (with %z, instants)
        self.dates_only = mapping.date_format is not None and not _TIME_DIRECTIVE.search(
            mapping.date_format
        )
        # valid dates seen so far, by day rule: raw text -> what it means
        self.dates: dict[DayRule, dict[str, When]] = {}
        now = _now()
        self.too_old = now - _WARN_PAST
        self.too_new = now + _WARN_FUTURE
        self.rows_read = 0
        self.records: list[FeedRecord] = []
        self.errors: list[RowError] = []
        self.warnings: list[RowError] = []
        self.first_line: dict[str, int] = {}
        self.duplicate_lines: dict[str, list[int]] = {}
        self.rejected_ids: set[str] = set()
        self.unidentified = 0
        self.row = self._snapshot_row if mapping.mode is FeedMode.SNAPSHOT else self._event_row
        self._sink: Sink | None = None
        self.irregular = False  # a record ran on over several lines or could not be read

    def stream(self, sink: Sink, batch: int) -> None:
        """Hand valid records to ``sink`` every ``batch`` rows instead of keeping them."""
        self._sink = sink
        handle = self.row

        def row(
            line: int, values: dict[str, Any], present: Container[str], errors: list[RowError]
        ) -> None:
            handle(line, values, present, errors)
            if len(self.records) >= batch:
                self.hand_over()

        self.row = row

    def hand_over(self) -> None:
        """The records read so far, to the sink."""
        if self._sink is not None and self.records:
            self._sink(self.records)
            self.records = []

    # Columns ------------------------------------------------------------------------------

    def columns(self) -> list[tuple[str, str]]:
        """(field, column) for every field this mode reads."""
        return [(name, self.column[name]) for name in self.fields]

    def ignored_column(self, column: str) -> str | None:
        """Why a column that no field of this mode reads is ignored, or None if it is extra."""
        for name in sorted(_FIELDS):
            if self.column[name] == column and name not in self.fields:
                return f"column '{column}' ({name}) is not used in {self.mode} feeds; ignored"
        if column in _FIELDS:
            return f"column '{column}' is ignored: {column} is read from '{self.column[column]}'"
        return None

    def inspect(self, text: str) -> None:
        """Look over the whole text once: must values be scanned for control characters or
        lengths? (A JSON escape such as ``\\u0000`` counts: it decodes to one.)"""
        escaped = "\\u00" in text or "\\u007f" in text or "\\u007F" in text
        self.controls = escaped or _CONTROL.search(text) is not None
        shortest = min([self.max_value_length, *self.value_limits.values()])
        self.long_values = max(map(len, text.split("\n")), default=0) > shortest

    def missing_columns(self, columns: Container[str]) -> list[str]:
        return [self.column[name] for name in self.required if self.column[name] not in columns]

    def warn(self, line: int, column: str | None, reason: str) -> None:
        self.warnings.append(RowError(self.file, line, column, reason))

    def error(self, line: int, column: str | None, reason: str) -> None:
        """A row refused before its id could be read."""
        self.errors.append(RowError(self.file, line, column, reason))
        self.unidentified += 1

    # Rows ---------------------------------------------------------------------------------

    def _reject(self, identity: str | None, errors: list[RowError]) -> None:
        self.errors.extend(errors)
        if identity is None:
            self.unidentified += 1
        else:
            self.rejected_ids.add(identity)

    def _bad(self, errors: list[RowError], line: int, name: str, reason: str) -> None:
        errors.append(RowError(self.file, line, self.column[name], reason))

    def _date(
        self, errors: list[RowError], line: int, name: str, raw: str, rule: DayRule
    ) -> When | None:
        """Parse a date the cache (``self.dates``, valid dates only) does not hold yet."""
        try:
            value: date | datetime
            if self.date_format is None:
                value = parse_value(raw)
            else:
                value = datetime.strptime(raw, self.date_format)
                if self.dates_only:
                    value = value.date()
            when = read_when(value, rule)
        except (ValueError, OverflowError):  # TimeError too
            self._bad(errors, line, name, f"invalid date '{raw}'; expected {self.date_hint}")
            return None
        self.dates.setdefault(rule, {})[raw] = when
        return when

    def _check(
        self, line: int, values: dict[str, Any], present: Container[str], errors: list[RowError]
    ) -> None:
        """Checks every mode shares: required values present; kind, email and owner valid."""
        if not self.required_set <= values.keys():
            for name in self.required:
                if name not in values:
                    column = self.column[name]
                    if any(e.column == column for e in errors):
                        continue  # the reader already said what is wrong with it
                    if column in present:
                        self._bad(errors, line, name, "required value is empty")
                    else:
                        self._bad(errors, line, name, "required field is missing")
        kind = values.get("kind")
        if kind is not None:
            if kind.lower() in _KINDS:
                values["kind"] = kind.lower()
            else:
                reason = f"unknown kind '{kind}'; expected one of {', '.join(_KINDS)}"
                self._bad(errors, line, "kind", reason)
        email = values.get("email")
        if email is not None and _EMAIL.fullmatch(email) is None:
            reason = f"invalid email '{email}'; expected an address like name@example.com"
            self._bad(errors, line, "email", reason)
        identity = values.get("id")
        if identity is not None and identity.startswith(ORPHAN_PREFIX):
            reason = (
                f"id '{identity}' starts with '{ORPHAN_PREFIX}', which names accounts "
                "linked to no identity"
            )
            self._bad(errors, line, "id", reason)
        owner = values.get("owner")
        if owner is not None and owner == values.get("id"):
            reason = f"owner {owner} is the identity itself; the owner must be someone else"
            self._bad(errors, line, "owner", reason)
        for name, limit in self.limits:
            value = values.get(name)
            if isinstance(value, str) and len(value) > limit:
                reason = f"{len(value)} characters; at most {limit} are kept"
                self._bad(errors, line, name, reason)
        if self.controls or self.long_values or self.spans_lines:
            self._scan(line, values, errors)
        if self.zone_attribute is not None:
            self._zone(line, values, errors)

    def _zone(self, line: int, values: dict[str, Any], errors: list[RowError]) -> None:
        """The time zone attribute, when the row has it, names a zone."""
        name = self.zone_attribute or ""
        value = values.get(name)
        if value is None:
            return
        try:
            zone(value if isinstance(value, str) else "")
        except TimeError:
            reason = f"unknown time zone {value!r}; expected an IANA name such as Europe/London"
            errors.append(RowError(self.file, line, self.column.get(name, name), reason))

    def _scan(self, line: int, values: dict[str, Any], errors: list[RowError]) -> None:
        """Every value of a row: no control character, no longer than its limit."""
        said = {e.column for e in errors}
        for key, value in values.items():
            column = self.column.get(key, key)
            if column in said:
                continue
            found = _control_in(value) if self.controls else None
            if found is not None:
                reason = (
                    f"control character U+{ord(found):04X} in the value; "
                    "only printable text is accepted"
                )
                errors.append(RowError(self.file, line, column, reason))
                continue
            if (self.long_values or self.spans_lines) and isinstance(value, str):
                limit = self.value_limits.get(key) or self.value_limits.get(column)
                limit = limit or self.max_value_length
                if len(value) > limit:
                    reason = (
                        f"{len(value)} characters; at most {limit} are accepted "
                        "(max_length in the feed mapping)"
                    )
                    errors.append(RowError(self.file, line, column, reason))

    def _needs_owner(self, errors: list[RowError], line: int, values: dict[str, Any]) -> None:
        kind = values.get("kind")
        if kind in _NON_HUMAN and "owner" not in values:
            self._bad(errors, line, "owner", f"a {kind} needs an owner (the id of a person)")

    def _snapshot_row(
        self, line: int, values: dict[str, Any], present: Container[str], errors: list[RowError]
    ) -> None:
        self._check(line, values, present, errors)
        identity: str | None = values.pop("id", None)
        if identity is not None:
            first = self.first_line.setdefault(identity, line)
            if first != line:
                self.duplicate_lines.setdefault(identity, [first]).append(line)
        status: str | None = values.pop("status", None)
        if status is not None and status not in _STATUSES:
            if status.lower() in _STATUSES:
                status = status.lower()
            else:
                reason = f"unknown status '{status}'; expected one of {', '.join(_STATUSES)}"
                self._bad(errors, line, "status", reason)
        raw_start = values.pop("start_date", None)
        raw_end = values.pop("end_date", None)
        start = end = None
        if raw_start:
            rule = self.start_rule
            start = self.dates.get(rule, _NONE).get(raw_start) or self._date(
                errors, line, "start_date", raw_start, rule
            )
        if raw_end:
            rule = self.end_rule
            end = self.dates.get(rule, _NONE).get(raw_end) or self._date(
                errors, line, "end_date", raw_end, rule
            )
        if start is not None and end is not None and _day(end) < _day(start):
            reason = f"end_date {raw_end} is before start_date {raw_start}"
            self._bad(errors, line, "end_date", reason)
        if "kind" in values:
            self._needs_owner(errors, line, values)
        if errors or identity is None:
            self._reject(identity, errors)
            return
        self.records.append(new_record(line, identity, None, start, status, values, None, end))

    def _event_row(
        self, line: int, values: dict[str, Any], present: Container[str], errors: list[RowError]
    ) -> None:
        self._check(line, values, present, errors)
        identity: str | None = values.pop("id", None)
        raw_event = values.pop("event", None)
        raw = values.pop("effective", None)
        ref: str | None = values.pop("ref", None)
        event: EventKind | None = None
        if raw_event is not None:
            event = _EVENT_KINDS.get(raw_event.lower())
            if event is None:
                reason = f"unknown event '{raw_event}'; expected one of {', '.join(_EVENT_KINDS)}"
                self._bad(errors, line, "event", reason)
            elif event is EventKind.HIRE or event is EventKind.REHIRE:
                self._needs_owner(errors, line, values)
                for name in self.declared:
                    if name not in values:
                        reason = f"a {event} needs {name} (required in the feed mapping)"
                        self._bad(errors, line, name, reason)
                if event is EventKind.HIRE and "name" not in values:
                    self._bad(errors, line, "name", "a hire needs a name")
            elif event is EventKind.CONVERT and "employment_type" not in values:
                self._bad(
                    errors, line, "employment_type", "a convert needs the new employment_type"
                )
        effective = None
        if raw:
            rule = rule_for(event, self.start_rule, self.end_rule) if event else START_OF_DAY
            effective = self.dates.get(rule, _NONE).get(raw) or self._date(
                errors, line, "effective", raw, rule
            )
        if errors or identity is None:
            self._reject(identity, errors)
            return
        rough = _rough(effective) if effective is not None else None
        if rough is not None and not self.too_old <= rough <= self.too_new:
            when = "over 5 years in the past" if rough < self.too_old else "over 2 years ahead"
            self.warn(line, self.column["effective"], f"effective {raw} is {when}")
        if ref is not None and event is not EventKind.RESCIND:
            reason = "ref is ignored: only a rescind names the event it cancels"
            self.warn(line, self.column["ref"], reason)
            ref = None
        self.records.append(new_record(line, identity, event, effective, None, values, ref, None))

    def part(self) -> FeedPart:
        """What this parser read, for ``combine``."""
        return FeedPart(
            self.rows_read,
            self.records,
            self.errors,
            self.warnings,
            self.rejected_ids,
            self.unidentified,
            self.first_line,
            self.duplicate_lines,
            self.column["id"],
            self.irregular,
        )


@dataclass
class FeedPart:
    """What one parser read of a feed: of the whole file, or of one part of a large one read
    beside the others (``provisor.engine.spill``). ``irregular``: a record ran on over
    several lines or could not be read, so where the parts meet cannot be trusted."""

    rows_read: int
    records: list[FeedRecord]
    errors: list[RowError]
    warnings: list[RowError]
    rejected_ids: set[str]
    unidentified: int
    first_line: dict[str, int]  # every id read, at the line it is first on
    duplicate_lines: dict[str, list[int]]  # ids on several lines of this part: every line
    id_column: str
    irregular: bool = False


def combine(file: str, mapping: FeedMapping, parts: list[FeedPart]) -> ParsedFeed:
    """The feed as one parse of its whole text gives it, from its parts in file order: an id
    on several rows (in one part or across them) refused on each, every problem in line
    order."""
    rows_read = sum(part.rows_read for part in parts)
    # one part (every feed but a large CSV one): its lists as they are, not copied
    records = parts[0].records if len(parts) == 1 else [r for p in parts for r in p.records]
    errors = [e for part in parts for e in part.errors]
    rejected = set().union(*(part.rejected_ids for part in parts))
    duplicates = _duplicates(parts)
    if duplicates:
        records = [r for r in records if r.identity not in duplicates]
        column = parts[0].id_column
        for identity, lines in duplicates.items():
            for line in lines:
                others = [str(other) for other in lines if other != line]
                where = "line" if len(others) == 1 else "lines"
                reason = f"duplicate id {identity} also on {where} {', '.join(others)}"
                errors.append(RowError(file, line, column, reason))
            rejected.add(identity)
    return ParsedFeed(
        file,
        mapping.mode,
        rows_read,
        records,
        sorted(errors, key=lambda e: e.line),
        sorted((w for part in parts for w in part.warnings), key=lambda e: e.line),
        frozenset(rejected),
        sum(part.unidentified for part in parts),
    )


def _duplicates(parts: list[FeedPart]) -> dict[str, list[int]]:
    """Every id on several rows of the feed, with all its lines in order."""
    if len(parts) == 1:
        return parts[0].duplicate_lines
    before: set[str] = set()
    several: set[str] = set()  # on several rows: in one part, or in more than one
    for part in parts:
        several |= part.duplicate_lines.keys()
        several |= part.first_line.keys() & before
        before |= part.first_line.keys()
    return {
        identity: [
            line
            for part in parts
            if identity in part.first_line
            for line in part.duplicate_lines.get(identity) or [part.first_line[identity]]
        ]
        for identity in several
    }


_LINE_END = re.compile(r"\r\n?|\n")


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their ends (``\n``, ``\r\n`` or ``\r``), one at a time, as
    a universal-newline reader splits them: a file's text read at once is not copied again
    (an ``io.StringIO`` of it takes four bytes a character)."""
    start, size = 0, len(text)
    if "\r" not in text:
        find = text.find
        while start < size:
            end = find("\n", start) + 1 or size
            yield text[start:end]
            start = end
        return
    for found in _LINE_END.finditer(text):
        end = found.end()
        yield text[start:end]
        start = end
    if start < size:
        yield text[start:]


def parse_csv_part(
    text: str,
    mapping: FeedMapping,
    *,
    file: str,
    shift: int,
    sink: Sink,
    batch: int,
    zone_attribute: str | None,
) -> FeedPart:
    """One part of a large CSV feed (``csv_parts``): its header's lines, then rows that are
    ``shift`` lines further down in the file, their valid records handed to ``sink``."""
    parser = _RowParser(file, mapping, zone_attribute)
    parser.stream(sink, batch)
    parser.inspect(text)
    _parse_csv(text, parser, shift)
    parser.hand_over()
    return parser.part()


@dataclass(frozen=True)
class Cuts:
    """Where a CSV text is cut into parts read on their own (``csv_parts``)."""

    header: str  # the lines up to and including the header: every later part starts with them
    lines: int  # how many lines those are
    parts: list[tuple[int, int]]  # each later part: its offset, and how far its rows move down


def csv_parts(text: str, count: int, delimiter: str, lead: int = 0) -> Cuts | None:
    """Where a CSV text may be cut into ``count`` parts of about one size (the first ``lead``
    characters longer), each read on its own: at a line break with an even number of quotes
    before it (outside any quoted value, as far as the quotes tell), looked for over the
    next lines, else where planned (a stray quote in an unquoted value throws the count
    off). A cut inside a quoted value is found out by the reader of the part before it,
    which ends in the middle of that value (``FeedPart.irregular``): the caller then reads
    the whole text at once. Fewer parts when the text runs out; None when there would be
    one, or no header, or a quote in or before the header."""
    header_end = _header_end(text, delimiter)
    if header_end is None:
        return None
    above = _line_count(text, header_end)
    parts: list[tuple[int, int]] = []
    at, quotes = header_end, 0  # quotes before ``at``
    for k in range(1, count):
        planned = text.find("\n", max(at, lead + (len(text) - lead) * k // count)) + 1
        if not planned or planned >= len(text):
            break
        cut, before = planned, quotes + text.count('"', at, planned)
        for _ in range(_LOOK_FURTHER):
            further = text.find("\n", cut) + 1
            if before % 2 == 0 or not further:
                break
            cut, before = further, before + text.count('"', cut, further)
        if before % 2:
            cut, before = planned, quotes + text.count('"', at, planned)
        if cut >= len(text):
            break
        parts.append((cut, _line_count(text, cut) - above))
        at, quotes = cut, before
    return Cuts(text[:header_end], above, parts) if parts else None


_LOOK_FURTHER = 1_000  # line breaks tried after a planned cut that seems to be in a quoted value


def _header_end(text: str, delimiter: str) -> int | None:
    """Where the header line ends (the first line with a value, as ``_parse_csv`` finds
    it); None when there is none, or a quote in it or before it."""
    at = 0
    for line in _lines(text):
        if '"' in line:
            return None
        if any(cell.strip() for cell in line.rstrip("\r\n").split(delimiter)):
            return at + len(line)
        at += len(line)
    return None


def _line_count(text: str, end: int) -> int:
    """Line breaks in ``text`` before ``end``."""
    if "\r" not in text:
        return text.count("\n", 0, end)
    return sum(1 for _ in _LINE_END.finditer(text, 0, end))


def _parse_csv(text: str, parser: _RowParser, shift: int = 0) -> None:
    """Hand every CSV record to ``parser`` with the line it starts on (``shift`` more, after
    the header, when the text is a part of a file: its header, then rows from further on)."""
    # Strict, so that a quote left open at the end of the file is an error rather than a last
    # value that silently swallows every row after it.
    reader = csv.reader(_lines(text), delimiter=parser.delimiter, strict=True)
    header: list[str] | None = None
    index: list[tuple[str, int]] = []
    present: frozenset[str] = frozenset()
    width = 0
    end = moved = 0
    handle = parser.row
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            start, end = end + 1, reader.line_num + moved
            parser.irregular = True
            _csv_error(parser, exc, start, end, header is None)
            continue
        start, end = end + 1, reader.line_num + moved
        if header is None:
            if any(cell.strip() for cell in row):
                header = [_nfc(cell.strip()) for cell in row]
                width = len(header)
                present = frozenset(header)
                index = _csv_columns(header, start, parser)
                end, moved = end + shift, shift
            continue
        if end > start:
            parser.irregular = True
        if len(row) != width:
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            parser.rows_read += 1
            reason = f"expected {width} fields, found {len(row)}"
            if end > start:
                reason += f" (the record runs on to line {end}; is a quote left open?)"
            parser.error(start, None, reason)
            continue
        if end > start and (swallowed := _swallowed_rows(row, parser.delimiter)) is not None:
            parser.rows_read += 1
            reason = (
                f"the quoted value runs on to line {end} and holds what look like whole rows; "
                "is a quote left open?"
            )
            parser.error(start, header[swallowed] or None, reason)
            continue
        values: dict[str, Any] = {key: v for key, i in index if (v := row[i].strip())}
        if not values and not any(cell.strip() for cell in row):
            continue  # a row of empty cells
        parser.rows_read += 1
        parser.spans_lines = end > start
        handle(start, values, present, [])


def _swallowed_rows(row: list[str], delimiter: str) -> int | None:
    """Index of a multi-line value one of whose lines has as many delimiters as a whole row:
    a quote opened by mistake and closed by another one rows later, swallowing the rows
    between (which would then look absent from the feed)."""
    needed = len(row) - 1
    if needed < 1:
        return None
    for i, cell in enumerate(row):
        if ("\n" in cell or "\r" in cell) and any(
            part.count(delimiter) >= needed for part in cell.splitlines()
        ):
            return i
    return None


def _csv_error(parser: _RowParser, exc: csv.Error, start: int, end: int, in_header: bool) -> None:
    """A record the csv module cannot read: a row error when it stays on its own line, else
    (the quoting has gone astray, so later rows cannot be trusted) the whole file is refused."""
    if "end of data" in str(exc):
        what = "a quoted value is never closed"
    elif "field limit" in str(exc):
        what = "a value is too long (is a quote left open?)"
    else:
        what = f"the record cannot be read ({exc})"
    if end > start or in_header:
        raise FeedError(
            f"{parser.file}:{start}: {what}; the record runs on to line {end}, so the rest of "
            "the file cannot be trusted. Fix the quoting and export the feed again"
        ) from exc
    parser.rows_read += 1
    parser.error(start, None, what)


def _csv_columns(header: list[str], line: int, parser: _RowParser) -> list[tuple[str, int]]:
    """Check a CSV header; return (key, index) of each column read: fields by field name, then
    kept extras by column name."""
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise FeedError(f"{parser.file}:{line}: column '{name}' appears twice in the header")
        seen.add(name)
    missing = parser.missing_columns(seen)
    if missing:
        found = ", ".join(name for name in header if name) or "(none)"
        raise FeedError(
            f"{parser.file}: missing required column(s) {', '.join(missing)} for a "
            f"{parser.mode} feed; columns found: {found}. A column named differently is "
            "mapped to its field under 'columns' in the feed mapping"
        )
    position = {name: i for i, name in enumerate(header)}
    columns = parser.columns()
    index = [(field, position[column]) for field, column in columns if column in position]
    read = {column for _, column in columns}
    for i, name in enumerate(header):
        if not name or name in read:
            continue
        why = parser.ignored_column(name)
        if why is not None:
            parser.warn(line, name, why)
        elif parser.keep_extra:
            index.append((name, i))
    return index


def _json_text(value: Any) -> str | None:
    """A JSON scalar as trimmed text ('' for null), or None when it is not a scalar."""
    if isinstance(value, str):
        return _nfc(value.strip())
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    return "a number"


def _parse_jsonl(text: str, parser: _RowParser) -> None:
    """Hand every JSON Lines object to ``parser``; a line that is no object is a row error."""
    columns = parser.columns()
    read = {column for _, column in columns}
    ignored: dict[str, str | None] = {}  # extra key -> why it is ignored, None when it is kept
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        parser.rows_read += 1
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            parser.error(number, None, f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            parser.error(number, None, f"not a JSON object (found {_json_type(obj)})")
            continue
        row: dict[str, Any] = {_nfc(str(key).strip()): value for key, value in obj.items()}
        errors: list[RowError] = []
        values: dict[str, Any] = {}
        for field, column in columns:
            if column not in row:
                continue
            value = _json_text(row[column])
            if value is None:
                reason = f"expected text, found {_json_type(row[column])}"
                errors.append(RowError(parser.file, number, column, reason))
            elif value:
                values[field] = value
        for key, value in row.items():
            if key in read or not key:
                continue
            if key not in ignored:
                ignored[key] = why = parser.ignored_column(key)
                if why is not None:
                    parser.warn(number, key, why)
            if ignored[key] is not None or not parser.keep_extra:
                continue
            kept = _nfc(value.strip()) if isinstance(value, str) else value
            if kept is not None and kept != "":
                values[key] = kept
        parser.row(number, values, row, errors)
