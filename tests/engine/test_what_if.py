"""A what-if works on a copy that is thrown away: after it, every table holds exactly the rows
it held before (on SQLite and on PostgreSQL), while inside it the change was recorded, held
and planned as it would be."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from provisor.domain.lifecycle import EventKind
from provisor.engine import views
from provisor.engine.imports import import_feed
from provisor.engine.what_if import what_if
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
POLICY = """\
targets:
  - name: payroll
    class: manual
    owner: finance@example.com
    leaver_action: delete
    entitlements: [{name: viewer}]
rules:
  - name: everyone
    when: {attr: employment_type, in: [employee]}
    grant: [{target: payroll, entitlements: [viewer]}]
"""


@pytest.fixture
def ws(tmp_path: Path, workspace_store: str) -> Iterator[Workspace]:
    (tmp_path / "provisor.yaml").write_text("guard: {min_count: 2}\n", encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY)
    feed = tmp_path / "people.csv"
    feed.write_text(
        "id,name,employment_type\n" + "".join(f"E{i},P {i},employee\n" for i in range(6)),
        encoding="utf-8",
    )
    import_feed(workspace, feed, now=NOW)
    yield workspace
    workspace.close()


def every_row(ws: Workspace) -> dict[str, list[tuple[Any, ...]]]:
    with ws.sessions() as session:
        return {
            table.name: [
                tuple(row)
                for row in session.execute(text(f'SELECT * FROM "{table.name}" ORDER BY 1'))
            ]
            for table in models.Base.metadata.sorted_tables
        }


def test_nothing_is_kept_and_everything_is_seen(ws: Workspace) -> None:
    before = every_row(ws)

    def terminate(sandbox: Workspace) -> tuple[dict[str, Any], list[str]]:
        done = views.record_event(
            sandbox,
            "E1",
            EventKind.TERMINATE,
            effective=None,
            changes={},
            ref=None,
            source="what-if",
            now=NOW,
        )
        return done, ["E1"]

    found = what_if(ws, now=NOW, change=terminate)
    assert found["recorded"]["state"] == "terminated"
    assert found["explained"]["E1"]["targets"] == {}
    assert every_row(ws) == before

    # a snapshot that drops three of six people: the mass-change guard would hold them
    feed = ws.path / "fewer.csv"
    feed.write_text(
        "id,name,employment_type\n" + "".join(f"E{i},P {i},employee\n" for i in range(3)),
        encoding="utf-8",
    )

    def snapshot(sandbox: Workspace) -> tuple[dict[str, Any], list[str]]:
        report = import_feed(sandbox, feed, now=NOW)
        return report.as_dict(), report.outcome.changed

    held = what_if(ws, now=NOW, change=snapshot)
    assert held["recorded"]["held"] == 3
    assert [h["kind"] for h in held["holds"]] == ["events"]
    assert every_row(ws) == before
