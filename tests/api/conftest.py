"""A running service (uvicorn on a free port, in a thread) over a workspace with a manual
target, operators of every role and a token each."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn

from provisor.api.app import create_app
from provisor.engine import operators
from provisor.engine.workspace import Workspace
from provisor.sandbox.service import free_port

POLICY = """\
targets:
  - name: erp
    class: manual
    owner: finance-ops@example.com
    leaver_action: disable
    sla_days: 2
    entitlements: [{name: erp-user}, {name: approver}]
  - name: wiki
    class: manual
    owner: wiki-team@example.com
    leaver_action: disable
    entitlements: [{name: editor}]
rules:
  - name: finance
    when: {attr: department, equals: Finance}
    grant: [{target: erp, entitlements: [erp-user]}]
  - name: everyone
    when: {attr: department, in: [Finance, Sales]}
    grant: [{target: wiki, entitlements: [editor]}]
"""

PEOPLE = """\
id,name,email,department,employment_type
F1,Fay Finance,fay@example.com,Finance,employee
F2,Gus Finance,gus@example.com,Finance,employee
S1,Sal Sales,sal@example.com,Sales,employee
"""

# one operator per role; the owner owns erp
PEOPLE_OF_THE_SERVICE = {
    "root": (["admin"], []),
    "olga": (["operator"], []),
    "otto": (["operator"], []),
    "alice": (["approver"], []),
    "bert": (["approver"], []),
    "owen": (["owner"], ["erp"]),
    "rita": (["reviewer"], []),
    "audrey": (["auditor"], []),
    "mona": (["monitor"], []),
}
PASSWORD = "correct horse battery staple"


@dataclass
class Service:
    url: str
    workspace: Workspace
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, who: str | None = None, token: str | None = None) -> httpx2.Client:
        secret = token or (self.tokens[who] if who else None)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)

    def call(self, who: str | None, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        with self.client(who) as client:
            return client.request(method, path, **kwargs)


def start(
    workspace: Workspace, *, runner: bool, log_level: str = "warning"
) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(workspace, runner=runner), host="127.0.0.1", port=port, log_level=log_level
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def people(workspace: Workspace, extra_config: str = "") -> dict[str, str]:
    """Operators of every role with a token each (all their roles' scopes)."""
    now = datetime.now(UTC)
    tokens = {}
    with workspace.sessions() as session, session.begin():
        for name, (roles, targets) in PEOPLE_OF_THE_SERVICE.items():
            operators.add_operator(
                session,
                name,
                roles=roles,
                targets=targets,
                email=f"{name}@example.com",
                password=PASSWORD,
                by="test",
                now=now,
            )
            tokens[name], _ = operators.create_token(
                session, name, name="test", scopes=["*"], expires_at=None, by="test", now=now
            )
    return tokens


@pytest.fixture
def erp_workspace(workspace: Path, cli: Any) -> Path:
    (workspace / "policy" / "policy.yaml").write_text(POLICY)
    (workspace / "provisor.yaml").write_text(
        "feeds: {hr: {mode: snapshot}}\nservice: {cycle_seconds: 3600}\n"
    )
    (workspace / "people.csv").write_text(PEOPLE)
    assert cli("import", str(workspace / "people.csv")).code == 0
    return workspace


@contextmanager
def serving(
    folder: Path, *, settings: str = "", runner: bool = False, log_level: str = "warning"
) -> Iterator[Service]:
    """A service over the workspace in ``folder``, its ``service:`` settings replaced by
    ``settings`` (YAML lines under ``service:``) when given; operators of every role made."""
    if settings:
        config = folder / "provisor.yaml"
        config.write_text(
            config.read_text().replace("service: {cycle_seconds: 3600}", "service:\n" + settings)
        )
    workspace = Workspace.open(folder)
    tokens = people(workspace)
    server, thread, url = start(workspace, runner=runner, log_level=log_level)
    try:
        yield Service(url, workspace, tokens)
    finally:
        server.should_exit = True
        thread.join(30)
        workspace.close()


@pytest.fixture
def service(erp_workspace: Path) -> Iterator[Service]:
    """The service without its background runner (tests drive the cycle themselves)."""
    with serving(erp_workspace) as running:
        yield running


def leaver_with_tasks(service: Service) -> None:
    """Fay (F1) holds erp-user in erp, as an export shows; she is terminated through the API,
    planned and applied: her manual removals are tasks for erp's owner."""
    from provisor.engine.observed import import_observed
    from provisor.engine.runner import Runner

    export = service.workspace.path / "erp.csv"
    export.write_text("account,email,enabled,entitlements\nfay,fay@example.com,true,erp-user\n")
    import_observed(service.workspace, "erp", export, now=datetime.now(UTC))
    terminated = service.call(
        "olga", "POST", "/api/v1/events", json={"identity": "F1", "kind": "terminate"}
    )
    assert terminated.status_code == 201
    assert service.call("olga", "POST", "/api/v1/plans", json={}).status_code == 200
    runner = Runner(service.workspace)
    try:
        runner.apply(now=lambda: datetime.now(UTC))
    finally:
        runner.close()
