"""A throwaway SCIM 2.0 application: the ``scim2-server`` package, in memory, in a child process.

Does: start it on a free loopback port (optionally with tenants created on first use, or a bearer
token), wait until it answers, create groups in it, and stop it.
Does not: keep anything: its storage lives and dies with the process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from types import TracebackType

import httpx2

from provisor.errors import ProvisorError
from provisor.sandbox import free_port

GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"


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
