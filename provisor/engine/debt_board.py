"""The revocation debt as the console shows it: the whole ledger, kept between views.

Does: compute the whole debt ledger and the coverage map's blind spots once (``debt.ledger``,
``coverage``) and keep them with the moment they were computed and the audit chain's head at
that moment; hand them to every view while the head has not moved and they are younger than
``fresh_for``. When either changed, a view starts a recomputation in a background thread and
waits for it if the last one was quick (a small workspace is always shown as it is now); when
it is slow (a million accounts take seconds), views keep showing the last ledger without
waiting — marked as not current, with its age — and recomputations start no more often than
every ``gap`` times their own duration, so a busy workspace does not spend its processor on
them.
Does not: decide what debt is (``debt`` does), or ever present an old ledger as current: every
view says when its ledger was computed and whether it is current. What changes observations,
identities, removals done or verified, tasks and read paths is audited, so an unmoved head
means those have not changed; what moves with the clock alone (an SLA passed, a future-dated
change come due, an operation claimed or rescheduled) is caught by ``fresh_for``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from provisor.domain.debt import GROUPINGS, DebtGroup, DebtItem, GroupBy, summarise
from provisor.engine import debt
from provisor.engine.coverage import BlindSpot, coverage
from provisor.engine.workspace import Workspace
from provisor.store import models

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    """The counts a dashboard shows of some debt items: all, overdue, unknown, and the totals
    by target class, target and owner."""

    items: int
    overdue: int
    unknown: int
    groups: dict[GroupBy, list[DebtGroup]]

    @classmethod
    def of(cls, items: Sequence[DebtItem]) -> Summary:
        return cls(
            len(items),
            sum(1 for i in items if i.overdue),
            sum(1 for i in items if not i.known),
            {by: summarise(items, by) for by in GROUPINGS},
        )


@dataclass(frozen=True)
class Board:
    """One computation: the ledger, its summary, the blind spots, when and at which audit
    head."""

    ledger: debt.Ledger
    blind: list[BlindSpot]
    computed_at: datetime
    took_s: float
    head: int
    summary: Summary

    def items_for(self, keep: Callable[[DebtItem], bool] | None) -> list[DebtItem]:
        """The items ``keep`` keeps (all when None)."""
        return self.ledger.items if keep is None else [i for i in self.ledger.items if keep(i)]

    def summary_for(self, keep: Callable[[DebtItem], bool] | None) -> Summary:
        """The summary of the items ``keep`` keeps (of all, computed once, when None)."""
        return self.summary if keep is None else Summary.of(self.items_for(keep))


@dataclass(frozen=True)
class View:
    """What a page gets: the newest board (None before the first one is done); whether it is
    current, else why not ("changed": something was audited since it was computed; "old": it
    is older than ``fresh_for``); a recomputation under way; and whether the last attempt
    failed (why is in the service's log, not on pages)."""

    board: Board | None
    current: bool
    refreshing: bool
    stale: str | None = None
    error: str | None = None


class DebtBoard:
    """The newest ledger of one workspace, recomputed when the audit chain moves."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        fresh_for: timedelta = timedelta(minutes=2),
        wait_s: float = 2.0,
        gap: float = 4.0,
    ) -> None:
        self.workspace = workspace
        self.fresh_for = fresh_for
        self.wait_s = wait_s
        self.gap = gap
        self._lock = threading.Lock()
        self._board: Board | None = None
        self._running: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._finished = 0.0  # monotonic time the last computation ended
        self._error: str | None = None
        self._closed = False

    def head(self) -> int:
        """The newest audit entry's number: what the ledger reads does not change without
        moving it (clocks aside: see ``fresh_for``)."""
        with self.workspace.sessions() as session:
            return int(session.execute(select(func.max(models.AuditEvent.seq))).scalar() or 0)

    def _stale(self, board: Board | None, head: int, now: datetime) -> str | None:
        if board is None:
            return "missing"
        if board.head != head:
            return "changed"
        return "old" if now - board.computed_at > self.fresh_for else None

    def view(self, now: datetime | None = None) -> View:
        """The newest board, recomputed first when it is stale and quick to recompute."""
        now = now or datetime.now(UTC)
        head = self.head()
        with self._lock:
            board = self._board
            if self._stale(board, head, now) and self._running is None and self._may_start(board):
                self._start()
            running = self._running
        if running is not None and (board is None or board.took_s <= self.wait_s):
            running.wait(self.wait_s)
            with self._lock:
                board, running = self._board, self._running
        stale = self._stale(board, head, now)
        return View(board, stale is None, running is not None, stale, self._error)

    def peek(self, now: datetime | None = None) -> View:
        """The newest board as it is, starting no computation (for readers that come often
        and show its age, such as a metrics scrape)."""
        now = now or datetime.now(UTC)
        with self._lock:
            board, running = self._board, self._running
        stale = self._stale(board, self.head(), now)
        return View(board, stale is None, running is not None, stale, self._error)

    def prime(self) -> None:
        """Start the first computation now, so the first view does not wait for it."""
        with self._lock:
            if self._board is None and self._running is None:
                self._start()

    def settle(self, timeout: float = 30) -> None:
        """Wait (up to ``timeout``) for a computation under way to end."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self, timeout: float = 30) -> None:
        """Start no more computations, and wait (up to ``timeout``) for one under way."""
        with self._lock:
            self._closed = True
        self.settle(timeout)

    def _may_start(self, board: Board | None) -> bool:
        if self._closed:
            return False
        if board is None or board.took_s <= self.wait_s:
            return True
        return time.monotonic() - self._finished >= self.gap * board.took_s

    def _start(self) -> None:
        if self._closed:
            return
        done = threading.Event()
        self._running = done
        self._thread = threading.Thread(
            target=self._compute, args=(done,), name="provisor-debt-board", daemon=True
        )
        self._thread.start()

    def _compute(self, done: threading.Event) -> None:
        board: Board | None = None
        error: str | None = None
        try:
            started = time.perf_counter()
            # the head first: what is audited while the ledger is read makes it stale
            head = self.head()
            now = datetime.now(UTC)
            ledger = debt.ledger(self.workspace, now)
            blind = [b for c in coverage(self.workspace) for b in c.blind_spots]
            summary = Summary.of(ledger.items)
            board = Board(ledger, blind, now, time.perf_counter() - started, head, summary)
        except Exception as exc:  # the pages say it failed; the next view tries again
            log.exception("the debt ledger could not be computed")
            error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                if board is not None:
                    self._board = board
                self._error = error
                self._running = None
                self._finished = time.monotonic()
                done.set()
