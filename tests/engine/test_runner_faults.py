"""Faults injected between the runner and a real SCIM server: 5xx, 429 + Retry-After, responses
slower than the timeout (the write still lands), dropped connections. Every operation ends
verified or parked as failed, never verified without a read-back, and no account is duplicated."""

from __future__ import annotations

import random
from datetime import timedelta

import httpx2
from sqlalchemy import select

from provisor.engine.runner import Runner
from provisor.engine.workspace import Workspace
from provisor.store import models
from tests.connectors.faulty_proxy import Fault, FaultyProxy
from tests.engine.test_runner import NOW, people, plan


def app_ops(ws: Workspace) -> list[models.Operation]:
    with ws.sessions() as session:
        return list(
            session.execute(
                select(models.Operation).where(models.Operation.target == "app")
            ).scalars()
        )


def test_every_operation_ends_verified_or_parked(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    ws, proxy, direct = proxied
    people(ws, *[f"E{i}" for i in range(6)])
    plan(ws)
    proxy.queue(
        Fault(status=503),
        Fault(status=429, headers={"Retry-After": "2"}),
        Fault(delay=2.0, methods=frozenset({"POST"})),  # slower than the timeout; still lands
        Fault(drop=True),
        Fault(status=500, methods=frozenset({"PATCH"})),
        Fault(status=502),
    )
    runner = Runner(ws, rng=random.Random(5), max_attempts=8)
    when = NOW
    try:
        for _ in range(12):
            runner.apply(now=lambda when=when: when)
            if all(op.status in ("verified", "failed") for op in app_ops(ws)):
                break
            when += timedelta(minutes=30)
    finally:
        runner.close()
    assert proxy.injected == 6
    ops = app_ops(ws)
    assert {op.status for op in ops} == {"verified"}
    assert all(op.observed is not None for op in ops)  # verified means read back
    retried = [op for op in ops if op.attempts > 1]
    assert retried, "faults should have caused retries"
    users = httpx2.get(f"{direct}/Users", params={"count": 100}).json()["Resources"]
    names = sorted(u["userName"] for u in users)
    assert names == sorted(f"e{i}@example.com" for i in range(6))  # no duplicates


def test_retry_after_is_honoured(proxied: tuple[Workspace, FaultyProxy, str]) -> None:
    ws, proxy, _ = proxied
    people(ws, "E1")
    plan(ws)
    proxy.queue(Fault(status=429, headers={"Retry-After": "120"}))
    runner = Runner(ws, rng=random.Random(5))
    try:
        report = runner.apply(now=lambda: NOW)
    finally:
        runner.close()
    assert report.retrying == 1
    (create,) = [op for op in app_ops(ws) if op.kind == "create"]
    assert create.next_attempt_at == NOW + timedelta(seconds=120)
    assert "HTTP 429" in (create.last_error or "")
