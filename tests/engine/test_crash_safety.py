"""Crash safety: ``provisor apply`` killed with SIGKILL at random points of a 1,000-operation run,
then restarted until done. Every operation ends verified exactly once and no account is
duplicated in the (real) SCIM server."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import func, select

from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models

PEOPLE = 500  # x (create + one group) = 1,000 operations

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    concurrency: 8
    connection: {{url: "{url}", timeout: 10}}
    entitlements: [{{name: staff}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
"""


def test_kill_nine_mid_apply_then_finish(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    ScimApp.create_groups(scim_url, "staff")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    hire_employees(workspace, PEOPLE, datetime.now(UTC))

    command = [
        str(Path(sys.executable).parent / "provisor"),
        "-w",
        str(tmp_path),
        "apply",
        "--json",
    ]
    rng = random.Random(2026)
    kills = 0
    for _ in range(4):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(1.0, 4.0))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 2, "the runs finished before they could be killed; use more operations"
    for _ in range(5):
        final = subprocess.run(command, capture_output=True, text=True, check=False)
        report = json.loads(final.stdout)
        if report["verified"] == 0 and report["retrying"] == 0:
            break
    assert final.returncode == 0, final.stderr

    with workspace.sessions() as session:
        statuses = dict(
            (s, n)
            for s, n in session.execute(
                select(models.Operation.status, func.count()).group_by(models.Operation.status)
            )
        )
        verified_events = session.execute(
            select(func.json_extract(models.AuditEvent.data, "$.key"), func.count())
            .where(models.AuditEvent.action == "operation.verified")
            .group_by(func.json_extract(models.AuditEvent.data, "$.key"))
        ).all()
    workspace.close()
    assert statuses == {"verified": PEOPLE * 2}
    assert len(verified_events) == PEOPLE * 2
    assert {n for _, n in verified_events} == {1}  # verified exactly once each

    users = httpx2.get(f"{scim_url}/Users", params={"count": 2 * PEOPLE}).json()
    names = [u["userName"] for u in users["Resources"]]
    assert len(names) == len(set(names)) == PEOPLE
    group = httpx2.get(f"{scim_url}/Groups", params={"filter": 'displayName eq "staff"'}).json()
    members = [m["value"] for m in group["Resources"][0]["members"]]
    assert len(members) == len(set(members)) == PEOPLE
