"""An application's users table whose change column the application does not stamp: an
incremental reconciliation that trusted ``updated_at >= since`` would read nothing and miss a
leaver enabled again by hand. The leaver's disable, written by Provisor in the window, is a
canary the change listing does not show: the run is read in full and finds the account."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from provisor.domain.lifecycle import EventKind
from provisor.engine import reconcile
from provisor.engine.debt import debt_items
from provisor.sandbox.sqlapp import app_schema, users_table_connection
from provisor.sandbox.workspaces import scratch_workspace
from tests.engine.test_runner import apply, event, people, plan

POLICY = """\
targets:
  - name: payroll
    class: sql
    owner: payroll-team
    leaver_action: disable
    connection: {connection}
    entitlements: [{{name: viewer}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: payroll, entitlements: [viewer]}}]
"""


def test_an_unstamped_change_column_is_caught_by_the_canary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'payroll.db'}"
    engine = create_engine(url)
    app_schema(engine)
    with engine.begin() as connection:
        # a change column nothing ever stamps
        connection.execute(text("ALTER TABLE accounts ADD COLUMN updated_at TIMESTAMP"))
    ws = scratch_workspace(
        tmp_path / "ws",
        POLICY.format(connection=users_table_connection(url, changed_column="updated_at")),
    )
    try:
        start = datetime.now(UTC)
        people(ws, "E1", "E2", now=start)
        plan(ws, start)
        assert apply(ws, start).failed == 0
        time.sleep(2.2)  # the creates fall before the next window
        assert reconcile.reconcile_target(ws, "payroll", now=datetime.now(UTC)).mode == "full"
        time.sleep(2.2)
        left = datetime.now(UTC)
        event(ws, "E1", EventKind.TERMINATE, now=left)
        plan(ws, left)
        assert apply(ws, left).failed == 0  # locked and read back: the window's canary
        with engine.begin() as connection:  # enabled again by hand, and nothing stamped
            connection.execute(
                text("UPDATE accounts SET status = 'active' WHERE login = 'e1@example.com'")
            )
        report = reconcile.reconcile_target(ws, "payroll", now=datetime.now(UTC), full=False)
        assert report.mode == "full" and report.status == "completed"
        assert report.proof is not None and "cannot be trusted here; read in full" in report.proof
        assert report.classes.get("terminated-active") == 1
        with ws.sessions() as session:
            items = debt_items(ws, session, datetime.now(UTC), identity="E1")
        assert ("account", "enabled") in {(i.item, i.state) for i in items}
    finally:
        ws.close()
        engine.dispose()
