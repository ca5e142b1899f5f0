"""HR feed hygiene on every store: a control character (NUL) is a row error with its line and
column on SQLite and PostgreSQL alike, while the other rows go through; people who are their
own manager, or in a loop of managers, are flagged; a declared correlation attribute is
required; over-long values are refused; a leaver never imported is reported, not dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from provisor.config.workspace import WorkspaceConfig
from provisor.engine.imports import import_feed
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.sources.hr import FeedMapping, FeedMode, parse_feed
from provisor.store import models

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
POLICY = "targets: []\n"
HEADER = "id,name,email,department,manager,status\n"


@pytest.fixture
def ws(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", database_url)
    workspace = scratch_workspace(tmp_path / "ws", POLICY)
    yield workspace  # type: ignore[misc]
    workspace.close()


def feed(tmp_path: Path, *rows: str, name: str = "hr.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def stored(ws: Workspace) -> dict[str, list[str]]:
    with ws.sessions() as session:
        rows = session.execute(select(models.Identity.external_id, models.Identity.flags))
        return {identity: list(flags or []) for identity, flags in rows}


def test_a_nul_byte_is_a_row_error_and_the_rest_goes_through(ws: Workspace, tmp_path: Path) -> None:
    path = feed(
        tmp_path,
        "E1,Ann,ann@example.com,Sales,,active",
        "E2,B\x00b,bob@example.com,Sales,,active",
        "E3,Cy,cy@example.com,Sa\x07les,,active",
    )
    report = import_feed(ws, path, now=NOW)
    assert report.rows_read == 3 and report.rows_accepted == 1
    assert any(":3 name: control character U+0000" in e for e in report.errors), report.errors
    assert any(":4 department: control character U+0007" in e for e in report.errors)
    assert set(stored(ws)) == {"E1"}


def test_a_nul_in_json_lines_is_refused_too(ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "hr.jsonl"
    rows = [
        {"id": "E1", "name": "Ann", "email": "ann@example.com"},
        {"id": "E2", "name": "Bob", "email": "bob@example.com", "nick": "b\u0000"},
        {"id": "E3", "name": "Cy", "email": "cy@example.com", "tags": ["a\u0000"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = import_feed(ws, path, now=NOW)
    assert report.rows_accepted == 1
    assert any(":2 nick: control character U+0000" in e for e in report.errors), report.errors
    assert any(":3 tags: control character" in e for e in report.errors), report.errors
    assert set(stored(ws)) == {"E1"}


def test_managers_who_are_themselves_or_in_a_loop_are_flagged(
    ws: Workspace, tmp_path: Path
) -> None:
    first = feed(
        tmp_path,
        "E1,Ann,ann@example.com,Sales,E1,active",
        "E2,Bob,bob@example.com,Sales,E3,active",
        "E3,Cy,cy@example.com,Sales,E4,active",
        "E4,Di,di@example.com,Sales,E2,active",
        "E5,Ed,ed@example.com,Sales,E2,active",  # under the loop, not in it
        name="first.csv",
    )
    report = import_feed(ws, first, now=NOW)
    assert report.rows_accepted == 5
    assert any(":2 manager: E1 is their own manager" in w for w in report.warnings)
    assert any("E2 is in a loop of managers: E2 -> E3 -> E4 -> E2" in w for w in report.warnings)
    flags = stored(ws)
    assert flags["E1"] == ["own manager"]
    assert flags["E3"] == ["manager loop E3 -> E4 -> E2"]
    assert flags["E5"] == []
    # a loop closed through someone only the store knows: E6 (new) under E5 (stored, not in
    # the next file) under E6
    with ws.sessions() as session, session.begin():
        row = session.scalars(
            select(models.Identity).where(models.Identity.external_id == "E5")
        ).one()
        row.attributes = {**row.attributes, "manager": "E6"}
    later = feed(
        tmp_path,
        *[
            f"E{i},{n},{n.lower()}@example.com,Sales,{m},active"
            for i, n, m in [(1, "Ann", ""), (2, "Bob", ""), (3, "Cy", ""), (4, "Di", "")]
        ],
        "E6,Gus,gus@example.com,Sales,E5,active",
        name="later.csv",
    )
    again = import_feed(ws, later, now=NOW)
    assert any("E6 is in a loop of managers: E6 -> E5 -> E6" in w for w in again.warnings), (
        again.warnings
    )


def test_declared_required_attributes_and_length_limits(tmp_path: Path) -> None:
    mapping = FeedMapping(
        required=["email"],
        max_length={"department": 20},
        max_value_length=100,
    )
    path = feed(
        tmp_path,
        "E1,Ann,ann@example.com,Sales,,active",
        "E2,Bob,,Sales,,active",
        "E3,Cy,cy@example.com," + "D" * 21 + ",,active",
        "E4," + "N" * 200 + ",di@example.com,Sales,,active",
        "E5,Ed,ed@example.com,Sales,,active,",
    )
    parsed = parse_feed(path, mapping, display_name="hr.csv")
    text = [str(e) for e in parsed.errors]
    assert [r.identity for r in parsed.records] == ["E1"]
    assert "hr.csv:3 email: required value is empty" in text
    assert "hr.csv:4 department: 21 characters; at most 20 are accepted" in " ".join(text)
    assert any(e.startswith("hr.csv:5 name: 200 characters") for e in text), text
    assert any(e.startswith("hr.csv:6:") for e in text), text  # a row of the wrong width
    events = FeedMapping(mode=FeedMode.EVENTS, required=["email"])
    path = tmp_path / "events.csv"
    path.write_text(
        "id,event,effective,name,email\n"
        "E1,hire,2026-06-01,Ann,\n"
        "E2,terminate,2026-06-01,,\n"  # a leaver's row needs no email
        "E3,hire,2026-06-01,Cy,cy@example.com\n"
    )
    parsed = parse_feed(path, events, display_name="events.csv")
    assert [r.identity for r in parsed.records] == ["E2", "E3"]
    assert [str(e) for e in parsed.errors] == [
        "events.csv:2 email: a hire needs email (required in the feed mapping)"
    ]


def test_a_leaver_never_imported_is_reported(ws: Workspace, tmp_path: Path) -> None:
    path = feed(
        tmp_path,
        "E1,Ann,ann@example.com,Sales,,active",
        "E9,Old,old@example.com,Sales,,terminated",
    )
    report = import_feed(ws, path, now=NOW)
    assert any(":3 E9 is listed as terminated but was never imported" in w for w in report.warnings)
    assert set(stored(ws)) == {"E1"}


def test_the_starter_configuration_still_reads() -> None:
    assert WorkspaceConfig().feeds["hr"].max_value_length == 1024


def test_a_long_value_spread_over_lines_is_measured_whole(tmp_path: Path) -> None:
    long = "\n".join(["x" * 100] * 20)  # 2,019 characters, no line over 100
    path = tmp_path / "hr.csv"
    path.write_text(HEADER + f'E1,Ann,ann@example.com,"{long}",,active\n', encoding="utf-8")
    parsed = parse_feed(path, FeedMapping(), display_name="hr.csv")
    assert parsed.records == []
    assert [str(e) for e in parsed.errors] == [
        "hr.csv:2 department: 2019 characters; at most 1024 are accepted "
        "(max_length in the feed mapping)"
    ]
