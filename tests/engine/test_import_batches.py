"""A snapshot is read once, kept on disk and recorded a batch at a time (here three rows at a
time, written two identities at a time): whatever the batches, and on either store (written
behind), it means what the whole file means — an id on two rows in different
batches is rejected on both, a manager named in a later batch is known, the people
missing from it leave, the mass-change guard weighs every leaver of the file together (and
holds them all), and the same file again records nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from provisor.engine import identities, imports
from provisor.engine.imports import import_feed
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
POLICY = "targets: []\nrules: []\n"
HEADER = "id,name,email,employment_type,manager,status\n"


def row(i: int, manager: str = "", status: str = "active") -> str:
    return f"E{i},Person {i},p{i}@example.com,employee,{manager},{status}\n"


@pytest.fixture
def ws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace_store: str
) -> Iterator[Workspace]:
    """On SQLite and on PostgreSQL (the batches' inserts written behind on both), two
    identities written at a time."""
    monkeypatch.setattr(imports, "BATCH", 3)
    monkeypatch.setattr(identities, "_SLICE", 2)
    workspace = scratch_workspace(tmp_path, POLICY)
    yield workspace
    with workspace.sessions() as session:
        checked = audit.verify(session)
    assert checked.ok, checked.problem
    workspace.close()


def states(ws: Workspace) -> dict[str, str | None]:
    with ws.sessions() as session:
        query = select(models.Identity.external_id, models.Identity.state)
        return {who: state for who, state in session.execute(query)}


def test_a_snapshot_in_batches_means_what_the_whole_file_means(
    ws: Workspace, tmp_path: Path
) -> None:
    feed = tmp_path / "people.csv"
    rows = [row(i, manager="E9" if i else "") for i in range(10)]
    rows.insert(1, row(7))  # E7 again, far from its other row: both are rejected
    feed.write_text(HEADER + "".join(rows), encoding="utf-8")
    first = import_feed(ws, feed, now=NOW)
    assert first.rows_read == 11 and first.rows_accepted == 9
    assert sum("duplicate id E7" in e for e in first.errors) == 2
    assert not any("manager E9 is unknown" in w for w in first.warnings)  # in a later batch
    assert set(states(ws)) == {f"E{i}" for i in range(10) if i != 7}
    assert first.counts == {"hire": 9}
    again = import_feed(ws, feed, now=NOW)
    assert again.counts == {} and again.outcome.recorded == 0 and again.unchanged == 9

    # three leave by status, two go missing from the file: the guard sees five leavers of
    # nine, in several batches, and holds them all
    left = [row(i, "E9", "terminated") if i in (1, 2, 3) else row(i, "E9") for i in (1, 2, 3, 4)]
    feed.write_text(HEADER + "".join([*left, row(5, "E9"), row(6, "E9"), row(9)]))
    held = import_feed(ws, feed, now=NOW)
    assert held.missing == 2  # E0 and E8
    assert held.outcome.hold_id is not None and held.outcome.held == 5
    assert all(state == "active" for state in states(ws).values())
    with ws.sessions() as session:
        holds = session.execute(select(func.count()).select_from(models.Hold)).scalar_one()
    assert holds == 1


def test_a_service_account_listed_before_its_owner_is_recorded(
    ws: Workspace, tmp_path: Path
) -> None:
    """Its owner is hired in a later batch: the whole file is what counts, not the batch."""
    feed = tmp_path / "people.csv"
    rows = "".join(row(i) for i in range(6))
    feed.write_text(
        "id,name,email,employment_type,manager,status,kind,owner\n"
        "S1,Build robot,s1@example.com,,,active,service_account,E5\n"
        + rows.replace(",active\n", ",active,,\n"),
        encoding="utf-8",
    )
    report = import_feed(ws, feed, now=NOW)
    assert report.errors == [] and report.rows_accepted == 7
    assert not any("S1" in w for w in report.warnings), report.warnings
    assert states(ws)["S1"] == "active"
