"""A target's limits shared by every runner of a workspace, kept in its database.

Does: keep each target's row in ``target_limits``; lock it while a run takes accounts, so the
accounts held in a target across all runners can be counted and capped at its
``concurrency`` (``lock_target``, ``held``); pace the requests of every runner to a target
with one token bucket in that row (``SharedBucket``): each request reserves a token in one
short transaction, by the database's clock (the one clock all machines share), and waits out
its reservation. The bucket allows a burst of a twentieth of a second's requests, so no second
sees more than 5% over the rate.
Does not: decide which accounts to run (``runner``, ``dispatch``), or pace runners that use an
in-process bucket (``pacing.TokenBucket``, the embedded mode on SQLite).
"""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import false, func, select, text, update
from sqlalchemy.orm import Session

from provisor.engine.workspace import Workspace
from provisor.store.db import upsert
from provisor.store.models import AccountLease, TargetLimit

BURST_SECONDS = 0.05  # a bucket holds this many seconds' worth of requests (at least one)

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
    upsert(session, TargetLimit, [row], ("target",), where=false())


def lock_target(session: Session, target: str) -> None:
    """Lock the target's row for the rest of the transaction (on SQLite, the write lock):
    whoever counts and takes a target's accounts next waits until this transaction ends."""
    _ensure(session, target, 1.0)
    session.execute(
        update(TargetLimit).where(TargetLimit.target == target).values(tokens=TargetLimit.tokens)
    )


def held(session: Session, target: str, now: datetime, *, besides: str | None = None) -> int:
    """How many accounts of ``target`` runs hold now (other than run ``besides``)."""
    query = select(func.count()).where(AccountLease.target == target, AccountLease.expires_at > now)
    if besides is not None:
        query = query.where(AccountLease.run != besides)
    return int(session.execute(query).scalar_one())


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
