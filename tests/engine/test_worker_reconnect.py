"""The journal's database drops every connection in the middle of a run (a failover, an
administrator's pg_terminate_backend): the workers reconnect and finish, and each operation is
still executed and recorded once."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from provisor.engine.runner.dispatch import Queue
from provisor.engine.workspace import Workspace
from provisor.sandbox.cluster import (
    start_workers,
    stop_workers,
    verified_keys,
    wait_until_done,
)
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy
from tests.engine.test_crash_safety import POLICY
from tests.engine.test_workers import SETTINGS

PEOPLE = 60  # x (create + one group) = 120 operations


def _terminate_all(url: str) -> int:
    """Drop every other connection to the database at ``url``; how many."""
    name = make_url(url).database
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            dropped = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
    finally:
        admin.dispose()
    return int(dropped)


def _until_verified(workspace: Workspace, count: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        with workspace.sessions() as session:
            done = session.scalar(select(func.count()).where(models.Operation.status == "verified"))
        if (done or 0) >= count or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def test_workers_reconnect_when_the_database_drops_them(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    ScimApp.create_groups(scim_url, "staff")
    proxy = FaultyProxy(scim_url)
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=proxy.url))
    workers = start_workers(tmp_path, 3, dict(os.environ))
    queue = Queue(workspace)
    dropped = 0
    try:
        hire_employees(workspace, PEOPLE, datetime.now(UTC))
        queue.cycle()
        for _ in range(3):  # while the work goes on: once some is done, and again
            _until_verified(workspace, 10)
            workspace.engine.dispose()  # this process's own connections go too
            queue.close()
            dropped += _terminate_all(postgres_url)
            time.sleep(0.5)
        statuses = wait_until_done(workspace, 90)
    finally:
        errors = stop_workers(workers, tmp_path)
        proxy.close()
    assert dropped >= 3  # the workers' connections went, each time
    assert statuses == {"verified": 2 * PEOPLE}, errors
    posts = [p for m, p, _ in proxy.requests if m == "POST" and p.rstrip("/").endswith("/Users")]
    assert len(posts) == PEOPLE  # each account made once
    verified = verified_keys(workspace)
    assert len(verified) == 2 * PEOPLE and set(verified.values()) == {1}
    workspace.close()
    codes = [w.returncode for w in workers]
    assert codes == [0] * len(workers), f"exit codes {codes}\n{errors}"
