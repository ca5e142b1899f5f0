"""Several runners started at once on one workspace — two, then four `provisor apply`
processes — on SQLite and on PostgreSQL, against a real SCIM server behind a counting proxy:
each operation is executed once (one write on the target per operation, counted by the proxy),
recorded verified once (counted in the audit log), and no account is made twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select

from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy
from tests.engine.test_crash_safety import POLICY

PEOPLE = 60  # x (create + one group) = 120 operations


def _apply_at_once(folder: Path, runners: int, env: dict[str, str]) -> list[dict[str, int]]:
    command = [str(Path(sys.executable).parent / "provisor"), "-w", str(folder), "apply", "--json"]
    started = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(runners)
    ]
    reports = []
    for process in started:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, (out + err).decode()
        reports.append(json.loads(out))
    return reports


@pytest.mark.parametrize("runners", [2, 4])
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_runners_started_at_once_execute_each_operation_once(
    tmp_path: Path,
    scim_url: str,
    store: str,
    runners: int,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROVISOR_DATABASE_URL"}
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    if store == "postgres":
        env["PROVISOR_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("PROVISOR_DATABASE_URL", env["PROVISOR_DATABASE_URL"])
    ScimApp.create_groups(scim_url, "staff")
    proxy = FaultyProxy(scim_url)
    try:
        workspace = scratch_workspace(tmp_path, POLICY.format(url=proxy.url))
        hire_employees(workspace, PEOPLE, datetime.now(UTC))
        reports = _apply_at_once(tmp_path, runners, env)
        writes = [(m, p) for m, p, _ in proxy.requests if m in ("POST", "PUT", "PATCH", "DELETE")]
    finally:
        proxy.close()

    assert sum(r["verified"] for r in reports) == 2 * PEOPLE
    # on the target: one user made per person, one group change per person
    created = [p for m, p in writes if m == "POST" and p.rstrip("/").endswith("/Users")]
    assert len(created) == PEOPLE
    assert len([p for m, p in writes if m == "PATCH" and "/Groups/" in p]) == PEOPLE
    users = httpx2.get(f"{scim_url}/Users", params={"count": 4 * PEOPLE}).json()["Resources"]
    names = [u["userName"] for u in users]
    assert len(names) == len(set(names)) == PEOPLE
    # in the journal and the audit log: every operation verified, each exactly once
    with workspace.sessions() as session:
        statuses = Counter(session.execute(select(models.Operation.status)).scalars())
        verified = Counter(
            json.loads(data)["key"] if isinstance(data, str) else data["key"]
            for data in session.execute(
                select(models.AuditEvent.data).where(
                    models.AuditEvent.action == "operation.verified"
                )
            ).scalars()
        )
        leases = session.execute(select(models.AccountLease)).scalars().all()
    workspace.close()
    assert statuses == {"verified": 2 * PEOPLE}
    assert len(verified) == 2 * PEOPLE and set(verified.values()) == {1}
    assert leases == []  # every runner gave its accounts back
