"""LDAP provisioning and read-back throughput of the LDAP connector, against a local slapd.

Starts a throwaway OpenLDAP server (``provisor.sandbox.slapd``), creates --groups groups, then
provisions --users users through ``LdapConnector`` from a pool of --workers threads sharing
one connector, as the runner does: per user a create (name check, add, id read back) and
--memberships group memberships (each: find the entry by entryUUID, modify the group). Then
reads every account back with ``list_accounts`` (RFC 2696 pages, groups read once) and checks
that each account and membership is there.
Prints one JSON line: {"bench": "ldap_sync", "users", "groups", "write_per_s" (users
provisioned per second, memberships included), "write_ops_per_s", "read_per_s" (accounts
listed per second), "peak_rss_mb"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor

from provisor.connectors.base import AccountSpec
from provisor.connectors.ldap import LdapConnector
from provisor.sandbox.slapd import Slapd


def groups_of(i: int, groups: list[str], memberships: int) -> list[str]:
    """A spread of distinct groups for user ``i``."""
    return sorted({groups[(i * (k + 1) + k * 7) % len(groups)] for k in range(memberships)})


def spec(i: int) -> AccountSpec:
    return AccountSpec(
        f"E{i:06d}",
        f"user{i:06d}",
        {
            "name": f"Person {i}",
            "given_name": "Person",
            "family_name": str(i),
            "email": f"user{i:06d}@example.org",
            "department": f"Department {i % 20}",
            "title": "Engineer",
            "employment_type": "employee",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--memberships", type=int, default=2, help="groups per user")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args()
    names = [f"group{g:03d}" for g in range(args.groups)]
    with Slapd() as server:
        server.create_groups(names)
        connector = LdapConnector(
            "directory",
            {
                "url": server.url,
                "bind_dn": server.bind_dn,
                "password": server.password,
                "base_dn": server.people_dn,
                "groups_dn": server.groups_dn,
                "page_size": args.page_size,
                "timeout": 30,
            },
        )

        def provision(i: int) -> int:
            account = connector.create(spec(i))
            wanted = groups_of(i, names, args.memberships)
            for group in wanted:
                connector.add_entitlement(account, group)
            return 1 + len(wanted)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            writes = sum(pool.map(provision, range(args.users), chunksize=50))
        write_s = time.perf_counter() - started

        started = time.perf_counter()
        records = list(connector.list_accounts())
        read_s = time.perf_counter() - started
        connector.close()

    assert len(records) == args.users, f"listed {len(records)} of {args.users} accounts"
    for record in records:
        i = int(record.user_name.removeprefix("user"))
        assert record.entitlements == set(groups_of(i, names, args.memberships)), record
    result = {
        "bench": "ldap_sync",
        "users": args.users,
        "groups": args.groups,
        "memberships": writes - args.users,
        "workers": args.workers,
        "write_per_s": round(args.users / write_s, 1),
        "write_ops_per_s": round(writes / write_s, 1),
        "read_per_s": round(len(records) / read_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
