"""HR import throughput: a generated snapshot imported into a fresh workspace.

Writes a --rows snapshot CSV (people over departments and locations, managers, contractors),
creates a workspace with the default configuration — on SQLite, or with ``--db postgresql`` in
a scratch database on the PostgreSQL server at PROVISOR_BENCH_POSTGRES_URL (default: the local
one, as ``postgres``) — and times ``provisor import`` of it through the engine service (parse,
validate, diff, record events, audit). Then imports the same file again, which must change
nothing. ``peak_rss_mb`` is that process's peak: the file's writing is done in another
process first, so it is the import's own; ``peak_total_rss_mb`` adds the processes that read
parts of a large file beside it, at the most they held together. ``--zones`` imports the
same size again with people in twelve time zones (their sites mapped to zones: every start
date placed in its zone) and reports both runs and their ratio.
Each import runs in a process of its own. Prints one JSON line: {"bench": "import_hr", ...,
"rows_per_s": N, "peak_rss_mb": M}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from provisor.config.workspace import write_starter
from provisor.engine.imports import import_feed
from provisor.engine.workspace import Workspace
from provisor.sandbox.cluster import scratch_database
from provisor.store import db

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FIELDS = [
    "employee_id",
    "name",
    "email",
    "department",
    "title",
    "location",
    "cost_centre",
    "manager_id",
    "employment_type",
    "start_date",
    "status",
]


def write_snapshot(path: Path, rows: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for i in range(rows):
            number = 100_000 + i
            manager = "" if i < 100 else f"E{100_000 + rng.randrange(100)}"
            writer.writerow(
                [
                    f"E{number}",
                    f"Person {number}",
                    f"person.{number}@example.com",
                    f"dept-{rng.randrange(40)}",
                    f"title-{rng.randrange(60)}",
                    f"site-{rng.randrange(12)}",
                    f"CC-{rng.randrange(300)}",
                    manager,
                    "contractor" if rng.random() < 0.15 else "employee",
                    f"20{rng.randrange(10, 26)}-0{rng.randrange(1, 10)}-1{rng.randrange(10)}",
                    "leave" if rng.random() < 0.01 else "active",
                ]
            )


# --zones: the workspace in one zone, people in the zones of their sites
ZONES = """
time:
  zone: America/Los_Angeles
  locations:
""" + "".join(
    f"    site-{i}: {zone}\n"
    for i, zone in enumerate(
        [
            "America/Los_Angeles",
            "America/New_York",
            "Europe/London",
            "Europe/Berlin",
            "Asia/Kolkata",
            "Asia/Tokyo",
            "Australia/Sydney",
            "Pacific/Auckland",
            "America/Sao_Paulo",
            "Africa/Johannesburg",
            "Asia/Singapore",
            "Europe/Paris",
        ]
    )
)


def imported(args: argparse.Namespace, zones: bool, folder: Path) -> dict[str, float]:
    """One import of the snapshot in ``folder`` into a fresh workspace there, and the same
    file again."""
    with ExitStack() as stack:
        write_starter(folder)
        if zones:
            config = folder / "provisor.yaml"
            config.write_text(config.read_text(encoding="utf-8") + ZONES, encoding="utf-8")
        feed = folder / "people.csv"
        if args.db == "postgresql":
            server = os.environ.get("PROVISOR_BENCH_POSTGRES_URL", POSTGRES)
            url = stack.enter_context(scratch_database(server, "provisor_bench"))
            os.environ["PROVISOR_DATABASE_URL"] = url
        engine = db.make_engine(db.database_url(folder))
        db.upgrade(engine)
        engine.dispose()
        workspace = Workspace.open(folder)
        now = datetime.now(UTC)
        started = time.perf_counter()
        report = import_feed(workspace, feed, now=now)
        elapsed = time.perf_counter() - started
        again_started = time.perf_counter()
        again = import_feed(workspace, feed, now=now)
        again_elapsed = time.perf_counter() - again_started
        workspace.close()
    return {
        "accepted": report.rows_accepted,
        "rejected": len(report.errors),
        "events": sum(report.counts.values()),
        "seconds": round(elapsed, 3),
        "rows_per_s": round(args.rows / elapsed),
        "reimport_seconds": round(again_elapsed, 3),
        "reimport_events": sum(again.counts.values()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def in_own_process(args: argparse.Namespace, zones: bool) -> dict[str, float]:
    """``imported`` in a process of its own: each run starts as a fresh ``provisor import``
    would (a second import in one process runs several percent slower), and its peak memory
    is its own. The snapshot is written first by another process. ``peak_total_rss_mb``: the
    most the import's process and the readers of its file's parts held at once (sampled)."""
    with tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp:
        folder = Path(tmp)
        with ProcessPoolExecutor(1) as writer:
            writer.submit(write_snapshot, folder / "people.csv", args.rows).result()
        context = get_context("spawn")
        answers = context.SimpleQueue()
        child = context.Process(target=_answer, args=(answers, args, zones, folder))
        child.start()
        peak = 0.0
        while child.is_alive() and answers.empty():
            peak = max(peak, _tree_rss_mb(child.pid or 0))
            time.sleep(0.05)
        if answers.empty():
            raise SystemExit(f"the import's process ended without an answer ({child.exitcode})")
        result: dict[str, float] = answers.get()
        child.join()
    return {**result, "peak_total_rss_mb": round(peak, 1)}


def _answer(answers: Any, args: argparse.Namespace, zones: bool, folder: Path) -> None:
    answers.put(imported(args, zones, folder))


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and every process under it, in MB (0 once it is gone). A
    child still running its parent's program is left out: between its fork and the start of
    its own program it shows the parent's pages as its own, and counting them twice would
    report memory nobody holds."""
    total = 0.0
    waiting: list[tuple[int, bytes | None]] = [(pid, None)]
    while waiting:
        current, parent_command = waiting.pop()
        try:
            command = Path(f"/proc/{current}/cmdline").read_bytes()
            status = Path(f"/proc/{current}/status").read_text()
            for children in Path(f"/proc/{current}/task").glob("*/children"):
                waiting += [(int(c), command) for c in children.read_text().split()]
        except OSError:
            continue
        if command == parent_command:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--zones",
        action="store_true",
        help="also import with people in twelve time zones (by location) and report both, "
        "with ratio = rows/s with zones / without",
    )
    args = parser.parse_args()
    result: dict[str, object] = {"bench": "import_hr", "db": args.db, "rows": args.rows}
    plain = in_own_process(args, zones=False)
    result.update(plain)
    if args.zones:
        zoned = in_own_process(args, zones=True)
        result.update({f"zones_{k}": v for k, v in zoned.items()})
        result["ratio"] = round(zoned["rows_per_s"] / plain["rows_per_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
