"""Classification at scale: a million observed accounts judged against desired state.

Fills a scratch workspace's observed store directly (bulk inserts; SQLite by default,
``PROVISOR_DATABASE_URL`` for another database) with --identities identities and, per identity,
one account in each of --targets targets holding about three entitlements (~3 per account), with
drift planted in 1% of the accounts (an extra entitlement), 0.5% of the identities terminated
with their accounts still enabled, and 1,000 orphan accounts. Then times, in one run:
- provisor: ``classify_accounts`` over every target (desired access for every identity, every
  account classified and its class written) plus planning the fixes of the drifted and
  terminated identities through the journal (``sync_journal`` of those identities);
- bare SQL: one query computing the same entitlement difference (observed grants not in a
  precomputed desired-grants table, and desired grants missing) with no policy evaluation.
Prints one JSON line: {"bench": "reconcile", ..., "accounts_per_s": N, "ratio": provisor time /
bare SQL time, "peak_rss_mb": M}.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from provisor.engine.assess import classify_accounts
from provisor.engine.planner import sync_journal
from provisor.engine.workspace import Workspace
from provisor.sandbox import populations
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models


def fill(workspace: Workspace, identities: int, targets: int, now: datetime) -> int:
    """The population of ``provisor.sandbox.populations``, and beside it the table of desired
    grants the bare SQL query reads."""
    count = populations.fill(workspace, identities, targets, now)

    def desired() -> Iterator[tuple[Any, ...]]:
        for i in range(identities):
            if i % 200 != 0:
                for t in range(targets):
                    yield from ((f"E{i}", f"app{t}", e) for e in populations.granted(i))

    with workspace.sessions() as session, session.begin():
        session.execute(
            text("CREATE TABLE desired_grants (identity TEXT, target TEXT, entitlement TEXT)")
        )
        for batch in populations.batches(desired()):
            session.execute(
                text("INSERT INTO desired_grants VALUES (:i, :t, :e)"),
                [{"i": i, "t": t, "e": e} for i, t, e in batch],
            )
        session.execute(
            text("CREATE INDEX ix_desired ON desired_grants (identity, target, entitlement)")
        )
    return count


BARE = """
SELECT count(*) FROM (
  SELECT oa.identity, oa.target, oe.entitlement FROM observed_accounts oa
  JOIN observed_entitlements oe ON oe.account_id = oa.id
  LEFT JOIN desired_grants d ON d.identity = oa.identity AND d.target = oa.target
       AND d.entitlement = oe.entitlement
  WHERE d.identity IS NULL
  UNION ALL
  SELECT d.identity, d.target, d.entitlement FROM desired_grants d
  JOIN observed_accounts oa ON oa.identity = d.identity AND oa.target = d.target
  LEFT JOIN observed_entitlements oe ON oe.account_id = oa.id AND oe.entitlement = d.entitlement
  WHERE oe.account_id IS NULL
)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100000)
    parser.add_argument("--targets", type=int, default=10)
    args = parser.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp:
        workspace = scratch_workspace(Path(tmp), populations.policy(args.targets))
        started = time.perf_counter()
        grants = fill(workspace, args.identities, args.targets, now)
        fill_s = time.perf_counter() - started
        targets = sorted(workspace.compiled.targets)
        with workspace.sessions() as session, session.begin():
            workspace.note_policy_version(session)  # so planning below plans only the flagged
        started = time.perf_counter()
        with workspace.sessions() as session, session.begin():
            findings = classify_accounts(workspace, session, targets, now)
        classify_s = time.perf_counter() - started
        flagged = sorted(
            {
                f.row.identity
                for f in findings
                if f.row.identity and f.verdict.classification in ("drift", "terminated-active")
            }
        )
        started = time.perf_counter()
        with workspace.sessions() as session, session.begin():
            for i in range(0, len(flagged), 1000):
                session.execute(
                    update(models.Identity)
                    .where(models.Identity.external_id.in_(flagged[i : i + 1000]))
                    .values(needs_plan=True)
                )
            planned = sync_journal(workspace, session, now=now, changed_only=True)
        plan_s = time.perf_counter() - started
        started = time.perf_counter()
        with workspace.engine.connect() as connection:
            difference = connection.execute(text(BARE)).scalar_one()
        bare_s = time.perf_counter() - started
        workspace.close()
    accounts = len(findings)
    total = classify_s + plan_s
    classes: dict[str, int] = {}
    for f in findings:
        classes[f.verdict.classification] = classes.get(f.verdict.classification, 0) + 1
    print(
        json.dumps(
            {
                "bench": "reconcile",
                "identities": args.identities,
                "targets": args.targets,
                "accounts": accounts,
                "grants": grants,
                "fill_s": round(fill_s, 1),
                "classify_s": round(classify_s, 2),
                "plan_s": round(plan_s, 2),
                "planned": planned.added,
                "classes": classes,
                "bare_sql_s": round(bare_s, 2),
                "bare_sql_rows": difference,
                "accounts_per_s": round(accounts / total),
                "ratio": round(total / bare_s, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
