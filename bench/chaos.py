"""Chaos drill at scale: three ``provisor worker``s on PostgreSQL, one killed with SIGKILL at a
seeded random moment of every wave and replaced, against a real SCIM server (scim2-server) and
a real users table (on the same PostgreSQL server).

Each wave hires --people joiners, four operations each (a SCIM account, a table account with
two roles): 2,000 operations a wave, ten waves by default. Afterwards it counts what an auditor
would ask about: operations lost (not verified), duplicate accounts (on the SCIM server and in
the table), operations verified more than once in the audit log, and whether the audit chain
verifies. PostgreSQL: PROVISOR_BENCH_POSTGRES_URL (default the local server's postgres
database).
Prints one JSON line: {"bench": "chaos", "lost": 0, "duplicate_accounts": 0,
"verified_twice": 0, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx2
from sqlalchemy import create_engine, text

from provisor.evidence import audit
from provisor.sandbox.cluster import (
    DRILL_POLICY,
    OPS_PER_PERSON,
    chaos,
    scratch_database,
    verified_keys,
)
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.sqlapp import app_schema, users_table_connection
from provisor.sandbox.workspaces import scratch_workspace

SETTINGS = "runner: {lease_seconds: 5, sweep_seconds: 1}\nservice: {cycle_seconds: 5}\n"


def _duplicates(names: list[str]) -> int:
    return sum(count - 1 for count in Counter(names).values() if count > 1)


def scim_user_names(url: str) -> list[str]:
    """Every user name on the SCIM server, page after page (a server caps its pages)."""
    names: list[str] = []
    while True:
        params = {"startIndex": len(names) + 1, "count": 1000}
        page = httpx2.get(f"{url}/Users", params=params, timeout=60).json()
        found = [u["userName"] for u in page.get("Resources", [])]
        names += found
        if not found or len(names) >= int(page.get("totalResults", 0)):
            return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--people", type=int, default=500, help="joiners a wave (x4 operations)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    server = os.environ.get(
        "PROVISOR_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    people = args.waves * args.people
    with (
        ScimApp(tenants=True) as scim,
        scratch_database(server, "provisor_bench") as journal,
        scratch_database(server, "provisor_bench_app") as table,
        tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp,
    ):
        app = create_engine(table)
        app_schema(app)
        scim_url = f"{scim.root}/c{uuid.uuid4().hex[:8]}/v2"
        folder = Path(tmp)
        (folder / "provisor.yaml").write_text(SETTINGS)
        os.environ["PROVISOR_DATABASE_URL"] = journal
        workspace = scratch_workspace(
            folder, DRILL_POLICY.format(scim=scim_url, sql=users_table_connection(table))
        )
        started = time.perf_counter()
        drill = chaos(
            workspace, dict(os.environ), waves=args.waves, people=args.people, seed=args.seed
        )
        elapsed = time.perf_counter() - started
        names = scim_user_names(scim_url)
        with app.connect() as connection:
            logins = list(connection.execute(text("SELECT login FROM accounts")).scalars())
        app.dispose()
        verified = verified_keys(workspace)
        with workspace.sessions() as session:
            chain_ok = audit.verify(session).ok
        workspace.close()
    operations = OPS_PER_PERSON * people
    print(
        json.dumps(
            {
                "bench": "chaos",
                "waves": args.waves,
                "operations_per_wave": OPS_PER_PERSON * args.people,
                "killed": drill.killed,
                "lost": operations - drill.statuses["verified"],
                "duplicate_accounts": _duplicates(names) + _duplicates(logins),
                "missing_accounts": 2 * people - len(set(names)) - len(set(logins)),
                "verified_twice": sum(1 for count in verified.values() if count > 1),
                "audit_chain_ok": chain_ok,
                "wave_p50_s": round(statistics.median(drill.seconds), 2),
                "wave_max_s": round(max(drill.seconds), 2),
                "verified_per_s": round(drill.statuses["verified"] / elapsed, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
