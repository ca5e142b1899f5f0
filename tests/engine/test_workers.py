"""``provisor worker`` processes sharing one workspace on PostgreSQL, against real targets:
each operation executed and recorded once, whatever the number of workers."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from provisor.sandbox.cluster import start_workers, stop_workers, verified_keys, wait_until_done
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy
from tests.engine.test_crash_safety import POLICY

PEOPLE = 60  # x (create + one group) = 120 operations
SETTINGS = "runner: {lease_seconds: 3, sweep_seconds: 1}\nservice: {cycle_seconds: 2}\n"


def postgres_env(url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", url)
    return dict(os.environ)


def test_two_workers_run_each_operation_once(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = postgres_env(postgres_url, monkeypatch)
    ScimApp.create_groups(scim_url, "staff")
    proxy = FaultyProxy(scim_url)
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=proxy.url))
    workers = start_workers(tmp_path, 2, env)
    try:
        hire_employees(workspace, PEOPLE, datetime.now(UTC))
        statuses = wait_until_done(workspace, 60)
    finally:
        errors = stop_workers(workers, tmp_path)
        proxy.close()
    writes = [(m, p) for m, p, _ in proxy.requests if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert statuses == {"verified": 2 * PEOPLE}, errors
    assert len([p for m, p in writes if m == "POST" and p.rstrip("/").endswith("/Users")]) == PEOPLE
    assert len([p for m, p in writes if m == "PATCH" and "/Groups/" in p]) == PEOPLE
    verified = verified_keys(workspace)
    assert len(verified) == 2 * PEOPLE and set(verified.values()) == {1}
    with workspace.sessions() as session:
        assert session.execute(select(models.AccountLease)).scalars().all() == []
    workspace.close()
    assert all(w.returncode == 0 for w in workers), errors
