"""SCIM reconciliation end to end: accounts read and classified per second.

Starts a local SCIM 2.0 application (scim2-server), creates --accounts users in it by raw HTTP
(each in one of two groups; a few with drift planted: an extra group, a disabled account, one
made by hand), hires the matching identities, then times one full ``provisor`` reconciliation
of the target: listing every account and group, correlating by email, writing the observed
store, classifying every account and planning the fixes. The reconciliation probes the
target's membership read paths (``read_paths``); their cost alone is timed afterwards on a fresh
connector (``probe_s``), and so are single-account reads (read-backs) through the trusted
member filter (``read_per_s``) and through the group listing they fall back to when the filter
is not trusted (``read_fallback_per_s``).
Prints one JSON line: {"bench": "reconcile_scim", ..., "accounts_per_s": N, "peak_rss_mb": M}.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2

from provisor.connectors.base import ReadPath
from provisor.connectors.scim import ScimConnector  # imported before the clock starts
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.engine.reconcile import reconcile_target
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import scratch_workspace

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
POLICY = """\
targets:
  - name: app
    class: scim
    owner: bench
    connection: {{url: "{url}", timeout: 120}}
    entitlements: [{{name: staff}}, {{name: admins}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
"""


def fill(url: str, accounts: int) -> None:
    """Users u0..u{n-1} (email p{i}@example.com), everyone in staff, every 100th in admins."""
    with httpx2.Client(timeout=60) as client:
        ids: list[str] = [""] * accounts

        def create(i: int) -> None:
            body = {
                "schemas": [USER_SCHEMA],
                "userName": f"p{i}@example.com",
                "externalId": f"E{i}",
                "displayName": f"Person {i}",
                "active": i % 250 != 0,  # drift: disabled
                "emails": [{"value": f"p{i}@example.com", "primary": True}],
            }
            response = client.post(f"{url}/Users", json=body)
            response.raise_for_status()
            ids[i] = str(response.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(accounts)))
        for name, members in (
            ("staff", ids),
            ("admins", ids[::100]),  # drift: an extra group
        ):
            body = {
                "schemas": [GROUP_SCHEMA],
                "displayName": name,
                "members": [{"value": m} for m in members],
            }
            client.post(f"{url}/Groups", json=body).raise_for_status()
        for n in range(10):  # orphans: made by hand
            body = {"schemas": [USER_SCHEMA], "userName": f"hand{n}@example.com"}
            client.post(f"{url}/Users", json=body).raise_for_status()


def probes_and_reads(url: str, count: int) -> tuple[float, dict[str, float]]:
    """Seconds the read-path probes take; single-account reads per second through the member
    filter, and through the group listing when the filter is not trusted."""
    connector = ScimConnector("app", {"url": url, "timeout": 120})
    try:
        started = time.perf_counter()
        paths = {p.path: p.status for p in connector.read_paths()}
        probe_s = time.perf_counter() - started
        if paths.get("member-filter") != "trusted":
            raise SystemExit(f"the member filter should be trusted here: {paths}")
        accounts = [
            r.account for r, _ in zip(connector.list_accounts(), range(count), strict=False)
        ]
        rates: dict[str, float] = {}
        for label in ("read_per_s", "read_fallback_per_s"):
            if label == "read_fallback_per_s":  # as if the filter had failed its probe
                connector._paths["member-filter"] = ReadPath("member-filter", "untrusted", "bench")
            started = time.perf_counter()
            for account in accounts:
                connector.read(account)
            rates[label] = round(len(accounts) / (time.perf_counter() - started), 1)
        return probe_s, rates
    finally:
        connector.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20000)
    parser.add_argument("--reads", type=int, default=100, help="single-account reads timed")
    args = parser.parse_args()
    now = datetime.now(UTC)
    with ScimApp(tenants=True) as app, tempfile.TemporaryDirectory(prefix="provisor-b-") as tmp:
        url = f"{app.root}/b{uuid.uuid4().hex[:8]}/v2"
        fill(url, args.accounts)
        workspace = scratch_workspace(Path(tmp), POLICY.format(url=url))
        events = [
            LifecycleEvent(
                f"E{i}",
                EventKind.HIRE,
                now - timedelta(days=1),
                now,
                {
                    "name": f"Person {i}",
                    "email": f"p{i}@example.com",
                    "employment_type": "employee",
                },
            )
            for i in range(args.accounts)
        ]
        with workspace.sessions() as session, session.begin():
            identities.record_events(session, workspace.config, events, origin="bench", now=now)
        started = time.perf_counter()
        report = reconcile_target(workspace, "app", now=now)
        elapsed = time.perf_counter() - started
        workspace.close()
        probe_s, reads = probes_and_reads(url, args.reads)
    total = report.read
    print(
        json.dumps(
            {
                "bench": "reconcile_scim",
                "accounts": total,
                "seconds": round(elapsed, 2),
                "accounts_per_s": round(total / elapsed),
                "classes": report.classes,
                "planned": report.planned,
                "probe_s": round(probe_s, 2),
                **reads,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
