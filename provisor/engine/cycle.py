"""The engine's cycle: tick, reconcile what is due, plan, apply — the work ``provisor run`` and
a service repeat.

Does: run one cycle (``Cycles.cycle``): apply due lifecycle changes, reconcile the targets whose
``reconcile_every`` has come round, plan (everyone on the first cycle and after a policy change,
else the identities that changed) and apply what is pending; reopen connectors when the policy
changes; repeat cycles at an interval (``Cycles.run``), reporting each cycle or failure to the
caller, where one failed cycle never stops the next; run the jobs the service queued (imports,
reconciliations) first in each cycle; run one cycle at a time across every process of a
workspace on PostgreSQL (an advisory lock), so ticks and reconciliations happen once; hand
the applying to workers instead when told (``hand_off``); sign the audit chain's head after
each cycle and, while waiting, at least every ``audit.every_seconds``; stop or start the next
cycle early when told.
Does not: print (callers get a ``CycleReport`` or the exception), or decide what a cycle's steps
do (the identity service, reconciliation, planner and runner do).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from provisor.engine import circuit, identities, jobs, notify
from provisor.engine.planner import JournalSync, sync_journal
from provisor.engine.reconcile import ReconcileReport, reconcile_due
from provisor.engine.runner import ApplyReport, Runner
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class CycleReport:
    """What one cycle did."""

    at: datetime
    policy_changed: bool
    ticked: identities.Outcome
    reconciled: list[ReconcileReport]
    planned: JournalSync
    applied: ApplyReport

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "changed": len(self.ticked.changed),
            "held": self.ticked.held,
            "planned": self.planned.added,
            "cancelled": self.planned.cancelled,
            "reconciled": {r.target: r.status for r in self.reconciled},
            **self.applied.as_dict(),
        }


CYCLE_LOCK = 0x70726F7669736F72  # the advisory lock one cycle at a time holds (PostgreSQL)
WAITER_LOCK = CYCLE_LOCK + 1  # held by the one cycle waiting for it, when only one may wait


@contextmanager
def one_at_a_time(workspace: Workspace, *, one_waits: bool = False) -> Iterator[bool]:
    """Wait until no other process of the workspace runs a cycle, and keep it so until the
    block ends (on PostgreSQL; on SQLite one machine's processes share the write lock); the
    block gets True. ``one_waits``: when another cycle already waits, do not wait too (the
    block gets False at once): the waiting one sees whatever this one would. The locks belong
    to a connection of their own: a process that dies lets them go with it."""
    if workspace.engine.dialect.name != "postgresql":
        yield True
        return
    # session-level locks need no transaction: in autocommit each statement is one round trip
    # (a leaver's cycle takes these first), with no BEGIN and COMMIT around it
    with workspace.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:

        def lock(sql: str, key: int) -> bool:
            held = bool(connection.execute(text(sql), {"key": key}).scalar())
            connection.commit()  # (ends SQLAlchemy's own view of a transaction: no round trip)
            return held

        held: list[int] = []
        clean = False  # every step done as planned: the connection holds exactly ``held``
        try:
            if one_waits:
                if not lock("SELECT pg_try_advisory_lock(:key)", WAITER_LOCK):
                    clean = True
                    yield False
                    return
                held.append(WAITER_LOCK)
            lock("SELECT pg_advisory_lock(:key)", CYCLE_LOCK)
            held.append(CYCLE_LOCK)
            if held[0] == WAITER_LOCK:
                lock("SELECT pg_advisory_unlock(:key)", WAITER_LOCK)  # the next may wait now
                held.remove(WAITER_LOCK)
            clean = True
            yield True
        finally:
            try:
                for key in reversed(held):
                    lock("SELECT pg_advisory_unlock(:key)", key)
            except BaseException:
                # a lock not given back must not go back to the pool with its connection:
                # closed, the connection takes its locks with it
                log.warning("the cycle locks could not be given back; their connection is closed")
                connection.invalidate()
                if not isinstance(sys.exc_info()[1], SQLAlchemyError):
                    raise
            else:
                if not clean:  # interrupted between a lock and its record: trust nothing
                    connection.invalidate()


class Cycles:
    """Repeated cycles over one open workspace, keeping connectors open between them.
    ``hand_off``: instead of applying in this process, give the applying to workers (it gets
    the cycle's time and plan, and says what it did, as an ``ApplyReport``). ``full_first``: plan
    everyone on the first cycle (a process joining others that have planned need not: a
    policy version new to the database has everyone planned anyway)."""

    def __init__(
        self,
        workspace: Workspace,
        clock: Clock = system_clock,
        hand_off: Callable[[datetime, JournalSync], ApplyReport] | None = None,
        full_first: bool = True,
    ) -> None:
        self.workspace = workspace
        self.clock = clock
        self.runner = Runner(workspace)
        self.hand_off = hand_off
        # the first cycle, and any after the policy files change, plan everyone
        self.full = full_first

    def close(self) -> None:
        self.runner.close()

    def cycle(self) -> CycleReport:
        """One tick-reconcile-plan-apply cycle, the workspace's only one meanwhile; errors
        propagate to the caller."""
        with one_at_a_time(self.workspace):
            return self._cycle()

    def cycle_unless_waiting(self) -> CycleReport | None:
        """``cycle``, unless another cycle already waits for the running one (None): a worker
        holds no job slot to wait as well, since the waiting cycle sees every change made so
        far."""
        with one_at_a_time(self.workspace, one_waits=True) as mine:
            return self._cycle() if mine else None

    def _cycle(self) -> CycleReport:
        workspace = self.workspace
        started = self.clock()
        changed = workspace.refresh_policy() and not self.full
        if changed:
            self.full = True
            self.runner.close()
            self.runner = Runner(workspace)  # connection settings may have changed
        jobs.run_queued(workspace, self.clock)  # imports and reconciliations asked for
        with workspace.sessions() as session, session.begin():
            ticked = identities.tick(session, workspace.config, now=started)
        reconciled = reconcile_due(workspace, now=started)
        with workspace.sessions() as session, session.begin():
            planned = sync_journal(workspace, session, now=started, changed_only=not self.full)
        self.full = False
        with workspace.sessions() as session, session.begin():
            handed = circuit.hand_to_owners(workspace, session, started)
        if self.hand_off is not None:
            applied = self.hand_off(self.clock(), planned)
        else:
            applied = self.runner.apply(now=self.clock)
        applied.tasks_opened += handed
        notify.run(self.workspace, self.clock())  # who must act hears of it
        return CycleReport(started, changed, ticked, reconciled, planned, applied)

    def run(
        self,
        *,
        interval: float,
        once: bool,
        on_cycle: Callable[[CycleReport], None],
        on_failure: Callable[[datetime, Exception], None],
        stop: threading.Event | None = None,
        wake: threading.Event | None = None,
    ) -> CycleReport | None:
        """Cycle every ``interval`` seconds until interrupted or ``stop`` is set (or once). A
        cycle that fails on a Provisor or database error (a policy typo, a locked database) is
        reported and the next one runs; with ``once`` the error is raised. Setting ``wake``
        starts the next cycle at once (the service does when it queues a job). Returns the last
        report."""
        last: CycleReport | None = None
        stop = stop or threading.Event()
        wake = wake or threading.Event()
        while not stop.is_set():
            started = self.clock()
            try:
                last = self.cycle()
            except (ProvisorError, SQLAlchemyError) as exc:
                on_failure(started, exc)
                if once:
                    raise
            else:
                on_cycle(last)
            self._checkpoint(on_failure)
            if once:
                return last
            self._wait(interval, on_failure, stop, wake)
        return last

    def _checkpoint(self, on_failure: Callable[[datetime, Exception], None]) -> None:
        """Sign the audit chain's head if the cycle appended events; a failure is reported."""
        try:
            self.workspace.checkpoint(self.clock())
        except (ProvisorError, SQLAlchemyError, OSError) as exc:
            on_failure(self.clock(), exc)

    def _wait(
        self,
        interval: float,
        on_failure: Callable[[datetime, Exception], None],
        stop: threading.Event,
        wake: threading.Event,
    ) -> None:
        """Sleep until the next cycle (or until woken or stopped), making a checkpoint at least
        every ``audit.every_seconds`` meanwhile (another process may append events)."""
        every = self.workspace.config.audit.every_seconds
        left = interval
        while left > 0 and not stop.is_set():
            step = min(left, every)
            if wake.wait(step):
                wake.clear()
                return
            left -= step
            if left > 0:
                self._checkpoint(on_failure)
