"""``provisor worker`` processes sharing one workspace on PostgreSQL, against real targets:
each operation executed and recorded once, whatever the number of workers."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

from provisor.engine import circuit
from provisor.sandbox.cluster import start_workers, stop_workers, verified_keys, wait_until_done
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy, Refuse
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


def test_a_target_down_then_back_under_workers(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three workers while the target answers 503: the circuit opens after three failures in
    a row across them, the work waits untried (nothing parked); once it answers, a probe due
    after the cool-down (queued by the sweep) closes it and every operation is verified once."""
    env = postgres_env(postgres_url, monkeypatch)
    ScimApp.create_groups(scim_url, "staff")
    down = threading.Event()
    down.set()

    def gateway(method: str, path: str, body: bytes) -> bytes:
        if down.is_set():
            raise Refuse(503, "down for maintenance")
        return body

    proxy = FaultyProxy(scim_url, on_request=gateway)
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    policy = POLICY.replace(
        "    concurrency: 8\n",
        "    concurrency: 8\n    circuit: {{failures: 3, cool_down_seconds: 2}}\n",
    )
    workspace = scratch_workspace(tmp_path, policy.format(url=proxy.url))
    workers = start_workers(tmp_path, 3, env)
    try:
        hire_employees(workspace, 30, datetime.now(UTC))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with workspace.sessions() as session:
                if circuit.unavailable(session):
                    break
            time.sleep(0.2)
        with workspace.sessions() as session:
            assert "app" in circuit.unavailable(session)
        time.sleep(3)  # a probe or two while it is still down
        with workspace.sessions() as session:
            statuses = Counter(session.execute(select(models.Operation.status)).scalars())
        assert statuses["failed"] == 0 and statuses["verified"] == 0
        assert len(proxy.requests) < 30  # not every operation tried: the circuit holds them
        down.clear()
        statuses = wait_until_done(workspace, 60)
    finally:
        errors = stop_workers(workers, tmp_path)
        proxy.close()
    assert statuses == {"verified": 60}, errors
    verified = verified_keys(workspace)
    assert len(verified) == 60 and set(verified.values()) == {1}
    with workspace.sessions() as session:
        assert circuit.unavailable(session) == {}
        actions = list(
            session.execute(
                select(models.AuditEvent.action).where(
                    models.AuditEvent.action.in_(("target.unavailable", "target.available"))
                )
            ).scalars()
        )
    assert actions[0] == "target.unavailable" and actions[-1] == "target.available"
    users = [p for m, p, _ in proxy.requests if m == "POST" and p.rstrip("/").endswith("/Users")]
    workspace.close()
    assert len(users) >= 30 and all(w.returncode == 0 for w in workers), errors


def test_a_drain_gives_its_turn_to_a_waiting_leavers_job(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job slot taken and a cycle (which may plan a leaver) or a drain for removals
    waiting: a drain running joiners stops before its next account and goes back in line."""
    from provisor.engine.runner.dispatch import Queue
    from provisor.engine.runner.worker import Worker

    postgres_env(postgres_url, monkeypatch)
    ScimApp.create_groups(scim_url, "staff")
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    queue = Queue(workspace)
    worker = Worker(workspace, concurrency=1)
    try:
        hire_employees(workspace, 5, datetime.now(UTC))
        assert not queue.leavers_waiting()
        assert queue.drain("app") and not queue.leavers_waiting()  # joiners' work: no
        assert queue.cycle() and not queue.leavers_waiting()  # a cycle soon gets a slot...
        time.sleep(0.3)
        assert queue.leavers_waiting()  # ...else the drains give way to it
        assert worker.drain("app") == {}  # gave way before its first account
        assert queue.drain("app", removals=True) and queue.leavers_waiting()
        with workspace.sessions() as session:
            op = models.Operation
            rows = session.execute(select(op.status, op.attempts)).all()
        assert rows and set(rows) == {("pending", 0)}
        with workspace.sessions() as session:
            session.execute(text("DELETE FROM procrastinate_jobs"))
            session.commit()
        time.sleep(0.15)  # the worker's answer is kept that long
        totals = worker.drain("app")
        assert totals["verified"] == 10 and totals["failed"] == 0  # nothing waits: it runs
    finally:
        worker.close()
        queue.close()
        workspace.close()
