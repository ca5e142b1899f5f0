"""Handing the journal's work to workers (``provisor worker``) through the job queue.

Does: say which accounts of a target a worker can take now — open operations due now, not
held by a live lease — removals first, so leavers go before joiners (``takeable``), and which
targets have any (``targets_with_work``); open the job queue (procrastinate, in the workspace's
PostgreSQL database) and put jobs in it: a target's *drain* (a worker runs its takeable
accounts; at most one waits per target and queue, more are pointless) and a *cycle* (tick,
reconcile what is due, plan; at most one waits) — each wakes a worker at once through
LISTEN/NOTIFY; cycles and drains for removals go in a queue of their own (``FIRST``),
whose job slots other work never takes, so a leaver never waits for a slot behind joiners;
tell the workers that removals are on their way (``Queue.announce``) and say whether they
still are (``removals_due``, ``Queue.cycle_on_the_way``) for ``urgency``.
The journal, not the queue, says what is left to do: a job lost with a dead worker loses
nothing, since the sweeper puts a drain in the queue for every target with takeable work.
Does not: run operations (``runner``), or run the worker (``worker``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from datetime import datetime

from procrastinate import App, SyncPsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued
from sqlalchemy import and_, exists, literal, or_, select, text, union_all
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from provisor.domain.policy import TargetClass
from provisor.engine import circuit
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError
from provisor.store.models import OPEN_REMOVALS, OPEN_WORK, AccountLease, Operation

log = logging.getLogger(__name__)

DRAIN = "provisor.drain"
CYCLE = "provisor.cycle"
SWEEP = "provisor.sweep"
QUEUE = "provisor"  # drains of other work
FIRST = "provisor.first"  # cycles, drains for removals, sweeps: job slots of their own
ROWS_PER_ACCOUNT = 8  # open operations read per account a slice wants (an account has a few)
REMOVALS_CHANNEL = "provisor_removals"  # the NOTIFY saying removals are on their way


def _due(now: datetime):  # type: ignore[no-untyped-def]
    op = Operation
    return and_(
        or_(op.not_before.is_(None), op.not_before <= now),
        or_(op.next_attempt_at.is_(None), op.next_attempt_at <= now),
    )


def _unleased(now: datetime):  # type: ignore[no-untyped-def]
    lease = AccountLease
    live = select(1).where(
        lease.identity == Operation.identity,
        lease.target == Operation.target,
        lease.expires_at > now,
    )
    return ~exists(live)


def takeable(
    session: Session,
    target: str,
    now: datetime,
    limit: int,
    *,
    removals: bool = False,
    besides: Collection[str] = (),
) -> list[str]:
    """Up to ``limit`` identities whose account in ``target`` has an operation due now and is
    held by no live lease, the longest waiting first. ``removals``: only accounts with a
    removal due; ``besides``: identities left out. Read from the open operations in id order
    (a partial index), a few rows per account at most: however long the journal, the cost is
    that of the slice."""
    condition = OPEN_REMOVALS if removals else OPEN_WORK
    op = Operation
    query = (
        select(op.identity)
        .where(op.target == target, text(condition), _due(now), _unleased(now))
        .order_by(op.id)
        .limit(limit * ROWS_PER_ACCOUNT)
    )
    if besides:
        query = query.where(op.identity.not_in(sorted(besides)))
    found: dict[str, None] = {}
    for identity in session.execute(query).scalars():
        found.setdefault(identity)
        if len(found) == limit:
            break
    return list(found)


def usable_targets(
    workspace: Workspace,
    session: Session,
    now: datetime,
    among: Collection[str] | None = None,
) -> list[str]:
    """The targets (among ``among``) work can be taken for now: with a connector (not
    manual), and no circuit open with no probe due yet."""
    automated = {
        name
        for name, t in workspace.compiled.targets.items()
        if t.target_class is not TargetClass.MANUAL and (among is None or name in among)
    }
    return sorted(automated - circuit.waiting(session, now))


def targets_with_work(
    workspace: Workspace,
    session: Session,
    now: datetime,
    targets: Collection[str] | None = None,
) -> dict[str, bool]:
    """The targets work can be taken for now (``usable_targets``, among ``targets``) that have
    takeable work, each with whether any of it is a removal. One statement: for each target
    whether a removal, and whether any work, exists (each stops at the first row found)."""
    op = Operation
    checks = [
        select(literal(name).label("target"), literal(removal).label("removal")).where(
            exists(
                select(op.id).where(op.target == name, text(condition), _due(now), _unleased(now))
            )
        )
        for name in usable_targets(workspace, session, now, targets)
        for condition, removal in ((OPEN_REMOVALS, True), (OPEN_WORK, False))
    ]
    if not checks:
        return {}
    found: dict[str, bool] = {}
    for name, removal in session.execute(union_all(*checks)):
        found[str(name)] = found.get(str(name), False) or bool(removal)
    return found


def removals_due(workspace: Workspace, session: Session, now: datetime) -> bool:
    """Whether any removal is open and due now on a target work can be taken for
    (``usable_targets``), taken by a worker or not: a leaver's removals still on their way."""
    usable = usable_targets(workspace, session, now)
    if not usable:
        return False
    op = Operation
    query = select(op.id).where(op.target.in_(usable), text(OPEN_REMOVALS), _due(now)).limit(1)
    return session.execute(query).first() is not None


