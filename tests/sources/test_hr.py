"""HR feed parsing: the malformed-feed corpus in tests/data/feeds, mapping options, JSON Lines."""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from provisor.domain.days import END_OF_DAY, START_OF_DAY, Local
from provisor.domain.lifecycle import EventKind
from provisor.errors import FeedError
from provisor.sources import hr
from provisor.sources.hr import FeedMapping, FeedMode, FeedRecord, ParsedFeed, RowError, parse_feed

FEEDS = Path(__file__).resolve().parent.parent / "data" / "feeds"
SNAPSHOT = FeedMapping()
EVENTS = FeedMapping(mode=FeedMode.EVENTS)


@pytest.fixture(autouse=True)
def _fixed_today(monkeypatch: pytest.MonkeyPatch) -> None:
    """Far-past / far-future warnings are relative to today; pin today so they never drift."""
    monkeypatch.setattr(hr, "_now", lambda: datetime(2026, 11, 25, 12, 0, tzinfo=UTC))


def corpus(name: str, mapping: FeedMapping = SNAPSHOT) -> ParsedFeed:
    return parse_feed(FEEDS / name, mapping, display_name=name)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def day(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def first(year: int, month: int, day: int) -> Local:
    """A start date as read: the start of that day, in whoever's zone it turns out to be."""
    return START_OF_DAY.on(date(year, month, day))


def last(year: int, month: int, day: int) -> Local:
    """An end date as read: the last working day, so the end of that day."""
    return END_OF_DAY.on(date(year, month, day))


def messages(errors: list[RowError]) -> list[str]:
    return [str(e) for e in errors]


# The corpus ---------------------------------------------------------------------------------


def test_utf8_bom_is_not_part_of_the_first_column() -> None:
    feed = corpus("utf8-bom.csv")
    assert feed.file == "utf8-bom.csv"
    assert feed.mode is FeedMode.SNAPSHOT
    assert feed.rows_read == 2
    assert [(r.line, r.identity) for r in feed.records] == [(2, "E001"), (3, "E002")]
    assert feed.records[0].attributes == {"name": "Ann Example", "email": "ann@example.com"}
    assert feed.errors == [] and feed.warnings == []


def test_quoted_commas_and_newlines_keep_the_line_each_record_starts_on() -> None:
    feed = corpus("quoted-commas-newlines.csv")
    assert feed.errors == [] and feed.warnings == []
    assert feed.rows_read == 5
    assert [(r.line, r.identity) for r in feed.records] == [
        (2, "E001"),
        (3, "E002"),
        (5, "E003"),
        (6, "E004"),
        (9, "E005"),
    ]
    by_id = {r.identity: r.attributes for r in feed.records}
    assert by_id["E001"] == {
        "name": "Smith, Ann",
        "department": "Sales",
        "title": "Head of Sales, EMEA",
    }
    assert by_id["E002"]["title"] == "Engineer\nPlatform team"
    assert by_id["E003"]["name"] == 'Lee, "Chris"'
    assert by_id["E004"]["name"] == "Multi\nLine\nName"
    assert by_id["E005"]["name"] == "Dana White"


def test_unicode_names_are_kept_and_normalised_to_nfc() -> None:
    raw = (FEEDS / "unicode-names.csv").read_text(encoding="utf-8")
    assert "Jose\u0301" in raw and "Nun\u0303ez" in raw  # the file really is decomposed
    feed = corpus("unicode-names.csv")
    assert feed.errors == [] and feed.warnings == []
    names = {r.identity: r.attributes["name"] for r in feed.records}
    assert names == {
        "E001": "Zoë Ångström",
        "E002": "山田 太郎",
        "E003": "Jos\u00e9 Nu\u00f1ez",
        "E004": "Łukasz Żółć",
        "E005": "Nguyễn Thị Minh Khai",
    }
    e003 = feed.records[2].attributes
    assert e003["location"] == "Bogot\u00e1"
    assert all(
        unicodedata.is_normalized("NFC", value)
        for r in feed.records
        for value in r.attributes.values()
    )
    assert feed.records[1].attributes["location"] == "東京"


def test_duplicate_ids_reject_every_row_with_that_id() -> None:
    feed = corpus("duplicate-ids.csv")
    assert feed.rows_read == 8
    assert [(r.line, r.identity) for r in feed.records] == [(4, "E102"), (5, "E103"), (8, "E104")]
    assert messages(feed.errors) == [
        "duplicate-ids.csv:2 id: duplicate id E100 also on line 7",
        "duplicate-ids.csv:3 id: duplicate id E101 also on lines 6, 9",
        "duplicate-ids.csv:6 id: duplicate id E101 also on lines 3, 9",
        "duplicate-ids.csv:7 id: duplicate id E100 also on line 2",
        "duplicate-ids.csv:9 id: duplicate id E101 also on lines 3, 6",
    ]
    assert feed.errors[0] == RowError(
        "duplicate-ids.csv", 2, "id", "duplicate id E100 also on line 7"
    )


def test_a_manager_missing_from_the_file_is_not_an_error_here() -> None:
    feed = corpus("unknown-manager.csv")
    assert feed.errors == [] and feed.warnings == []
    assert [r.attributes.get("manager") for r in feed.records] == [None, "E001", "E999"]


def test_missing_required_columns_refuse_the_file() -> None:
    with pytest.raises(FeedError) as caught:
        corpus("missing-columns.csv")
    message = str(caught.value)
    assert message.startswith("missing-columns.csv: missing required column(s) id, name ")
    assert "columns found: employee, full_name, email" in message
    assert caught.value.exit_code == 4


def test_missing_columns_are_named_as_mapped() -> None:
    mapping = FeedMapping(columns={"id": "employee_no", "name": "Full Name"})
    with pytest.raises(FeedError, match=r"missing required column\(s\) employee_no, Full Name "):
        corpus("missing-columns.csv", mapping)


def test_missing_columns_parse_once_mapped() -> None:
    feed = corpus(
        "missing-columns.csv", FeedMapping(columns={"id": "employee", "name": "full_name"})
    )
    assert feed.errors == [] and feed.warnings == []
    assert [(r.identity, r.attributes) for r in feed.records] == [
        ("E001", {"name": "Ann Example", "email": "ann@example.com"}),
        ("E002", {"name": "Bob Example", "email": "bob@example.com"}),
    ]


def test_dates_far_in_the_past_or_future_are_accepted_with_a_warning() -> None:
    feed = corpus("dates-past-future.csv", EVENTS)
    assert feed.errors == []
    assert [(r.line, r.identity, r.event, r.effective) for r in feed.records] == [
        (2, "E001", EventKind.HIRE, first(1998, 3, 1)),
        (3, "E001", EventKind.TERMINATE, last(2001, 12, 31)),
        (4, "E002", EventKind.HIRE, day(2099, 1, 1, 7)),  # 09:00+02:00
        (5, "E003", EventKind.HIRE, day(2000, 1, 1, 0, 30)),  # 23:30-01:00 the day before
    ]
    assert all(isinstance(r.effective, Local) or r.effective.tzinfo is UTC for r in feed.records)
    assert messages(feed.warnings) == [
        "dates-past-future.csv:2 effective: effective 1998-03-01 is over 5 years in the past",
        "dates-past-future.csv:3 effective: effective 2001-12-31 is over 5 years in the past",
        "dates-past-future.csv:4 effective: effective 2099-01-01T09:00:00+02:00 is over 2 years "
        "ahead",
        "dates-past-future.csv:5 effective: effective 1999-12-31T23:30:00-01:00 is over 5 years "
        "in the past",
    ]


@pytest.mark.parametrize("name", ["empty.csv", "header-only.csv"])
def test_an_events_feed_without_rows_is_empty(name: str) -> None:
    feed = corpus(name, EVENTS)
    assert feed == ParsedFeed(name, FeedMode.EVENTS, 0, [], [], [])


@pytest.mark.parametrize("name", ["empty.csv", "header-only.csv"])
def test_a_snapshot_without_people_is_refused(name: str) -> None:
    with pytest.raises(FeedError) as caught:
        corpus(name)
    assert str(caught.value) == (
        f"{name}: the snapshot has no people; importing it would terminate everyone, "
        "so it is refused"
    )


def test_bad_rows_are_reported_and_good_rows_still_come_through() -> None:
    feed = corpus("bad-rows.csv")
    assert feed.rows_read == 15
    assert messages(feed.errors) == [
        "bad-rows.csv:3 start_date: invalid date '2020-13-45'; expected YYYY-MM-DD or an ISO "
        "8601 date-time",
        "bad-rows.csv:4 email: invalid email 'not-an-email'; expected an address like "
        "name@example.com",
        "bad-rows.csv:5 kind: unknown kind 'robot'; expected one of human, service_account, "
        "api_key, bot",
        "bad-rows.csv:6 owner: a service_account needs an owner (the id of a person)",
        "bad-rows.csv:7: expected 9 fields, found 11",
        "bad-rows.csv:8: expected 9 fields, found 2",
        "bad-rows.csv:9 id: required value is empty",
        "bad-rows.csv:10 end_date: end_date 2021-05-01 is before start_date 2022-05-01",
        "bad-rows.csv:11 owner: owner E008 is the identity itself; the owner must be someone else",
        "bad-rows.csv:12 status: unknown status 'retired'; expected one of active, leave, "
        "suspended, terminated",
        "bad-rows.csv:14 email: invalid email 'two@@example.com'; expected an address like "
        "name@example.com",
        "bad-rows.csv:14 start_date: invalid date 'yesterday'; expected YYYY-MM-DD or an ISO "
        "8601 date-time",
        "bad-rows.csv:16 name: required value is empty",
    ]
    assert feed.errors[4].column is None
    assert feed.warnings == []
    assert feed.records == [
        FeedRecord(
            2,
            "E001",
            None,
            first(2020, 1, 15),
            "active",
            {
                "name": "Ann Good",
                "email": "ann@example.com",
                "kind": "human",
                "department": "Sales",
            },
        ),
        FeedRecord(
            13,
            "SVC-2",
            None,
            None,
            "active",
            {"name": "Deploy Key", "kind": "api_key", "owner": "E001", "department": "Eng"},
        ),
        FeedRecord(
            15,
            "E011",
            None,
            first(2019, 7, 1),
            "terminated",
            {"name": "Bob Good", "email": "bob@example.com", "department": "Sales"},
            end=last(2024, 3, 31),
        ),
    ]


def test_events_good() -> None:
    feed = corpus("events-good.csv", EVENTS)
    assert feed.errors == [] and feed.warnings == []
    assert feed.rows_read == 13
    assert [(r.line, r.identity, r.event) for r in feed.records] == [
        (2, "E100", EventKind.HIRE),
        (3, "E100", EventKind.MOVE),
        (4, "E100", EventKind.CONVERT),
        (5, "E100", EventKind.LEAVE),
        (6, "E100", EventKind.RETURN),
        (7, "E101", EventKind.HIRE),
        (8, "E101", EventKind.TERMINATE),
        (9, "E101", EventKind.RESCIND),
        (10, "E102", EventKind.HIRE),
        (11, "E102", EventKind.SUSPEND),
        (12, "E102", EventKind.RESUME),
        (13, "E102", EventKind.TERMINATE),
        (14, "E102", EventKind.REHIRE),
    ]
    hire, move, convert, leave = feed.records[:4]
    assert hire.effective == first(2024, 1, 8)
    assert hire.status is None and hire.ref is None
    assert hire.attributes == {
        "name": "Ann Example",
        "email": "ann@example.com",
        "department": "Sales",
        "title": "Account Executive",
        "cost_centre": "CC-10",
        "employment_type": "employee",
    }
    assert move.attributes == {"department": "Marketing"}
    assert convert.attributes == {"employment_type": "contractor"}
    assert leave.attributes == {}
    assert feed.records[7].ref == "3f2a9c"
    assert feed.records[8].effective == day(2024, 3, 1, 9)


def test_events_bad_jsonl() -> None:
    feed = corpus("events-bad.jsonl", EVENTS)
    assert feed.rows_read == 12  # the blank line 5 is no row
    assert messages(feed.errors) == [
        "events-bad.jsonl:2: not a JSON object (found an array)",
        "events-bad.jsonl:3 event: unknown event 'promote'; expected one of hire, move, "
        "convert, leave, return, suspend, resume, terminate, rehire, rescind",
        "events-bad.jsonl:4 effective: invalid date '08/01/2024'; expected YYYY-MM-DD or an "
        "ISO 8601 date-time",
        "events-bad.jsonl:6 effective: required field is missing",
        "events-bad.jsonl:7: not valid JSON: Expecting ',' delimiter (column 58)",
        "events-bad.jsonl:8 employment_type: a convert needs the new employment_type",
        "events-bad.jsonl:11 name: a hire needs a name",
        "events-bad.jsonl:12: not a JSON object (found a string)",
        "events-bad.jsonl:13 department: expected text, found an array",
    ]
    assert feed.warnings == []
    assert feed.records == [
        FeedRecord(1, "E200", EventKind.HIRE, first(2024, 1, 8), None, {"name": "Ann Example"}),
        FeedRecord(9, "205", EventKind.HIRE, first(2024, 3, 4), None, {"name": "Numeric Id"}),
        FeedRecord(10, "E206", EventKind.RESCIND, first(2024, 3, 10), None, {}, ref="abc123"),
    ]


def test_snapshot_good_jsonl() -> None:
    feed = corpus("snapshot-good.jsonl")
    assert feed.errors == [] and feed.warnings == []
    assert feed.records == [
        FeedRecord(
            1,
            "E001",
            None,
            first(2020, 1, 15),
            "active",
            {
                "name": "Ann Example",
                "email": "ann@example.com",
                "department": "Sales",
                "badge": "B-17",
                "skills": ["sql", "excel"],
            },
        ),
        FeedRecord(
            2,
            "E002",
            None,
            first(2019, 3, 1),
            "terminated",
            {"name": "Bob Example", "manager": "E001"},
            end=last(2024, 3, 31),
        ),
        FeedRecord(
            3,
            "SVC-1",
            None,
            None,
            "active",
            {"name": "CI Runner", "kind": "service_account", "owner": "E001", "floor": 3},
        ),
    ]


def test_a_file_that_is_not_utf8_is_refused_with_offset_and_line() -> None:
    with pytest.raises(FeedError) as caught:
        corpus("not-utf8.csv")
    assert str(caught.value) == (
        "not-utf8.csv: not valid UTF-8 (byte 0xe9 at offset 25, line 3); export the feed as UTF-8"
    )


# Mapping options ----------------------------------------------------------------------------


def test_renamed_columns_are_mapped_and_a_shadowed_column_is_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "people.csv",
        "Employee ID,Full Name,Work Email,Dept,id,Badge\n"
        "E001,Ann Example,ann@example.com,Sales,old-1,B-1\n",
    )
    mapping = FeedMapping(
        columns={
            "id": "Employee ID",
            "name": "Full Name",
            "email": "Work Email",
            "department": "Dept",
        }
    )
    feed = parse_feed(path, mapping, display_name="people.csv")
    assert feed.errors == []
    assert feed.records == [
        FeedRecord(
            2,
            "E001",
            None,
            None,
            None,
            {
                "name": "Ann Example",
                "email": "ann@example.com",
                "department": "Sales",
                "Badge": "B-1",
            },
        )
    ]
    assert messages(feed.warnings) == [
        "people.csv:1 id: column 'id' is ignored: id is read from 'Employee ID'"
    ]


