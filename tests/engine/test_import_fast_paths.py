"""The shortcuts a large import takes give exactly what the general code gives.

Event construction without the dataclass constructor, the reused JSON encoder, remembered
timestamps, the store lookups an import skips (identities it knows are new, events of
identities without a row) and the reference checks on owners and managers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from provisor.config.workspace import write_starter
from provisor.domain.lifecycle import (
    EventKind,
    LifecycleEvent,
    canonical_json,
    canonical_mapping,
    canonical_text,
    new_event,
    utc,
    utc_text,
)
from provisor.engine import identities
from provisor.engine.imports import import_feed
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.sources.hr import FeedMode
from provisor.store import db, models

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)

text = st.text(st.characters(codec="utf-8"), max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text, st.just(1e300)
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=8,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)
instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones
)


@settings(max_examples=300, deadline=None)
@given(mapping=st.dictionaries(text, values, max_size=6))
def test_reused_encoder_spells_mappings_as_canonical_json(mapping: dict[str, Any]) -> None:
    assert canonical_mapping(mapping) == canonical_json(mapping)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), text))
def test_canonical_text_is_canonical_json(value: str | None) -> None:
    assert canonical_text(value) == canonical_json(value)


def test_canonical_text_of_a_string_enum_is_its_json() -> None:
    assert canonical_text(EventKind.HIRE) == canonical_json(EventKind.HIRE) == '"hire"'


@settings(max_examples=200, deadline=None)
@given(when=instants, other=zones)
def test_remembered_timestamps_are_the_utc_isoformat(when: datetime, other: Any) -> None:
    # The same instant in another zone compares equal: it must still give the UTC spelling.
    same = when.astimezone(other)
    assert utc_text(when) == utc(when).isoformat()
    assert utc_text(same) == utc(when).isoformat()
    assert utc_text(when.replace(tzinfo=None)) == utc(when.replace(tzinfo=None)).isoformat()


@settings(max_examples=300, deadline=None)
@given(
    identity=text,
    kind=st.sampled_from(list(EventKind)),
    effective=instants,
    attributes=st.dictionaries(text, values, max_size=5),
    ref=st.one_of(st.none(), text),
    source=text,
)
def test_new_event_is_the_constructed_event(
    identity: str,
    kind: EventKind,
    effective: datetime,
    attributes: dict[str, Any],
    ref: str | None,
    source: str,
) -> None:
    built = new_event(identity, kind, effective, NOW, attributes, ref, source)
    made = LifecycleEvent(identity, kind, effective, NOW, attributes, ref, source)
    assert built == made and repr(built) == repr(made)
    assert built.key == made.key and built.attributes_json == made.attributes_json
    assert vars(built) == vars(made)
    assert built.effective.tzinfo is UTC
    with pytest.raises(AttributeError):
        built.key = "other"  # type: ignore[misc]


@pytest.fixture
def ws(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", database_url)
    write_starter(tmp_path)
    (tmp_path / "provisor.yaml").write_text(
        "feeds:\n  hr: {mode: snapshot}\n  events: {mode: events}\n"
        "guard: {max_share: 0.5, max_count: 50, min_count: 3}\n",
        encoding="utf-8",
    )
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    engine.dispose()
    workspace = Workspace.open(tmp_path)
    yield workspace
    workspace.close()


def feed(folder: Path, name: str, *rows: str) -> Path:
    path = folder / name
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


HEADER = "id,name,email,department,kind,owner,manager,start_date,end_date,status"
PEOPLE = (
    HEADER,
    "E1,Ann,ann@example.com,Eng,,,,2020-01-01,,active",
    "E2,Bob,bob@example.com,Eng,,,E1,2021-01-01,,leave",
    "E3,Cy,cy@example.com,Ops,,,E1,2030-01-01,,active",
    "E4,Di,di@example.com,Ops,,,E1,2022-01-01,2031-01-01,active",
    "B1,Build bot,,Eng,bot,E1,,2023-01-01,,active",
)


def counts(ws: Workspace) -> tuple[int, int, int]:
    with ws.sessions() as session:
        return (
            session.execute(select(func.count()).select_from(models.Identity)).scalar_one(),
            session.execute(select(func.count()).select_from(models.IdentityEvent)).scalar_one(),
            session.execute(select(func.count()).select_from(models.AuditEvent)).scalar_one(),
        )


def verified(ws: Workspace) -> bool:
    with ws.sessions() as session:
        return audit.verify(session).ok


def test_first_import_then_reimport_changes_nothing(ws: Workspace, tmp_path: Path) -> None:
    first = import_feed(ws, feed(tmp_path, "people.csv", *PEOPLE), now=NOW)
    assert first.errors == [] and first.counts == {"hire": 5, "leave": 1, "terminate": 1}
    assert first.outcome.transitions == {"new->active": 3, "new->leave": 1, "new->pre-hire": 1}
    stored = counts(ws)
    again = import_feed(ws, tmp_path / "people.csv", now=NOW + timedelta(hours=1))
    assert again.counts == {} and again.unchanged == 5 and again.outcome.recorded == 0
    assert counts(ws)[:2] == stored[:2]
    assert verified(ws)


def test_second_snapshot_mixes_stored_and_new_identities(ws: Workspace, tmp_path: Path) -> None:
    import_feed(ws, feed(tmp_path, "people.csv", *PEOPLE), now=NOW)
    later = NOW + timedelta(days=1)
    moved = [
        row.replace("E2,Bob,bob@example.com,Eng", "E2,Bob,bob@example.com,Ops") for row in PEOPLE
    ]
    report = import_feed(
        ws,
        feed(tmp_path, "more.csv", *moved, "E5,Eve,eve@example.com,Ops,,,E2,2024-01-01,,active"),
        now=later,
    )
    assert report.counts == {"hire": 1, "move": 1}
    assert report.outcome.transitions == {"new->active": 1}
    with ws.sessions() as session:
        rows = {r.external_id: r for r in session.execute(select(models.Identity)).scalars()}
    assert rows["E2"].attributes["department"] == "Ops" and rows["E2"].state == "leave"
    assert rows["E5"].state == "active" and rows["E5"].manager == "E2"
    assert verified(ws)


def test_events_already_stored_are_duplicates(ws: Workspace, tmp_path: Path) -> None:
    rows = (
        "id,event,effective,name,email",
        "E1,hire,2024-01-01,Ann,ann@example.com",
        "E2,hire,2024-02-01,Bob,bob@example.com",
        "E1,move,2025-01-01,Ann Lee,",
    )
    path = feed(tmp_path, "events.csv", *rows)
    first = import_feed(ws, path, feed="events", now=NOW)
    assert first.outcome.recorded == 3 and first.outcome.duplicates == 0
    # Every event of the file is stored with its identity: none is written twice.
    more = feed(tmp_path, "events2.csv", *rows, "E3,hire,2024-03-01,Cy,cy@example.com")
    again = import_feed(ws, more, feed="events", now=NOW)
    assert again.outcome.recorded == 1 and again.outcome.duplicates == 3
    assert counts(ws)[:2] == (3, 4)
    with ws.sessions() as session, session.begin():
        repeat = identities.record_events(
            session,
            ws.config,
            [LifecycleEvent("E3", EventKind.HIRE, datetime(2024, 3, 1, tzinfo=UTC), NOW, {})],
            origin="test",
            now=NOW,
        )
    assert repeat.recorded == 1  # other attributes, another event
    assert verified(ws)


def test_owner_and_manager_references(ws: Workspace, tmp_path: Path) -> None:
    import_feed(ws, feed(tmp_path, "people.csv", *PEOPLE), now=NOW)
    report = import_feed(
        ws,
        feed(
            tmp_path,
            "refs.csv",
            *PEOPLE,
            "B2,Owned by a bot,,Eng,bot,B1,,2024-01-01,,active",
            "B3,Owned by nobody,,Eng,service_account,X9,,2024-01-01,,active",
            "B4,Owned by a person in this file,,Eng,api_key,E6,,2024-01-01,,active",
            "E6,Fay,fay@example.com,Eng,,,E1,2024-01-01,,active",
            "E7,Gus,gus@example.com,Eng,,,X8,2024-01-01,,active",
        ),
        now=NOW,
    )
    assert [e.split(" ", 1)[1] for e in report.errors] == [
        "owner: owner B1 is not a human; a non-human identity needs an accountable human owner",
        "owner: owner X9 is not a known identity; a non-human identity needs an accountable "
        "human owner",
    ]
    assert [w for w in report.warnings if "manager" in w] == [
        f"{tmp_path / 'refs.csv'}:11 manager: manager X8 is unknown; accepted and flagged"
    ]
    assert report.counts == {"hire": 3}
    # Refused rows are not taken for people who left.
    assert report.missing == 0
    with ws.sessions() as session:
        flags = dict(
            session.execute(select(models.Identity.external_id, models.Identity.flags)).all()
        )
    assert flags["E7"] == ["unknown manager X8"] and flags["E2"] == []
    assert "B2" not in flags and "B3" not in flags and "B4" in flags


def test_mass_change_guard_still_holds_a_large_snapshot_drop(ws: Workspace, tmp_path: Path) -> None:
    rows = [HEADER] + [f"P{i},P {i},p{i}@example.com,Ops,,,,2020-01-01,,active" for i in range(10)]
    import_feed(ws, feed(tmp_path, "all.csv", *rows), now=NOW)
    report = import_feed(ws, feed(tmp_path, "few.csv", *rows[:4]), now=NOW + timedelta(days=1))
    assert report.missing == 7 and report.outcome.held == 7 and report.outcome.hold_id == 1
    with ws.sessions() as session:
        states = dict(
            session.execute(select(models.Identity.external_id, models.Identity.state)).all()
        )
    assert set(states.values()) == {"active"}
    assert verified(ws)


def test_an_events_feed_changes_stored_identities(ws: Workspace, tmp_path: Path) -> None:
    """An events feed has no snapshot of who is stored, so every identity is looked up."""
    import_feed(ws, feed(tmp_path, "people.csv", *PEOPLE), now=NOW)
    path = feed(tmp_path, "events.csv", "id,event,effective,department", "E1,move,2026-05-01,Ops")
    report = import_feed(ws, path, mode=FeedMode.EVENTS, now=NOW)
    assert report.counts == {"move": 1} and report.outcome.transitions == {}
    assert verified(ws)


def test_new_sqlite_workspaces_use_16k_pages_and_old_ones_keep_theirs(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    engine = db.make_engine(f"sqlite:///{fresh}")
    db.upgrade(engine)
    engine.dispose()
    old = tmp_path / "old.db"
    connection = sqlite3.connect(old)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE t (x)")
    connection.close()
    engine = db.make_engine(f"sqlite:///{old}")
    db.upgrade(engine)
    engine.dispose()
    sizes = {}
    for path in (fresh, old):
        connection = sqlite3.connect(path)
        sizes[path.name] = connection.execute("PRAGMA page_size").fetchone()[0]
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.close()
    assert sizes == {"fresh.db": 16384, "old.db": 4096}
