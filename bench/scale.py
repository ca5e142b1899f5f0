"""Scale: ``provisor worker`` throughput on PostgreSQL as workers are added, in a workspace of
100,000 people and 10 SCIM targets.

Does: on a new database of a PostgreSQL server (PROVISOR_BENCH_POSTGRES_URL, default the local
server), import an HR snapshot of --identities employees and plan them once: each gets an
account in every one of --targets SCIM targets and one group there, two operations an account,
so the journal holds identities x targets x 2 pending operations (two million at the headline
size: far more than one run can do); then VACUUM ANALYZE, as autovacuum soon would. Then, for
each worker count W of --workers, W ``provisor worker`` processes take the next --ops
operations of that journal, oldest first as they always do, against in-memory SCIM services
(``provisor.sandbox.scim_memory``, one a target, each in a child process of its own, answering
at once; emptied of users before each run, at the same address, so that the policy never
changes). Timed: from the workers' start to the --ops-th operation verified, and the second
half alone (without the workers' start-up). Measured: the CPU seconds the worker processes used
over each span (read from /proc before they are stopped), per operation the database server's
(its backends serving the workers) and the SCIM services' over the whole run, and the workers'
peak memory. Settings: a cycle every 5 s, a sweep every 10 s, leases of 10 s. Checks that each
operation verified was verified once (the audit log's ``operation.verified`` entries), that
none failed and none was left running once the workers stopped, and that no worker logged an
error; exits non-zero saying what went wrong otherwise.
Prints one JSON line: {"bench": "scale", "identities": ..., "ops_per_s_w1": ...,
"ops_per_cpu_s_w1": ..., ...}; what each step took goes to standard error.
Does not: run the whole journal, give the targets latency or rate limits (see
``bench/scim_push.py``), or start PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import func, select, text

from provisor.engine.imports import import_feed
from provisor.engine.planner import sync_journal
from provisor.engine.runner.dispatch import Queue, targets_with_work
from provisor.engine.workspace import Workspace
from provisor.sandbox.cluster import (
    Workers,
    scratch_database,
    start_workers,
    stop_workers,
    verified_keys,
)
from provisor.sandbox.scim_memory import MemoryScim
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# a sweep every 10 s: on a large journal a sweep lasts seconds, and sweeps every second pile up
SETTINGS = (
    "runner: {workers: true, lease_seconds: 10, sweep_seconds: 10}\nservice: {cycle_seconds: 5}\n"
)
ME = "provisor-scale-bench"  # this process's database connections, told from the workers'
OPS_PER_ACCOUNT = 2  # the account, then its group
TROUBLE = ("failed", "unverifiable")
TICK = os.sysconf("SC_CLK_TCK")


def policy(urls: list[str]) -> str:
    """One SCIM target ``app{t}`` a URL, each granting its group ``staff`` to employees."""
    lines = ["targets:"]
    for t, url in enumerate(urls):
        lines += [
            f"  - name: app{t}",
            "    class: scim",
            "    owner: bench",
            f'    connection: {{url: "{url}", timeout: 30}}',
            "    entitlements: [{name: staff}]",
        ]
    grants = ", ".join(f"{{target: app{t}, entitlements: [staff]}}" for t in range(len(urls)))
    lines += [
        "rules:",
        "  - name: staff",
        "    when: {attr: employment_type, equals: employee}",
        f"    grant: [{grants}]",
    ]
    return "\n".join(lines) + "\n"


def say(step: str, started: float) -> None:
    print(f"scale: {step} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)


def write_snapshot(path: Path, people: int) -> None:
    """An HR snapshot of ``people`` active employees E0 … (p{i}@example.com)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "email", "employment_type", "start_date", "status"])
        for i in range(people):
            writer.writerow(
                [f"E{i}", f"Person {i}", f"p{i}@example.com", "employee", "2024-01-15", "active"]
            )


def load(workspace: Workspace, people: int, targets: int) -> dict[str, float]:
    """Import the snapshot, plan everyone and vacuum; the seconds import and plan took."""
    feed = workspace.path / "people.csv"
    write_snapshot(feed, people)
    now = datetime.now(UTC)
    started = time.perf_counter()
    report = import_feed(workspace, feed, now=now)
    imported = time.perf_counter()
    say(f"imported {report.rows_accepted} people", started)
    if report.rows_accepted != people or report.errors:
        raise SystemExit(f"scale: the import took {report.rows_accepted} rows: {report.errors[:5]}")
    with workspace.sessions() as session, session.begin():
        planned = sync_journal(workspace, session, now=now).added
    say(f"planned {planned} operations", imported)
    if planned != people * targets * OPS_PER_ACCOUNT:
        raise SystemExit(
            f"scale: the plan has {planned} operations, not {people * targets * OPS_PER_ACCOUNT}"
        )
    done = time.perf_counter()
    # what autovacuum would soon do after so many rows, done before any run rather than during
    # the first one: statistics for the query planner, the visibility map for index-only scans
    with workspace.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    say("vacuumed", done)
    return {"import_s": round(imported - started, 2), "plan_s": round(done - imported, 2)}


