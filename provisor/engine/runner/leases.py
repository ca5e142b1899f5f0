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

import os
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from provisor.store.bulk import chunks
from provisor.store.db import table as table_of
from provisor.store.db import upsert
from provisor.store.models import AccountLease

Account = tuple[str, str]  # (identity, target)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), None when there is no such process."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
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
    return f"{_machine() or socket.gethostname()}:{pid}:{_started(pid) or '?'}"


def _gone(name: str, machine: str | None) -> bool:
    """Whether the holder ``name`` is a process of this machine that no longer runs."""
    here, _, rest = name.rpartition(":")[0].rpartition(":")
    if machine is None or here != machine:
        return False  # another machine's (or unknown): only its expiry frees it
    pid, started = rest, name.rpartition(":")[2]
    if not pid.isdigit() or started == "?":
        return False  # not a name this code wrote: wait for the expiry
    return _started(int(pid)) != started


def free_the_dead(session: Session, now: datetime) -> int:
    """Expire the leases of processes of this machine that are gone; how many holders."""
    machine = _machine()
    if machine is None:
        return 0
    names = session.execute(
        select(AccountLease.holder).where(AccountLease.expires_at >= now).distinct()
    ).scalars()
    dead = [name for name in names if _gone(name, machine)]
    for name in dead:
        session.execute(
            update(AccountLease).where(AccountLease.holder == name).values(expires_at=now)
        )
    return len(dead)


def take(
    session: Session, run: str, accounts: Iterable[Account], now: datetime, seconds: int
) -> set[Account]:
    """Take the leases of ``accounts`` that are free, expired or already ``run``'s; the
    accounts ``run`` holds afterwards (among those asked for)."""
    wanted = sorted(set(accounts))
    if not wanted:
        return set()
    free_the_dead(session, now)
    expires = now + timedelta(seconds=seconds)
    me = holder()
    table = table_of(AccountLease)
    free = (table.c.expires_at <= now) | (table.c.run == run)
    for part in chunks(wanted, 500):
        rows = [
            {"identity": i, "target": t, "run": run, "holder": me}
            | {"expires_at": expires, "taken_at": now}
            for i, t in part
        ]
        upsert(session, AccountLease, rows, ("identity", "target"), where=free)
    held = session.execute(
        select(AccountLease.identity, AccountLease.target).where(AccountLease.run == run)
    )
    return {(i, t) for i, t in held} & set(wanted)


def renew(session: Session, run: str, now: datetime, seconds: int) -> int:
    """Extend every lease ``run`` still holds; how many it holds."""
    result = session.execute(
        update(AccountLease)
        .where(AccountLease.run == run)
        .values(expires_at=now + timedelta(seconds=seconds))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def give_back(session: Session, run: str, accounts: Iterable[Account] | None = None) -> None:
    """Free ``run``'s leases of ``accounts`` (all of them when None)."""
    if accounts is None:
        session.execute(delete(AccountLease).where(AccountLease.run == run))
        return
    for identity, target in sorted(set(accounts)):
        session.execute(
            delete(AccountLease).where(
                AccountLease.run == run,
                AccountLease.identity == identity,
                AccountLease.target == target,
            )
        )
