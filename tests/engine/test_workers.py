"""``provisor worker`` processes sharing one workspace on PostgreSQL, against real targets:
each operation executed and recorded once, whatever the number of workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from provisor.engine.workspace import Workspace
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy
from tests.engine.test_crash_safety import POLICY

PEOPLE = 60  # x (create + one group) = 120 operations
SETTINGS = "runner: {lease_seconds: 3, sweep_seconds: 1}\nservice: {cycle_seconds: 2}\n"


def start_workers(
    folder: Path, count: int, env: dict[str, str], first: int = 0
) -> list[subprocess.Popen[bytes]]:
    """``count`` workers, their logs in ``folder``/worker-N.log."""
    command = [str(Path(sys.executable).parent / "provisor"), "-w", str(folder), "worker"]
    started = []
    for n in range(first, first + count):
        with (folder / f"worker-{n}.log").open("wb") as log:
            started.append(
                subprocess.Popen(
                    [*command, "--name", f"w{n}"], stdout=log, stderr=subprocess.STDOUT, env=env
                )
            )
    return started


def stop_workers(workers: list[subprocess.Popen[bytes]], folder: Path) -> str:
    """SIGTERM each (running jobs finish first); the warnings and errors in their logs."""
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    logs = sorted(folder.glob("worker-*.log"))
    lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
    return "\n".join(line for line in lines if " WARNING " in line or " ERROR " in line)


def wait_until_done(workspace: Workspace, timeout: float) -> Counter[str]:
    """Wait until no operation is open; the journal's statuses."""
    deadline = time.monotonic() + timeout
    while True:
        with workspace.sessions() as session:
            statuses = Counter(session.execute(select(models.Operation.status)).scalars())
        if not statuses["pending"] + statuses["running"] or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def verified_keys(workspace: Workspace) -> Counter[str]:
    with workspace.sessions() as session:
        return Counter(
            (json.loads(data) if isinstance(data, str) else data)["key"]
            for data in session.execute(
                select(models.AuditEvent.data).where(
                    models.AuditEvent.action == "operation.verified"
                )
            ).scalars()
        )


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
