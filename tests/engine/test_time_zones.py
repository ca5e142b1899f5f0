"""HR dates are days in the person's local time: a start date begins at the start of that day
where they are, an end date is their last working day and access ends when it does (or at the
feed's fixed local time) — across daylight-saving changes and the date line. The expected
instants below are written out by hand with each zone's offset on that day, not computed with
the zone library the engine uses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from provisor.domain import days
from provisor.domain.lifecycle import EventKind
from provisor.engine import identities, views
from provisor.engine.imports import import_feed
from provisor.engine.workspace import Workspace
from provisor.errors import ConfigError, LifecycleError
from provisor.sandbox.workspaces import scratch_workspace
from provisor.sources.hr import FeedMode
from provisor.store import models

NOW = datetime(2026, 9, 1, 12, tzinfo=UTC)
CONFIG = """\
time:
  zone: Europe/London
  zone_attribute: time_zone
  locations:
    Los Angeles: America/Los_Angeles
    London: Europe/London
    Sydney: Australia/Sydney
    Kolkata: Asia/Kolkata
    Auckland: Pacific/Auckland
feeds:
  hr: {}
  contractors:
    end_at: "18:00"
    start_at: "09:00"
"""
HEADER = "id,name,location,time_zone,start_date,end_date\n"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# id, location, zone attribute, start, end; the instants they must mean (UTC), and why
PEOPLE = [
    # Los Angeles in winter (PST, -8): the last day ends at 08:00 UTC the next day
    ("LA1", "Los Angeles", "", "2026-09-14", "2026-12-31", "2026-09-14T07:00", "2027-01-01T08:00"),
    # Los Angeles, last day the day summer time starts (2027-03-14, 02:00 -> 03:00): PDT at
    # the end of it, -7
    ("LA2", "Los Angeles", "", "2026-09-14", "2027-03-14", "2026-09-14T07:00", "2027-03-15T07:00"),
    # London, summer time ends 2026-10-25: a 25-hour last day, ending in GMT
    ("LN1", "London", "", "2026-09-14", "2026-10-25", "2026-09-13T23:00", "2026-10-26T00:00"),
    # Sydney starts on 2026-12-14 in summer (AEDT, +11): 13:00 UTC the day before
    ("SY1", "Sydney", "", "2026-12-14", "2027-04-04", "2026-12-13T13:00", "2027-04-04T14:00"),
    # Kolkata, +05:30 all year
    ("KO1", "Kolkata", "", "2026-10-01", "2026-12-31", "2026-09-30T18:30", "2026-12-31T18:30"),
    # Auckland, across the date line: summer time starts 2026-09-27 (02:00 -> 03:00), a
    # 23-hour day that starts in NZST (+12) and ends in NZDT (+13)
    ("AK1", "Auckland", "", "2026-09-27", "2026-09-27", "2026-09-26T12:00", "2026-09-27T11:00"),
    # the zone attribute comes before the location
    (
        "AT1",
        "London",
        "America/New_York",
        "2026-09-14",
        "2026-11-30",
        "2026-09-14T04:00",
        "2026-12-01T05:00",
    ),
    # no location the mapping knows: the workspace's zone (London, BST +1 then GMT)
    ("WS1", "Mars", "", "2026-09-14", "2026-11-30", "2026-09-13T23:00", "2026-12-01T00:00"),
]


@pytest.fixture
def ws(tmp_path: Path, workspace_store: str) -> Iterator[Workspace]:
    (tmp_path / "provisor.yaml").write_text(CONFIG, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, "targets: []\nrules: []\n")
    yield workspace
    workspace.close()


def pending(ws: Workspace, kind: EventKind) -> dict[str, tuple[datetime, str | None]]:
    """Each identity's accepted, not rescinded ``kind`` events: instant and local time."""
    with ws.sessions() as session:
        rows = session.execute(
            select(models.IdentityEvent).where(models.IdentityEvent.status == "accepted")
        ).scalars()
        events = [identities.to_event(r) for r in rows]
    voided = {e.ref for e in events if e.kind is EventKind.RESCIND}
    return {
        e.identity: (e.effective, e.local) for e in events if e.kind is kind and e.key not in voided
    }


