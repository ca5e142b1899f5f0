"""A small HTTP proxy that injects faults in front of a real server, for tests.

Requests are forwarded to ``upstream`` unchanged unless a fault is queued: an HTTP status with
headers (e.g. 503, or 429 with Retry-After; its body may echo the request's headers), a delay
longer than the client's timeout, or a dropped connection. ``on_request`` and ``on_response``
hooks let a test imitate a vendor's quirks on top of the real server: rewrite, refuse or
silently swallow a request, rewrite a response body.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2


@dataclass
class Fault:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    echo: bool = False  # the answer quotes the request's URL and headers, as some servers do
    methods: frozenset[str] = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class Refuse(Exception):
    """Raised by a request hook: answer with this status instead of forwarding."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Swallow(Exception):
    """Raised by a request hook: answer ``204 No Content`` without forwarding, as an
    application that accepts a change and silently does not make it."""


RequestHook = Callable[[str, str, bytes], bytes]
ResponseHook = Callable[[str, str, int, bytes], bytes]


class FaultyProxy:
    def __init__(
        self,
        upstream: str,
        on_request: RequestHook | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: deque[Fault] = deque()
        self.lock = threading.Lock()
        self.injected = 0
        self.requests: list[tuple[str, str, bytes]] = []  # as the client sent them
        self.on_request = on_request
        self.on_response = on_response
        self.client = httpx2.Client()  # one, kept alive: the proxy must not be the bottleneck
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, body))
                if proxy.on_request is not None:
                    try:
                        body = proxy.on_request(self.command, self.path, body)
                    except Refuse as refused:
                        self._answer(refused.status, refused.detail)
                        return
                    except Swallow:
                        self.send_response(204)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                fault = proxy._take(self.command)
                if fault is not None:
                    proxy.injected += 1
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.drop:
                        self.close_connection = True
                        self.connection.close()
                        return
                    if fault.status is not None:
                        detail = "injected"
                        if fault.echo:
                            sent = dict(sorted(self.headers.items()))  # Authorization early
                            detail += f" for {self.command} {self.path} with headers {sent}"
                        self._answer(fault.status, detail, fault.headers)
                        return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                headers.pop("Content-Length", None)
                response = proxy.client.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers
                )
                content = response.content
                if proxy.on_response is not None:
                    content = proxy.on_response(
                        self.command, self.path, response.status_code, content
                    )
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    # the body goes out as decoded here, so its encoding header does not
                    if name.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _answer(
                self, status: int, detail: str, extra: dict[str, str] | None = None
            ) -> None:
                payload = json.dumps(
                    {
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                        "status": str(status),
                        "detail": detail,
                    }
                ).encode()
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/scim+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take(self, method: str) -> Fault | None:
        with self.lock:
            if self.faults and method in self.faults[0].methods:
                return self.faults.popleft()
        return None

    def queue(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()