def test_mapping_only_knows_provisor_fields() -> None:
    with pytest.raises(ValidationError, match="unknown field"):
        FeedMapping(columns={"identifier": "Employee ID"})
    with pytest.raises(ValidationError, match="extra"):
        FeedMapping.model_validate({"mode": "snapshot", "colums": {}})
    with pytest.raises(ValidationError, match="empty column name"):
        FeedMapping(columns={"id": "  "})
    with pytest.raises(ValidationError, match="one character"):
        FeedMapping(delimiter=";;")
    with pytest.raises(ValidationError, match="strptime"):
        FeedMapping(date_format="DD/MM/YYYY")
    assert FeedMapping.model_validate({"mode": "events"}).mode is FeedMode.EVENTS


def test_date_format(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dates.csv",
        "id,name,start_date,end_date,status\n"
        "E001,Ann,31/01/2024,,active\n"
        "E002,Bob,2024-01-31,,active\n"
        "E003,Cat,01/02/2020,28/02/2024,terminated\n",
    )
    feed = parse_feed(path, FeedMapping(date_format="%d/%m/%Y"), display_name="dates.csv")
    assert [(r.identity, r.effective, r.end) for r in feed.records] == [
        ("E001", first(2024, 1, 31), None),
        ("E003", first(2020, 2, 1), last(2024, 2, 28)),
    ]
    assert messages(feed.errors) == [
        "dates.csv:3 start_date: invalid date '2024-01-31'; expected %d/%m/%Y (e.g. 31/01/2024)"
    ]


