"""Leaver latency: from a termination event to every target verified revoked.

Provisions --leavers people into a local SCIM 2.0 application (scim2-server), then terminates
them one at a time; each time it records the event, plans that identity and runs the journal
until every removal is verified by read-back (disable and group removals; the session layer is
reported unverifiable on SCIM and does not wait), then signs the audit chain's head as every
command and cycle does (a checkpoint, also appended to the file outside the database). Leavers
alternate between checkpoints on and off in the same run, so ``ratio`` (p95 with checkpoints
over p95 without) is what the signed checkpoints cost. p50_ms/p95_ms are with checkpoints.
Prints one JSON line: {"bench": "leaver_latency", "p50_ms": ..., "p95_ms": ..., "ratio": ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.engine.planner import sync_journal
from provisor.engine.runner import Runner
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models

POLICY = """\
targets:
  - name: app
    class: scim
    owner: bench
    leaver_action: disable
    connection: {{url: "{url}", timeout: 30}}
    entitlements: [{{name: staff}}, {{name: engineering}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff, engineering]}}]
"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, int(len(ordered) * share) - 1)], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leavers", type=int, default=100)
    args = parser.parse_args()
    latencies: dict[bool, list[float]] = {True: [], False: []}
    with ScimApp() as app, tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp:
        ScimApp.create_groups(app.url, "staff", "engineering")
        workspace = scratch_workspace(Path(tmp), POLICY.format(url=app.url))
        hire_employees(workspace, args.leavers, datetime.now(UTC))
        workspace.checkpoint()
        runner = Runner(workspace)
        runner.apply(now=lambda: datetime.now(UTC))
        for i in range(args.leavers):
            who = f"E{i}"
            began = time.perf_counter()
            now = datetime.now(UTC)
            with workspace.sessions() as session, session.begin():
                identities.record_events(
                    session,
                    workspace.config,
                    [LifecycleEvent(who, EventKind.TERMINATE, now, now)],
                    origin="bench",
                    now=now,
                )
            with workspace.sessions() as session, session.begin():
                sync_journal(workspace, session, now=now, identity=who)
            runner.apply(now=lambda: datetime.now(UTC), identity=who)
            signing = i % 2 == 1
            if signing:
                assert workspace.checkpoint() is not None
            latencies[signing].append((time.perf_counter() - began) * 1000)
            with workspace.sessions() as session:
                open_ops = session.execute(
                    select(func.count())
                    .select_from(models.Operation)
                    .where(
                        models.Operation.identity == who,
                        models.Operation.status.in_(["pending", "failed"]),
                    )
                ).scalar_one()
            assert open_ops == 0, f"{who}: {open_ops} removals not verified"
        runner.close()
        workspace.close()
    signed, unsigned = latencies[True], latencies[False]
    print(
        json.dumps(
            {
                "bench": "leaver_latency",
                "leavers": args.leavers,
                "p50_ms": round(statistics.median(signed), 1),
                "p95_ms": percentile(signed, 0.95),
                "max_ms": round(max(signed), 1),
                "unsigned_p50_ms": round(statistics.median(unsigned), 1),
                "unsigned_p95_ms": percentile(unsigned, 0.95),
                "ratio": round(percentile(signed, 0.95) / percentile(unsigned, 0.95), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
