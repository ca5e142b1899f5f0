"""``provisor worker`` processes sharing one workspace on PostgreSQL, against real targets:
each operation executed and recorded once, whatever the number of workers."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.domain.plan import REMOVAL_KINDS
from provisor.engine import circuit, identities
from provisor.engine.cycle import system_clock
from provisor.engine.planner import sync_journal
from provisor.engine.runner import Runner
from provisor.engine.workspace import Workspace
from provisor.sandbox.cluster import start_workers, stop_workers, verified_keys, wait_until_done
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy, Refuse
from tests.engine.test_crash_safety import POLICY
from tests.engine.test_runner import server_user

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


def test_a_worker_until_idle_runs_what_is_queued_then_stops(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``provisor worker --until-idle``: the cycle in the queue plans and hands off, the drains
    it puts in the other queue run, and the worker ends by itself once neither queue has a
    job due — with every operation verified once and no job left behind."""
    import subprocess
    import sys

    from provisor.engine.runner.dispatch import Queue

    env = postgres_env(postgres_url, monkeypatch)
    ScimApp.create_groups(scim_url, "staff")
    quiet = "runner: {lease_seconds: 3, sweep_seconds: 59}\nservice: {cycle_seconds: 3600}\n"
    (tmp_path / "provisor.yaml").write_text(quiet, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    queue = Queue(workspace)
    try:
        hire_employees(workspace, 5, datetime.now(UTC))
        queue.cycle()
        command = [str(Path(sys.executable).parent / "provisor"), "-w", str(tmp_path), "worker"]
        done = subprocess.run(
            [*command, "--until-idle"], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        with workspace.sessions() as session:
            statuses = Counter(session.execute(select(models.Operation.status)).scalars())
            left = session.execute(
                text("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
            ).scalar_one()
        assert statuses == {"verified": 10} and left == 0
        assert set(verified_keys(workspace).values()) == {1}
    finally:
        queue.close()
        workspace.close()


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


def _terminate(workspace: Workspace, who: str) -> None:
    now = datetime.now(UTC)
    event = LifecycleEvent(who, EventKind.TERMINATE, now, now, {})
    with workspace.sessions() as session, session.begin():
        identities.record_events(session, workspace.config, [event], origin="test", now=now)


def _open_removals(workspace: Workspace, who: str, target: str = "app") -> int:
    op = models.Operation
    with workspace.sessions() as session:
        query = select(func.count()).where(
            op.identity == who,
            op.target == target,
            op.kind.in_(REMOVAL_KINDS),
            op.status.in_(["pending", "running"]),
        )
        return int(session.execute(query).scalar_one())


def until(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` came true within ``seconds`` (asked every 10 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_other_work_waits_while_an_announced_leavers_removals_are_on_their_way(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker hears that removals are on their way: other work is held while a cycle waits
    (it may plan them) and while a removal is open and due; let go once they are done, and
    after ``HOLD_SECONDS`` at most however long they take."""
    from provisor.engine.runner import urgency
    from provisor.engine.runner.dispatch import FIRST, QUEUE, Queue

    postgres_env(postgres_url, monkeypatch)
    ScimApp.create_groups(scim_url, "staff")
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    queue = Queue(workspace)
    heard = urgency.Urgency(workspace, queue)
    released: list[float] = []

    def held() -> threading.Thread:
        def wait() -> None:
            heard.hold()
            released.append(time.monotonic())

        thread = threading.Thread(target=wait)
        thread.start()
        return thread

    try:
        hire_employees(workspace, 2, datetime.now(UTC))
        assert Runner(workspace).apply(now=system_clock).failed == 0
        assert not heard.urgent
        started = time.monotonic()
        heard.hold()  # nothing announced: no wait
        assert time.monotonic() - started < 0.5
        assert heard._thread.is_alive() and until(lambda: _listening(workspace), 10)
        # a cycle waits (it may plan a leaver): held until it is gone
        assert queue.cycle() and queue.drain("app") and queue.drain("app", removals=True)
        with workspace.sessions() as session:
            jobs = session.execute(
                text("SELECT task_name, args->>'removals', queue_name FROM procrastinate_jobs")
            ).all()
        assert set(jobs) == {
            ("provisor.cycle", None, FIRST),  # slots of their own: never behind joiners
            ("provisor.drain", "true", FIRST),
            ("provisor.drain", None, QUEUE),
        }
        monkeypatch.setattr(urgency, "HOLD_SECONDS", 60.0)  # only what is on its way ends it
        queue.announce()
        assert until(lambda: heard.urgent, 5)
        thread = held()
        time.sleep(0.3)
        assert thread.is_alive()  # held while the cycle waits
        _terminate(workspace, "E0")
        with workspace.sessions() as session, session.begin():
            sync_journal(workspace, session, now=datetime.now(UTC), changed_only=True)
        assert _open_removals(workspace, "E0") > 0
        with workspace.sessions() as session:
            session.execute(text("DELETE FROM procrastinate_jobs"))
            session.commit()
        time.sleep(0.3)
        assert thread.is_alive()  # the cycle is gone; the leaver's removals are open
        assert Runner(workspace).apply(now=system_clock, identity="E0").failed == 0
        assert _open_removals(workspace, "E0") == 0
        done = time.monotonic()
        thread.join(5)
        assert released and not heard.urgent  # let go once they were done...
        assert released[0] - done < 1.5  # ...promptly, long before the 60 s bound
        # a removal that does not finish holds nothing past HOLD_SECONDS
        monkeypatch.setattr(urgency, "HOLD_SECONDS", 0.5)
        _terminate(workspace, "E1")
        with workspace.sessions() as session, session.begin():
            sync_journal(workspace, session, now=datetime.now(UTC), changed_only=True)
        queue.announce()
        assert until(lambda: heard.urgent, 5)
        started = time.monotonic()
        held().join(5)
        assert 0.2 < released[-1] - started < 3 and _open_removals(workspace, "E1") > 0
        # announced as a change is recorded, before its cycle is in the queue: held for
        # POLL_SECONDS at least (the cycle would be on its way by then), then let go
        assert Runner(workspace).apply(now=system_clock, identity="E1").failed == 0
        monkeypatch.setattr(urgency, "HOLD_SECONDS", 60.0)
        assert until(lambda: not heard.urgent, 5)
        started = time.monotonic()
        queue.announce()
        assert until(lambda: heard.urgent, 5)
        held().join(5)
        assert urgency.POLL_SECONDS <= released[-1] - started < 3 and not heard.urgent
    finally:
        heard.close()
        queue.close()
        workspace.close()


def _listening(workspace: Workspace) -> bool:
    with workspace.sessions() as session:
        found = session.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN provisor_rem%'")
        ).scalar_one()
    return bool(found)


MANUAL_TOO = (
    POLICY.replace(
        "rules:",
        "  - name: paper\n    class: manual\n    owner: records\n"
        "    entitlements: [{{name: clerk}}]\nrules:",
    )
    + "  - name: clerks\n    when: {{attr: employment_type, equals: employee}}\n"
    "    grant: [{{target: paper, entitlements: [clerk]}}]\n"
)


def test_the_cycle_that_plans_a_leaver_runs_the_removals_itself_and_announces_them(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's cycle that planned removals due now tells every worker (a NOTIFY on the
    removals channel) and runs them itself — the first ``LEAVERS_AT_ONCE`` people's, never a
    manual target's (the cycle opens those work items, once) — under the journal's leases;
    more leavers go to a drain for removals, joiners' work to drains of other work, put in
    without waiting for the cycle's last steps (or its lock); a drain put in for removals
    ends when they are done and puts the rest in line with other work. The audit chain's
    head is signed once the leaver's removals are recorded."""
    import psycopg

    from provisor.engine import cycle as cycles
    from provisor.engine.runner import worker as workers
    from provisor.engine.runner.dispatch import FIRST, QUEUE, REMOVALS_CHANNEL, conninfo

    postgres_env(postgres_url, monkeypatch)
    monkeypatch.setattr(workers, "LEAVERS_AT_ONCE", 1)
    ScimApp.create_groups(scim_url, "staff")
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, MANUAL_TOO.format(url=scim_url))
    worker = workers.Worker(workspace, concurrency=2)
    listener = psycopg.connect(conninfo(workspace), autocommit=True)

    def drains() -> set[Any]:
        with workspace.sessions() as session:
            found = session.execute(
                text(
                    "SELECT queue_name, args->>'target' FROM procrastinate_jobs"
                    " WHERE task_name = 'provisor.drain' AND status = 'todo'"
                )
            )
            return set(found.all())

    try:
        hire_employees(workspace, 3, datetime.now(UTC))
        assert Runner(workspace).apply(now=system_clock, target="app").failed == 0
        worker.cycle()  # the first cycle: nothing new
        with workspace.sessions() as session:
            session.execute(text("DELETE FROM procrastinate_jobs"))
            session.commit()
        listener.execute(f"LISTEN {REMOVALS_CHANNEL}")
        put_in, notify = worker.queue.drains, cycles.notify.run
        dispatched = threading.Event()  # the cycle's drains (not its leaver run's) put in
        waited: list[bool] = []

        def drains_put_in(work: Any) -> int:
            if threading.current_thread().name.startswith("provisor-dispatch"):
                dispatched.set()
            return put_in(work)

        def slow_notifications(*args: Any) -> Any:  # a mail server taking its time
            waited.append(dispatched.wait(10))
            return notify(*args)

        monkeypatch.setattr(worker.queue, "drains", drains_put_in)
        monkeypatch.setattr(cycles.notify, "run", slow_notifications)
        _terminate(workspace, "E0")
        _terminate(workspace, "E1")
        now = datetime.now(UTC)
        attributes = {"name": "J1", "email": "j1@example.com", "employment_type": "employee"}
        joiner = LifecycleEvent("J1", EventKind.HIRE, now, now, attributes)
        with workspace.sessions() as session, session.begin():
            identities.record_events(session, workspace.config, [joiner], origin="t", now=now)
        result = worker.cycle()
        assert result["leavers"]["verified"] >= 2 and result["leavers"]["failed"] == 0
        assert waited == [True]  # the drains went in while the cycle still held its lock
        event, checkpoint = models.AuditEvent, models.AuditCheckpoint
        with workspace.sessions() as session:
            recorded = select(func.max(event.seq)).where(
                event.action == "operation.verified", event.subject.in_(["E0", "E1"])
            )
            last = session.execute(recorded).scalar_one()
            signed = session.execute(select(func.max(checkpoint.seq))).scalar_one()
        assert last is not None and signed is not None and signed >= last  # signed after them
        assert [n.channel for n in listener.notifies(timeout=1, stop_after=1)] == [REMOVALS_CHANNEL]
        ran, waits = sorted(["E0", "E1"], key=lambda who: _open_removals(workspace, who))
        assert _open_removals(workspace, ran) == 0
        user = server_user(scim_url, f"p{ran[1:]}@example.com")
        assert user is not None and user["active"] is False
        assert _open_removals(workspace, waits) > 0
        assert drains() == {(FIRST, "app")}  # the other leaver (then the joiner)
        with workspace.sessions() as session:
            tasks = session.execute(
                select(models.Operation.identity)
                .join(models.Task, models.Task.operation_id == models.Operation.id)
                .where(models.Task.status == "open", models.Operation.identity == "J1")
            ).scalars()
            assert list(tasks)  # the manual target's work items, opened by the cycle alone
        totals = worker.drain("app", removals=True)
        assert totals["verified"] >= 2 and _open_removals(workspace, waits) == 0
        # ended with the removals: the joiner's work put in line with other work
        assert drains() == {(FIRST, "app"), (QUEUE, "app")}
        assert set(verified_keys(workspace).values()) == {1}
    finally:
        listener.close()
        worker.close()
        workspace.close()


def test_the_services_wake_hurries_a_leaver(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service, told a change ends someone's access now (``Wake.hurry``), tells every
    worker and puts a cycle in the leavers' queue; an ordinary change only the cycle; one about
    to be recorded (``Wake.warn``) only tells the workers."""
    import psycopg

    from provisor.engine.runner.dispatch import FIRST, REMOVALS_CHANNEL, Wake, conninfo

    postgres_env(postgres_url, monkeypatch)
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    wake = Wake(workspace)
    listener = psycopg.connect(conninfo(workspace), autocommit=True)
    listener.execute(f"LISTEN {REMOVALS_CHANNEL}")

    def cycles() -> list[Any]:
        with workspace.sessions() as session:
            return session.execute(
                text("SELECT queue_name FROM procrastinate_jobs WHERE task_name = 'provisor.cycle'")
            ).all()

    try:
        wake.warn()
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [REMOVALS_CHANNEL]
        time.sleep(0.2)
        assert cycles() == []
        wake.hurry()  # the workers hear it, then a cycle is put in
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [REMOVALS_CHANNEL]
        assert until(lambda: cycles() == [(FIRST,)], 5)
        wake.set()  # the cycle already waits: one is enough, and nobody hears of it
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        assert cycles() == [(FIRST,)]
    finally:
        listener.close()
        wake.close()
        workspace.close()