def test_extra_attributes_keep_or_ignore(tmp_path: Path) -> None:
    text = "id,name,Badge,Floor,Desk\nE001,Ann,B-1,3,\n"
    path = write(tmp_path, "extras.csv", text)
    kept = parse_feed(path, FeedMapping())
    assert kept.records[0].attributes == {"name": "Ann", "Badge": "B-1", "Floor": "3"}
    ignored = parse_feed(path, FeedMapping(extra_attributes="ignore"))
    assert ignored.records[0].attributes == {"name": "Ann"}
    assert ignored.warnings == []

    jsonl = write(tmp_path, "extras.jsonl", '{"id": "E001", "name": "Ann", "Badge": "B-1"}\n')
    assert parse_feed(jsonl, FeedMapping()).records[0].attributes == {"name": "Ann", "Badge": "B-1"}
    jsonl_ignored = parse_feed(jsonl, FeedMapping(extra_attributes="ignore"))
    assert jsonl_ignored.records[0].attributes == {"name": "Ann"}


def test_a_column_of_the_other_mode_is_ignored_with_one_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "events.csv",
        "id,event,effective,status\nE001,hire,2024-01-08,active\nE002,hire,2024-01-08,active\n",
    )
    feed = parse_feed(path, EVENTS, display_name="events.csv")
    assert messages(feed.errors) == [
        "events.csv:2 name: a hire needs a name",
        "events.csv:3 name: a hire needs a name",
    ]
    assert messages(feed.warnings) == [
        "events.csv:1 status: column 'status' (status) is not used in events feeds; ignored"
    ]


