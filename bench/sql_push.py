"""PostgreSQL role provisioning and read-back throughput of the ``postgres-roles`` connector.

Against the server at ``PROVISOR_BENCH_POSTGRES_URL`` (default: 127.0.0.1:5432 as
``postgres``): creates --groups group roles, then provisions --roles login roles through the
connector from a pool of --workers threads sharing one connector, as the runner does: per role a
create (``CREATE ROLE`` and ``COMMENT ON ROLE`` in one transaction) and --memberships grants of
group roles. Then reads every role back with ``list_accounts`` (keyset pages of 500, each with
its memberships and session counts) and checks each role and membership. Every name carries a
random prefix; all of them are dropped at the end, whatever happened.
Prints one JSON line: {"bench": "sql_push", "roles", "groups", "write_per_s" (roles provisioned
per second, memberships included), "ops_per_s" (connector writes per second: creates and
grants), "read_per_s" (roles listed per second), "peak_rss_mb"}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, text

from provisor.connectors.base import AccountSpec
from provisor.connectors.sql.roles import PostgresRoles

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def groups_of(i: int, groups: list[str], memberships: int) -> list[str]:
    """A spread of distinct group roles for role ``i``."""
    return sorted({groups[(i * (k + 1) + k * 7) % len(groups)] for k in range(memberships)})


def spec(i: int) -> AccountSpec:
    return AccountSpec(f"E{i:06d}", f"user{i:06d}", {"name": f"Person {i}"})


def drop_all(url: str, prefix: str) -> None:
    """Drop every role named with ``prefix``, a few hundred per statement."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        roles = connection.execute(
            text("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, :p)"),
            {"p": prefix},
        ).scalars()
        names = sorted(roles, key=lambda n: not n.startswith(f"{prefix}user"))
        quoted = ['"' + name.replace('"', '""') + '"' for name in names]
        for start in range(0, len(quoted), 500):
            chunk = ", ".join(quoted[start : start + 500])
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {chunk}")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--roles", type=int, default=10000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--memberships", type=int, default=2, help="group roles per role")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    url = os.environ.get("PROVISOR_BENCH_POSTGRES_URL", DEFAULT_URL)
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    names = [f"{prefix}group{g:03d}" for g in range(args.groups)]
    connector = PostgresRoles(
        "bench",
        {
            "mode": "postgres-roles",
            "url": url,
            "role_prefix": prefix,
            "pool_size": args.workers,
        },
    )
    try:
        with connector.db.begin("create group roles") as connection:
            for name in names:
                connection.execute(connector.db.sql(f"CREATE ROLE {connector.db.ident(name)}"))

        def provision(i: int) -> int:
            account = connector.create(spec(i))
            wanted = groups_of(i, names, args.memberships)
            for group in wanted:
                connector.add_entitlement(account, group)
            return 1 + len(wanted)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            writes = sum(pool.map(provision, range(args.roles), chunksize=50))
        write_s = time.perf_counter() - started

        started = time.perf_counter()
        records = list(connector.list_accounts())
        read_s = time.perf_counter() - started
    finally:
        connector.close()
        drop_all(url, prefix)

    assert len(records) == args.roles, f"listed {len(records)} of {args.roles} roles"
    for record in records:
        i = int(record.user_name.removeprefix("user"))
        assert record.external_id == f"E{i:06d}", record
        assert record.entitlements == set(groups_of(i, names, args.memberships)), record
    result = {
        "bench": "sql_push",
        "roles": args.roles,
        "groups": args.groups,
        "memberships": writes - args.roles,
        "workers": args.workers,
        "write_per_s": round(args.roles / write_s, 1),
        "ops_per_s": round(writes / write_s, 1),
        "read_per_s": round(len(records) / read_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
