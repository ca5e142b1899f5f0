"""Crashes leave a trace: ``provisor apply`` of leavers' deletes against a real SCIM server,
killed with SIGKILL at 12 seeded random points among its writes, then run to the end. Every
delete the server really saw is in the audit log afterwards, each operation recorded verified
exactly once, and the ones a killed run had announced are said to be resolved by a later
run's read-back."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import func, select

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.engine.planner import sync_journal
from provisor.engine.runner import Runner
from provisor.engine.runner.runner import INTERRUPTED_REDONE, INTERRUPTED_VERIFIED
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from provisor.store import models
from tests.engine.test_crash_safety import POLICY as CRASH_POLICY

PEOPLE = 100
KILLS = 12

# the crash-safety test's target, with leavers deleted at once
POLICY = CRASH_POLICY.replace(
    "    concurrency: 8\n", "    leaver_action: delete\n    grace_days: 0\n    concurrency: 8\n"
)


def _users(scim_url: str) -> int:
    """How many users the server holds."""
    found = httpx2.get(f"{scim_url}/Users", params={"count": 1, "attributes": "userName"})
    return int(found.json()["totalResults"])


def test_kill_nine_during_deletes_leaves_every_write_in_the_audit_log(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    ScimApp.create_groups(scim_url, "staff")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    workspace.config.lifecycle.rescind_window_days = 0  # deleted at once: no rescind waited for
    hired = datetime.now(UTC) - timedelta(days=1)
    hire_employees(workspace, PEOPLE, hired)
    runner = Runner(workspace)
    assert runner.apply(now=lambda: datetime.now(UTC)).verified == 2 * PEOPLE
    runner.close()
    # a mass leaving is what the test is about: the mass-change guard lets it through
    workspace.config.guard.max_count, workspace.config.guard.max_share = PEOPLE, 1.0
    now = datetime.now(UTC)
    leavers = [LifecycleEvent(f"E{i}", EventKind.TERMINATE, now, now) for i in range(PEOPLE)]
    with workspace.sessions() as session, session.begin():
        identities.record_events(session, workspace.config, leavers, origin="test", now=now)
    with workspace.sessions() as session, session.begin():
        sync_journal(workspace, session, now=now)
    workspace.close()
    # paced, so that the deletes spread over the runs that get killed
    policy = tmp_path / "policy" / "policy.yaml"
    policy.write_text(
        policy.read_text().replace("concurrency: 8", "concurrency: 8\n    rate_limit: 25")
    )

    command = [str(Path(sys.executable).parent / "provisor"), "-w", str(tmp_path), "apply"]
    rng = random.Random(20261205)
    kills = 0
    for _ in range(KILLS):
        before = _users(scim_url)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # however long the start-up takes, the kill lands among the writes: once the server
        # has seen this run delete someone, at a seeded random moment
        deadline = time.monotonic() + 60
        while _users(scim_url) == before and process.poll() is None:
            assert time.monotonic() < deadline, "a run that neither deletes nor ends"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= KILLS // 2, "the runs ended before they could be killed"
    policy.write_text(policy.read_text().replace("\n    rate_limit: 25", ""))  # finish at speed
    for _ in range(3):
        final = subprocess.run([*command, "--json"], capture_output=True, text=True)
        if json.loads(final.stdout)["verified"] == 0:
            break
    assert final.returncode == 0, final.stderr

    left = httpx2.get(f"{scim_url}/Users", params={"count": 2 * PEOPLE}).json()
    assert left["totalResults"] == 0  # every delete happened, in the server
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    try:
        with workspace.sessions() as session:
            deletes = set(
                session.scalars(
                    select(models.Operation.key).where(models.Operation.kind == "delete")
                )
            )
            statuses = dict(
                session.execute(
                    select(models.Operation.status, func.count())
                    .where(models.Operation.kind == "delete")
                    .group_by(models.Operation.status)
                ).all()
            )
            verified = [
                json.loads(data)
                for (data,) in session.execute(
                    select(models.AuditEvent.data).where(
                        models.AuditEvent.action == "operation.verified"
                    )
                )
            ]
            still_intended = session.scalar(
                select(func.count())
                .select_from(models.Operation)
                .where(models.Operation.intent_run.is_not(None))
            )
    finally:
        workspace.close()
    assert len(deletes) == PEOPLE and statuses == {"verified": PEOPLE}
    by_key: dict[str, int] = {}
    for entry in verified:
        if entry["key"] in deletes:
            by_key[entry["key"]] = by_key.get(entry["key"], 0) + 1
    assert by_key == dict.fromkeys(deletes, 1)  # each delete in the log, once
    recovered = [e for e in verified if e.get("interrupted_run")]
    assert recovered, "no kill landed between a write and its record"
    for entry in recovered:
        assert entry["note"].startswith((INTERRUPTED_VERIFIED, INTERRUPTED_REDONE)), entry
    assert still_intended == 0
