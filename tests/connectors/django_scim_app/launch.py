"""Start the ``django-scim2`` application in a child process for a test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx2

from provisor.sandbox import free_port

ROOT = Path(__file__).resolve().parents[3]
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"


class DjangoScimApp:
    """The application on a free port, with an empty database of its own; ``url`` is its
    SCIM base URL and ``token`` the bearer token it accepts."""

    def __init__(self, token: str = "django-scim-token") -> None:
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/scim/v2"
        self._folder = tempfile.TemporaryDirectory(prefix="django-scim-")
        env = os.environ | {
            "SCIM_APP_DB": str(Path(self._folder.name) / "app.db"),
            "SCIM_APP_TOKEN": token,
            "PYTHONPATH": str(ROOT),
        }
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.connectors.django_scim_app.serve", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"the django-scim2 application did not start: {error}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the django-scim2 application did not start in 30 s")
            time.sleep(0.05)

    def group(self, name: str) -> str:
        """Create a group; its id."""
        response = httpx2.post(
            f"{self.url}/Groups",
            json={"schemas": [GROUP_SCHEMA], "displayName": name},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def get(self, path: str) -> dict[str, object]:
        response = httpx2.get(
            f"{self.url}/{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        response.raise_for_status()
        found: dict[str, object] = response.json()
        return found

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        if self._process.stderr is not None:
            self._process.stderr.close()
        self._folder.cleanup()

    def __enter__(self) -> DjangoScimApp:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
