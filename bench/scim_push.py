"""SCIM provisioning: what the engine costs, measured against a target that is never the
bottleneck, and how much of a target's rate limit it keeps in use.

(a) Cost. A minimal in-memory SCIM service (``provisor.sandbox.scim_memory``, in a child
process: its CPU is not this process's) takes joiners (create + one group each): ``--ops``
operations planned into the journal and run by ``provisor``'s runner, every one verified by
read-back; then a raw httpx2 loop sends the same requests the engine sends per account — the
correlation lookup, POST /Users, GET /Users/{id}, PATCH /Groups/{id}, GET /Users/{id} — with
the same concurrency, and no journal, no database, no read-back judgement. Reported: each
side's operations per second and CPU milliseconds per operation (this process's CPU time),
and ``ratio``, engine throughput over raw. Run with no latency (CPU-bound: the engine's own
cost shows) and with ``--latency`` milliseconds per request (as a real target answers).
(b) Rate limit. The service answers each request after 100 ms and allows 50 requests/s (a
token bucket that answers 429 beyond it); the target's ``rate_limit`` is 50. Reported: the
share of the limit in use while the engine ran (requests per second over 50) and the 429s
(the target is 0).
(c) Realism. The same joiners against ``scim2-server`` (a validating server; it is the
bottleneck there, so this says only that the engine works against it).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from provisor.engine.runner import Runner
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.scim_memory import MemoryScim
from provisor.sandbox.workspaces import hire_employees, scratch_workspace

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ATTRIBUTES = "userName,externalId,displayName,emails,active,title"
POLICY = """\
targets:
  - name: app
    class: scim
    owner: bench
    concurrency: {concurrency}
    {rate}
    connection: {{url: "{url}", timeout: 30}}
    entitlements: [{{name: staff}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
"""


def engine_run(
    url: str, accounts: int, concurrency: int, rate: float | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to run ``accounts`` joiners."""
    with tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp:
        limit = f"rate_limit: {rate}" if rate else ""
        policy = POLICY.format(url=url, concurrency=concurrency, rate=limit)
        workspace = scratch_workspace(Path(tmp), policy)
        hire_employees(workspace, accounts, datetime.now(UTC))
        runner = Runner(workspace)
        cpu, started = time.process_time(), time.perf_counter()
        report = runner.apply(now=lambda: datetime.now(UTC))
        elapsed, spent = time.perf_counter() - started, time.process_time() - cpu
        runner.close()
        workspace.close()
    assert report.verified == accounts * 2, report
    return elapsed, spent


def raw_run(url: str, group: str, accounts: int, concurrency: int) -> tuple[float, float]:
    """The same requests per account as the engine sends, from a thread pool."""
    client = httpx2.Client(
        base_url=url, timeout=30, limits=httpx2.Limits(max_keepalive_connections=concurrency)
    )

    def one(i: int) -> None:
        user_name = f"p{i}@example.com"
        lookup = f'externalId eq "E{i}" or userName eq "{user_name}"'
        found = client.get(
            "/Users",
            params={"startIndex": 1, "count": 1000, "filter": lookup, "attributes": ATTRIBUTES},
        )
        assert found.json()["totalResults"] == 0
        created = client.post(
            "/Users",
            json={"schemas": [USER_SCHEMA], "userName": user_name, "externalId": f"E{i}"},
        )
        user_id = created.json()["id"]
        assert client.get(f"/Users/{user_id}").json()["userName"] == user_name
        client.patch(
            f"/Groups/{group}",
            json={
                "schemas": [PATCH_SCHEMA],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": user_id}]}],
            },
        )
        assert client.get(f"/Users/{user_id}").json()["groups"]

    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(accounts)))
    elapsed, spent = time.perf_counter() - started, time.process_time() - cpu
    client.close()
    return elapsed, spent


def cost(accounts: int, concurrency: int, latency_ms: float) -> dict[str, Any]:
    """(a) at one latency: each side against a fresh in-memory service."""
    ops = accounts * 2
    with MemoryScim(latency=latency_ms / 1000) as app:
        app.group("staff")
        engine_s, engine_cpu = engine_run(app.url, accounts, concurrency)
    with MemoryScim(latency=latency_ms / 1000) as app:
        raw_s, raw_cpu = raw_run(app.url, app.group("staff"), accounts, concurrency)
    tag = f"l{latency_ms:g}ms"
    return {
        f"engine_{tag}_ops_per_s": round(ops / engine_s, 1),
        f"raw_{tag}_ops_per_s": round(ops / raw_s, 1),
        f"engine_{tag}_cpu_ms_per_op": round(1000 * engine_cpu / ops, 3),
        f"raw_{tag}_cpu_ms_per_op": round(1000 * raw_cpu / ops, 3),
        f"ratio_{tag}": round(raw_s / engine_s, 3),
    }


def rate_share(accounts: int, rate: float, latency_ms: float) -> dict[str, Any]:
    """(b): the share of the target's limit the engine keeps in use, and the 429s."""
    with MemoryScim(latency=latency_ms / 1000, rate=rate, burst=max(1.0, rate / 10)) as app:
        app.group("staff")
        before = app.stats()
        # enough threads that latency never limits: the rate limit must be what paces it
        concurrency = max(4, int(rate * latency_ms / 1000 * 2))
        elapsed, _ = engine_run(app.url, accounts, concurrency, rate=rate)
        after = app.stats()
    sent = after["requests"] - before["requests"]
    return {
        "rate_limit_per_s": rate,
        "rate_latency_ms": latency_ms,
        "rate_requests_per_s": round(sent / elapsed, 1),
        "rate_share": round(sent / elapsed / rate, 3),
        "rate_429": after["too_many"] - before["too_many"],
    }


def realism(accounts: int, concurrency: int) -> dict[str, Any]:
    """(c): the engine against scim2-server."""
    with ScimApp() as app:
        ScimApp.create_groups(app.url, "staff")
        elapsed, _ = engine_run(app.url, accounts, concurrency)
    return {"scim2_server_ops_per_s": round(accounts * 2 / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=2000, help="operations in (a)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=20.0, help="ms per request in (a)")
    parser.add_argument("--rate-ops", type=int, default=600, help="operations in (b)")
    parser.add_argument("--realism-ops", type=int, default=200, help="operations in (c)")
    args = parser.parse_args()
    result: dict[str, Any] = {"bench": "scim_push", "ops": args.ops}
    result["concurrency"] = args.concurrency
    result |= cost(args.ops // 2, args.concurrency, 0)
    result |= cost(args.ops // 2, args.concurrency, args.latency)
    result["ratio"] = result[f"ratio_l{args.latency:g}ms"]
    result |= rate_share(args.rate_ops // 2, 50.0, 100.0)
    result |= realism(args.realism_ops // 2, args.concurrency)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
