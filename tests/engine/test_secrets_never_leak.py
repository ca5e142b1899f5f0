"""A target that echoes the request's headers in its error answers (bearer token on SCIM, Basic
credentials on REST) must not get a credential into anything Provisor writes: stdout, stderr,
the journal, the audit log, evidence bundles, or the database file's bytes. Real servers
(scim2-server, RabbitMQ) behind a proxy that quotes every header back; every command runs as
its own ``provisor`` process."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select

from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import Fault, FaultyProxy
from tests.connectors.test_rest import Rabbit, rabbit  # noqa: F401
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import people

SCIM_POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    connection: {{url: "{url}", token: {{env: APP_TOKEN}}, timeout: 3}}
    entitlements: [{{name: staff}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
"""

REST_POLICY = """\
targets:
  - name: mq
    class: rest
    owner: mq-team
    connection:
      profile: rabbitmq
      url: "{url}"
      username: "{username}"
      password: {{env: MQ_PASSWORD}}
      timeout: 3
"""


def forms(secret: str, user: str | None = None) -> list[str]:
    """The ways a secret could be written down: as is, base64, URL-encoded, Basic."""
    found = [secret, base64.b64encode(secret.encode()).decode(), quote(secret, safe="")]
    if user is not None:
        found.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return found


class Runs:
    """``provisor`` commands run as processes against one workspace; all they print is kept."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = {**os.environ, **env, "PROVISOR_WORKSPACE": str(folder)}
        self.env.pop("PROVISOR_DATABASE_URL", None)
        self.printed: list[str] = []

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "provisor"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.printed += [done.stdout, done.stderr]
        return done


def everything_written(runs: Runs) -> dict[str, bytes]:
    """What a secret must not be in: every printed text and every file of the workspace
    (database and its journal files, evidence, exports)."""
    found = {f"printed[{i}]": text.encode() for i, text in enumerate(runs.printed)}
    for path in runs.folder.rglob("*"):
        if path.is_file():
            found[str(path.relative_to(runs.folder))] = path.read_bytes()
    return found


def assert_nowhere(secrets: list[str], runs: Runs) -> None:
    for where, content in everything_written(runs).items():
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} found in {where}"


def exercise(runs: Runs, identity: str) -> None:
    """Plan, apply, plan again, reconcile, probe, verify a leaver and export the audit log,
    while every answer of the target echoes the request's headers."""
    runs("plan")
    runs("apply")
    runs("plan")
    runs("reconcile")
    runs("targets", "check")
    runs("event", "terminate", identity)
    runs("verify-leaver", identity)
    runs("debt")
    runs("audit", "export", "--format", "csv")
    runs("audit", "export", "--format", "jsonl")
    assert runs("audit", "verify").returncode == 0


@pytest.fixture
def echoing_scim(
    tmp_path: Path, scim_server: str, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, FaultyProxy]]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    proxy = FaultyProxy(scim_server)
    folder = tmp_path / "ws"
    url = proxy.url + scim_url.removeprefix(scim_server)
    scratch_workspace(folder, SCIM_POLICY.format(url=url)).close()
    yield folder, proxy
    proxy.close()


def test_a_scim_target_echoing_the_bearer_token(
    echoing_scim: tuple[Path, FaultyProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, proxy = echoing_scim
    token = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("APP_TOKEN", token)
    ws = Workspace.open(folder)
    try:
        people(ws, "E1", "E2")
    finally:
        ws.close()
    proxy.queue(*[Fault(status=400, echo=True) for _ in range(400)])
    runs = Runs(folder, {"APP_TOKEN": token})
    exercise(runs, "E1")

    assert proxy.injected > 0
    ws = Workspace.open(folder)
    try:
        with ws.sessions() as session:
            errors = [e for e in session.scalars(select(models.Operation.last_error)) if e]
    finally:
        ws.close()
    assert_nowhere(forms(token), runs)
    # and the answers did quote the header: what was kept of them shows it masked
    assert errors and all("'Authorization': '***'" in e for e in errors), errors


def test_a_rest_target_echoing_basic_credentials(
    rabbit: Rabbit,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    proxy = FaultyProxy(rabbit.url)
    folder = tmp_path / "ws"
    policy = REST_POLICY.format(url=proxy.url, username=rabbit.username)
    ws = scratch_workspace(folder, policy)
    try:
        people(ws, "E1")
    finally:
        ws.close()
    proxy.queue(*[Fault(status=400, echo=True) for _ in range(400)])
    runs = Runs(folder, {"MQ_PASSWORD": rabbit.password})
    try:
        exercise(runs, "E1")
    finally:
        proxy.close()
    assert proxy.injected > 0
    assert_nowhere(forms(rabbit.password, rabbit.username), runs)
    # and the answers did quote the header: what was kept of them shows it masked
    printed = "\n".join(runs.printed)
    assert re.search(r"Authorization\W{0,6}\*\*\*", printed), printed[-3000:]
