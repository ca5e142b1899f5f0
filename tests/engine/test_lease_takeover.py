"""A runner on another machine that died holding accounts: its leases keep every other runner
off those accounts until they expire (``runner.lease_seconds``), then the next run takes them
over, reads the accounts back first and records the dead run's operations once, naming it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from provisor.engine.runner import Runner
from provisor.engine.workspace import Workspace
from provisor.store import models
from tests.engine.test_runner import people, plan
from tests.engine.test_runner import ws as scim_ws  # noqa: F401 (a fixture)

ELSEWHERE = "0b5e55ed-0000-4000-8000-000000000000:4026531836:4242:99"  # another machine's
LEASE = 3


def test_a_dead_runner_elsewhere_holds_its_accounts_until_its_leases_expire(
    scim_ws: Workspace,  # noqa: F811
) -> None:
    ws = scim_ws
    ws.config.runner.lease_seconds = LEASE
    people(ws, "E1", "E2")
    plan(ws)
    now = datetime.now(UTC)
    op = models.Operation
    with ws.sessions() as session:
        each = len(
            session.execute(select(op.id).where(op.identity == "E1", op.target == "app")).all()
        )
    with ws.sessions() as session, session.begin():
        # what a runner on another machine left when it died mid-write on E1's account
        session.execute(
            update(op)
            .where(op.identity == "E1", op.target == "app")
            .values(status="running", intent_run="deadbeef" * 4, intent_at=now)
        )
        session.add(
            models.AccountLease(
                identity="E1",
                target="app",
                run="deadbeef" * 4,
                holder=ELSEWHERE,
                expires_at=now + timedelta(seconds=LEASE),
                taken_at=now,
            )
        )
    runner = Runner(ws)
    try:
        first = runner.apply(now=lambda: datetime.now(UTC))
        # E2 goes ahead; E1 is another machine's until its lease expires: left alone
        assert first.verified == each and first.waiting >= each
        time.sleep(LEASE + 0.5)
        second = runner.apply(now=lambda: datetime.now(UTC))
        assert second.verified == each
    finally:
        runner.close()
    with ws.sessions() as session:
        rows = session.execute(select(op).where(op.identity == "E1")).scalars().all()
        leases = session.execute(select(models.AccountLease)).scalars().all()
    assert {r.status for r in rows if r.target == "app"} == {"verified"}
    assert all("interrupted run" in (r.last_error or "") for r in rows if r.target == "app")
    assert leases == []
