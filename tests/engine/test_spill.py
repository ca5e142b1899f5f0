"""A large snapshot read in parts, on several cores, gives exactly what one reading gives.

The parts are made small here (``PART_CHARS``) so that a small feed is cut into three; what
they find (rows, errors and warnings at their lines, ids on several rows within a part and
across parts, the records kept and what the reference checks gather) is compared with the
whole text read at once, and an import through the parts with an import without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisor.config.workspace import write_starter
from provisor.engine import spill
from provisor.engine.imports import import_feed
from provisor.engine.workspace import Workspace
from provisor.errors import FeedError
from provisor.sources.hr import FeedMapping, FeedMode, csv_parts
from provisor.store import db, models

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
MAPPING = FeedMapping(mode=FeedMode.SNAPSHOT)
HEADER = "id,name,email,department,manager,start_date,status,event\n"


def rows(count: int) -> list[str]:
    """Rows with a bit of everything: managers named further down, commas in quoted values,
    a bad date here and there, blank lines."""
    out = []
    for i in range(count):
        manager = f"E{(i * 7) % count}" if i % 5 else ""
        date = "2024-13-01" if i % 97 == 13 else f"2024-0{1 + i % 9}-1{i % 10}"
        name = f'"Person {i}, Jr."' if i % 11 == 0 else f"Person {i}"
        out.append(f"E{i},{name},p{i}@example.com,dept-{i % 4},{manager},{date},active,\n")
        if i % 50 == 49:
            out.append("\n")
    return out


def snapshot(path: Path, lines: list[str]) -> Path:
    path.write_text("\n" + HEADER + "".join(lines), encoding="utf-8")
    return path


def read(path: Path, monkeypatch: pytest.MonkeyPatch, parts: int) -> tuple[Any, ...]:
    """What reading ``path`` finds, cut into ``parts`` (1: at once), and how many parts
    other processes read."""
    with monkeypatch.context() as patched:
        patched.setattr(spill, "PART_CHARS", 2_000)
        patched.setattr(spill, "LEAD_CHARS", 0)
        patched.setattr(spill, "MAX_PARTS", parts)
        patched.setattr(spill, "_cores", lambda: 8)
        parsed, kept = spill.read_snapshot(path, MAPPING, batch=100, zone_attribute=None)
    try:
        records = [
            (r.line, r.identity, r.effective, r.status, r.attributes, r.end)
            for batch in kept.batches(parsed.rejected_ids, 100)
            for r in batch
        ]
        references = kept.references
        gathered = (
            references.ids,
            list(references.boss.items()),
            references.owner_of,
            references.kinds,
        )
        return parsed, records, gathered, kept.taken_in
    finally:
        kept.close()


def test_a_feed_read_in_three_parts_is_read_as_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = rows(600)
    # an id again in the same part, and one on three rows across the parts
    lines.insert(40, "E3,Person 3 again,x@example.com,dept-1,,2024-01-01,active,\n")
    lines.insert(300, "E5,Person 5 again,y@example.com,dept-1,,2024-01-01,active,\n")
    lines.append("E5,Person 5 thrice,z@example.com,dept-1,,2024-01-01,active,\n")
    lines.append("E9999,,no-name@example.com,dept-1,,2024-01-01,active,\n")  # no name
    path = snapshot(tmp_path / "people.csv", lines)
    whole, records, gathered, taken = read(path, monkeypatch, parts=1)
    assert taken == 0
    parsed, in_parts, parts_gathered, taken = read(path, monkeypatch, parts=3)
    assert taken == 2  # two parts read by processes of their own
    assert parsed == whole
    assert in_parts == records
    assert parts_gathered == gathered
    # the figures the comparison rests on: problems at their lines in the later parts too
    assert {"E3", "E5", "E9999"} <= whole.rejected_ids
    assert [e.line for e in whole.errors if "duplicate id E5" in e.reason] == [8, 303, 617]
    assert any(e.line > 500 and "2024-13-01" in e.reason for e in whole.errors)
    assert [w.line for w in whole.warnings if "'event'" in w.reason] == [2]  # the header's


def test_a_value_over_several_lines_has_the_whole_text_read_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = rows(600)
    lines[450] = 'X1,"Two\nlines",x1@example.com,dept-1,,2024-01-01,active,\n'
    path = snapshot(tmp_path / "people.csv", lines)
    whole, records, gathered, _ = read(path, monkeypatch, parts=1)
    parsed, in_parts, parts_gathered, taken = read(path, monkeypatch, parts=3)
    assert taken == 0  # where the parts met could not be trusted
    assert (parsed, in_parts, parts_gathered) == (whole, records, gathered)
    assert "X1" in {r[1] for r in records}


def test_a_stray_quote_does_not_keep_the_parts_from_being_read_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = rows(600)
    lines[20] = 'E20,Person 20 "Jr,p20@example.com,dept-1,,2024-01-01,active,\n'  # kept as is
    path = snapshot(tmp_path / "people.csv", lines)
    whole, records, gathered, _ = read(path, monkeypatch, parts=1)
    parsed, in_parts, parts_gathered, taken = read(path, monkeypatch, parts=3)
    assert taken == 2
    assert (parsed, in_parts, parts_gathered) == (whole, records, gathered)
    assert any(r[1] == "E20" and r[4]["name"] == 'Person 20 "Jr' for r in records)


def test_a_refused_file_is_refused_as_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = rows(600)
    lines[500] = 'E500,"Person 500,p500@example.com,dept-1,,2024-01-01,active,\n'  # left open
    path = snapshot(tmp_path / "people.csv", lines)
    with pytest.raises(FeedError) as whole:
        read(path, monkeypatch, parts=1)
    with pytest.raises(FeedError) as in_parts:
        read(path, monkeypatch, parts=3)
    assert str(in_parts.value) == str(whole.value)
    assert ":503: " in str(whole.value) and "cannot be trusted" in str(whole.value)


def test_cuts_fall_on_line_breaks_outside_quoted_values() -> None:
    quoted = 'E1,"a\n' + "b,c\n" * 50 + 'd",x\n'  # one value over 52 lines
    text = HEADER + quoted + "E2,Ann,a@x,d,,2024-01-01,active,\n" * 50
    cuts = csv_parts(text, 2, ",")
    assert cuts is not None and cuts.header == HEADER and cuts.lines == 1
    ((at, shift),) = cuts.parts
    assert at >= len(HEADER + quoted)  # not inside the quoted value
    assert text[at - 1] == "\n" and text.count("\n", 0, at) - cuts.lines == shift
    assert csv_parts('"id",name\n' + "E1,Ann\n" * 10, 2, ",") is None  # a quoted header
    assert csv_parts(HEADER, 2, ",") is None  # nothing to cut


@pytest.fixture
def workspaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Workspace]]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    opened = []
    for name in ("at-once", "in-parts"):
        folder = tmp_path / name
        folder.mkdir()
        write_starter(folder)
        (folder / "provisor.yaml").write_text("feeds:\n  hr: {mode: snapshot}\n", encoding="utf-8")
        engine = db.make_engine(db.database_url(folder))
        db.upgrade(engine)
        engine.dispose()
        opened.append(Workspace.open(folder))
    yield opened
    for workspace in opened:
        workspace.close()


def stored(workspace: Workspace) -> tuple[Any, ...]:
    with workspace.sessions() as session:
        people = session.execute(
            select(
                models.Identity.external_id, models.Identity.state, models.Identity.manager
            ).order_by(models.Identity.external_id)
        ).all()
        events = session.execute(
            select(models.IdentityEvent.key, models.IdentityEvent.source).order_by(
                models.IdentityEvent.key
            )
        ).all()
    return people, events


def test_an_import_through_parts_records_what_one_at_once_records(
    workspaces: list[Workspace], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = rows(600)
    lines.insert(300, "E5,Person 5 again,y@example.com,dept-1,,2024-01-01,active,\n")
    path = snapshot(tmp_path / "people.csv", lines)
    at_once, in_parts = workspaces
    first = import_feed(at_once, path, now=NOW)
    taken: list[int] = []
    close = spill.Spill.close

    def closing(kept: spill.Spill) -> None:
        taken.append(kept.taken_in)
        close(kept)

    with monkeypatch.context() as patched:
        patched.setattr(spill, "PART_CHARS", 2_000)
        patched.setattr(spill, "LEAD_CHARS", 0)
        patched.setattr(spill, "_cores", lambda: 3)
        patched.setattr(spill.Spill, "close", closing)
        second = import_feed(in_parts, path, now=NOW)
    assert taken == [2]
    assert second.errors == first.errors and second.warnings == first.warnings
    assert second.counts == first.counts and second.rows_accepted == first.rows_accepted
    assert stored(in_parts) == stored(at_once)
    assert first.rows_accepted > 500 and "duplicate id E5" in " ".join(first.errors)


@pytest.mark.parametrize("python", ["/bin/false", "/no/such/python"])
def test_a_part_reader_that_fails_or_cannot_start_has_the_text_read_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python: str
) -> None:
    path = snapshot(tmp_path / "people.csv", rows(600))
    whole, records, gathered, _ = read(path, monkeypatch, parts=1)
    monkeypatch.setattr(spill.sys, "executable", python)
    parsed, in_parts, parts_gathered, taken = read(path, monkeypatch, parts=3)
    assert taken == 0
    assert (parsed, in_parts, parts_gathered) == (whole, records, gathered)


def readers_running() -> list[int]:
    """This process's children that read parts of a feed."""
    found = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"provisor.engine.spill" in command:
                found.append(int(pid))
    return found


def test_a_failing_import_stops_the_readers_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = snapshot(tmp_path / "people.csv", rows(600))
    folders: list[str] = []
    make = spill.Spill.folder

    def folder(kept: spill.Spill) -> str:
        folders.append(make(kept))
        return folders[-1]

    def broken(*_args: Any) -> None:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(spill.Spill, "folder", folder)
    monkeypatch.setattr(spill, "_parse_part", broken)  # here only: the readers run as ever
    with pytest.raises(RuntimeError, match="the disk went away"):
        read(path, monkeypatch, parts=3)
    assert readers_running() == []
    assert len(folders) == 1 and not Path(folders[0]).exists()
