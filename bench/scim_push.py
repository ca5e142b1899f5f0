"""SCIM provisioning throughput: the engine against a raw httpx2 loop, same server, same run.

Starts a local SCIM 2.0 application (scim2-server), then for each concurrency level:
- engine: --ops operations (joiners: create + one group each) planned into the journal and run
  by ``provisor``'s runner, every operation verified by read-back;
- raw: a plain httpx2 loop doing the same work with the same concurrency — per account a
  correlation lookup, POST /Users, PATCH /Groups to add the member, and a read-back of each
  (GET /Users/{id}, GET /Groups?filter=members.value) — with no journal, no database.
Prints one JSON line: {"bench": "scim_push", ..., "ratio": engine ops/s / raw ops/s at the
highest concurrency}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx2

from provisor.engine.runner import Runner
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
POLICY = """\
targets:
  - name: app
    class: scim
    owner: bench
    concurrency: {concurrency}
    connection: {{url: "{url}", timeout: 30}}
    entitlements: [{{name: staff}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
"""


def engine_run(root: str, accounts: int, concurrency: int) -> float:
    url = f"{root}/e{uuid.uuid4().hex[:8]}/v2"
    ScimApp.create_groups(url, "staff")
    with tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp:
        policy = POLICY.format(url=url, concurrency=concurrency)
        workspace = scratch_workspace(Path(tmp), policy)
        hire_employees(workspace, accounts, datetime.now(UTC))
        runner = Runner(workspace)
        started = time.perf_counter()
        report = runner.apply(now=lambda: datetime.now(UTC))
        elapsed = time.perf_counter() - started
        runner.close()
        workspace.close()
    assert report.verified == accounts * 2, report
    return elapsed


def raw_run(root: str, accounts: int, concurrency: int) -> float:
    url = f"{root}/r{uuid.uuid4().hex[:8]}/v2"
    group = ScimApp.create_groups(url, "staff")["staff"]
    client = httpx2.Client(
        base_url=url, timeout=30, limits=httpx2.Limits(max_keepalive_connections=concurrency)
    )

    def one(i: int) -> None:
        user_name = f"p{i}@example.com"
        client.get(
            "/Users", params={"filter": f'externalId eq "E{i}" or userName eq "{user_name}"'}
        )
        created = client.post(
            "/Users",
            json={
                "schemas": [USER_SCHEMA],
                "userName": user_name,
                "externalId": f"E{i}",
                "active": True,
            },
        )
        user_id = created.json()["id"]
        client.get(f"/Users/{user_id}")
        client.get("/Groups", params={"filter": f'members.value eq "{user_id}"'})
        client.patch(
            f"/Groups/{group}",
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": user_id}]}],
            },
        )
        client.get(f"/Users/{user_id}")
        check = client.get("/Groups", params={"filter": f'members.value eq "{user_id}"'})
        assert check.json()["totalResults"] == 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(accounts)))
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    accounts = args.ops // 2
    result: dict[str, object] = {"bench": "scim_push", "ops": accounts * 2}
    with ScimApp(tenants=True) as app:
        for level in levels:
            engine_s = engine_run(app.root, accounts, level)
            raw_s = raw_run(app.root, accounts, level)
            result[f"engine_c{level}_ops_per_s"] = round(accounts * 2 / engine_s, 1)
            result[f"raw_c{level}_ops_per_s"] = round(accounts * 2 / raw_s, 1)
    top = max(levels)
    result["ratio"] = round(
        float(result[f"engine_c{top}_ops_per_s"]) / float(result[f"raw_c{top}_ops_per_s"]), 3
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
