"""Group commit: units of write work from many threads, run by one writer in shared
transactions.

Does: run each submitted unit (a function of a database session) in the writer thread, in the
caller's acting person's name, together with the units that queued up meanwhile, and commit
them once; answer each caller with its unit's result. A unit that raises rolls its batch back,
and the others are then run again one by one, each in its own transaction, so one refusal
never costs another caller its change. SQLite takes one writer at a time: many request threads
each holding a write transaction wait on its lock in turn, while one writer with shared
commits does not wait at all.
Does not: decide anything; units must return plain data (ORM rows expire at the commit) and
be safe to run again after a rollback (they read what they change within their session).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from provisor.engine.workspace import Workspace
from provisor.evidence import audit

T = TypeVar("T")

# the most units one transaction takes
BATCH = 64


Q = TypeVar("Q")


def drain(waiting: queue.Queue[Q | None], limit: int) -> list[Q] | None:
    """The next batch: the first item (waiting for it), then up to ``limit`` in all of what
    has queued meanwhile; None once ``None`` (stop) is taken with nothing before it."""
    first = waiting.get()
    if first is None:
        return None
    batch = [first]
    while len(batch) < limit:
        try:
            more = waiting.get_nowait()
        except queue.Empty:
            break
        if more is None:
            waiting.put(None)  # stop after this batch
            break
        batch.append(more)
    return batch


@dataclass
class _Unit(Generic[T]):
    work: Callable[[Session], T]
    actor: str
    answer: Future[T] = field(default_factory=Future)


class Writer:
    """One writer thread (started on first use) for a workspace's write units."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._queue: queue.Queue[_Unit[Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a shared transaction; its result, or its exception, once committed."""
        unit = _Unit(work, audit.current_actor())
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="provisor-writer")
                self._thread.daemon = True
                self._thread.start()
        self._queue.put(unit)
        return unit.answer.result()

    def close(self) -> None:
        with self._lock:
            if self._thread is None:
                return
        self._queue.put(None)
        self._thread.join(30)

    def _work(self) -> None:
        while (batch := drain(self._queue, BATCH)) is not None:
            self._commit(batch)

    def _commit(self, batch: list[_Unit[Any]]) -> None:
        results = []
        try:
            with self.workspace.sessions() as session, session.begin():
                for unit in batch:
                    with audit.acting_as(unit.actor):
                        results.append(unit.work(session))
        except Exception as exc:  # a unit's refusal, or the database's
            if len(batch) == 1:
                batch[0].answer.set_exception(exc)
                return
            for unit in batch:  # one by one: only the refused one fails
                self._commit([unit])
            return
        for unit, result in zip(batch, results, strict=True):
            unit.answer.set_result(result)
