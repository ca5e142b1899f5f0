"""The deployment as shipped: ``deploy/install.sh`` (what the container file runs) installs
Provisor into a fresh virtual environment; from there ``provisor serve`` hands its work to two
``provisor worker``s on PostgreSQL, and an event posted to the service reaches a real SCIM
target; the systemd units pass ``systemd-analyze verify`` against that installation."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select

from provisor.engine import operators
from provisor.engine.workspace import Workspace
from provisor.sandbox import free_port
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.engine.test_crash_safety import POLICY

REPO = Path(__file__).resolve().parents[2]
CONFIG = "runner: {workers: true, lease_seconds: 3, sweep_seconds: 1}\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment made by deploy/install.sh from this checkout."""
    prefix = tmp_path_factory.mktemp("install") / "provisor"
    done = subprocess.run(
        [
            "bash",
            str(REPO / "deploy" / "install.sh"),
            "--prefix",
            str(prefix),
            "--source",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("provisor ")
    return prefix


def _start(prefix: Path, folder: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (folder / f"{args[0]}-{len(list(folder.glob('*.log')))}.log").open("wb")
    env = dict(os.environ) | {"PROVISOR_WORKSPACE": str(folder)}
    return subprocess.Popen(
        [str(prefix / "bin" / "provisor"), *args], stdout=log, stderr=subprocess.STDOUT, env=env
    )


@pytest.fixture
def deployment(
    installed: Path,
    tmp_path: Path,
    scim_url: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, str, Workspace]]:
    """(service URL, admin token, workspace) of ``serve`` and two ``worker``s from the
    installation."""
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    ScimApp.create_groups(scim_url, "staff")
    (tmp_path / "provisor.yaml").write_text(CONFIG, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    with workspace.sessions() as session, session.begin():
        now = datetime.now(UTC)
        operators.add_operator(session, "ops", roles=["admin"], by="test", now=now)
        token, _ = operators.create_token(
            session, "ops", name="t", scopes=["*"], expires_at=None, by="test", now=now
        )
    port = free_port()
    processes = [
        _start(installed, tmp_path, "serve", "--port", str(port)),
        _start(installed, tmp_path, "worker", "--name", "a"),
        _start(installed, tmp_path, "worker", "--name", "b"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "serve-0.log").read_text()
                time.sleep(0.2)
        yield url, token, workspace
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
        workspace.close()
    # the service ends on SIGTERM as systemd expects of it; workers finish their jobs, exit 0
    assert processes[0].returncode in (0, -15)
    assert [p.returncode for p in processes[1:]] == [0, 0]


def test_an_installed_service_and_two_workers_provision(
    deployment: tuple[str, str, Workspace], scim_url: str
) -> None:
    url, token, workspace = deployment
    person = {"employment_type": "employee", "name": "Ann", "email": "ann@example.com"}
    hire = {"identity": "E1", "kind": "hire", "changes": person}
    answer = httpx2.post(
        f"{url}/api/v1/events", json=hire, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 201, answer.text
    deadline = time.monotonic() + 30
    while True:
        with workspace.sessions() as session:
            statuses = set(session.scalars(select(models.Operation.status)))
        if statuses == {"verified"} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert statuses == {"verified"}
    users = httpx2.get(f"{scim_url}/Users").json()["Resources"]
    assert [u["userName"] for u in users] == ["ann@example.com"]


def test_the_systemd_units_verify(installed: Path, tmp_path: Path) -> None:
    for unit in (REPO / "deploy" / "systemd").glob("*.service"):
        text = unit.read_text().replace("/opt/provisor", str(installed))
        (tmp_path / unit.name).write_text(text)
    # a template is verified through an instance of it
    shutil.copy(tmp_path / "provisor-worker@.service", tmp_path / "provisor-worker@1.service")
    units = [str(tmp_path / "provisor-serve.service"), str(tmp_path / "provisor-worker@1.service")]
    done = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
