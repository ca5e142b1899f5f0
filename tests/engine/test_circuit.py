"""A target that goes down and comes back, against a real SCIM server behind a proxy that
answers 503 while "down": the circuit opens after the configured failures in a row, its work
waits untried (nothing parked, nothing lost), status, debt, coverage and metrics say so, a
probe before the target answers keeps it open, leavers' removals go to the owner — and an
owner's "done" while the application still holds the access verifies nothing. Once the
target answers, a probe closes the circuit and the work is done and read back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from provisor.connectors.base import RetryableError, Unavailable
from provisor.connectors.http import DOWN_STATUS, transport_error
from provisor.domain.lifecycle import EventKind
from provisor.domain.plan import REMOVAL_KINDS
from provisor.engine import circuit, debt, tasks
from provisor.engine.circuit import Breaker
from provisor.engine.coverage import coverage
from provisor.engine.metrics import exposition
from provisor.engine.status import target_status
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy, Refuse
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import NOW, apply, event, people, plan, server_user

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    leaver_action: delete
    grace_days: 7
    concurrency: 2
    circuit: {{failures: 3, cool_down_seconds: 1, leavers_to_owner_minutes: 10}}
    connection: {{url: "{url}", timeout: 2}}
    entitlements: [{{name: staff}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
"""
LEAVERS = ["E0", "E1", "E2", "E3"]


@pytest.fixture
def down_able(
    tmp_path: Path, scim_server: str, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workspace, FaultyProxy, threading.Event]]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    down = threading.Event()

    def gateway(method: str, path: str, body: bytes) -> bytes:
        if down.is_set():
            raise Refuse(503, "down for maintenance")
        return body

    proxy = FaultyProxy(scim_server, on_request=gateway)
    url = proxy.url + scim_url.removeprefix(scim_server)
    workspace = scratch_workspace(tmp_path, POLICY.format(url=url))
    yield workspace, proxy, down
    workspace.close()
    proxy.close()


def app_ops(ws: Workspace, *who: str) -> list[models.Operation]:
    """The leavers' removals in the target."""
    op = models.Operation
    with ws.sessions() as session:
        query = select(op).where(
            op.target == "app", op.identity.in_(who), op.kind.in_(REMOVAL_KINDS)
        )
        return list(session.execute(query).scalars())


def audited(ws: Workspace, action: str) -> list[models.AuditEvent]:
    with ws.sessions() as session:
        query = select(models.AuditEvent).where(models.AuditEvent.action == action)
        return list(session.execute(query).scalars())


def circuit_open(ws: Workspace) -> float:
    for family in text_string_to_metric_families(exposition(ws).decode()):
        for sample in family.samples:
            if sample.name == "provisor_target_circuit_open" and sample.labels == {"target": "app"}:
                return float(sample.value)
    raise AssertionError("no circuit metric for app")