@pytest.mark.parametrize(("delimiter", "sep"), [(";", ";"), ("\t", "\t"), ("|", "|")])
def test_delimiter(tmp_path: Path, delimiter: str, sep: str) -> None:
    path = write(tmp_path, "people.csv", f"id{sep}name{sep}title\nE001{sep}Ann{sep}Lead, Sales\n")
    feed = parse_feed(path, FeedMapping(delimiter=delimiter))
    assert feed.records[0].attributes == {"name": "Ann", "title": "Lead, Sales"}


def test_format_by_extension_or_by_mapping(tmp_path: Path) -> None:
    line = '{"id": "E001", "name": "Ann"}\n'
    for suffix in (".jsonl", ".ndjson", ".json", ".JSONL"):
        assert (
            parse_feed(write(tmp_path, f"feed{suffix}", line), SNAPSHOT).records[0].identity
            == "E001"
        )
    txt = write(tmp_path, "feed.txt", line)
    with pytest.raises(
        FeedError, match=r"feed.txt: cannot tell the format from the extension '.txt'"
    ):
        parse_feed(txt, SNAPSHOT, display_name="feed.txt")
    assert parse_feed(txt, FeedMapping(format="jsonl")).records[0].identity == "E001"
    csv_txt = write(tmp_path, "export.dat", "id,name\nE001,Ann\n")
    assert parse_feed(csv_txt, FeedMapping(format="csv")).records[0].identity == "E001"


