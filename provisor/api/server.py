"""``provisor serve``: the service on a socket.

Does: serve the application of ``provisor.api.app`` with uvicorn on the configured (or given)
address, logging through Python's logging with credentials redacted, until interrupted.
Does not: build routes or run cycles itself.
"""

from __future__ import annotations

import logging

import uvicorn

from provisor.api.app import create_app
from provisor.engine.workspace import Workspace
from provisor.redaction import install

log = logging.getLogger(__name__)


def run_server(
    workspace: Workspace, *, host: str | None = None, port: int | None = None, runner: bool = True
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM stop the runner cleanly)."""
    install()
    settings = workspace.config.service
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(workspace, runner=runner)
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=True,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()
