"""Lifecycle events posted through the REST API, with the background runner active.

Serves a scratch workspace with ``provisor serve`` (its own process; the runner cycles every
second), hires --people employees, then posts --events ``move`` events (each changes a
department, so none is refused as having no effect) to POST /api/v1/events from --threads
keep-alive clients. Every event is authenticated, validated, recorded with its audit entry and
committed before it is answered.
Prints one JSON line: {"bench": "api_events", "events_per_s", "p50_ms", "p95_ms",
"peak_rss_mb", ...}. Target: at least 500 events/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from provisor.sandbox.service import load, peak_rss_mb, percentile, served
from provisor.sandbox.workspaces import hire_employees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    config = "service: {cycle_seconds: 1, rate_per_token: 100000, max_in_flight: 256}\n"

    def prepare(workspace: Any) -> None:
        hire_employees(workspace, args.people, datetime.now(UTC))

    requests = [
        (
            "POST",
            "/api/v1/events",
            {"identity": f"E{i % args.people}", "kind": "move", "changes": {"department": f"D{i}"}},
        )
        for i in range(args.events)
    ]
    with served(config, prepare) as (url, token, pid):
        elapsed, latencies = load(url, token, requests, args.threads, {201})
        rss = peak_rss_mb(pid)
    print(
        json.dumps(
            {
                "bench": "api_events",
                "events": args.events,
                "threads": args.threads,
                "events_per_s": round(args.events / elapsed, 1),
                "p50_ms": percentile(latencies, 0.50),
                "p95_ms": percentile(latencies, 0.95),
                "peak_rss_mb": rss,
            }
        )
    )


if __name__ == "__main__":
    main()
