"""Account leases: at most one run works on an account (an identity in a target) at a time.

Does: take the leases of accounts for a run with one atomic statement per batch — an insert
that, on an existing lease, takes it over only when it has expired or is already this run's
(``INSERT … ON CONFLICT DO UPDATE … WHERE``, on SQLite and PostgreSQL alike) — and say which
it got; renew a run's leases; give them back. A lease lasts ``runner.lease_seconds`` from its
last renewal, by the wall clock of the machines (kept in step by NTP; the lease is far longer
than any sane skew). A lease names the process holding it (the machine's boot, its process
namespace, the process id and start time): one held by a process of this machine that is gone
(killed, crashed) is free at once, so a runner restarted after a crash goes on without waiting.
Does not: decide what to run (``runner``) or record outcomes. A lease only keeps two runs
apart; that an outcome is recorded by the run that owns the operation is checked where it is
recorded, since a run that stalled past its lease may still come back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session

from provisor.engine.workspace import Workspace
from provisor.store.bulk import chunks
from provisor.store.db import changed, upsert
from provisor.store.db import table as table_of
from provisor.store.models import AccountLease, TargetSlot

Account = tuple[str, str]  # (identity, target)
# the tables themselves: these statements run for every account and batch, and Core
# statements skip the ORM's work for each (nothing here touches rows a session holds)
_LEASES = table_of(AccountLease)
_SLOTS = table_of(TargetSlot)
log = logging.getLogger(__name__)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return None


GONE = "gone"


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks since boot); ``GONE`` when there is no such
    process; None when it cannot be read (hidden /proc, another user's): not known gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return GONE
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the name may hold spaces


def _machine() -> str | None:
    """This boot and process namespace (Linux), under which process ids mean one process."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}" if boot else None


def holder() -> str:
    """This process, as a lease names it."""
    pid = os.getpid()
    started = _started(pid)
    return f"{_machine() or socket.gethostname()[:80]}:{pid}:{started or '?'}"


def _gone(name: str, machine: str | None) -> bool:
    """Whether the holder ``name`` is a process of this machine that no longer runs."""
    here, _, rest = name.rpartition(":")[0].rpartition(":")
    if machine is None or here != machine:
        return False  # another machine's (or unknown): only its expiry frees it
    pid, started = rest, name.rpartition(":")[2]
    if not pid.isdigit() or started == "?":
        return False  # not a name this code wrote: wait for the expiry
    now_started = _started(int(pid))
    if now_started is None:
        return False  # cannot be read: maybe alive, wait for the expiry
    return now_started == GONE or now_started != started  # gone, or its pid reused


def free_the_dead(session: Session, now: datetime) -> int:
    """Expire the leases of processes of this machine that are gone; how many holders."""
    machine = _machine()
    if machine is None:
        return 0
    names = session.execute(
        select(_LEASES.c.holder).where(_LEASES.c.expires_at >= now).distinct()
    ).scalars()
    dead = [name for name in names if _gone(name, machine)]
    for name in dead:
        session.execute(update(_LEASES).where(_LEASES.c.holder == name).values(expires_at=now))
    return len(dead)


def take(
    session: Session, run: str, accounts: Iterable[Account], now: datetime, seconds: int
) -> set[Account]:
    """Take the leases of ``accounts`` that are free, expired or already ``run``'s; the
    accounts ``run`` holds afterwards (among those asked for)."""
    wanted = sorted(set(accounts))  # every run takes rows in one order: no deadlock
    if not wanted:
        return set()
    free_the_dead(session, now)
    expires = now + timedelta(seconds=seconds)
    me = holder()
    free = (_LEASES.c.expires_at <= now) | (_LEASES.c.run == run)
    for part in chunks(wanted, 500):
        rows = [
            {"identity": i, "target": t, "run": run, "holder": me}
            | {"expires_at": expires, "taken_at": now}
            for i, t in part
        ]
        upsert(session, AccountLease, rows, ("identity", "target"), where=free)
    held = session.execute(select(_LEASES.c.identity, _LEASES.c.target).where(_LEASES.c.run == run))
    return {(i, t) for i, t in held} & set(wanted)


