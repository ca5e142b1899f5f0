"""Throwaway workspaces and target applications on this machine, for the demo, tests and
benchmarks.

Does: start a real SCIM 2.0 application — the ``scim2-server`` package, in memory — on a free
loopback port, wait until it answers, create groups in it, and stop it; create a scratch
workspace from a policy text; hire a batch of sample employees and plan their access.
Does not: run anything in production; real targets are the customer's applications.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

import httpx2

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities as lifecycle
from provisor.engine.planner import sync_journal
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError
from provisor.store import db

GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScimApp:
    """``scim2-server`` in a child process; ``url`` is its base URL (``.../v2``).

    With ``tenants``, each first use of a path ``/NAME/v2`` creates an empty tenant there.
    """

    def __init__(
        self,
        *,
        tenants: bool = False,
        bearer_token: str | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v2"
        # The package's own command, run by module so it is found wherever scripts went.
        command = [
            sys.executable,
            "-m",
            "scim2_server.testserver.cli",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if tenants:
            command.append("--dynamic-tenants")
        if bearer_token:
            command += ["--bearer-token", bearer_token]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + startup_timeout
        while True:
            if self._process.poll() is not None:
                raise ProvisorError(f"scim2-server exited with {self._process.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise ProvisorError(f"scim2-server did not listen on port {self.port}")
            time.sleep(0.05)

    @staticmethod
    def create_groups(url: str, *names: str) -> dict[str, str]:
        """Create groups in the SCIM service at ``url``; returns name -> id."""
        ids = {}
        with httpx2.Client() as client:
            for name in names:
                response = client.post(
                    f"{url}/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": name}
                )
                response.raise_for_status()
                ids[name] = str(response.json()["id"])
        return ids

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()  # it ignores SIGINT in the background
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> ScimApp:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def scratch_workspace(folder: Path, policy: str) -> Workspace:
    """A workspace in ``folder`` whose only policy file holds ``policy``, database current."""
    (folder / "policy").mkdir(parents=True, exist_ok=True)
    (folder / "policy" / "policy.yaml").write_text(policy, encoding="utf-8")
    engine = db.make_engine(db.database_url(folder))
    db.upgrade(engine)
    engine.dispose()
    return Workspace.open(folder)


def hire_employees(workspace: Workspace, count: int, now: datetime) -> None:
    """Employees E0 … E{count-1} (email p{i}@example.com), hired yesterday, access planned."""
    events = [
        LifecycleEvent(
            f"E{i}",
            EventKind.HIRE,
            now - timedelta(days=1),
            now,
            {"name": f"Person {i}", "email": f"p{i}@example.com", "employment_type": "employee"},
        )
        for i in range(count)
    ]
    with workspace.sessions() as session, session.begin():
        lifecycle.record_events(session, workspace.config, events, origin="sandbox", now=now)
    with workspace.sessions() as session, session.begin():
        sync_journal(workspace, session, now=now)