def state(ws: Workspace, identity: str) -> str | None:
    with ws.sessions() as session:
        return session.execute(
            select(models.Identity.state).where(models.Identity.external_id == identity)
        ).scalar_one()


def feed_file(ws: Workspace, name: str, *rows: str) -> Path:
    feed = ws.path / name
    feed.write_text(HEADER + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return feed


def snapshot(ws: Workspace, rows: list[tuple[str, ...]], now: datetime = NOW) -> None:
    feed = ws.path / "people.csv"
    body = "".join(
        f"{i},Person {i},{place},{tz},{start},{end}\n" for i, place, tz, start, end in rows
    )
    feed.write_text(HEADER + body, encoding="utf-8")
    report = import_feed(ws, feed, now=now)
    assert report.errors == [], report.errors


def test_dates_are_days_where_each_person_is(ws: Workspace) -> None:
    snapshot(ws, [row[:5] for row in PEOPLE])
    hires, ends = pending(ws, EventKind.HIRE), pending(ws, EventKind.TERMINATE)
    for who, *_, start, end in PEOPLE:
        assert hires[who][0] == utc(start), who
        assert ends[who][0] == utc(end), who
    assert ends["LA1"][1] == "2026-12-31T24:00"  # kept as given: it moves with the person
    assert hires["SY1"][1] == "2026-12-14T00:00"


def test_a_leaver_keeps_access_to_the_end_of_the_last_day_and_not_longer(ws: Workspace) -> None:
    snapshot(ws, [row[:5] for row in PEOPLE if row[0] in ("LA1", "AK1")])
    for who, end in (("AK1", utc("2026-09-27T11:00")), ("LA1", utc("2027-01-01T08:00"))):
        with ws.sessions() as session, session.begin():
            identities.tick(session, ws.config, now=end - timedelta(seconds=1))
        assert state(ws, who) == "active", who  # still their last working day, locally
        with ws.sessions() as session, session.begin():
            identities.tick(session, ws.config, now=end)
        assert state(ws, who) == "terminated", who


def test_a_feed_with_fixed_local_times(ws: Workspace) -> None:
    c2 = "C2,Person C2,Sydney,,2026-12-14T08:30,2026-12-20T17:00+11:00"
    feed = feed_file(ws, "contractors.csv", "C1,Person C1,Los Angeles,,2027-03-15,2027-03-14", c2)
    report = import_feed(ws, feed, feed="contractors", now=NOW)
    assert [str(e) for e in report.errors] == [
        f"{feed}:2 end_date: end_date 2027-03-14 is before start_date 2027-03-15"
    ]
    feed_file(ws, "contractors.csv", "C1,Person C1,Los Angeles,,2026-09-15,2027-03-14", c2)
    import_feed(ws, feed, feed="contractors", now=NOW)
    hires, ends = pending(ws, EventKind.HIRE), pending(ws, EventKind.TERMINATE)
    # 09:00 PDT (-7) on 2026-09-15; 18:00 PDT on the day summer time started
    assert hires["C1"] == (utc("2026-09-15T16:00"), "2026-09-15T09:00")
    assert ends["C1"] == (utc("2027-03-15T01:00"), "2027-03-14T18:00")
    # a date-time without an offset is a wall-clock time there; one with an offset, as given
    assert hires["C2"] == (utc("2026-12-13T21:30"), "2026-12-14T08:30")
    assert ends["C2"] == (utc("2026-12-20T06:00"), None)


def test_an_unknown_zone_in_a_row_is_that_rows_error(ws: Workspace) -> None:
    feed = feed_file(
        ws,
        "people.csv",
        "Z1,Person Z1,London,Mars/Olympus,2026-09-14,",
        "Z2,Person Z2,London,Europe/Paris,2026-09-14,",
    )
    report = import_feed(ws, feed, now=NOW)
    assert [str(e) for e in report.errors] == [
        f"{feed}:2 time_zone: unknown time zone 'Mars/Olympus'; expected an IANA name such as "
        "Europe/London"
    ]
    assert pending(ws, EventKind.HIRE)["Z2"][0] == utc("2026-09-13T22:00")  # Paris, CEST


def test_a_typed_date_is_a_day_where_the_person_is(ws: Workspace) -> None:
    snapshot(ws, [("LA1", "Los Angeles", "", "2026-09-14", "")])
    data = views.record_event(
        ws,
        "LA1",
        EventKind.TERMINATE,
        effective=date(2026, 12, 31),
        changes={},
        ref=None,
        source="test",
        now=NOW,
    )
    assert data["effective"] == "2027-01-01T08:00:00+00:00"
    assert data["effective_local"] == "2026-12-31T24:00"
    assert data["effective_shown"] == "2027-01-01 00:00 PST (America/Los_Angeles)"
    moved = views.record_event(
        ws,
        "LA1",
        EventKind.MOVE,
        effective=datetime(2026, 10, 1, 9, 0),  # a wall-clock time in Los Angeles
        changes={"title": "Lead"},
        ref=None,
        source="test",
        now=NOW,
    )
    assert moved["effective"] == "2026-10-01T16:00:00+00:00"


def test_a_new_zone_moves_what_is_pending_to_the_same_local_time(ws: Workspace) -> None:
    snapshot(ws, [("LA1", "Los Angeles", "", "2026-08-03", "2026-12-31")])
    assert pending(ws, EventKind.TERMINATE)["LA1"][0] == utc("2027-01-01T08:00")
    # a move typed by hand: the end of the last day in London now
    views.record_event(
        ws,
        "LA1",
        EventKind.MOVE,
        effective=None,
        changes={"location": "London"},
        ref=None,
        source="test",
        now=NOW,
    )
    assert pending(ws, EventKind.TERMINATE)["LA1"] == (utc("2027-01-01T00:00"), "2026-12-31T24:00")
    with ws.sessions() as session:
        row = session.execute(
            select(models.Identity).where(models.Identity.external_id == "LA1")
        ).scalar_one()
        assert row.next_change_at == utc("2027-01-01T00:00")
    # and a snapshot that moves them to Auckland, across the date line
    snapshot(ws, [("LA1", "Auckland", "", "2026-08-03", "2026-12-31")], now=NOW + timedelta(days=1))
    assert pending(ws, EventKind.TERMINATE)["LA1"] == (utc("2026-12-31T11:00"), "2026-12-31T24:00")
    with ws.sessions() as session, session.begin():
        identities.tick(session, ws.config, now=utc("2026-12-31T10:59"))
    assert state(ws, "LA1") == "active"
    with ws.sessions() as session, session.begin():
        identities.tick(session, ws.config, now=utc("2026-12-31T11:00"))
    assert state(ws, "LA1") == "terminated"  # not at the end of the day in Los Angeles


def test_an_events_file_places_a_bare_date_where_the_stored_person_is(ws: Workspace) -> None:
    snapshot(ws, [("SY1", "Sydney", "", "2026-09-14", "")])
    feed = ws.path / "events.csv"
    feed.write_text("id,event,effective\nSY1,terminate,2026-12-31\n", encoding="utf-8")
    report = import_feed(ws, feed, mode=FeedMode.EVENTS, now=NOW + timedelta(days=1))
    assert report.errors == []
    # the end of 2026-12-31 in Sydney (AEDT, +11)
    assert pending(ws, EventKind.TERMINATE)["SY1"] == (utc("2026-12-31T13:00"), "2026-12-31T24:00")


def test_settings_name_unknown_zones_and_rules(tmp_path: Path) -> None:
    (tmp_path / "provisor.yaml").write_text(
        "time:\n  zone: Europe/Londn\n  locations: {Paris: Europe/Pariss}\n"
        "feeds:\n  hr:\n    end_at: '25:00'\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as failed:
        scratch_workspace(tmp_path, "targets: []\nrules: []\n")
    said = str(failed.value)
    assert "time.zone" in said and "Europe/Londn" in said
    assert "Europe/Pariss" in said
    assert "feeds.hr.end_at" in said and "25:00" in said


def test_day_rules_and_local_times_read_back() -> None:
    assert days.DayRule.read("18:00").on(date(2026, 12, 31)).text == "2026-12-31T18:00"
    assert days.Local.parse("2026-12-31T24:00") == days.END_OF_DAY.on(date(2026, 12, 31))
    # a wall-clock time a spring-forward night skips is read with the offset before it
    skipped = days.Local.parse("2027-03-14T02:30").instant(days.zone("America/Los_Angeles"))
    assert skipped == utc("2027-03-14T10:30")  # 03:30 PDT
    # one a fall-back night repeats means its first occurrence
    twice = days.Local.parse("2026-11-01T01:30").instant(days.zone("America/Los_Angeles"))
    assert twice == utc("2026-11-01T08:30")  # 01:30 PDT, not PST


def test_moving_back_and_forth_leaves_one_termination_at_the_right_time(ws: Workspace) -> None:
    """Los Angeles -> London -> Los Angeles, by snapshot and by hand: each move records a
    termination of its own (naming the one it replaces), never the rescinded one again."""
    rows = [("LA1", "Los Angeles", "", "2026-08-03", "2026-12-31")]
    snapshot(ws, rows)
    snapshot(ws, [("LA1", "London", "", "2026-08-03", "2026-12-31")], now=NOW + timedelta(days=1))
    snapshot(ws, rows, now=NOW + timedelta(days=2))
    assert pending(ws, EventKind.TERMINATE)["LA1"][0] == utc("2027-01-01T08:00")
    for hours, place, end in (
        (0, "London", "2027-01-01T00:00"),
        (1, "Los Angeles", "2027-01-01T08:00"),
    ):
        views.record_event(
            ws,
            "LA1",
            EventKind.MOVE,
            effective=None,
            changes={"location": place},
            ref=None,
            source="test",
            now=NOW + timedelta(days=3, hours=hours),
        )
        assert pending(ws, EventKind.TERMINATE)["LA1"][0] == utc(end), place
    snapshot(ws, rows, now=NOW + timedelta(days=4))  # as stored: nothing to record
    with ws.sessions() as session:
        kinds = [
            e.kind
            for e in identities.load_history(session, ["LA1"])["LA1"]
            if e.recorded >= NOW + timedelta(days=4)
        ]
    assert kinds == []


def test_a_move_that_makes_the_end_due_is_held_whole(ws: Workspace, tmp_path: Path) -> None:
    """Moving east past the end of the last day terminates at once; when the mass-change
    guard holds that, the rescind of the pending termination waits with it: rejected, the
    person still leaves at the end of their last day where they were."""
    config = ws.path / "provisor.yaml"
    config.write_text(
        config.read_text(encoding="utf-8") + "guard: {min_count: 1, max_share: 0.1}\n",
        encoding="utf-8",
    )
    ws = Workspace.open(ws.path)
    try:
        snapshot(ws, [("LA1", "Los Angeles", "", "2026-08-03", "2026-12-31")])
        late = utc("2026-12-31T12:00")  # 04:00 on the last day in LA; 01:00 next day in Auckland
        data = views.record_event(
            ws,
            "LA1",
            EventKind.MOVE,
            effective=None,
            changes={"location": "Auckland"},
            ref=None,
            source="test",
            now=late,
        )
        assert data["hold"] is not None and state(ws, "LA1") == "active"
        with ws.sessions() as session, session.begin():
            identities.decide_hold(
                session, ws.config, data["hold"], approve=False, only=None, now=late
            )
        assert pending(ws, EventKind.TERMINATE)["LA1"][0] == utc("2027-01-01T08:00")
    finally:
        ws.close()


def test_dates_beyond_what_a_clock_holds_and_zones_stored_before(ws: Workspace) -> None:
    """HR's "no end date" (9999-12-31) ends at the last instant there is; a zone attribute
    stored before it held zones names none (the workspace's zone is used); a typed event
    naming an unknown zone is refused."""
    snapshot(ws, [("NE1", "Auckland", "", "2026-08-03", "9999-12-31")])
    assert pending(ws, EventKind.TERMINATE)["NE1"][0] == datetime.max.replace(tzinfo=UTC)
    with ws.sessions() as session, session.begin():
        row = session.execute(
            select(models.Identity).where(models.Identity.external_id == "NE1")
        ).scalar_one()
        row.attributes = {**row.attributes, "time_zone": "PST"}  # from before zone_attribute
    shown = views.show_identity(ws, "NE1", as_of=None, known_at=None, now=NOW)
    assert shown["zone"] == "Pacific/Auckland"  # by the location, as PST names no zone
    with pytest.raises(LifecycleError, match="time_zone: unknown time zone 'Mars/Olympus'"):
        views.record_event(
            ws,
            "NE1",
            EventKind.MOVE,
            effective=None,
            changes={"time_zone": "Mars/Olympus"},
            ref=None,
            source="test",
            now=NOW,
        )


def test_a_start_date_moved_or_a_new_zone_before_the_start_moves_the_hire(
    ws: Workspace,
) -> None:
    snapshot(ws, [("SY1", "Sydney", "", "2026-12-14", "")])
    assert pending(ws, EventKind.HIRE)["SY1"][0] == utc("2026-12-13T13:00")  # AEDT, +11
    later = NOW + timedelta(days=1)
    snapshot(ws, [("SY1", "Sydney", "", "2026-12-21", "")], later)  # HR moves the start
    assert pending(ws, EventKind.HIRE)["SY1"][0] == utc("2026-12-20T13:00")
    snapshot(ws, [("SY1", "Sydney", "", "2026-12-21", "")], later)  # again: nothing new
    assert len(pending(ws, EventKind.HIRE)) == 1
    # the same day, in London now: the start of it there (GMT)
    snapshot(ws, [("SY1", "London", "", "2026-12-21", "")], later + timedelta(hours=1))
    assert pending(ws, EventKind.HIRE)["SY1"] == (utc("2026-12-21T00:00"), "2026-12-21T00:00")
    for at, expected in (
        (utc("2026-12-20T23:59"), "pre-hire"),  # not on the old day nor in the old zone
        (utc("2026-12-21T00:00"), "active"),
    ):
        shown = views.show_identity(ws, "SY1", as_of=at, known_at=None, now=later)
        assert shown["state"] == expected, at
    with pytest.raises(LifecycleError, match="the hire has taken effect"):
        hired = pending(ws, EventKind.HIRE)  # a hire that took effect is not rescinded
        views.record_event(
            ws,
            "SY1",
            EventKind.RESCIND,
            effective=None,
            changes={},
            ref=identities_key(ws, "SY1", hired["SY1"][0]),
            source="test",
            now=utc("2026-12-22T00:00"),
        )


def identities_key(ws: Workspace, who: str, at: datetime) -> str:
    with ws.sessions() as session:
        return session.execute(
            select(models.IdentityEvent.key).where(
                models.IdentityEvent.identity == who,
                models.IdentityEvent.kind == EventKind.HIRE.value,
                models.IdentityEvent.effective_at == at,
            )
        ).scalar_one()


def test_a_move_dated_ahead_to_another_zone_moves_the_last_day_when_it_takes_effect(
    ws: Workspace,
) -> None:
    snapshot(ws, [("P1", "London", "", "2026-06-01", "2026-12-31")])
    assert pending(ws, EventKind.TERMINATE)["P1"][0] == utc("2027-01-01T00:00")  # GMT
    views.record_event(
        ws,
        "P1",
        EventKind.MOVE,
        effective=date(2026, 11, 2),
        changes={"location": "Los Angeles"},
        ref=None,
        source="test",
        now=NOW,
    )
    assert pending(ws, EventKind.TERMINATE)["P1"][0] == utc("2027-01-01T00:00")  # not yet
    moved = utc("2026-11-02T08:00")  # the start of 2 November in Los Angeles, where it goes
    with ws.sessions() as session, session.begin():
        identities.tick(session, ws.config, now=moved)
    assert pending(ws, EventKind.TERMINATE)["P1"] == (utc("2027-01-01T08:00"), "2026-12-31T24:00")
    with ws.sessions() as session, session.begin():
        identities.tick(session, ws.config, now=moved + timedelta(hours=1))
    assert len([k for k in pending(ws, EventKind.TERMINATE)]) == 1