def conninfo(workspace: Workspace) -> str:
    """The workspace database's address as libpq takes it (the queue's driver)."""
    url: URL = workspace.engine.url
    if url.get_backend_name() != "postgresql":
        raise ProvisorError(
            "workers share the journal through PostgreSQL: set the workspace's database_url "
            "(or PROVISOR_DATABASE_URL) to a postgresql:// address; on SQLite, run the "
            "journal with 'provisor run' or 'provisor serve'"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Queue:
    """The job queue seen from a process that only puts work in it (the service, a worker's
    own jobs): opened on first use, closed with ``close``."""

    def __init__(self, workspace: Workspace) -> None:
        connector = SyncPsycopgConnector(conninfo=conninfo(workspace), min_size=1, max_size=2)
        self.app = App(connector=connector)
        self._open = False
        self._lock = threading.Lock()

    def _opened(self) -> None:
        with self._lock:
            if not self._open:
                self.app.open()
                self._open = True

    def _defer(self, task: str, lock: str, queue: str, **args: str | bool) -> bool:
        """Put one job in; False when one with the same ``lock`` already waits."""
        self._opened()
        deferrer = self.app.configure_task(task, queue=queue, queueing_lock=lock)
        try:
            deferrer.defer(**args)
        except AlreadyEnqueued:
            return False
        return True

    def drain(self, target: str, *, removals: bool = False) -> bool:
        """Have a worker run the target's takeable accounts."""
        if removals:  # waits apart from a drain for other work, for slots of its own
            lock = f"drain:{target}:removals"
            return self._defer(DRAIN, lock, FIRST, target=target, removals=True)
        return self._defer(DRAIN, f"drain:{target}", QUEUE, target=target)

    def drains(self, targets: Iterable[tuple[str, bool]]) -> int:
        """A drain for each (target, has removals) — but only a drain for removals where one
        already runs: it takes every account it can, and puts a drain back when its turn is
        up; how many were put in."""
        targets = list(targets)
        if not targets:
            return 0  # nothing to put in: no need to ask which targets are being drained
        busy = self.draining()
        return sum(
            self.drain(target, removals=removals)
            for target, removals in targets
            if removals or target not in busy
        )

    def draining(self) -> set[str]:
        """The targets a worker is draining now (a job ``doing``, by the queue, started in
        the last minute: a drain lasts seconds, and one that seems to run longer — its end
        not recorded, the database lost at that moment — holds back nothing)."""
        self._opened()
        rows = self.app.connector.execute_query_all(
            "SELECT DISTINCT args->>'target' AS target FROM procrastinate_jobs j"
            " WHERE task_name = %(task)s AND queue_name = %(queue)s AND status = 'doing'"
            " AND EXISTS ("
            "  SELECT 1 FROM procrastinate_events e WHERE e.job_id = j.id"
            "  AND e.type = 'started' AND e.at > now() - interval '1 minute')",
            task=DRAIN,
            queue=QUEUE,
        )
        return {str(row["target"]) for row in rows}

    def cycle_on_the_way(self) -> bool:
        """Whether a cycle waits or runs (it may be planning a leaver's removals)."""
        return self._due_job("task_name = %(cycle)s AND status IN ('todo', 'doing')", cycle=CYCLE)

    def idle(self) -> bool:
        """Whether no job of either queue is due and waiting."""
        return not self._due_job(
            "queue_name IN (%(queue)s, %(first)s) AND status = 'todo'", queue=QUEUE, first=FIRST
        )

    def _due_job(self, condition: str, **params: str) -> bool:
        """Whether a job meeting ``condition`` (with ``params``) is due: one question."""
        self._opened()
        row = self.app.connector.execute_query_one(
            "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE "
            + condition
            + " AND (scheduled_at IS NULL OR scheduled_at <= now())) AS found",
            **params,
        )
        return bool(row["found"])

    def announce(self) -> None:
        """Tell every worker that removals are on their way (``urgency``): a NOTIFY."""
        self._opened()
        self.app.connector.execute_query(
            "SELECT pg_notify(%(channel)s, '')", channel=REMOVALS_CHANNEL
        )

    def cycle(self) -> bool:
        """Have a worker run the engine's cycle (tick, reconcile what is due, plan)."""
        return self._defer(CYCLE, "cycle", FIRST)

    def close(self) -> None:
        with self._lock:
            if self._open:
                self.app.close()
                self._open = False


class Wake:
    """The service's wake-up when workers run the journal: ``set`` (the service's routes call
    it after recording a change, as ``threading.Event.set`` wakes the in-process runner) has
    a thread of its own put a cycle in the queue, at once; a burst of changes costs one.
    ``hurry``: the change ends or suspends someone's access now — every worker hears that
    removals are on their way (``Queue.announce``), then the cycle is put in. ``warn``: such a
    change is about to be recorded — the workers hear of it at once, so that their other work
    holds while the change is recorded (what they hear ends by itself, ``urgency``, if no
    cycle comes)."""

    def __init__(self, workspace: Workspace) -> None:
        self.queue = Queue(workspace)
        self._asked = threading.Event()
        self._cycle = self._announce = False  # what the thread is asked to do next
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="provisor-wake", daemon=True)
        self._thread.start()

    def set(self) -> None:
        self._ask(cycle=True, announce=False)

    def hurry(self) -> None:
        self._ask(cycle=True, announce=True)

    def warn(self) -> None:
        self._ask(cycle=False, announce=True)

    def _ask(self, *, cycle: bool, announce: bool) -> None:
        with self._lock:
            self._cycle = self._cycle or cycle
            self._announce = self._announce or announce
        self._asked.set()

    def _work(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            with self._lock:
                cycle, announce = self._cycle, self._announce
                self._cycle = self._announce = False
            if self._stop:
                return
            if announce:  # first: the workers' other work holds while the cycle comes
                try:
                    self.queue.announce()
                except Exception:  # the leaver's removals go first all the same, unheld
                    log.exception("could not tell the workers that removals are coming")
            if cycle:
                try:
                    self.queue.cycle()
                except Exception:  # the change is recorded; the next periodic cycle plans it
                    log.exception("could not put a cycle in the job queue")

    def close(self) -> None:
        self._stop = True
        self._asked.set()
        self._thread.join(10)
        self.queue.close()