def _lock_mine(session: Session, run: str) -> None:
    """Lock ``run``'s lease and slot rows in key order (PostgreSQL): two transactions
    writing the same run's rows (its keeper, its writer) then wait for each other instead of
    deadlocking."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: one writer at a time anyway
    lease, slot = _LEASES.c, _SLOTS.c
    # byte order ("C"), the order Python sorts in and ``take`` inserts in, whatever the
    # database's collation: every transaction locks a run's rows in one order
    order = (lease.identity.collate("C"), lease.target.collate("C"))
    session.execute(
        select(lease.identity).where(lease.run == run).order_by(*order).with_for_update()
    )
    ordered = select(slot.slot).where(slot.run == run).order_by(slot.target.collate("C"), slot.slot)
    session.execute(ordered.with_for_update())


def renew(session: Session, run: str, now: datetime, seconds: int) -> int:
    """Extend every lease (and target slot) ``run`` still holds; how many leases it holds."""
    until = now + timedelta(seconds=seconds)
    _lock_mine(session, run)
    result = session.execute(update(_LEASES).where(_LEASES.c.run == run).values(expires_at=until))
    session.execute(update(_SLOTS).where(_SLOTS.c.run == run).values(expires_at=until))
    return changed(result)


def give_back(session: Session, run: str, accounts: Iterable[Account] | None = None) -> None:
    """Free ``run``'s leases of ``accounts`` (all of them, and its target slots, when
    None)."""
    lease = _LEASES.c
    if accounts is None:
        _lock_mine(session, run)
        session.execute(delete(_LEASES).where(lease.run == run))
        session.execute(update(_SLOTS).where(_SLOTS.c.run == run).values(run=None, expires_at=None))
        return
    for part in chunks(sorted(set(accounts))):
        session.execute(
            delete(_LEASES).where(lease.run == run, tuple_(lease.identity, lease.target).in_(part))
        )


class Keeper:
    """Keeps one run's leases while it works: renews them from its own thread every third of
    the lease (so no step of the run, however slow, lets them lapse unnoticed), and tells the
    run's workers whether it still holds an account — held at the last renewal, and that
    renewal recent enough that the lease cannot have run out since. A worker asks before
    every write, so a run that lost an account (stalled past its lease, and another run took
    it) writes nothing more there."""

    def __init__(self, workspace: Workspace, run: str, seconds: int) -> None:
        self.workspace = workspace
        self.run = run
        self.seconds = seconds
        self._lock = threading.Lock()
        self._held: set[Account] = set()
        self._until = 0.0  # monotonic time before which the held leases cannot have expired
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, accounts: Iterable[Account]) -> set[Account]:
        """Take the leases of ``accounts`` (``take``); the ones held."""
        started = time.monotonic()
        with self.workspace.sessions() as session, session.begin():
            got = take(session, self.run, accounts, datetime.now(UTC), self.seconds)
        with self._lock:
            if not self._held:
                self._until = started + self.seconds * 0.8
            self._held |= got
        self._start()
        return got

    def holds(self, account: Account) -> bool:
        with self._lock:
            return account in self._held and time.monotonic() < self._until

    def drop(self, accounts: Iterable[Account]) -> None:
        """Forget accounts given back."""
        with self._lock:
            self._held -= set(accounts)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.seconds)
        with self._lock:
            self._held.clear()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._beat, name=f"provisor-leases-{self.run[:8]}", daemon=True
            )
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            started = time.monotonic()
            try:
                with self.workspace.sessions() as session, session.begin():
                    renew(session, self.run, datetime.now(UTC), self.seconds)
                    rows = session.execute(
                        select(_LEASES.c.identity, _LEASES.c.target).where(
                            _LEASES.c.run == self.run
                        )
                    )
                    held = {(str(i), str(t)) for i, t in rows}
            except Exception:  # the leases run out; workers stop writing when they do
                log.exception("renewing the leases of run %s failed", self.run)
                continue
            with self._lock:
                self._held &= held
                self._until = started + self.seconds * 0.8
