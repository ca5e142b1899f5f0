"""Leaver latency through a running deployment: from a termination posted to the REST API to
every removal on four real targets closed in the journal.

Does: make a workspace on PostgreSQL (a scratch database on PROVISOR_BENCH_POSTGRES_URL, default
the local server as ``postgres``) with workers running the journal (``runner.workers``) and a
periodic cycle too rare to be on the path (``service.cycle_seconds: 300``): an event wakes a
cycle through the job queue. Starts four targets, each a real server of its own — an in-memory
SCIM 2.0 service (a group), OpenLDAP (a group), an application's users table in PostgreSQL (a
role) and RabbitMQ's management API through the shipped ``rabbitmq`` profile (a user tag) —
each granting one entitlement to employees and disabling leavers; then ``provisor serve`` and
--workers ``provisor worker`` processes. Hires --leavers + --queued-leavers employees through
the API and waits until all their access is verified (eight operations each). Then:
- terminates the first --leavers one at a time with ``POST /api/v1/events``; each latency runs
  from just before the request to the moment this process sees every removal of that person
  (revoke sessions, disable, remove the entitlement, on all four targets) ``verified`` or
  ``unverifiable`` in the journal, polled every --poll-ms;
- uploads an HR feed of --queued/2 joiners (a create and an entitlement each: --queued
  operations, spread over the four targets) through the API before each batch of --batch of
  the --queued-leavers, waits until the cycle that imports it has put all their operations in
  the journal, and then measures those leavers the same way while the joiners' work is still
  ahead of them (``queued_ahead_*``: joiner operations not yet closed when a leaver is posted;
  ``queued_with_work_ahead``: how many leavers had any);
- waits until every joiner's work is verified too.
Reports where the time went from the journal's own times: the request (``post_*``), the start of
the cycle that planned the removals (``cycle_*``), each target's last removal done
(``target_p95_ms``); per-target counts of the removals by status; the peak memory of the service
and of the busiest worker. Exits non-zero with a message on standard error when a removal fails,
is held or does not close within --timeout seconds, or a joiner's work fails.
Prints one JSON line: {"bench": "leaver_latency", "leavers": N, "targets": [...], "p50_ms": ...,
"p95_ms": ..., "queued_p50_ms": ..., "queued_p95_ms": ..., ...}.
Does not: judge the figures against a goal, check the targets' contents besides the engine's own
read-back, or leave anything behind (servers, folders and databases go, whatever happened).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import yaml
from psycopg.rows import namedtuple_row
from sqlalchemy import create_engine, func, make_url, select

from provisor.domain.plan import REMOVAL_KINDS
from provisor.errors import ProvisorError
from provisor.sandbox.cluster import scratch_database, start_workers, stop_workers
from provisor.sandbox.rabbitmq import RabbitNode
from provisor.sandbox.scim_memory import MemoryScim
from provisor.sandbox.service import load, peak_rss_mb, percentile, served
from provisor.sandbox.slapd import Slapd
from provisor.sandbox.sqlapp import app_schema, users_table_settings
from provisor.store import models

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# workers run the journal; the periodic cycle is too rare to be what plans a leaver; nobody's
# terminations are held by the mass-change guard (they are the point here)
CONFIG = """\
runner: {workers: true, lease_seconds: 10, sweep_seconds: 5}
service: {cycle_seconds: 300}
guard: {min_count: 1000000}
"""
# each target and the entitlement it grants
GRANTS = {"scim": "staff", "ldap": "staff", "sql": "viewer", "rest": "monitoring"}
TARGETS = list(GRANTS)
LDAP_SECRET = "PROVISOR_BENCH_LDAP_PASSWORD"
RABBIT_SECRET = "PROVISOR_BENCH_RABBIT_PASSWORD"
CLOSED = ("verified", "unverifiable")
BROKEN = ("failed", "held", "cancelled")
OPS_PER_EMPLOYEE = 2 * len(TARGETS)  # an account and its entitlement on each target
EVENTS = "/api/v1/events"


class BenchError(Exception):
    """What makes the run fail: a removal failed or timed out, a server would not start."""


@dataclass
class Targets:
    """The four targets' servers, as the policy reaches them."""

    scim: str
    ldap: Slapd
    sql: str
    rabbit: RabbitNode


