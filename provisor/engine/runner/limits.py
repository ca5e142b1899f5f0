"""A target's limits shared by every runner of a workspace, kept in its database.

Does: bound the accounts worked on at once in a target by all workers together to its
``concurrency``, with that many slot rows (``target_slots``) taken with ``FOR UPDATE SKIP
LOCKED`` and given back after each account (``Slots``; they expire with the run's leases, so a
dead worker's come back); pace the requests of every runner to a target with one token bucket
in its ``target_limits`` row (``SharedBucket``): each request reserves a token in one short
transaction, by the database's clock (the one clock all machines share), and waits out its
reservation. The bucket allows a burst of a twentieth of a second's requests, so no second
sees more than 5% over the rate.
Does not: decide which accounts to run (``runner``, ``dispatch``), or pace runners that use an
in-process bucket and pool (``pacing.TokenBucket``, the embedded mode on SQLite). Slots need
PostgreSQL.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from provisor.engine.runner.pacing import BURST_SECONDS
from provisor.engine.workspace import Workspace
from provisor.store.db import insert_missing
from provisor.store.db import table as table_of
from provisor.store.models import TargetLimit, TargetSlot

log = logging.getLogger(__name__)


# the database's clock in seconds since the epoch, and the statement reserving one token
_NOW = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
_LEAST = {"postgresql": "least", "sqlite": "min"}
_RESERVE = """
UPDATE target_limits
SET tokens = {least}(:capacity, tokens + ({now} - stamp) * :rate) - 1, stamp = {now}
WHERE target = :target
RETURNING tokens
"""


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _ensure(session: Session, target: str, tokens: float) -> None:
    """The target's row, made full when missing (never changed when present)."""
    now = session.execute(select(text(_NOW[_dialect(session)]))).scalar_one()
    row = {"target": target, "tokens": tokens, "stamp": float(now)}
    insert_missing(session, TargetLimit, [row], ("target",))


class SharedBucket:
    """``rate`` requests a second to one target, over every runner of the workspace; the
    same ``acquire`` as ``pacing.TokenBucket``, so connectors pace with either."""

    def __init__(self, workspace: Workspace, target: str, rate: float) -> None:
        self.workspace = workspace
        self.target = target
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        with workspace.sessions() as session, session.begin():
            dialect = _dialect(session)
            _ensure(session, target, self.capacity)
        self._reserve = text(_RESERVE.format(least=_LEAST[dialect], now=_NOW[dialect]))

    def acquire(self) -> None:
        """Reserve the next token; sleep until its time when the bucket is empty."""
        params = {"capacity": self.capacity, "rate": self.rate, "target": self.target}
        with self.workspace.sessions() as session, session.begin():
            tokens = session.execute(self._reserve, params).scalar_one_or_none()
            if tokens is None:  # the row went away (a restored backup): make it again
                _ensure(session, self.target, self.capacity)
                tokens = session.execute(self._reserve, params).scalar_one()
        if tokens < 0:
            time.sleep(-float(tokens) / self.rate)


_SLOTS = table_of(TargetSlot)
_TAKE_SLOT = text(
    """
UPDATE target_slots SET run = :run, expires_at = :expires
WHERE target = :target AND slot = (
    SELECT slot FROM target_slots
    WHERE target = :target AND slot < :count AND (run IS NULL OR expires_at <= :now)
    ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING slot
"""
).bindparams(  # times as the column stores them
    bindparam("now", type_=TargetSlot.expires_at.type),
    bindparam("expires", type_=TargetSlot.expires_at.type),
)


# the slot rows each database was found to hold in this process, by target: a run's start
# makes them only the first time (a leaver's run starts every target at once)
_MADE: WeakKeyDictionary[Engine, set[tuple[str, int]]] = WeakKeyDictionary()
_MADE_LOCK = threading.Lock()


class Slots:
    """A target's ``concurrency`` across every worker: ``take`` waits for a free slot (one
    not held, or expired) and ``give`` returns it. Of two or more slots, one is
    kept for removals: a leaver's account never waits behind a wave of joiners."""

    WAIT = (0.005, 0.2)  # seconds between tries for a slot: the first, and at most

    def __init__(self, workspace: Workspace, target: str, count: int) -> None:
        self.workspace = workspace
        self.target = target
        self.count = count
        self._checked = False  # whether a take that found no slot free looked for rows gone
        with _MADE_LOCK:
            made = _MADE.setdefault(workspace.engine, set())
            known = (target, count) in made
        if not known:
            self._make()
            with _MADE_LOCK:
                made.add((target, count))

    def _make(self) -> None:
        """The target's slot rows, those missing made free (never changed when present)."""
        rows = [
            {"target": self.target, "slot": n, "run": None, "expires_at": None}
            for n in range(self.count)
        ]
        with self.workspace.sessions() as session, session.begin():
            insert_missing(session, TargetSlot, rows, ("target", "slot"))

    def _missing(self) -> bool:
        """Whether some of the target's slot rows are not there."""
        query = select(func.count()).where(
            TargetSlot.target == self.target, TargetSlot.slot < self.count
        )
        with self.workspace.sessions() as session:
            return session.execute(query).scalar_one() < self.count

    def _take(self, run: str, seconds: int, removal: bool) -> int | None:
        now = datetime.now(UTC)
        params = {
            "run": run,
            "target": self.target,
            "count": self.count if removal or self.count < 2 else self.count - 1,
            "now": now,
            "expires": now + timedelta(seconds=seconds),
        }
        # a connection, not a session: one statement per account, and nothing to map
        with self.workspace.engine.begin() as connection:
            slot = connection.execute(_TAKE_SLOT, params).scalar_one_or_none()
        return None if slot is None else int(slot)

    def _give(self, run: str, slot: int) -> None:
        row = _SLOTS.c
        with self.workspace.engine.begin() as connection:
            connection.execute(
                update(_SLOTS)
                .where(row.target == self.target, row.slot == slot, row.run == run)
                .values(run=None, expires_at=None)
            )

    def take(self, run: str, seconds: int, *, removal: bool = False) -> int:
        """Wait for a slot and hold it for ``run`` (``seconds``, renewed with its leases);
        ``removal``: for an account with a removal to make, which may take the kept slot."""
        pause, most = self.WAIT
        while (slot := self._take(run, seconds, removal)) is None:
            if not self._checked:  # every slot busy, or the rows went (a restored backup)?
                self._checked = True  # (once per run and target: busy is the usual answer)
                if self._missing():
                    self._make()
                    continue
            time.sleep(pause * (0.5 + random.random()))  # jittered
            pause = min(most, pause * 2)
        return slot

    def give(self, run: str, slot: int) -> None:
        """Give the slot back; if the database fails now, it is freed with the run's leases
        (``leases.give_back``) or when it expires."""
        try:
            self._give(run, slot)
        except Exception:  # logged; never hides the outcome of the account's work
            log.exception("giving back slot %s of %s failed", slot, self.target)
