"""Runner and journal edge cases, against a real SCIM server: parked failures, accounts gone or
doubled, work taken while a plan runs, accounts known only from an export."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select

from provisor.domain.lifecycle import EventKind
from provisor.engine.runner import Runner
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.faulty_proxy import Fault, FaultyProxy
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import NOW, apply, event, people, plan, setup_workspace, someone_in


def ops_of(ws: Workspace, identity: str, target: str = "app") -> list[models.Operation]:
    with ws.sessions() as session:
        return list(
            session.execute(
                select(models.Operation)
                .where(models.Operation.identity == identity, models.Operation.target == target)
                .order_by(models.Operation.id)
            ).scalars()
        )


def test_failed_removal_does_not_block_the_rest_and_stays_parked(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    ws, proxy, direct = proxied
    people(ws, "E1")
    plan(ws)
    apply(ws)
    event(ws, "E1", EventKind.TERMINATE)
    plan(ws)
    proxy.queue(Fault(status=403, methods=frozenset({"PATCH"})))  # the disable is refused
    report = apply(ws)
    assert report.failed == 1 and "HTTP 403" in report.errors[0]
    statuses = {
        (o.kind, o.entitlement): o.status for o in ops_of(ws, "E1") if o.status != "cancelled"
    }
    assert statuses[("disable", None)] == "failed"
    assert statuses[("remove-entitlement", "staff")] == "verified"
    assert statuses[("remove-entitlement", "engineering")] == "verified"
    before = len(ops_of(ws, "E1"))
    assert plan(ws).added == 0 and len(ops_of(ws, "E1")) == before  # parked, not re-planned
    runner = Runner(ws, rng=random.Random(1))
    try:
        assert runner.requeue_failed(now=NOW) == 1
        assert runner.apply(now=lambda: NOW).verified == 1
    finally:
        runner.close()
    user = httpx2.get(f"{direct}/Users", params={"filter": 'userName eq "e1@example.com"'})
    assert user.json()["Resources"][0]["active"] is False


def test_removing_from_an_account_already_gone_is_verified(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    ws, _, direct = proxied
    people(ws, "E1")
    plan(ws)
    apply(ws)
    user = httpx2.get(f"{direct}/Users", params={"filter": 'userName eq "e1@example.com"'})
    httpx2.delete(f"{direct}/Users/{user.json()['Resources'][0]['id']}").raise_for_status()
    event(ws, "E1", EventKind.TERMINATE)
    plan(ws)
    report = apply(ws, NOW + timedelta(days=31))  # after the rescind window
    assert report.failed == 0
    assert {o.status for o in ops_of(ws, "E1")} <= {"verified", "unverifiable", "cancelled"}
    with ws.sessions() as session:
        assert (
            session.execute(
                select(models.ObservedAccount).where(models.ObservedAccount.identity == "E1")
            ).first()
            is None
        )


def test_operations_taken_by_the_runner_are_not_cancelled_by_a_plan(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    ws, _, _ = proxied
    people(ws, "E1")
    plan(ws)
    runner = Runner(ws)
    try:
        taken = runner._claim([o.id for o in ops_of(ws, "E1")])
        assert len(taken) == 3
        event(ws, "E1", EventKind.TERMINATE)
        # the claimed SCIM operations are in flight: only the manual target's are cancelled
        assert plan(ws).cancelled == 2
    finally:
        runner.close()
    assert {o.status for o in ops_of(ws, "E1")} == {"running"}


def test_two_accounts_in_one_target_are_both_removed(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    ws = setup_workspace(tmp_path, scim_url)
    try:
        people(ws, "E1")
        export = tmp_path / "app.csv"
        export.write_text(
            "account,identity,enabled,entitlements\na1,E1,true,staff\na2,E1,true,staff\n"
        )
        from provisor.engine.observed import import_observed

        import_observed(ws, "app", export, now=NOW)
        event(ws, "E1", EventKind.TERMINATE)
        first = plan(ws)
        again = plan(ws)  # same instant: no key collision, nothing duplicated
        assert again.added == 0 and again.cancelled == 0
        accounts = {(op.account, op.kind.value) for op, _, _ in first.operations}
        assert {("a1", "disable"), ("a2", "disable")} <= accounts
    finally:
        ws.close()


def test_account_known_unlinked_from_an_export_is_adopted(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    someone_in(scim_url, "staff")
    made = httpx2.post(
        f"{scim_url}/Users",
        json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "e1@example.com",
        },
    )
    account = made.json()["id"]
    ws = setup_workspace(tmp_path, scim_url)
    try:
        people(ws, "E1")
        export = tmp_path / "app.csv"
        export.write_text(f"account,email,enabled,entitlements\n{account},,true,\n")
        from provisor.engine.observed import import_observed

        assert import_observed(ws, "app", export, now=NOW).unlinked == 1
        plan(ws)
        report = apply(ws)
        assert report.failed == 0 and report.verified == 3
        with ws.sessions() as session:
            row = session.execute(
                select(models.ObservedAccount).where(models.ObservedAccount.account == account)
            ).scalar_one()
        assert row.identity == "E1" and row.source == "read-back"
    finally:
        ws.close()


def test_account_for_someone_on_leave_is_created_locked(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    policy = (
        "targets:\n"
        "  - {name: app, class: scim, owner: it, on_leave: disable,\n"
        f'     connection: {{url: "{scim_url}"}}, entitlements: [{{name: staff}}]}}\n'
        "rules:\n"
        "  - {name: staff, when: {attr: employment_type, equals: employee},\n"
        "     grant: [{target: app, entitlements: [staff]}]}\n"
    )
    ws = scratch_workspace(tmp_path, policy)
    try:
        people(ws, "E1")
        event(ws, "E1", EventKind.LEAVE)
        plan(ws)
        assert apply(ws).failed == 0
        created = [o for o in ops_of(ws, "E1") if o.kind == "create"]
        assert created[0].observed is not None and created[0].observed["enabled"] is False
        disable = [o for o in ops_of(ws, "E1") if o.kind == "disable"]
        assert disable[0].last_error == "already as intended; nothing written"
    finally:
        ws.close()