def test_display_name_defaults_to_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "people.csv", "id,name\n,Ann\n")
    feed = parse_feed(path, SNAPSHOT)
    assert feed.file == str(path)
    assert str(feed.errors[0]) == f"{path}:2 id: required value is empty"


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match=r"missing.csv: cannot read the feed"):
        parse_feed(tmp_path / "missing.csv", SNAPSHOT, display_name="missing.csv")


# CSV details --------------------------------------------------------------------------------


def test_crlf_line_ends_blank_lines_and_quoted_breaks_keep_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "crlf.csv",
        'id,name,title\r\n\r\nE001,Ann,"Lead\r\nSales"\r\n   \r\nE002,Bob,Analyst\r\n,,\r\n',
    )
    feed = parse_feed(path, SNAPSHOT)
    assert feed.errors == []
    assert feed.rows_read == 2  # blank lines and a row of empty cells are no rows
    assert [(r.line, r.identity) for r in feed.records] == [(3, "E001"), (6, "E002")]
    assert feed.records[0].attributes["title"] == "Lead\r\nSales"


def test_values_are_trimmed_and_empty_cells_omitted(tmp_path: Path) -> None:
    path = write(tmp_path, "trim.csv", "id , name ,email,title\n  E001 ,  Ann Example\u00a0,  , \n")
    feed = parse_feed(path, SNAPSHOT)
    assert feed.records == [FeedRecord(2, "E001", None, None, None, {"name": "Ann Example"})]