@dataclass
class Leaver:
    """One termination: milliseconds from just before its request."""

    ms: float  # until this process saw every removal closed
    post_ms: float  # until the API answered
    cycle_ms: float  # until the cycle that planned the removals started
    targets: dict[str, float] = field(default_factory=dict)  # until each target's last removal
    ahead: int = 0  # other operations not yet closed when it was posted


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--leavers", type=int, default=100, help="terminated one at a time")
    parser.add_argument(
        "--queued", type=int, default=1000, help="joiner operations posted before each batch"
    )
    parser.add_argument(
        "--queued-leavers", type=int, default=20, help="leavers measured behind joiners"
    )
    parser.add_argument("--batch", type=int, default=2, help="leavers after each wave of joiners")
    parser.add_argument("--workers", type=int, default=2, help="provisor worker processes")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="journal polling interval")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a leaver may take")
    parser.add_argument("--logs", type=Path, help="copy the service's and workers' logs here")
    parser.add_argument("--each", action="store_true", help="a line per leaver on stderr")
    args = parser.parse_args(argv)
    if args.leavers < 1 or args.queued_leavers < 0 or args.batch < 1 or args.queued < 0:
        parser.error("--leavers and --batch must be at least 1, the others at least 0")
    return args


def start_targets(stack: ExitStack, server: str) -> Targets:
    """The four servers, each with the entitlement it grants; stopped with ``stack``."""
    scim = stack.enter_context(MemoryScim())
    scim.group(GRANTS["scim"])
    ldap = stack.enter_context(Slapd())
    ldap.create_groups([GRANTS["ldap"]])
    table = stack.enter_context(scratch_database(server, "provisor_bench_app"))
    engine = create_engine(table)
    app_schema(engine)  # its roles: viewer, editor
    engine.dispose()
    rabbit = stack.enter_context(RabbitNode())
    return Targets(scim.url, ldap, table, rabbit)