def test_a_target_down_then_back_loses_nothing_and_claims_nothing(
    down_able: tuple[Workspace, FaultyProxy, threading.Event], scim_url: str
) -> None:
    ws, proxy, down = down_able
    people(ws, *[f"E{i}" for i in range(6)])
    plan(ws)
    assert apply(ws).verified == 12  # 6 accounts, each with staff
    assert circuit_open(ws) == 0

    # the target goes down; four people leave
    down.set()
    left = NOW + timedelta(hours=1)
    for who in LEAVERS:
        event(ws, who, EventKind.TERMINATE, left)
    plan(ws, left)
    sent = len(proxy.requests)
    report = apply(ws, left)
    assert "app" in report.unavailable and report.failed == 0
    tried = len(proxy.requests) - sent
    # three in a row open it; the account threads running meanwhile stop at once
    assert 3 <= tried <= 3 + 2
    ops = app_ops(ws, *LEAVERS)
    assert {op.status for op in ops} == {"pending"}  # waiting, nothing parked or lost
    assert sum(op.attempts for op in ops) <= tried
    [opened] = audited(ws, "target.unavailable")
    assert "503" in json.loads(opened.data)["reason"]

    # everyone who asks hears it
    [app] = target_status(ws, left)
    assert app.state == "unavailable" and app.due + app.later == len(ops)
    ledger = debt.ledger(ws, left)
    assert "app" in ledger.unavailable
    owed = [i for i in ledger.items if i.identity in LEAVERS]
    assert owed and all("unavailable since" in i.work for i in owed)
    assert next(c for c in coverage(ws) if c.target == "app").unavailable is not None
    assert circuit_open(ws) == 1

    # before the cool-down (real time: a rehearsal clock does not move it) nothing is tried
    sent = len(proxy.requests)
    assert "app" in apply(ws, left + timedelta(days=30)).unavailable
    assert len(proxy.requests) == sent

    # a probe while it is still down keeps it open (one request: the probe)
    time.sleep(1.1)
    probed = apply(ws, left + timedelta(seconds=61))
    assert "probe failed" in probed.unavailable["app"]
    assert len(proxy.requests) == sent + 1
    assert {op.status for op in app_ops(ws, *LEAVERS)} == {"pending"}

    # after the configured wait, leavers' removals go to the owner as work items
    wall = datetime.now(UTC)
    with ws.sessions() as session, session.begin():
        early = (left + timedelta(minutes=5), wall + timedelta(minutes=5))
        assert circuit.hand_to_owners(ws, session, *early) == 0
    with ws.sessions() as session, session.begin():
        handed = circuit.hand_to_owners(
            ws, session, left + timedelta(minutes=11), wall + timedelta(minutes=11)
        )
        # the delete is not due before its grace: nobody is asked to do it yet
        assert handed == len([op for op in app_ops(ws, *LEAVERS) if op.kind != "delete"])
    with ws.sessions() as session, session.begin():
        again = (left + timedelta(minutes=12), wall + timedelta(minutes=12))
        assert circuit.hand_to_owners(ws, session, *again) == 0  # once
        items = list(session.execute(select(models.Task)).scalars())
        assert {t.owner for t in items} == {"app-team"} and all(t.read_back for t in items)
        assert all("cannot reach app" in t.instructions for t in items)
        # the owner says one is done, but the application still holds the access
        first = items[0]
        tasks.complete(
            session, first.id, by="owner", evidence="ticket 1", now=left + timedelta(minutes=13)
        )
        # and a second person attests it: recorded, but it closes nothing
        at = left + timedelta(minutes=13)
        assert tasks.verify(session, first.id, by="auditor", now=at) == "attested"
    said_done = next(op for op in app_ops(ws, *LEAVERS) if op.id == first.operation_id)
    assert said_done.status == "pending" and said_done.verified_at is None
    user = server_user(scim_url, "e0@example.com")
    assert user is not None and user["active"] is True  # really still there
    still = debt.ledger(ws, left + timedelta(minutes=13))
    assert {i.identity for i in still.items} >= set(LEAVERS)  # debt stands

    # it comes back: the next probe closes the circuit and the work is done, read back
    down.clear()
    time.sleep(1.1)
    back = apply(ws, left + timedelta(minutes=14))
    assert not back.unavailable and back.failed == 0
    assert audited(ws, "target.available")
    for who in LEAVERS:
        user = server_user(scim_url, f"{who.lower()}@example.com")
        assert user is not None and user["active"] is False
    ops = app_ops(ws, *LEAVERS)
    done = [op for op in ops if op.kind != "delete"]  # delete waits for its grace
    assert {op.status for op in done} <= {"verified", "unverifiable"}
    assert all(op.observed is not None for op in done)
    with ws.sessions() as session:
        closed = list(session.execute(select(models.Task)).scalars())
    by_op = {op.id: op for op in ops}
    for task in closed:
        if by_op[task.operation_id].status == "verified":
            assert task.status == "verified" and task.verification == "read-back"
        else:  # unverifiable (sessions) or not yet due (delete): still the owner's
            assert task.status in ("open", "done")
    assert circuit_open(ws) == 0
    [app] = target_status(ws, left + timedelta(minutes=14))
    assert app.state == "available" and app.failures == 0


def test_answers_in_between_reset_the_count() -> None:
    breaker = Breaker(3)
    for down in (True, True, False, True, True):
        breaker.saw(down, "503")
    assert not breaker.tripped
    breaker.saw(True, "503 again")
    assert breaker.tripped and breaker.reason == "503 again"


def test_counts_across_batches_and_runners(tmp_path: Path) -> None:
    ws = scratch_workspace(tmp_path, POLICY.format(url="http://127.0.0.1:9/v2"))
    targets: Any = ws.compiled.targets
    nothing: tuple[dict[str, str], set[str]] = ({}, set())
    try:
        with ws.sessions() as session, session.begin():
            assert circuit.record(session, {"app": [False]}, {}, targets) == nothing
            assert circuit.record(session, {"app": [True, True]}, {"app": "x"}, targets) == nothing
        with ws.sessions() as session, session.begin():
            # another runner's batch: a success, then two failures; still two in a row
            seen = {"app": [True, False, True, True]}
            assert circuit.record(session, seen, {"app": "y"}, targets) == nothing
            assert circuit.failing(session) == {"app": 2}
        with ws.sessions() as session, session.begin():
            opened = circuit.record(session, {"app": [True]}, {"app": "z"}, targets)
            assert opened == ({"app": "z"}, {"app"})
            # a runner whose batch all answered still hears the circuit is open
            assert circuit.record(session, {"app": [False]}, {}, targets) == ({}, {"app"})
            now = datetime.now(UTC)
            assert circuit.waiting(session, now) == {"app"}
            assert circuit.waiting(session, now + timedelta(seconds=2)) == set()
    finally:
        ws.close()


def test_what_counts_as_the_target_being_down() -> None:
    """Only a server that cannot be reached, drops the connection, goes silent or answers
    that it is down counts against its circuit; this side's own limits and answers such as
    429 or 501 (a server that is there) do not."""
    for there in (httpx2.ConnectError("refused"), httpx2.ReadTimeout("silent")):
        assert isinstance(transport_error("app", there), Unavailable)
    for ours in (httpx2.PoolTimeout("busy"), httpx2.UnsupportedProtocol("ftp")):
        found = transport_error("app", ours)
        assert isinstance(found, RetryableError) and not isinstance(found, Unavailable)
    assert {500, 502, 503, 504} == set(DOWN_STATUS)