def test_a_quote_left_open_to_the_end_refuses_the_file(tmp_path: Path) -> None:
    # Read leniently, E002's title would swallow E003 and E004, who would then look as if they
    # had left.
    path = write(
        tmp_path,
        "open.csv",
        'id,name,title\nE001,Ann,Lead\nE002,Bob,"Analyst\nE003,Cat,Engineer\nE004,Dee,Ops\n',
    )
    with pytest.raises(FeedError) as caught:
        parse_feed(path, SNAPSHOT, display_name="open.csv")
    assert str(caught.value) == (
        "open.csv:3: a quoted value is never closed; the record runs on to line 5, so the rest "
        "of the file cannot be trusted. Fix the quoting and export the feed again"
    )


def test_a_quote_left_open_that_closes_rows_later_rejects_the_record(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "open.csv",
        'id,name,title\nE001,Ann,"Lead\nE002,Bob,Analyst\nE003,Cat,Eng"\nE004,Dee,Ops\n',
    )
    feed = parse_feed(path, SNAPSHOT, display_name="open.csv")
    assert [(r.line, r.identity) for r in feed.records] == [(5, "E004")]
    assert messages(feed.errors) == [
        "open.csv:2 title: the quoted value runs on to line 4 and holds what look like whole "
        "rows; is a quote left open?"
    ]
    # With a different number of fields it is the field count that gives it away.
    path.write_text('id,name,title\nE001,"Ann,Lead\nE002,Bob,Analyst\nE003",Cat,Eng\n')
    feed = parse_feed(path, SNAPSHOT, display_name="open.csv")
    assert feed.records == []
    assert messages(feed.errors) == [
        "open.csv:2: expected 3 fields, found 4 (the record runs on to line 4; is a quote left "
        "open?)"
    ]


def test_bad_quoting_on_one_line_is_a_row_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "q.csv",
        'id,name,title\nE001,"Ann" Smith,Lead\nE002,Bob "The Boss" Jones,Analyst\nE003,Cat,"Eng\n',
    )
    feed = parse_feed(path, SNAPSHOT, display_name="q.csv")
    assert [(r.line, r.attributes["name"]) for r in feed.records] == [(3, 'Bob "The Boss" Jones')]
    assert feed.rows_read == 3
    assert messages(feed.errors) == [
        "q.csv:2: the record cannot be read (',' expected after '\"')",
        "q.csv:4: a quoted value is never closed",
    ]


def test_a_column_named_twice_refuses_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "twice.csv", "id,name,email,email\nE001,Ann,a@example.com,b@example.com\n"
    )
    with pytest.raises(FeedError, match=r"twice.csv:1: column 'email' appears twice in the header"):
        parse_feed(path, SNAPSHOT, display_name="twice.csv")