def policy(targets: Targets) -> str:
    """Employees get every target's entitlement; a joiner of department ``queued-T`` gets
    target T's only; a leaver is disabled everywhere (credentials by ``env`` reference)."""
    ldap, rabbit = targets.ldap, targets.rabbit
    connections: dict[str, tuple[str, dict[str, Any]]] = {
        "scim": ("scim", {"url": targets.scim, "timeout": 10}),
        "ldap": (
            "ldap",
            {
                "url": ldap.url,
                "bind_dn": ldap.bind_dn,
                "password": {"env": LDAP_SECRET},
                "base_dn": ldap.people_dn,
                "groups_dn": ldap.groups_dn,
                "timeout": 10,
            },
        ),
        "sql": ("sql", users_table_settings(targets.sql, sessions=False)),
        "rest": (
            "rest",
            {
                "profile": "rabbitmq",
                "url": rabbit.url,
                "username": rabbit.username,
                "password": {"env": RABBIT_SECRET},
                "timeout": 10,
                "entitlements": {GRANTS["rest"]: f"tag:{GRANTS['rest']}"},
            },
        ),
    }
    document: dict[str, Any] = {
        "targets": [
            {
                "name": name,
                "class": kind,
                "owner": "bench",
                "leaver_action": "disable",
                "concurrency": 8,
                "connection": settings,
                "entitlements": [{"name": GRANTS[name]}],
            }
            for name, (kind, settings) in connections.items()
        ],
        "rules": [
            {
                "name": "staff",
                "when": {"attr": "employment_type", "equals": "employee"},
                "grant": [{"target": t, "entitlements": [e]} for t, e in GRANTS.items()],
            },
            *(
                {
                    "name": f"queued-{t}",
                    "when": {"attr": "department", "equals": f"queued-{t}"},
                    "grant": [{"target": t, "entitlements": [e]}],
                }
                for t, e in GRANTS.items()
            ),
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


class Journal:
    """The operations table, read from this process (its polling is not the engine's). A
    leaver's removals are polled with a prepared statement on a connection of their own: the
    watching shares the machine's cores with the engine it times, and a poll through
    SQLAlchemy's engine took about ten times the CPU (0.75 ms against 0.08: a sixth of a core
    at one poll every 5 ms)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_size=1, max_overflow=0)
        address = make_url(url).set(drivername="postgresql")
        self._watch = psycopg.connect(
            address.render_as_string(hide_password=False),
            autocommit=True,
            row_factory=namedtuple_row,
            prepare_threshold=0,
        )

    def removals(self, identity: str) -> list[Any]:
        return self._watch.execute(
            "SELECT target, kind, status, created_at, updated_at, last_error"
            f" FROM {models.Operation.__tablename__} WHERE identity = %s AND kind = ANY(%s)",
            (identity, list(REMOVAL_KINDS)),
        ).fetchall()

    def statuses(self, prefix: str) -> Counter[str]:
        """The statuses of the operations of identities whose id starts with ``prefix``."""
        op = models.Operation
        query = select(op.status, func.count()).where(op.identity.startswith(prefix))
        with self.engine.connect() as connection:
            rows = connection.execute(query.group_by(op.status))
            return Counter({str(status): int(count) for status, count in rows})

    def removal_statuses(self) -> dict[str, dict[str, int]]:
        """Each target's removals by status."""
        op = models.Operation
        query = select(op.target, op.status, func.count()).where(op.kind.in_(REMOVAL_KINDS))
        found: dict[str, dict[str, int]] = {t: {} for t in TARGETS}
        with self.engine.connect() as connection:
            for target, status, count in connection.execute(query.group_by(op.target, op.status)):
                found.setdefault(str(target), {})[str(status)] = int(count)
        return found

    def close(self) -> None:
        self._watch.close()
        self.engine.dispose()


def hire(url: str, token: str, people: list[tuple[str, dict[str, str]]]) -> None:
    """Post a hire for each (identity, attributes) from four keep-alive clients."""
    requests = [
        (
            "POST",
            EVENTS,
            {
                "identity": who,
                "kind": "hire",
                "changes": {"name": f"Person {who}", "email": f"{who.lower()}@example.com"} | more,
            },
        )
        for who, more in people
    ]
    try:
        load(url, token, requests, threads=4, expect={201})
    except RuntimeError as exc:
        raise BenchError(f"hiring through the API: {exc}") from None


def settle(journal: Journal, prefix: str, expected: int, timeout: float) -> Counter[str]:
    """Wait until the ``expected`` operations of identities ``prefix``... are all closed."""
    deadline = time.monotonic() + timeout
    while True:
        seen = journal.statuses(prefix)
        broken = {s: seen[s] for s in BROKEN if seen[s]}
        if broken:
            raise BenchError(f"operations of {prefix}* not done: {broken} (all: {dict(seen)})")
        closed = sum(seen[s] for s in CLOSED)
        if closed >= expected and closed == sum(seen.values()):
            return seen
        if time.monotonic() > deadline:
            raise BenchError(
                f"{expected} operations of {prefix}* not closed after {timeout:.0f} s: {dict(seen)}"
            )
        time.sleep(0.2)


def closed(rows: list[Any], who: str) -> bool:
    """Whether every removal of ``who`` is closed, one disable planned on each target."""
    for row in rows:
        if row.status in BROKEN:
            raise BenchError(
                f"{who}: {row.kind} on {row.target} is {row.status}: {row.last_error or ''}"
            )
    disabled = {row.target for row in rows if row.kind == "disable"}
    return disabled >= set(TARGETS) and all(row.status in CLOSED for row in rows)


def terminate(
    api: httpx2.Client, journal: Journal, who: str, args: argparse.Namespace, ahead: int = 0
) -> Leaver:
    """Post ``who``'s termination; wait until all its removals are closed (``ahead``: other
    operations not closed when it was posted)."""
    wall = datetime.now(UTC)
    began = time.perf_counter()
    answer = api.post(EVENTS, json={"identity": who, "kind": "terminate"})
    posted = time.perf_counter()
    body = answer.json() if answer.status_code == 201 else {}
    if body.get("status") != "accepted" or body.get("hold") is not None:
        raise BenchError(f"{who}: the termination was answered {answer.status_code} {answer.text}")
    deadline = began + args.timeout
    while not closed(rows := journal.removals(who), who):
        if time.perf_counter() > deadline:
            left = sorted(f"{r.target}:{r.kind}:{r.status}" for r in rows)
            raise BenchError(
                f"{who}: removals not closed {args.timeout:g} s after the termination: "
                f"{left or 'none planned'}"
            )
        time.sleep(args.poll_ms / 1000)
    done = time.perf_counter()

    def since(at: datetime) -> float:  # (the journal's times are UTC, stored without a zone)
        return round((at.replace(tzinfo=UTC) - wall).total_seconds() * 1000, 1)

    leaver = Leaver(
        ms=(done - began) * 1000,
        post_ms=(posted - began) * 1000,
        cycle_ms=since(min(r.created_at for r in rows)),
        targets={t: since(max(r.updated_at for r in rows if r.target == t)) for t in TARGETS},
        ahead=ahead,
    )
    if args.each:
        print(f"leaver_latency: {who} {leaver}", file=sys.stderr)
    return leaver


def joiner_wave(api: httpx2.Client, journal: Journal, wave: int, size: int) -> None:
    """``size`` joiners hired by one HR feed (events mode) uploaded to the API, as a day's
    new starters arrive; returns once the cycle that imported them has put all their
    operations in the journal (two each), so they are queued ahead of what comes next."""
    prefix = f"J{wave}-"
    departments = [f"queued-{t}" for t in TARGETS]  # one target's entitlement each
    today = datetime.now(UTC).date().isoformat()
    lines = ["id,event,effective,name,email,employment_type,department"]
    lines += [
        f"{prefix}{i},hire,{today},Person {prefix}{i},{prefix.lower()}{i}@example.com,"
        f"contractor,{departments[i % len(departments)]}"
        for i in range(size)
    ]
    answer = api.post(
        "/api/v1/feeds",
        params={"mode": "events", "name": f"joiners-{wave}.csv"},
        content="\n".join(lines) + "\n",
        headers={"Content-Type": "text/csv"},
    )
    if answer.status_code != 202:
        raise BenchError(f"the joiners' feed was answered {answer.status_code} {answer.text}")
    job = answer.json()["href"]
    deadline = time.monotonic() + 120
    while sum(journal.statuses(prefix).values()) < 2 * size:
        if time.monotonic() > deadline:
            raise BenchError(f"the joiners of {prefix}* were not planned within 120 s")
        found = api.get(job).json()
        if found.get("status") == "failed":
            raise BenchError(f"the joiners' feed was not imported: {found.get('error')}")
        time.sleep(0.01)


def queued_leavers(
    api: httpx2.Client, journal: Journal, args: argparse.Namespace
) -> tuple[list[Leaver], int]:
    """Batches of leavers, each posted right behind a wave of joiners whose operations are
    in the journal; the leavers, and the joiners' operations in all."""
    first = args.leavers
    names = [f"L{i}" for i in range(first, first + args.queued_leavers)]
    wave = args.queued // 2
    measured: list[Leaver] = []
    for b, start in enumerate(range(0, len(names), args.batch)):
        if b:  # each wave alone ahead of its leavers
            settle(journal, "J", 2 * wave * b, timeout=120 + wave)
        joiner_wave(api, journal, b, wave)
        for who in names[start : start + args.batch]:
            seen = journal.statuses("J")
            ahead = 2 * wave * (b + 1) - sum(seen[s] for s in CLOSED)
            measured.append(terminate(api, journal, who, args, ahead))
    batches = -(-len(names) // args.batch)
    return measured, 2 * wave * batches


def figures(leavers: list[Leaver], prefix: str) -> dict[str, Any]:
    """p50, p95 and max of the latencies, and where the time went."""
    if not leavers:
        return {}
    ms = [round(v.ms, 1) for v in leavers]
    out: dict[str, Any] = {
        f"{prefix}p50_ms": round(statistics.median(ms), 1),
        f"{prefix}p95_ms": round(percentile(ms, 0.95), 1),
        f"{prefix}max_ms": round(max(ms), 1),
        f"{prefix}post_p50_ms": round(statistics.median(v.post_ms for v in leavers), 1),
        f"{prefix}cycle_p50_ms": round(statistics.median(v.cycle_ms for v in leavers), 1),
        f"{prefix}cycle_p95_ms": percentile([v.cycle_ms for v in leavers], 0.95),
        f"{prefix}target_p95_ms": {
            t: percentile([v.targets[t] for v in leavers], 0.95) for t in TARGETS
        },
    }
    if prefix:
        ahead = [v.ahead for v in leavers]
        out[f"{prefix}ahead_min"] = min(ahead)
        out[f"{prefix}ahead_p50"] = round(statistics.median(ahead))
        out[f"{prefix}ahead_max"] = max(ahead)
        out[f"{prefix}with_work_ahead"] = sum(1 for n in ahead if n > 0)
    return out


def measure(url: str, token: str, journal: Journal, args: argparse.Namespace) -> dict[str, Any]:
    """Hire, wait, terminate one at a time, then behind joiners; the figures."""
    people = args.leavers + args.queued_leavers
    hire(url, token, [(f"L{i}", {"employment_type": "employee"}) for i in range(people)])
    settle(journal, "L", people * OPS_PER_EMPLOYEE, timeout=120 + people)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx2.Client(base_url=url, headers=headers, timeout=30) as api:
        alone = [terminate(api, journal, f"L{i}", args) for i in range(args.leavers)]
        behind, joiner_ops = queued_leavers(api, journal, args) if args.queued_leavers else ([], 0)
    joiners = settle(journal, "J", joiner_ops, timeout=120 + joiner_ops / 5) if joiner_ops else {}
    removals = journal.removal_statuses()
    for target, counts in removals.items():
        wrong = {s: n for s, n in counts.items() if s not in CLOSED}
        if wrong:
            raise BenchError(f"removals on {target} not closed at the end: {wrong}")
    return {
        "bench": "leaver_latency",
        "leavers": args.leavers,
        "targets": TARGETS,
        "workers": args.workers,
        **figures(alone, ""),
        "queued_leavers": len(behind),
        "queued_ops": 2 * (args.queued // 2) if behind else 0,
        **figures(behind, "queued_"),
        "removals": removals,
        "joiner_ops": dict(joiners),
    }


def copy_logs(folder: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for log in [folder / "serve.log", *folder.glob("worker-*.log")]:
        if log.exists():
            shutil.copy(log, into / log.name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The deployment and its targets up, the measurement, everything stopped and removed."""
    server = os.environ.get("PROVISOR_BENCH_POSTGRES_URL", DEFAULT_SERVER)
    with ExitStack() as stack:
        targets = start_targets(stack, server)
        database = stack.enter_context(scratch_database(server, "provisor_bench"))
        os.environ["PROVISOR_DATABASE_URL"] = database  # for the service and the workers
        os.environ[LDAP_SECRET] = targets.ldap.password
        os.environ[RABBIT_SECRET] = targets.rabbit.password
        folders: list[Path] = []
        url, token, pid = stack.enter_context(
            served(CONFIG, lambda ws: folders.append(ws.path), policy(targets))
        )
        folder = folders[0]
        journal = Journal(database)
        stack.callback(journal.close)
        workers = start_workers(folder, args.workers, dict(os.environ))
        complaints = ""
        try:
            result = measure(url, token, journal, args)
            result["serve_peak_rss_mb"] = peak_rss_mb(pid)
            result["worker_peak_rss_mb"] = max(peak_rss_mb(w.pid) for w in workers)
        finally:
            complaints = stop_workers(workers, folder)
            if args.logs is not None:
                copy_logs(folder, args.logs)
            if complaints:
                print(f"leaver_latency: the workers logged:\n{complaints}", file=sys.stderr)
        result["worker_warnings"] = len(complaints.splitlines())
        return result


def main() -> None:
    args = parse()
    started = time.perf_counter()
    try:
        result = run(args)
    except (BenchError, ProvisorError, RuntimeError) as exc:
        print(f"leaver_latency: FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
