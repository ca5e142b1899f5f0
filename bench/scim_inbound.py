"""SCIM user creates and PATCHes through the inbound SCIM server at /scim/v2.

Serves a scratch workspace with ``provisor serve`` (its own process, runner active), then from
--threads keep-alive clients: --users POST /Users (each a joiner: a new identity through the
feed import's checks), then one PATCH per user as Microsoft Entra ID sends it (capitalised
``Replace`` of the enterprise department and the title: a mover). Every request is
authenticated, rate-checked, validated, stored and turned into lifecycle events before it is
answered.
Prints one JSON line: {"bench": "scim_inbound", "requests_per_s" (creates and PATCHes
together), "creates_per_s", "patches_per_s", "p50_ms", "p95_ms", "peak_rss_mb"}. Target: at
least 250 requests/s on 2 cores (ten times the interoperability profile's 25/s floor).
"""

from __future__ import annotations

import argparse
import json

import httpx2

from provisor.sandbox.service import load, peak_rss_mb, percentile, served

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def user(i: int) -> dict[str, object]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "userName": f"person{i}@example.com",
        "externalId": f"X{i}",
        "active": True,
        "displayName": f"Person {i}",
        "name": {"givenName": "Person", "familyName": str(i)},
        "emails": [{"value": f"person{i}@example.com", "type": "work", "primary": True}],
        ENTERPRISE: {"employeeNumber": f"E{i}", "department": "Sales", "costCenter": "CC1"},
    }


def patch(i: int) -> dict[str, object]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [
            {"op": "Replace", "path": f"{ENTERPRISE}:department", "value": f"Dept {i % 9}"},
            {"op": "Replace", "path": "title", "value": "Account Executive"},
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    config = "service: {cycle_seconds: 1, rate_per_token: 100000, max_in_flight: 256}\n"
    with served(config) as (url, token, pid):
        creates = [("POST", "/scim/v2/Users", user(i)) for i in range(args.users)]
        created, create_ms = load(url, token, creates, args.threads, {201})
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            ids: dict[str, str] = {}
            start = 1
            while True:
                page = client.get(
                    "/scim/v2/Users", params={"startIndex": start, "count": 100}
                ).json()
                for r in page.get("Resources", []):
                    ids[r["externalId"]] = r["id"]
                start += 100
                if start > page["totalResults"]:
                    break
        patches = [("PATCH", f"/scim/v2/Users/{ids[f'X{i}']}", patch(i)) for i in range(args.users)]
        patched, patch_ms = load(url, token, patches, args.threads, {200})
        rss = peak_rss_mb(pid)
    latencies = create_ms + patch_ms
    print(
        json.dumps(
            {
                "bench": "scim_inbound",
                "users": args.users,
                "threads": args.threads,
                "requests_per_s": round(2 * args.users / (created + patched), 1),
                "creates_per_s": round(args.users / created, 1),
                "patches_per_s": round(args.users / patched, 1),
                "p50_ms": percentile(latencies, 0.50),
                "p95_ms": percentile(latencies, 0.95),
                "peak_rss_mb": rss,
            }
        )
    )


if __name__ == "__main__":
    main()
