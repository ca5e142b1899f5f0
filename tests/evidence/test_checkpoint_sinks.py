"""Signed checkpoints also leave the machine when asked: each one is sent to syslog (UDP) and
POSTed to an HTTP endpoint, besides the file, and what arrives verifies with the key."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.evidence.checkpoints import Checkpoint
from provisor.sandbox.workspaces import scratch_workspace

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


class Collector:
    """An HTTP endpoint that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                collector.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/checkpoints"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_checkpoints_go_to_syslog_and_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROVISOR_AUDIT_KEY", raising=False)
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(5)
    http = Collector()
    ws = scratch_workspace(tmp_path / "ws", "targets: []\n")
    try:
        ws.config.audit.syslog = f"127.0.0.1:{syslog.getsockname()[1]}"
        ws.config.audit.http = http.url
        with ws.sessions() as session, session.begin():
            identities.record_events(
                session,
                ws.config,
                [LifecycleEvent("E1", EventKind.HIRE, NOW, NOW, {"name": "Ann"})],
                origin="test",
                now=NOW,
            )
        made = ws.checkpoint(NOW)
        assert made is not None
        message = syslog.recv(65536).decode()
        sent = json.loads(message[message.index("{") : message.rindex("}") + 1])
        signer = ws.signer(create=False)
        for received in (sent, http.bodies[0]):
            checkpoint = Checkpoint.from_dict(received)
            assert checkpoint.seq == made.seq and signer.verifies(checkpoint)
        assert ws.checkpoint(NOW) is None  # nothing appended since: nothing sent again
        assert len(http.bodies) == 1
    finally:
        ws.close()
        http.close()
        syslog.close()
