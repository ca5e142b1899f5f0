"""A throwaway RabbitMQ node with its management HTTP API, for tests and trials of the REST
connector.

Does: start Debian's ``rabbitmq-server`` in a temporary directory on free loopback ports (AMQP,
management API, Erlang distribution and its own ``epmd``), with the management plugin and one
administrator; wait until ``GET /api/overview`` answers; stop the node with SIGTERM, end the
``epmd`` it started and remove the directory.
Does not: touch a RabbitMQ already running on the machine (its ports, node name, ``epmd`` and
configuration under ``/etc/rabbitmq`` are left alone), or install anything: when
``rabbitmq-server`` is missing it says how to install it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx2

from provisor.errors import ProvisorError
from provisor.sandbox import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
INSTALL_HINT = "apt-get install -y --no-install-recommends rabbitmq-server"


class RabbitNode:
    """One RabbitMQ node of its own. ``url`` is the management API root (``http://.../``
    without ``/api``); ``amqp_port`` the AMQP 0-9-1 listener; ``username`` and ``password`` the
    administrator's credentials. Use as a context manager, or call ``start`` and ``stop``."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str | None = None,
        startup_timeout: float = 60.0,
        server: Path = SERVER,
    ) -> None:
        self.username = username
        self.password = password or secrets.token_urlsafe(16)
        self.startup_timeout = startup_timeout
        self.server = server
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.url = f"http://127.0.0.1:{self.management_port}"
        self.node_name = f"provisor-{secrets.token_hex(4)}@localhost"
        self.root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RabbitNode(url={self.url!r}, amqp_port={self.amqp_port}, node={self.node_name!r})"

    @property
    def log_dir(self) -> Path | None:
        return self.root / "log" if self.root else None

    def _environment(self, root: Path) -> dict[str, str]:
        config = root / "rabbitmq.conf"
        config.write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
                    "management.tcp.ip = 127.0.0.1",
                    f"management.tcp.port = {self.management_port}",
                    f"default_user = {self.username}",
                    f"default_pass = {self.password}",
                    "loopback_users = none",
                    # tests open many short connections; no statistics sampling needed
                    "collect_statistics_interval = 5000",
                    "",
                ]
            )
        )
        config.chmod(0o600)
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        environment.update(
            {
                "HOME": str(root),
                "RABBITMQ_NODENAME": self.node_name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.amqp_port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_CONFIG_FILE": str(config),
                # our own (absent) files, not the system node's under /etc/rabbitmq
                "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
                "RABBITMQ_ENABLED_PLUGINS": "rabbitmq_management",
                "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
                "RABBITMQ_LOG_BASE": str(root / "log"),
                "RABBITMQ_PID_FILE": str(root / "rabbit.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
            }
        )
        return environment

    def start(self) -> RabbitNode:
        if not self.server.exists():
            raise ProvisorError(
                f"RabbitMQ is not installed ({self.server} is missing); install it with: "
                f"{INSTALL_HINT}"
            )
        self.root = Path(tempfile.mkdtemp(prefix="provisor-rabbit-"))
        output = (self.root / "server.out").open("wb")
        try:
            self._process = subprocess.Popen(
                [str(self.server)],
                env=self._environment(self.root),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            output.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        auth = httpx2.BasicAuth(self.username, self.password)
        with httpx2.Client(auth=auth, timeout=2.0) as client:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise ProvisorError(
                        f"rabbitmq-server exited with {self._process.returncode} while starting; "
                        f"see {self.root}/server.out and {self.log_dir}"
                    )
                try:
                    if client.get(f"{self.url}/api/overview").status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ProvisorError(
                        f"RabbitMQ management API at {self.url} did not answer within "
                        f"{self.startup_timeout:.0f} s; see {self.root}/server.out and "
                        f"{self.log_dir}"
                    )
                time.sleep(0.2)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # the start script and the VM it runs share the process group started here
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self._stop_epmd()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _stop_epmd(self) -> None:
        """End the ``epmd`` the node started on its own port (the system one is on another)."""
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if not Path(epmd).exists():
            return
        environment = dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port))
        subprocess.run(
            [epmd, "-port", str(self.epmd_port), "-kill"],
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
