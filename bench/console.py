"""Console pages at scale: the dashboard, an identity's page and the debt page over a store of
--identities identities and a million accounts.

Fills a scratch workspace straight into its store (``provisor.sandbox.populations``: 100,000
identities by default, one account each in --targets targets, 1,000 orphans, drift in one
account in a hundred and one identity in 200 a leaver whose accounts are still enabled), serves
it with ``provisor serve`` in its own process, waits until the console's debt ledger has been
computed over the whole store, then requests --requests pages of each kind from --threads
keep-alive clients signed in as an admin (the widest view): the dashboard, a random identity's
page (its attributes, why it holds what it should, its lifecycle, its access changes and its
debt computed live), and a random page of the debt list, alternately unfiltered and filtered by
target and overdue.
Prints one JSON line: {"bench": "console", "dashboard_p95_ms", "identity_p95_ms",
"debt_p95_ms", "p95_ms" (the worst of the three), "ledger_s" (one computation of the whole
ledger, done in the background), "peak_rss_mb", ...}. Target: p95 ≤ 300 ms for every page.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx2

from provisor.sandbox import populations
from provisor.sandbox.service import load, peak_rss_mb, percentile, served

STATUS = re.compile(
    r'id="ledger-status" data-current="(\w+)" data-took="([\d.e-]+)" data-items="(\d+)"'
)


def ledger_ready(url: str, token: str, timeout: float = 900) -> tuple[float, int]:
    """Wait until the dashboard shows a current ledger; (seconds it took to compute, items)."""
    deadline = time.monotonic() + timeout
    with httpx2.Client(base_url=url, cookies={"provisor_session": token}, timeout=120) as client:
        while time.monotonic() < deadline:
            found = STATUS.search(client.get("/console/").text)
            if found and found.group(1) == "yes":
                return float(found.group(2)), int(found.group(3))
            time.sleep(1)
    raise RuntimeError("the console's debt ledger was not computed in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="of each page")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(7)
    config = "service: {cycle_seconds: 3600}\n"
    filled: dict[str, Any] = {}

    def prepare(workspace: Any) -> None:
        started = time.perf_counter()
        populations.fill(workspace, args.identities, args.targets, datetime.now(UTC))
        filled["fill_s"] = round(time.perf_counter() - started, 1)

    kinds = {
        "dashboard": lambda: "/console/",
        "identity": lambda: f"/console/identities/E{rng.randrange(args.identities)}",
        "debt": lambda: rng.choice(
            [
                f"/console/debt?page={rng.randrange(1, 200)}",
                f"/console/debt?target=app{rng.randrange(args.targets)}&show=overdue",
            ]
        ),
    }
    figures: dict[str, Any] = {}
    policy = populations.policy(args.targets)
    with served(config, prepare, policy=policy) as (url, token, pid):
        ledger_s, items = ledger_ready(url, token)
        time.sleep(2)
        ledger_ready(url, token)  # still current: nothing moved the audit chain meanwhile
        for kind, path in kinds.items():
            requests = [("GET", path(), None) for _ in range(args.requests)]
            _, latencies = load(url, token, requests, args.threads, {200}, console=True)
            figures[f"{kind}_p50_ms"] = percentile(latencies, 0.50)
            figures[f"{kind}_p95_ms"] = percentile(latencies, 0.95)
        rss = peak_rss_mb(pid)
    print(
        json.dumps(
            {
                "bench": "console",
                "identities": args.identities,
                "accounts": args.identities * args.targets + 1000,
                "debt_items": items,
                "threads": args.threads,
                "requests_each": args.requests,
                **filled,
                "ledger_s": round(ledger_s, 1),
                **figures,
                "p95_ms": max(v for k, v in figures.items() if k.endswith("_p95_ms")),
                "peak_rss_mb": rss,
            }
        )
    )


if __name__ == "__main__":
    main()
