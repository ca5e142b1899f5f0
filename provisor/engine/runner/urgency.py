"""Leavers first across the cluster: while a leaver's removals are on their way, every
worker's other work waits.

Does: in each ``provisor worker``, hear the announcement that removals are on their way (a
NOTIFY on ``REMOVALS_CHANNEL``, ``Queue.announce``: sent by the service once it recorded a
change that ends or suspends someone's access now — before the cycle that plans it has run;
for one posted to ``/events``, already as it starts recording it — and by a cycle that
planned removals due now) on a connection of its own, and from then on ask every
``POLL_SECONDS`` whether they still are: a cycle waiting or running (it may be the one
planning them), a removal open and due on a target whose circuit is not open
(``removals_due``). Meanwhile ``hold`` keeps an account without a removal from starting its
next operation, so the cores, the database and the targets serve the leaver; for at most
``HOLD_SECONDS`` from the first announcement, so other work never waits long behind a removal
that cannot finish.
Does not: stop an operation already sent, order work (``dispatch`` puts removals first in the
queue and in each slice), or run on SQLite (there one process runs the journal, removals
first). While its connection is lost (it connects again every ``RECONNECT_SECONDS``), other
work runs as if nothing had been announced.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import psycopg

from provisor.engine.runner.dispatch import REMOVALS_CHANNEL, Queue, conninfo, removals_due
from provisor.engine.workspace import Workspace

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a worker asks whether announced removals are still on the way
HOLD_SECONDS = 2.0  # the longest other work waits after an announcement
IDLE_SECONDS = 1.0  # the listener's wait for a notification when nothing is announced
RECONNECT_SECONDS = 1.0  # the pause before the listener connects again


class Urgency:
    """One worker's view of whether removals are on their way (a thread listening)."""

    def __init__(self, workspace: Workspace, queue: Queue) -> None:
        self.workspace = workspace
        self.queue = queue
        self._quiet = threading.Event()  # set: nothing announced is on its way
        self._quiet.set()
        self._since = 0.0  # when the removals on their way were first announced
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="provisor-urgency", daemon=True)
        self._thread.start()

    @property
    def urgent(self) -> bool:
        return not self._quiet.is_set()

    def hold(self) -> None:
        """Wait while announced removals are on their way (``HOLD_SECONDS`` at most since
        they were announced)."""
        self._quiet.wait(HOLD_SECONDS)

    def close(self) -> None:
        self._stop.set()
        self._settle()
        self._thread.join(IDLE_SECONDS + 5)

    def _listen(self) -> None:
        address = conninfo(self.workspace)
        while not self._stop.is_set():
            try:
                with psycopg.connect(address, autocommit=True) as connection:
                    connection.execute(f"LISTEN {REMOVALS_CHANNEL}")
                    self._hear(connection)
            except Exception:  # the database went away: other work runs unheld meanwhile
                log.warning("not hearing of leavers' removals; listening again", exc_info=True)
                self._settle()
                self._stop.wait(RECONNECT_SECONDS)

    def _hear(self, connection: psycopg.Connection) -> None:
        """Announcements as they come; whether what they announced is still on its way is
        asked ``POLL_SECONDS`` after the last one at the earliest (one sent as the change is
        recorded comes before the cycle that plans it is in the queue) — and at once
        ``HOLD_SECONDS`` after the first, however many keep coming."""
        heard_at = 0.0
        while not self._stop.is_set():
            wait = POLL_SECONDS if self.urgent else IDLE_SECONDS
            if any(True for _ in connection.notifies(timeout=wait, stop_after=1)):
                heard_at = time.monotonic()
                if not self.urgent:
                    self._since = heard_at
                    self._quiet.clear()
            now = time.monotonic()
            if self.urgent and (now - heard_at >= POLL_SECONDS or now - self._since > HOLD_SECONDS):
                self._check()

    def _check(self) -> None:
        """Still on their way? (Asked of the queue and the journal.)"""
        if time.monotonic() - self._since > HOLD_SECONDS:
            self._settle()
            return
        if self.queue.cycle_on_the_way():
            return
        with self.workspace.sessions() as session:
            if not removals_due(self.workspace, session, datetime.now(UTC)):
                self._settle()

    def _settle(self) -> None:
        self._quiet.set()