def test_header_only_events_feed_still_needs_its_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "id,name\n")
    with pytest.raises(FeedError, match=r"missing required column\(s\) event, effective"):
        parse_feed(path, EVENTS)


# Row rules ----------------------------------------------------------------------------------


def test_a_row_with_a_duplicate_id_and_another_problem_reports_both(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.csv", "id,name,email\nE100,Ann,bad\nE100,Ann,ann@example.com\n")
    feed = parse_feed(path, SNAPSHOT, display_name="dup.csv")
    assert feed.records == []
    assert messages(feed.errors) == [
        "dup.csv:2 email: invalid email 'bad'; expected an address like name@example.com",
        "dup.csv:2 id: duplicate id E100 also on line 3",
        "dup.csv:3 id: duplicate id E100 also on line 2",
    ]


def test_a_snapshot_whose_every_row_is_bad_is_not_refused_here(tmp_path: Path) -> None:
    feed = parse_feed(write(tmp_path, "bad.csv", "id,name\n,Ann\n"), SNAPSHOT)
    assert feed.rows_read == 1 and feed.records == [] and len(feed.errors) == 1


@pytest.mark.parametrize(
    ("email", "valid"),
    [
        ("ann@example.com", True),
        ("ann.example+hr@mail.example.co.uk", True),
        ("ann@example", False),
        ("@example.com", False),
        ("ann@@example.com", False),
        ("ann@.example.com", False),
        ("ann@example.com.", False),
        ("ann example@example.com", False),
        ("ann@exa@mple.com", False),
    ],
)
def test_email_check(tmp_path: Path, email: str, valid: bool) -> None:
    feed = parse_feed(write(tmp_path, "e.csv", f"id,name,email\nE001,Ann,{email}\n"), SNAPSHOT)
    assert (len(feed.records) == 1) is valid
    assert (len(feed.errors) == 0) is valid


def test_kind_and_status_are_case_insensitive_and_lower_cased(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "k.csv",
        "id,name,kind,owner,status\nE001,Ann,HUMAN,,Active\nBOT-1,Bot,Bot,E001,LEAVE\n",
    )
    feed = parse_feed(path, SNAPSHOT)
    assert [(r.attributes.get("kind"), r.status) for r in feed.records] == [
        ("human", "active"),
        ("bot", "leave"),
    ]


def test_snapshot_start_is_effective_and_end_date_is_end(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.csv",
        "id,name,start_date,end_date,status\n"
        "E001,Ann,2020-01-01,,active\n"
        "E002,Bob,2020-01-01,2024-06-30,terminated\n"
        "E003,Cat,2020-01-01,2027-03-31,active\n"
        "E004,Dee,,,terminated\n"
        "E005,Eve,2020-01-01T08:00:00+01:00,2020-01-02,active\n",
    )
    feed = parse_feed(path, SNAPSHOT, display_name="s.csv")
    assert [(r.identity, r.status, r.effective, r.end) for r in feed.records] == [
        ("E001", "active", first(2020, 1, 1), None),
        ("E002", "terminated", first(2020, 1, 1), last(2024, 6, 30)),
        ("E003", "active", first(2020, 1, 1), last(2027, 3, 31)),  # a planned termination
        ("E004", "terminated", None, None),
        ("E005", "active", day(2020, 1, 1, 7), last(2020, 1, 2)),
    ]
    assert all(r.event is None and r.ref is None for r in feed.records)
    assert feed.errors == [] and feed.warnings == []


def test_snapshot_without_status_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.csv",
        "id,name,start_date,end_date\n"
        "E001,Ann,2020-01-01,\n"
        "E002,Bob,2020-01-01,2024-06-30\n"
        "E003,Cat,,\n",
    )
    feed = parse_feed(path, SNAPSHOT)
    assert [(r.status, r.effective, r.end) for r in feed.records] == [
        (None, first(2020, 1, 1), None),
        (None, first(2020, 1, 1), last(2024, 6, 30)),
        (None, None, None),
    ]
    assert feed.warnings == []


def test_events_have_no_end(tmp_path: Path) -> None:
    feed = corpus("events-good.csv", EVENTS)
    assert all(r.end is None and r.status is None for r in feed.records)