def statuses(workspace: Workspace) -> Counter[str]:
    """How many operations have each status but ``pending`` (an index scan, not the table)."""
    op = models.Operation
    wanted = ("running", "succeeded", "verified", "cancelled", *TROUBLE)
    with workspace.sessions() as session:
        query = select(op.status, func.count()).where(op.status.in_(wanted)).group_by(op.status)
        return Counter({str(status): int(n) for status, n in session.execute(query)})


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a live process and its waited-for children."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(n) for n in fields[11:15]) / TICK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def backends(workspace: Workspace) -> dict[int, float]:
    """The CPU seconds so far of each server process serving the workers (0 for one whose
    /proc entry cannot be read: a server on another machine)."""
    query = text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND application_name <> :me"
    )
    with workspace.engine.connect() as connection:
        pids = [int(pid) for pid in connection.execute(query, {"me": ME}).scalars()]
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except OSError:
            found[pid] = 0.0
    return found


def scim_pids() -> list[int]:
    """The in-memory SCIM services among this process's children."""
    found = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if b"scim_memory" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
    return found


class Targets:
    """One in-memory SCIM service a target, each with its group ``staff``; emptied of users
    between runs, at the same address (the policy stays as it is)."""

    def __init__(self, stack: ExitStack, count: int) -> None:
        self.apps = [stack.enter_context(MemoryScim()) for _ in range(count)]
        for app in self.apps:
            app.group("staff")
        self.pids = scim_pids()
        if len(self.pids) != count:
            raise SystemExit(f"scale: {len(self.pids)} SCIM services found running, not {count}")

    @property
    def urls(self) -> list[str]:
        return [app.url for app in self.apps]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def requests(self) -> int:
        return sum(int(app.stats()["requests"]) for app in self.apps)

    @staticmethod
    def _page(client: httpx2.Client) -> list[dict[str, Any]]:
        answer = client.get("/Users", params={"count": 1000}).raise_for_status().json()
        return list(answer["Resources"])

    def empty(self) -> None:
        """Delete every user (a user deleted leaves its groups)."""
        for app in self.apps:
            with httpx2.Client(base_url=app.url, timeout=60) as client:
                while users := self._page(client):
                    for user in users:
                        client.delete(f"/Users/{user['id']}").raise_for_status()


@dataclass
class Sample:
    """Seconds on the clock, operations verified, CPU seconds so far of the workers and of the
    server processes serving them."""

    at: float
    verified: int
    workers: float
    server: float


class Watch:
    """One run's workers and the server processes serving them, watched until enough
    operations are verified; fails when one fails, a worker ends or time is up."""

    def __init__(self, workspace: Workspace, timeout: float, first: int) -> None:
        self.workspace = workspace
        self.timeout = timeout
        self.workers: Workers = []
        self.first = first  # the first worker's number (its log: worker-N.log)
        # server processes (before the workers start, and as last seen: one that ends
        # between two looks takes its last half second with it)
        self.before = backends(workspace)
        self.seen = dict(self.before)

    def server_cpu(self) -> float:
        return sum(cpu - self.before.get(pid, 0.0) for pid, cpu in self.seen.items())

    def until(self, goal: int) -> Sample:
        """Wait until ``goal`` operations are verified."""
        deadline = time.monotonic() + self.timeout
        while True:
            counts = statuses(self.workspace)
            self.seen |= backends(self.workspace)
            if counts["verified"] >= goal:
                workers = sum(cpu_seconds(w.pid) for w in self.workers)
                return Sample(time.perf_counter(), counts["verified"], workers, self.server_cpu())
            trouble = {status: counts[status] for status in TROUBLE if counts[status]}
            if trouble:
                raise SystemExit(f"scale: operations went wrong: {trouble}")
            for n, worker in enumerate(self.workers, self.first):
                if worker.poll() is not None:
                    log = self.workspace.path / f"worker-{n}.log"
                    tail = log.read_text(errors="replace").splitlines()[-20:]
                    raise SystemExit(
                        f"scale: worker {n} ended early ({worker.returncode}):\n" + "\n".join(tail)
                    )
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"scale: {counts['verified']} of {goal} operations verified after "
                    f"{self.timeout:.0f} s"
                )
            time.sleep(0.5)


def kick(workspace: Workspace) -> None:
    """A drain in the queue for every target with work, as the next sweep would put."""
    queue = Queue(workspace)
    try:
        with workspace.sessions() as session:
            work = targets_with_work(workspace, session, datetime.now(UTC))
        queue.drains(work.items())
    finally:
        queue.close()


@dataclass
class Run:
    """One worker count's run: samples at its start, half way and end; CPU seconds of the
    SCIM services; the workers' largest peak memory; SCIM requests served."""

    samples: list[Sample]
    services_cpu: float
    peak_rss_mb: float
    requests: int


