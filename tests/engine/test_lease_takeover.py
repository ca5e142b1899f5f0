"""Leases between runs: a runner on another machine that died holding accounts keeps every
other runner off them until its leases expire (``runner.lease_seconds``), then the next run
takes them over, reads them back first and records the dead run's operations once, naming it;
a run slower than its lease keeps its accounts by renewing them; a process whose /proc entry
cannot be read is never taken for dead; giving back some accounts frees those of that run only
(both stores)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from provisor.engine.runner import Runner, leases
from provisor.engine.runner import runner as runner_module
from provisor.engine.workspace import Workspace
from provisor.store import models
from tests.engine.test_runner import people, plan
from tests.engine.test_runner import ws as scim_ws  # noqa: F401 (a fixture)

ELSEWHERE = "0b5e55ed-0000-4000-8000-000000000000:4026531836:4242:99"  # another machine's
LEASE = 3


def test_a_dead_runner_elsewhere_holds_its_accounts_until_its_leases_expire(
    scim_ws: Workspace,  # noqa: F811
) -> None:
    ws = scim_ws
    ws.config.runner.lease_seconds = LEASE
    people(ws, "E1", "E2")
    plan(ws)
    now = datetime.now(UTC)
    op = models.Operation
    with ws.sessions() as session:
        each = len(
            session.execute(select(op.id).where(op.identity == "E1", op.target == "app")).all()
        )
    with ws.sessions() as session, session.begin():
        # what a runner on another machine left when it died mid-write on E1's account
        session.execute(
            update(op)
            .where(op.identity == "E1", op.target == "app")
            .values(status="running", intent_run="deadbeef" * 4, intent_at=now)
        )
        session.add(
            models.AccountLease(
                identity="E1",
                target="app",
                run="deadbeef" * 4,
                holder=ELSEWHERE,
                expires_at=now + timedelta(seconds=LEASE),
                taken_at=now,
            )
        )
    runner = Runner(ws)
    try:
        first = runner.apply(now=lambda: datetime.now(UTC))
        # E2 goes ahead; E1 is another machine's until its lease expires: left alone
        assert first.verified == each and first.waiting >= each
        time.sleep(LEASE + 0.5)
        second = runner.apply(now=lambda: datetime.now(UTC))
        assert second.verified == each
    finally:
        runner.close()
    with ws.sessions() as session:
        rows = session.execute(select(op).where(op.identity == "E1")).scalars().all()
        leases = session.execute(select(models.AccountLease)).scalars().all()
    assert {r.status for r in rows if r.target == "app"} == {"verified"}
    assert all("interrupted run" in (r.last_error or "") for r in rows if r.target == "app")
    assert leases == []


def test_a_slow_run_keeps_its_accounts_and_no_second_run_writes_there(
    scim_ws: Workspace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = scim_ws
    ws.config.runner.lease_seconds = LEASE
    people(ws, "E1")
    plan(ws)
    running: Counter[tuple[str, str]] = Counter()
    worst: Counter[tuple[str, str]] = Counter()
    calls: Counter[int] = Counter()
    lock = threading.Lock()
    real = runner_module.execute
    first = threading.Event()

    def execute(job: Any, *args: Any, **kwargs: Any) -> Any:
        account = (job.identity, job.target)
        with lock:
            running[account] += 1
            worst[account] = max(worst[account], running[account])
            calls[job.id] += 1
        try:
            if not first.is_set():
                first.set()
                time.sleep(2 * LEASE + 2)  # the first write is slower than two leases
            return real(job, *args, **kwargs)
        finally:
            with lock:
                running[account] -= 1

    monkeypatch.setattr(runner_module, "execute", execute)
    slow, other = Runner(ws), Runner(ws)
    done: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: done.setdefault("slow", slow.apply(now=lambda: datetime.now(UTC)))
    )
    thread.start()
    time.sleep(LEASE + 0.5)  # past the first lease: only renewals keep the account
    done["other"] = other.apply(now=lambda: datetime.now(UTC))
    thread.join()
    slow.close()
    other.close()
    assert worst[("E1", "app")] == 1  # never two runs on one account
    assert set(calls.values()) == {1}  # each operation executed once
    assert done["slow"].verified == len(calls) and done["other"].verified == 0


def test_a_process_whose_proc_entry_cannot_be_read_is_not_taken_for_dead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine = leases._machine()
    assert machine is not None
    name = f"{machine}:4242:99"
    monkeypatch.setattr(leases, "_started", lambda pid: None)  # hidden /proc, another user's
    assert not leases._gone(name, machine)
    monkeypatch.setattr(leases, "_started", lambda pid: leases.GONE)
    assert leases._gone(name, machine)


def test_giving_back_some_accounts_frees_those_of_that_run_and_nothing_else(
    store_engine: Engine,
) -> None:
    now = datetime.now(UTC)
    mine = [("E1", "app"), ("E2", "app"), ("E3", "app"), ("E1", "crm")]
    with Session(store_engine) as session, session.begin():
        assert leases.take(session, "run-a", mine, now, 30) == set(mine)
        assert leases.take(session, "run-b", [("E4", "app"), ("E1", "app")], now, 30) == {
            ("E4", "app")
        }
    with Session(store_engine) as session, session.begin():
        leases.give_back(session, "run-a", [("E1", "app"), ("E3", "app"), ("E4", "app")])
        leases.give_back(session, "run-b", [("E2", "app")])  # run-a's: left alone
    lease = models.AccountLease
    with Session(store_engine) as session:
        held = {
            tuple(row) for row in session.execute(select(lease.identity, lease.target, lease.run))
        }
        assert held == {("E2", "app", "run-a"), ("E1", "crm", "run-a"), ("E4", "app", "run-b")}
    with Session(store_engine) as session, session.begin():
        assert leases.renew(session, "run-a", now + timedelta(seconds=5), 30) == 2
        leases.give_back(session, "run-a")
    with Session(store_engine) as session:
        rows = session.execute(select(lease.identity, lease.run))
        assert {tuple(row) for row in rows} == {("E4", "run-b")}
