"""The metrics endpoint of a process that serves no API (``provisor worker --metrics-port``).

Does: serve ``GET /metrics`` (Prometheus text format: this process's operation counters and
timings, and what the store says, as the service's ``/api/v1/metrics`` does) from a thread, to
a bearer token with the ``metrics`` scope — the same tokens, checked the same way
(``operators.authenticate``: hashed, revocable, expiring), as the service's; anything else
gets 401 (no or a bad token), 403 (a token without the scope) or 404. At most ``AT_ONCE``
requests are answered at a time (503 beyond), and a token found good is not checked against
the store again for ``TRUSTED_SECONDS``, so that requests to this port cannot take the
database connections the worker's own work needs.
Does not: serve anything else, or keep any secret: tokens are made with ``provisor token``
(only a hash of each good one is kept here, briefly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from provisor.domain.roles import Permission, Reach
from provisor.engine.metrics import registry_for
from provisor.engine.operators import authenticate, digest
from provisor.engine.workspace import Workspace
from provisor.errors import CredentialsError, DeniedError

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
AT_ONCE = 2  # requests answered at a time
TRUSTED_SECONDS = 10.0  # a good token is taken as good for this long without a store read


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


def _answer(start: StartResponse, status: str, text: str, *extra: tuple[str, str]) -> list[bytes]:
    body = (text + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start(status, headers + list(extra))
    return [body]


class Scrape:
    """``/metrics`` for ``workspace``, served on ``host``:``port`` until ``close``."""

    def __init__(self, workspace: Workspace, host: str, port: int) -> None:
        self.workspace = workspace
        self._metrics = make_wsgi_app(registry_for(workspace))
        self._slots = threading.BoundedSemaphore(AT_ONCE)
        self._good: dict[str, float] = {}  # hash of a token -> until when it is taken as good
        self._lock = threading.Lock()
        self.server = make_server(host, port, self._app, _Server, _Quiet)
        self.port = self.server.server_port
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="provisor-metrics", daemon=True
        )
        self._thread.start()

    def _app(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") != "GET":
            return _answer(start, "404 Not Found", "only GET /metrics is served here")
        if not self._slots.acquire(blocking=False):
            return _answer(start, "503 Service Unavailable", "busy", ("Retry-After", "1"))
        try:
            return self._answered(environ, start)
        finally:
            self._slots.release()

    def _answered(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        scheme, _, secret = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        secret = secret.strip()
        challenge = ("WWW-Authenticate", 'Bearer realm="provisor"')
        if scheme.lower() != "bearer" or not secret:
            return _answer(start, "401 Unauthorized", "a bearer token is required", challenge)
        hashed = digest(secret)
        with self._lock:
            trusted = self._good.get(hashed, 0.0) > time.monotonic()
        if not trusted:
            try:
                with self.workspace.sessions() as session, session.begin():
                    who = authenticate(session, secret, datetime.now(UTC))
                    if who.require(Permission.METRICS) is not Reach.ALL:
                        raise DeniedError(f"{who.name} may read the metrics only for own targets")
            except CredentialsError:
                return _answer(start, "401 Unauthorized", "the token is not valid", challenge)
            except DeniedError as exc:
                return _answer(start, "403 Forbidden", str(exc))
            with self._lock:
                self._good = {h: t for h, t in self._good.items() if t > time.monotonic()}
                self._good[hashed] = time.monotonic() + TRUSTED_SECONDS
        result: Iterable[bytes] = list(self._metrics(environ, start))
        return result

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
