"""Reconciliation must never conclude "gone" or "removed" from missing information: a listing
that lost most accounts, a target that could not be read, an account whose owner is in doubt,
a read-back that found nothing, a resumed run. Against a real SCIM server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select

from provisor.connectors.base import AccountRecord, Connector
from provisor.connectors.scim import ScimConnector
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import debt, identities, reconcile
from provisor.engine.workspace import Workspace
from provisor.store import models
from tests.engine.test_reconcile import raw_patch, raw_user, workspace_for
from tests.engine.test_reconcile_modes import account_of, ops, provisioned
from tests.engine.test_runner import apply, event, plan

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


class FirstOnly:
    """A SCIM connector whose listing returns only its first ``keep`` accounts, as a token
    whose scope was cut would."""

    def __init__(self, inner: ScimConnector, keep: int) -> None:
        self.inner, self.keep = inner, keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list_accounts(self) -> Iterator[AccountRecord]:
        for n, record in enumerate(self.inner.list_accounts()):
            if n < self.keep:
                yield record


def first_only(url: str, keep: int) -> Connector:
    connector: Any = FirstOnly(ScimConnector("app", {"url": url}), keep)
    return connector  # type: ignore[no-any-return]


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, groups: str) -> Iterator[Workspace]:
    workspace = workspace_for(tmp_path, scim_url)
    yield workspace
    workspace.close()


@pytest.fixture
def groups(scim_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from tests.connectors.test_scim import make_group

    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    return make_group(scim_url, "engineering")


def stored(ws: Workspace) -> dict[str, str | None]:
    with ws.sessions() as session:
        rows = session.execute(
            select(models.ObservedAccount.account, models.ObservedAccount.identity)
        )
        return {a: i for a, i in rows}


def test_a_listing_missing_most_accounts_is_not_taken_as_gone(ws: Workspace, scim_url: str) -> None:
    ids = [f"E{i}" for i in range(30)]
    provisioned(ws, *ids)
    first = reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=1))
    assert first.status == "completed" and len(stored(ws)) == 30
    cut = reconcile.reconcile_target(
        ws, "app", now=NOW + timedelta(hours=2), connector=first_only(scim_url, 3)
    )
    assert cut.status == "failed" and cut.gone == 0
    assert "27 of the 30 stored ones are missing" in (cut.error or "")
    assert len(stored(ws)) == 30  # nothing dropped: the debt of these accounts stays visible
    accepted = reconcile.reconcile_target(
        ws,
        "app",
        now=NOW + timedelta(hours=3),
        connector=first_only(scim_url, 3),
        accept_gone=True,
    )
    assert accepted.gone == 27 and len(stored(ws)) == 3


def test_an_unreadable_target_cancels_nothing_in_hand(
    tmp_path: Path, scim_url: str, groups: str
) -> None:
    ws = workspace_for(tmp_path, scim_url, orphan="ticket")
    try:
        stranger = raw_user(scim_url, "stranger@example.com")
        found = reconcile.reconcile_target(ws, "app", now=NOW)
        assert found.tickets >= 1
        tickets = [o.id for o in ops(ws, status="ticket")]
        broken = ScimConnector("app", {"url": "http://127.0.0.1:9/v2", "timeout": 1})
        down = reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=1), connector=broken)
        assert down.status == "failed" and down.cancelled == 0
        assert [o.id for o in ops(ws, status="ticket")] == tickets
        assert {f["account"]: f["class"] for f in down.findings} == {stranger: "unverifiable"}
    finally:
        ws.close()


def test_report_only_reports_findings_and_plans_nothing(ws: Workspace, scim_url: str) -> None:
    stranger = raw_user(scim_url, "stranger@example.com")
    report = reconcile.reconcile_target(ws, "app", now=NOW, remediate_now=False)
    assert [(f["account"], f["class"]) for f in report.findings] == [(stranger, "orphan")]
    assert report.planned == 0 and ops(ws) == []


def test_an_account_in_doubt_stays_with_its_leaver(ws: Workspace, scim_url: str) -> None:
    """A leaver's email given to a new hire: the account stays the leaver's (in debt, in the
    leaver's plan) while a person decides, and is never handed to the new hire."""
    provisioned(ws, "E1")
    a1 = account_of(scim_url, "E1")
    event(ws, "E1", EventKind.TERMINATE, NOW + timedelta(hours=1))
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [
                LifecycleEvent(
                    "E7",
                    EventKind.HIRE,
                    NOW,
                    NOW + timedelta(hours=1),
                    {"email": "e1@example.com", "employment_type": "contractor"},
                )
            ],
            origin="test",
            now=NOW + timedelta(hours=1),
        )
    raw_patch(scim_url, f"Users/{a1}", "replace", "externalId", None)
    later = NOW + timedelta(hours=2)
    report = reconcile.reconcile_target(ws, "app", now=later)
    assert report.cases_opened == 1
    assert stored(ws)[a1] == "E1"  # the link holds while the case is open
    finding = next(f for f in report.findings if f["account"] == a1)
    assert finding["class"] == "unlinked"
    with ws.sessions() as session:
        owed = debt.debt_items(ws, session, later, identity="E1")
    assert any(item.item == "account" for item in owed)
    plan(ws, later)
    assert {o.kind for o in ops(ws, identity="E1", status="pending")} >= {"disable"}
    assert ops(ws, identity="E7", target="app") == []  # a contractor: nothing to create


def test_a_read_back_of_nothing_drops_only_that_account(ws: Workspace, scim_url: str) -> None:
    provisioned(ws, "E1")
    a1 = account_of(scim_url, "E1")
    second = raw_user(scim_url, "e1.second@example.com", externalId="E1")
    reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=1))
    assert stored(ws)[second] == "E1"
    event(ws, "E1", EventKind.TERMINATE, NOW + timedelta(hours=2))
    plan(ws, NOW + timedelta(hours=2))
    # the second account is deleted by hand before the runner gets to it
    httpx2.delete(f"{scim_url}/Users/{second}").raise_for_status()
    apply(ws, NOW + timedelta(hours=2))
    left = stored(ws)
    assert second not in left and left.get(a1) == "E1"


def test_a_resumed_run_sees_what_changed_since_the_interruption(
    ws: Workspace, scim_url: str
) -> None:
    provisioned(ws, "E1", "E2", "E3")
    a1, a2 = account_of(scim_url, "E1"), account_of(scim_url, "E2")
    with ws.sessions() as session, session.begin():
        run = models.ReconcileRun(
            target="app", mode="full", status="running", started_at=NOW, checkpoint={}
        )
        session.add(run)
        session.flush()
        run_id = run.id
    first = reconcile.reconcile_target(ws, "app", now=NOW)  # resumes the "interrupted" run
    assert first.resumed and first.run == run_id
    # make it look interrupted again, with everything stored by it; then change the target
    with ws.sessions() as session, session.begin():
        row = session.get(models.ReconcileRun, run_id)
        assert row is not None
        row.status, row.finished_at = "running", None
    raw_patch(scim_url, f"Users/{a1}", "replace", "active", False)
    httpx2.delete(f"{scim_url}/Users/{a2}").raise_for_status()
    resumed = reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=1))
    assert resumed.resumed and resumed.skipped == 2 and resumed.gone == 1
    assert a2 not in stored(ws)
    finding = next(f for f in resumed.findings if f["account"] == a1)
    assert "disabled, should be enabled" in finding["detail"]
