"""Notifications to a local SMTP server and a local webhook receiver: tasks to their owners,
holds to approvers, a digest instead of a mail per thing, a failing webhook retried, signed."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from provisor.domain.lifecycle import EventKind
from provisor.engine import notify, operators
from provisor.engine.observed import import_observed
from provisor.engine.planner import sync_journal
from provisor.engine.runner import Runner
from provisor.engine.views import record_event
from provisor.engine.workspace import Workspace
from provisor.sandbox.service import free_port


class _Inbox:
    def __init__(self) -> None:
        self.mails: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, _Inbox]]:
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]], list[int]]]:
    """A webhook receiver that answers 500 to its first two requests, then 200."""
    got: list[tuple[dict[str, str], bytes]] = []
    failures = [2]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if failures[0] > 0:
                failures[0] -= 1
                self.send_response(500)
                self.end_headers()
                return
            got.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got, failures
    server.shutdown()


def _setup(erp_workspace: Path, smtp_port: int, hook: str, digest: int) -> Workspace:
    config = erp_workspace / "provisor.yaml"
    config.write_text(
        "feeds: {hr: {mode: snapshot}}\n"
        "guard: {min_count: 2}\n"
        "notifications:\n"
        f"  smtp: {{host: 127.0.0.1, port: {smtp_port}, sender: provisor@example.com}}\n"
        f"  webhooks: [{{url: '{hook}', secret_env: PROVISOR_TEST_HOOK_SECRET}}]\n"
        f"  digest_minutes: {digest}\n"
    )
    workspace = Workspace.open(erp_workspace)
    now = datetime.now(UTC)
    with workspace.sessions() as session, session.begin():
        operators.add_operator(
            session,
            "owen",
            roles=["owner"],
            targets=["erp"],
            email="owen@example.com",
            by="test",
            now=now,
        )
        operators.add_operator(
            session, "alice", roles=["approver"], email="alice@example.com", by="test", now=now
        )
    export = erp_workspace / "erp.csv"
    export.write_text("account,email,enabled,entitlements\nfay,fay@example.com,true,erp-user\n")
    import_observed(workspace, "erp", export, now=now)
    record_event(
        workspace,
        "F1",
        EventKind.TERMINATE,
        effective=now,
        changes={},
        ref=None,
        source="test",
        now=now,
    )
    with workspace.sessions() as session, session.begin():
        sync_journal(workspace, session, now=now)
    runner = Runner(workspace)
    runner.apply(now=lambda: now)
    runner.close()
    # two leavers at once: a hold for the approvers
    from provisor.domain.lifecycle import LifecycleEvent
    from provisor.engine.identities import record_events

    with workspace.sessions() as session, session.begin():
        both = [
            LifecycleEvent(p, EventKind.TERMINATE, now, now, {}, None, "hr") for p in ("F2", "S1")
        ]
        assert record_events(session, workspace.config, both, origin="hr", now=now).hold_id
    return workspace


def test_owners_and_approvers_get_one_digest_and_webhooks_are_signed_and_retried(
    erp_workspace: Path, smtp: tuple[int, _Inbox], receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_TEST_HOOK_SECRET", "hook-secret")
    port, inbox = smtp
    hook, got, failures = receiver
    workspace = _setup(erp_workspace, port, hook, digest=60)
    now = datetime.now(UTC)
    first = notify.run(workspace, now)
    assert first["queued"] > 0 and first["mails"] == 0  # the digest waits for its window
    assert (first["webhooks"] == 0 and failures == [1]) or failures == [0]
    assert notify.run(workspace, now)["queued"] == 0  # never queued twice
    later = now + timedelta(minutes=61)
    second = notify.run(workspace, later)
    mails = {m["To"]: m for m in inbox.mails}
    assert set(mails) >= {"owen@example.com", "alice@example.com"}
    owen = mails["owen@example.com"].get_payload()
    assert owen.count("Task ") >= 2 and "F1" in owen  # one mail listing every task
    assert "Hold" in mails["alice@example.com"].get_payload()
    assert "Task " not in mails["alice@example.com"].get_payload()
    assert second["mails"] == len(inbox.mails)
    # the webhook failed twice and was retried with backoff until delivered, signed
    for step in range(1, 12):
        notify.run(workspace, later + timedelta(minutes=step * 10))
    assert got, "the webhook was never delivered"
    for headers, body in got:
        expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        assert headers["X-Provisor-Signature"] == expected
        assert json.loads(body)["kind"] in notify.KINDS
    kinds = {json.loads(body)["kind"] for _, body in got}
    assert {"task.opened", "hold.waiting"} <= kinds
    ids = [json.loads(body)["id"] for _, body in got]
    assert len(ids) == len(set(ids))  # each delivered once
    workspace.close()


def test_without_a_digest_each_thing_is_mailed_at_once(
    erp_workspace: Path, smtp: tuple[int, _Inbox], receiver: Any
) -> None:
    port, inbox = smtp
    hook, _, _ = receiver
    workspace = _setup(erp_workspace, port, hook, digest=0)
    result = notify.run(workspace, datetime.now(UTC))
    assert result["mails"] >= 2 and len(inbox.mails) == result["mails"]
    workspace.close()


def test_a_mail_server_that_is_down_leaves_the_notices_waiting(
    erp_workspace: Path, receiver: Any
) -> None:
    hook, _, _ = receiver
    workspace = _setup(erp_workspace, free_port(), hook, digest=0)  # nothing listens there
    result = notify.run(workspace, datetime.now(UTC))
    assert result["mails"] == 0
    from sqlalchemy import select

    from provisor.store.models import Notice

    with workspace.sessions() as session:
        mail = list(session.execute(select(Notice).where(Notice.channel == "smtp")).scalars())
    assert mail and all(n.status == "pending" and n.attempts == 1 for n in mail)
    assert all("SMTP" in (n.last_error or "") for n in mail)
    workspace.close()


def test_a_webhook_with_a_digest_gets_one_signed_post_per_window(
    erp_workspace: Path, smtp: tuple[int, _Inbox], receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_TEST_HOOK_SECRET", "hook-secret")
    port, _ = smtp
    hook, got, failures = receiver
    failures[0] = 1  # the first digest fails and is retried whole
    workspace = _setup(erp_workspace, port, hook, digest=0)
    workspace.config.notifications.webhooks[0].digest_minutes = 30
    now = datetime.now(UTC)
    assert notify.run(workspace, now)["webhooks"] == 0  # the window is open: nothing yet
    assert notify.run(workspace, now + timedelta(minutes=31))["webhooks"] == 0  # 500
    delivered = notify.run(workspace, now + timedelta(minutes=40))["webhooks"]
    assert len(got) == 1 and delivered >= 2
    headers, body = got[0]
    document = json.loads(body)
    assert document["digest"] is True and document["count"] == delivered
    kinds = {n["kind"] for n in document["notices"]}
    assert {"task.opened", "hold.waiting"} <= kinds
    expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Provisor-Signature"] == expected
    assert notify.run(workspace, now + timedelta(minutes=80))["webhooks"] == 0  # sent once
    assert len(got) == 1
    workspace.close()
