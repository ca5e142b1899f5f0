"""``provisor worker``: one of any number of processes, on any machines, running a workspace's
journal on PostgreSQL, fed by the job queue (procrastinate).

Does: run procrastinate's workers on the workspace's database — one for drains of other
work, one with job slots of its own for cycles, drains for removals and sweeps —
with three tasks:
- *drain* a target: take its accounts with work due a slice at a time (slices of removals
  alone while there are any; a drain put in for removals ends when they are done) and run
  each slice through a ``Runner`` (leases, intent records, fenced outcomes: each operation is
  executed and recorded once whatever the number of workers), an account only while holding
  one of the target's slots, so its ``concurrency`` holds across all workers (one drain's
  threads can fill them all); while a leaver's removals are on their way anywhere in the
  cluster (``urgency``), an account without a removal waits before each operation; after
  ``DRAIN_SECONDS`` it stops and puts a drain back in the queue for the rest, so other jobs
  get their turn and any idle worker may take it;
- *cycle*: the engine's cycle (tick, queued service jobs, reconciliations due, plan), once at a
  time across the cluster; instead of applying it opens manual work items and, from a thread
  of its own (neither its lock nor its last steps wait for that), puts drains in the queue for
  the targets with work — and runs the removals of the first
  ``LEAVERS_AT_ONCE`` people it just planned some for itself, at once, beside its own last
  steps (work items, notifications), and signs the audit checkpoint once they are recorded;
  drains take the rest;
- *sweep*, every ``runner.sweep_seconds`` (deferred once across the cluster): free the leases
  of dead processes of this machine, end the jobs of workers whose heartbeat stopped, queue
  again the service's jobs (imports, reconciliations) a dead worker was running, and put
  a drain in the queue for every target with takeable work — so the work of a worker killed
  and never restarted is taken over at most ``runner.lease_seconds`` + ``runner.sweep_seconds``
  after it died, and retries and delayed steps start when they come due.
A cycle also runs every ``service.cycle_seconds`` and whenever the service records a change.
Does not: run on SQLite (the embedded runners do: ``provisor run``, ``serve``), or decide what an
operation does (``runner``, ``execution``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from procrastinate import App, PsycopgConnector
from procrastinate.jobs import Status

from provisor.domain.plan import REMOVALS
from provisor.domain.policy import TargetClass
from provisor.engine import jobs
from provisor.engine.connections import Pool
from provisor.engine.cycle import Cycles, system_clock
from provisor.engine.planner import JournalSync
from provisor.engine.runner.dispatch import (
    CYCLE,
    DRAIN,
    FIRST,
    QUEUE,
    SWEEP,
    Queue,
    conninfo,
    takeable,
    targets_with_work,
    usable_targets,
)
from provisor.engine.runner.leases import free_the_dead
from provisor.engine.runner.runner import ApplyReport, Runner
from provisor.engine.runner.urgency import Urgency
from provisor.engine.tasks import open_tasks
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError

log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0  # a drain gives its turn back after this long
POLICY_SECONDS = 5.0  # a drain loads the policy files again when they were read longer ago
RESTART_SECONDS = 1.0  # a worker that failed starts again after this long
SIGNALS = (signal.SIGTERM, signal.SIGINT)  # stop the worker: running jobs finish first
SLICE = 4  # a drain takes this many times the target's concurrency in accounts at a time
LEAVERS_AT_ONCE = 16  # people whose new removals the cycle that planned them runs itself


def cron_every(seconds: float) -> str:
    """A cron line (procrastinate's, seconds last) firing about every ``seconds``."""
    whole = max(1, round(seconds))
    if whole < 60:
        return f"* * * * * */{whole}"
    minutes = max(1, min(59, round(whole / 60)))
    return f"*/{minutes} * * * *"


def _counts(report: ApplyReport) -> dict[str, int]:
    return {
        "verified": report.verified,
        "unverifiable": report.unverifiable,
        "retrying": report.retrying,
        "failed": report.failed,
        "accounts": report.accounts,
    }


class Worker:
    """One worker process over one workspace: its tasks, and procrastinate's worker loop."""

    def __init__(
        self, workspace: Workspace, *, concurrency: int = 4, name: str | None = None
    ) -> None:
        self.workspace = workspace
        self.concurrency = concurrency
        self.first = self.first_slots(concurrency)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        settings = workspace.config.runner
        self.lease_seconds = settings.lease_seconds
        self.sweep_seconds = settings.sweep_seconds
        # the queue's own connections: each of the two workers listens on one of its own,
        # these fetch and finish jobs
        self.app = App(
            connector=PsycopgConnector(conninfo=conninfo(workspace), min_size=1, max_size=4)
        )
        self.queue = Queue(workspace)  # jobs put in from this worker's threads
        self.urgency = Urgency(workspace, self.queue)  # leavers' removals on their way
        self.pool = Pool(workspace)  # connectors shared by this worker's jobs
        # many workers start and restart: none plans everyone for it (a new policy version is)
        self.cycles = Cycles(workspace, hand_off=self.hand_off, full_first=False)
        self._stopped = threading.Event()  # set when told to stop: ends a pause at once
        self._policy_lock = threading.Lock()
        self._policy_read = time.monotonic()
        self._planned = threading.local()  # a cycle's run of its leavers, and its drains
        self._leaver_runs = ThreadPoolExecutor(2, "provisor-leavers")
        self._dispatching = ThreadPoolExecutor(1, "provisor-dispatch")  # a cycle's drains
        self.app.task(name=DRAIN, queue=QUEUE)(self.drain)
        cycle_every = cron_every(workspace.config.service.cycle_seconds)
        cycle = self.app.task(name=CYCLE, queue=FIRST)(self.cycle)
        # at most one cycle waits (a long one must not fill every slot with waiting cycles)
        self.app.periodic(cron=cycle_every, periodic_id="cycle", queueing_lock="cycle")(cycle)
        sweep = self.app.task(name=SWEEP, queue=FIRST)(self.sweep)
        # at most one waits: on a long journal a sweep may outlast its period
        self.app.periodic(
            cron=cron_every(self.sweep_seconds), periodic_id="sweep", queueing_lock="sweep"
        )(sweep)

    @staticmethod
    def first_slots(concurrency: int) -> int:
        """Job slots for cycles, drains for removals and sweeps, besides ``concurrency``
        for drains of other work."""
        return max(2, concurrency // 2)

    @classmethod
    def connections(cls, concurrency: int) -> tuple[int, int]:
        """The workspace database connections a worker needs (kept once opened, none more):
        each job's runner (in either kind of job slot, and a cycle's run of its leavers)
        writes from one thread and renews its leases from another, its
        accounts take and give back target slots in short transactions, a cycle holds one
        for its lock and puts its drains in from a thread of its own while it goes on,
        hearing of leavers (``urgency``) asks whether their removals are done.
        Bounded, so that many workers fit in the server's ``max_connections``;
        a thread waits for a connection rather than open one more. All are kept: a busy
        worker that opened and closed connections beyond a smaller kept number spent more on
        that (a server process each) than on its work."""
        return (2 * (concurrency + cls.first_slots(concurrency) + 1) + 4, 0)

    # --- tasks -------------------------------------------------------------------------

    def drain(self, target: str, removals: bool = False) -> dict[str, int]:
        """Run ``target``'s takeable accounts a slice at a time (removals first) until none is
        left or its turn is up; then put a drain in the queue for whatever remains (one put
        in for ``removals`` ends when they are done: the rest goes back in line). A turn
        spent on other work waits, before each operation, while a leaver's removals are on
        their way anywhere in the cluster: a leaver never waits for a joiner wave."""
        self._fresh_policy()
        definition = self.workspace.compiled.targets.get(target)
        if definition is None or definition.target_class is TargetClass.MANUAL:
            return {}
        deadline = time.monotonic() + DRAIN_SECONDS
        totals: dict[str, int] = {}
        tried: set[str] = set()
        while True:
            now = datetime.now(UTC)
            size = definition.concurrency * SLICE
            with self.workspace.sessions() as session:
                # removals alone while there are any: a leaver's slice never waits on joiners
                chosen = takeable(session, target, now, size, removals=True, besides=tried)
                leavers = bool(chosen)
                if not leavers and not removals:
                    chosen = takeable(session, target, now, size, besides=tried)
            if removals and not leavers:  # put in for removals, and they are done
                self._more(target)  # the rest in line with other work
                break
            if not chosen:
                break
            if not leavers:
                self.urgency.hold()  # a leaver's removals on their way go first
            tried.update(chosen)
            runner = Runner(self.workspace, pool=self.pool)
            report = runner.apply(
                now=system_clock,
                target=target,
                identities=chosen,
                slots=True,
                hold=None if leavers else self.urgency,
            )
            for key, value in _counts(report).items():
                totals[key] = totals.get(key, 0) + value
            if target in report.unavailable:
                break  # its circuit is open: a sweep queues a drain when a probe is due
            if time.monotonic() >= deadline:
                self._more(target)  # its turn is up: the rest (and what it left) back in line
                break
        return totals

    def _fresh_policy(self) -> None:
        """The policy files read again if it is ``POLICY_SECONDS`` since they were (the cycle
        that sees a change may run on another worker): a target's changed settings reach its
        connector (``Pool`` opens a new one), a target taken out is no longer drained. A
        policy that no longer loads leaves the version in use, as it does for the cycle."""
        with self._policy_lock:
            if time.monotonic() - self._policy_read < POLICY_SECONDS:
                return
            self._policy_read = time.monotonic()
            try:
                if self.workspace.refresh_policy():
                    log.info("the policy changed: its new version is in use")
            except ProvisorError as exc:
                log.error("the policy files do not load; the version in use stays: %s", exc)

    def _more(self, target: str) -> None:
        """A drain back in the queue for ``target``'s work left (this one is ending: no
        busy check, the queueing lock keeps it to one waiting)."""
        with self.workspace.sessions() as session:
            work = targets_with_work(self.workspace, session, datetime.now(UTC), [target])
        for where, removals in work.items():
            self.queue.drain(where, removals=removals)

    def cycle(self, timestamp: int | None = None) -> dict[str, Any]:
        """The engine's cycle with the applying handed to drains. The removals of the first
        people it planned some for run beside its last steps (``hand_off``), and so are its
        drains put in the queue; once both are done the audit chain's head is signed (not
        before: the signing's reads and writes would share the worker with the leavers' run,
        and after it the checkpoint covers their records too) and the job ends."""
        self._planned.run = None
        self._planned.drains = None
        try:
            report = self.cycles.cycle_unless_waiting()
        finally:
            drains, self._planned.drains = self._planned.drains, None
            if drains is not None:
                drains.result()  # (what fails there is logged)
            run, self._planned.run = self._planned.run, None
            leavers = self._finished(run)
        if report is None:
            return {"skipped": "another cycle waits for the running one"}
        self.workspace.checkpoint(system_clock())
        result = report.as_dict()
        if leavers is not None:
            result["leavers"] = leavers
        return result

    @staticmethod
    def _finished(run: Future[ApplyReport] | None) -> dict[str, int] | None:
        """What the cycle's run of its leavers did, once it is over; a run that failed (the
        database went away) is logged, its work left to drains and sweeps."""
        if run is None:
            return None
        try:
            return _counts(run.result())
        except Exception:
            log.exception("the run of a cycle's leavers failed; drains take their work")
            return {"failed_runs": 1}

    def _run_leavers(self, leavers: list[str], targets: set[str]) -> ApplyReport:
        """Run the open operations of ``leavers`` (people a cycle just planned removals for)
        on ``targets`` (those removals', never a manual target: the cycle opens its work
        items), under the same leases and slots as any drain; then a drain in the queue for
        whatever those targets have left (an account another run held, other work)."""
        runner = Runner(self.workspace, pool=self.pool)
        report = runner.apply(now=system_clock, identities=leavers, targets=targets, slots=True)
        self._drains_for_work(datetime.now(UTC), targets)
        return report

    def _drains_for_work(self, now: datetime, targets: Collection[str] | None = None) -> int:
        """A drain in the queue for each target (among ``targets``) the journal has work
        for (``Queue.drains``); how many were put in."""
        with self.workspace.sessions() as session:
            work = targets_with_work(self.workspace, session, now, targets)
        return self.queue.drains(work.items())

    def hand_off(self, now: datetime, planned: JournalSync) -> ApplyReport:
        """What a cycle does instead of applying: tell every worker that removals are on
        their way when it planned any due now, and start running the first
        ``LEAVERS_AT_ONCE`` people they are for, in a thread of their own (``cycle`` waits
        for it); put a drain in the queue for each other target with work, from another
        thread (``_put_in_drains``: neither the cycle's last steps — notifications, which may
        wait on a mail server — nor its lock, which a leaver's next cycle waits for, wait for
        that); and open manual targets' work items."""
        report = ApplyReport()
        with self.workspace.sessions() as session:
            automated = set(usable_targets(self.workspace, session, now))
        added: dict[str, bool] = {}  # target -> any removal among its new operations
        leavers: dict[str, None] = {}  # run by this cycle's job, on these targets:
        theirs: set[str] = set()
        for op, status, _ in planned.operations:
            due = op.not_before is None or op.not_before <= now
            if status != "new" or not due or op.target not in automated:
                continue
            removal = op.kind in REMOVALS
            if removal and (op.identity in leavers or len(leavers) < LEAVERS_AT_ONCE):
                leavers.setdefault(op.identity)
                theirs.add(op.target)
            else:
                added[op.target] = added.get(op.target, False) or removal
        if leavers:
            self.queue.announce()  # every worker's other work waits for them
            self._planned.run = self._leaver_runs.submit(self._run_leavers, list(leavers), theirs)
        # the rest, and removals that came due meanwhile where only joiners were added
        others = automated - theirs - {target for target, removals in added.items() if removals}
        first = sorted(added.items(), key=lambda item: not item[1])  # removals first
        self._planned.drains = self._dispatching.submit(self._put_in_drains, now, first, others)
        with self.workspace.sessions() as session, session.begin():
            report.tasks_opened = open_tasks(self.workspace, session, now)
        return report

    def _put_in_drains(
        self, now: datetime, added: list[tuple[str, bool]], others: set[str]
    ) -> None:
        """A cycle's drains put in the queue: first those for the targets it just added work
        to (without asking the journal), then one for each of ``others`` the journal has work
        for. What fails here is logged: sweeps put in a drain for every target with work."""
        try:
            self.queue.drains(added)
            if others:
                self._drains_for_work(now, others)
        except Exception:
            log.exception("the cycle's drains could not all be put in; sweeps will")

    async def sweep(self, timestamp: int) -> dict[str, int]:
        """End the jobs of workers gone silent; drains for every target with work."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=self.lease_seconds)
        for job in stalled:
            log.warning("job %s (%s) of a silent worker ended as failed", job.id, job.task_name)
            await manager.finish_job(job, status=Status.FAILED, delete_job=False)
        drains = await asyncio.to_thread(self._sweep_journal)
        return {"stalled": len(list(stalled)), "drains": drains}

    def _sweep_journal(self) -> int:
        now = datetime.now(UTC)
        with self.workspace.sessions() as session, session.begin():
            free_the_dead(session, now)
            jobs.recover(session, now)  # service jobs (imports...) a dead worker was running
        return self._drains_for_work(now)

    # --- the process -------------------------------------------------------------------

    def run(self, *, wait: bool = True) -> None:
        """Work until stopped (SIGINT, SIGTERM: running jobs finish first), or with
        ``wait=False`` until the queues are empty. When either of the queue's workers fails
        or stops (the database went away: a failover, connections terminated), both are
        started again after a pause; whatever they were running is taken over through the
        journal's leases. A signal that comes while they are being started again (no loop
        runs to hear it) stops the worker just the same. Runs in the main thread (signal
        handlers are set there)."""
        found = {signum: signal.getsignal(signum) for signum in SIGNALS}
        self._hear_signals()
        try:
            while not self._stopped.is_set():
                try:
                    asyncio.run(self._run(wait))
                except Exception:  # logged: the worker must outlive a blip
                    log.exception("the worker stopped on an error; it starts again")
                else:
                    if not wait:
                        return
                    if not self._stopped.is_set():  # a queue's worker gave up (lost the database)
                        log.warning("the worker stopped without being told to; it starts again")
                if not self._stopped.is_set():
                    self._stopped.wait(RESTART_SECONDS)
        finally:
            for signum, handler in found.items():
                if handler is not None:  # (None: not set from Python; left as it is)
                    signal.signal(signum, handler)
            self.close()

    def _hear_signals(self) -> None:
        """SIGTERM and SIGINT stop the worker for good, also where no event loop hears them
        (while one runs, its own handlers do the same)."""
        for signum in SIGNALS:
            signal.signal(signum, lambda *_: self._stop(None))

    def _stop(self, running: asyncio.Task[None] | None) -> None:
        """SIGTERM, SIGINT: the running jobs finish (procrastinate's graceful shutdown on
        cancel), then the worker ends for good."""
        self._stopped.set()
        if running is not None:
            running.cancel()

    async def _run(self, wait: bool) -> None:
        # sync tasks run in the loop's default executor: one thread per job at once
        loop = asyncio.get_running_loop()
        threads = self.concurrency + self.first + 2
        loop.set_default_executor(ThreadPoolExecutor(threads, "provisor-job"))
        heartbeat = max(1.0, self.lease_seconds / 3)
        async with self.app.open_async():
            running = asyncio.ensure_future(self._work(wait, heartbeat))
            for signum in SIGNALS:
                loop.add_signal_handler(signum, self._stop, running)
            if self._stopped.is_set():  # told to stop while the queue was being opened
                running.cancel()
            try:
                await running
            except asyncio.CancelledError:
                if not self._stopped.is_set():
                    raise
            finally:
                for signum in SIGNALS:
                    loop.remove_signal_handler(signum)  # (which leaves the default)
                self._hear_signals()

    async def _work(self, wait: bool, heartbeat: float) -> None:
        """Both of procrastinate's workers, until stopped; when one of them stops by itself
        (it lost the database) the other is stopped too, so that ``run`` starts both again.
        With ``wait=False``, until neither queue has a job due (one may have put jobs in the
        other's after it went idle)."""
        while True:
            both = [
                asyncio.ensure_future(
                    self._one([QUEUE], self.name, self.concurrency, wait, heartbeat)
                ),
                asyncio.ensure_future(
                    self._one([FIRST], f"{self.name}:first", self.first, wait, heartbeat)
                ),
            ]
            try:
                done, _ = await asyncio.wait(
                    both, return_when=asyncio.ALL_COMPLETED if not wait else asyncio.FIRST_COMPLETED
                )
            finally:
                for task in both:
                    task.cancel()  # procrastinate's graceful shutdown: running jobs finish
                await asyncio.gather(*both, return_exceptions=True)
            for task in done:
                task.result()  # an error of either is the worker's
            if wait or await asyncio.to_thread(self.queue.idle):
                return

    async def _one(
        self, queues: list[str], name: str, concurrency: int, wait: bool, heartbeat: float
    ) -> None:
        await self.app.run_worker_async(
            queues=queues,
            name=name,
            concurrency=concurrency,
            wait=wait,
            listen_notify=True,
            fetch_job_polling_interval=float(self.sweep_seconds),
            update_heartbeat_interval=heartbeat,
            stalled_worker_timeout=float(self.lease_seconds),
            delete_jobs="successful",
            shutdown_graceful_timeout=float(self.lease_seconds),
            install_signal_handlers=False,  # ours: a signal stops it for good
        )

    def close(self) -> None:
        self._leaver_runs.shutdown(wait=True)
        self._dispatching.shutdown(wait=True)
        self.urgency.close()
        self.cycles.close()
        self.queue.close()
        self.pool.close()