def run(
    workspace: Workspace, targets: Targets, env: dict[str, str], count: int, first: int, ops: int
) -> Run:
    """``count`` workers on the next ``ops`` operations, against emptied services."""
    targets.empty()
    before = statuses(workspace)["verified"]
    requests, services = targets.requests(), targets.cpu()
    watch = Watch(workspace, 600 + ops / 5, first)
    samples = [Sample(time.perf_counter(), before, 0.0, 0.0)]
    watch.workers = start_workers(workspace.path, count, env, first=first)
    try:
        kick(workspace)
        samples += [watch.until(before + ops // 2), watch.until(before + ops)]
        peak = max(peak_rss_mb(w.pid) for w in watch.workers)
        services = targets.cpu() - services
    finally:
        problems = stop_workers(watch.workers, workspace.path)
    lines = problems.splitlines()
    errors = [line for line in lines if " ERROR " in line]
    if errors:
        raise SystemExit("scale: the workers logged errors:\n" + "\n".join(errors[:20]))
    if lines:
        print(f"scale: the workers logged {len(lines)} warnings, e.g. {lines[0]}", file=sys.stderr)
    return Run(samples, services, peak, targets.requests() - requests)


def check(workspace: Workspace) -> Counter[str]:
    """Every operation verified was verified once, none failed, none is left running."""
    counts = statuses(workspace)
    left = {s: counts[s] for s in ("running", "succeeded", *TROUBLE) if counts[s]}
    if left:
        raise SystemExit(f"scale: with the workers stopped, the journal still holds {left}")
    op = models.Operation
    with workspace.sessions() as session:
        keys = set(session.execute(select(op.key).where(op.status == "verified")).scalars())
    audited = verified_keys(workspace)
    twice = sorted(key for key, n in audited.items() if n > 1)
    if twice:
        raise SystemExit(f"scale: {len(twice)} operations verified more than once: {twice[:5]}")
    if set(audited) != keys:
        unaudited, unrecorded = len(keys - set(audited)), len(set(audited) - keys)
        raise SystemExit(
            f"scale: {unaudited} verified operations have no operation.verified entry and "
            f"{unrecorded} entries name an operation not verified"
        )
    return counts


def figures(count: int, done: Run) -> dict[str, Any]:
    """The JSON line's fields for one worker count."""
    start, half, end = done.samples
    ops = end.verified - start.verified
    tail = end.verified - half.verified
    return {
        f"ops_per_s_w{count}": round(ops / (end.at - start.at), 1),
        f"ops_per_cpu_s_w{count}": round(ops / end.workers, 1),
        f"second_half_ops_per_s_w{count}": round(tail / (end.at - half.at), 1),
        f"second_half_ops_per_cpu_s_w{count}": round(tail / (end.workers - half.workers), 1),
        f"server_cpu_ms_per_op_w{count}": round(1000 * end.server / ops, 2),
        f"scim_cpu_ms_per_op_w{count}": round(1000 * done.services_cpu / ops, 2),
        f"worker_peak_rss_mb_w{count}": round(done.peak_rss_mb),
    }


def measure(args: argparse.Namespace, url: str, folder: Path) -> dict[str, Any]:
    """Load, then one run a worker count; the JSON line's fields."""
    (folder / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    os.environ["PROVISOR_DATABASE_URL"] = f"{url}?application_name={ME}"
    env = dict(os.environ) | {"PROVISOR_DATABASE_URL": url}
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "scale", "identities": args.identities}
    result |= {"targets": args.targets, "ops": args.ops}
    with ExitStack() as stack:
        targets = Targets(stack, args.targets)
        workspace = scratch_workspace(folder, policy(targets.urls))
        stack.callback(workspace.close)
        result |= load(workspace, args.identities, args.targets)
        first = 0
        for count in args.workers:
            begun = time.perf_counter()
            done = run(workspace, targets, env, count, first, args.ops)
            first += count
            result |= figures(count, done)
            start, half, end = done.samples
            say(
                f"{count} worker(s): {end.verified - start.verified} operations in "
                f"{end.at - start.at:.1f} s (second half {end.at - half.at:.1f} s), CPU s: workers "
                f"{end.workers:.1f}, database {end.server:.1f}, SCIM {done.services_cpu:.1f}; "
                f"{done.requests} SCIM requests",
                begun,
            )
        result["verified"] = check(workspace)["verified"]
    say("done", started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 4],
        help="worker counts, one run each (default 1,2,4)",
    )
    parser.add_argument("--ops", type=int, default=20_000, help="operations a worker count runs")
    args = parser.parse_args()
    if min(args.workers) < 1 or args.ops < 2:
        parser.error("--workers: counts of 1 or more; --ops: 2 or more")
    total = args.identities * args.targets * OPS_PER_ACCOUNT
    if 2 * args.ops * len(args.workers) > total:  # workers stopping finish what they hold
        parser.error(f"{len(args.workers)} runs of --ops {args.ops}: over half the {total} planned")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("scale: stopped by SIGTERM"))
    server = os.environ.get("PROVISOR_BENCH_POSTGRES_URL", SERVER)
    with (
        scratch_database(server, "provisor_bench") as url,
        tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp,
    ):
        result = measure(args, url, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
