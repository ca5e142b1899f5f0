"""The service hands its work to workers (``runner.workers: true``): an event posted to
``provisor serve`` is planned by a worker's cycle — put in the job queue by the service, no
polling interval on the way — and run by the workers until the target reads back the change;
the service itself runs no cycle."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select

from provisor.engine.workspace import Workspace
from provisor.sandbox.cluster import start_workers, stop_workers
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.service import served
from provisor.store import models
from tests.engine.test_crash_safety import POLICY

CONFIG = (
    "runner: {workers: true, lease_seconds: 3, sweep_seconds: 1}\n"
    "service: {cycle_seconds: 50}\n"  # a periodic cycle would not come in time: the wake must
)


def _statuses(workspace: Workspace, identity: str) -> dict[str, str]:
    with workspace.sessions() as session:
        rows = session.execute(
            select(models.Operation.kind, models.Operation.status).where(
                models.Operation.identity == identity
            )
        )
        return {str(kind): str(status) for kind, status in rows}


def _until(workspace: Workspace, identity: str, wanted: dict[str, str]) -> float:
    started = time.monotonic()
    while (seen := _statuses(workspace, identity)) != wanted:
        assert time.monotonic() - started < 30, seen
        time.sleep(0.05)
    return time.monotonic() - started


def test_an_event_posted_to_the_service_is_run_by_the_workers(
    scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    groups = ScimApp.create_groups(scim_url, "staff")
    folders: list[Path] = []

    def prepare(workspace: Any) -> None:
        folders.append(workspace.path)

    with served(CONFIG, prepare, POLICY.format(url=scim_url)) as (url, token, _pid):
        folder = folders[0]
        workers = start_workers(folder, 2, dict(os.environ))
        workspace = Workspace.open(folder)
        try:
            with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
                person = {"employment_type": "employee", "name": "Eve", "email": "eve@example.com"}
                hire = {"identity": "E1", "kind": "hire", "changes": person}
                assert api.post("/api/v1/events", json=hire).status_code == 201
                _until(workspace, "E1", {"create": "verified", "add-entitlement": "verified"})
                leave = {"identity": "E1", "kind": "terminate"}
                assert api.post("/api/v1/events", json=leave).status_code == 201
                gone = _until(
                    workspace,
                    "E1",
                    {
                        "create": "verified",
                        "add-entitlement": "verified",
                        "revoke-sessions": "unverifiable",  # SCIM has no session API
                        "disable": "verified",
                        "remove-entitlement": "verified",
                    },
                )
        finally:
            errors = stop_workers(workers, folder)
            workspace.close()
    assert gone < 10, errors
    members = httpx2.get(f"{scim_url}/Groups/{groups['staff']}").json().get("members", [])
    assert members == []
    users = httpx2.get(f"{scim_url}/Users").json()["Resources"]
    assert [u["active"] for u in users] == [False]