def test_events_are_owned_on_hire_and_ref_belongs_to_rescind(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ev.csv",
        "id,event,effective,name,kind,owner,ref\n"
        "BOT-1,hire,2024-01-08,Bot,bot,,\n"
        "BOT-2,hire,2024-01-08,Bot,bot,E001,\n"
        "BOT-2,move,2024-02-01,,bot,,\n"
        "E001,terminate,2024-03-01,,,,abc\n"
        "E001,rescind,2024-03-02,,,,abc\n"
        "E002,hire,2024-03-03,Eve,,E002,\n",
    )
    feed = parse_feed(path, EVENTS, display_name="ev.csv")
    assert messages(feed.errors) == [
        "ev.csv:2 owner: a bot needs an owner (the id of a person)",
        "ev.csv:7 owner: owner E002 is the identity itself; the owner must be someone else",
    ]
    assert [(r.line, r.ref) for r in feed.records] == [(3, None), (4, None), (5, None), (6, "abc")]
    assert messages(feed.warnings) == [
        "ev.csv:5 ref: ref is ignored: only a rescind names the event it cancels"
    ]


def test_jsonl_required_fields_missing_or_empty(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.jsonl",
        '{"id": "E001"}\n{"id": " ", "name": "Ann"}\n{"id": {"x": 1}, "name": "Bob"}\n'
        '{"id": "E004", "name": null}\n{"id": true, "name": "Cat"}\n',
    )
    feed = parse_feed(path, SNAPSHOT, display_name="s.jsonl")
    assert feed.records == []
    assert messages(feed.errors) == [
        "s.jsonl:1 name: required field is missing",
        "s.jsonl:2 id: required value is empty",
        "s.jsonl:3 id: expected text, found an object",
        "s.jsonl:4 name: required value is empty",
        "s.jsonl:5 id: expected text, found true/false",
    ]


def test_jsonl_values_are_trimmed_and_nfc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.jsonl",
        '{"id": " E001 ", "name": " Jose\\u0301 ", "Nickname": "Pe\\u0301pe"}\n',
    )
    feed = parse_feed(path, SNAPSHOT)
    assert feed.records[0].identity == "E001"
    assert feed.records[0].attributes == {"name": "Jos\u00e9", "Nickname": "P\u00e9pe"}


def test_row_error_str() -> None:
    assert str(RowError("hr.csv", 7, "email", "invalid")) == "hr.csv:7 email: invalid"
    assert str(RowError("hr.csv", 7, None, "expected 3 fields, found 2")) == (
        "hr.csv:7: expected 3 fields, found 2"
    )


def test_fast_record_builder_matches_the_dataclass() -> None:
    args = (3, "E001", None, day(2024, 1, 8), "active", {"name": "Ann"}, "ref", day(2025, 1, 1))
    built = hr.new_record(*args)
    assert built == FeedRecord(*args)
    assert vars(built) == vars(FeedRecord(*args))
    assert hash(built.line) == hash(3) and repr(built) == repr(FeedRecord(*args))
    with pytest.raises(AttributeError):
        built.line = 4  # type: ignore[misc]


def test_values_longer_than_the_store_keeps_are_row_errors(tmp_path: Path) -> None:
    feed = tmp_path / "long.csv"
    feed.write_text("id,name\nE1,Ann\nE2," + "x" * 300 + "\n", encoding="utf-8")
    parsed = parse_feed(feed, FeedMapping())
    assert [r.identity for r in parsed.records] == ["E1"]
    assert [str(e) for e in parsed.errors] == [
        f"{feed}:3 name: 300 characters; at most 256 are kept"
    ]


def test_ids_reserved_for_orphan_accounts_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "people.csv",
        "id,name\norphan:x1,Mallory\nE1,Ann\n",
    )
    feed = parse_feed(path, SNAPSHOT, display_name="people.csv")
    assert [r.identity for r in feed.records] == ["E1"]
    assert messages(feed.errors) == [
        "people.csv:2 id: id 'orphan:x1' starts with 'orphan:', which names accounts linked "
        "to no identity"
    ]
