"""Reconciliation against a real SCIM server: changes planted behind Provisor's back (raw HTTP to
scim2-server) are found, classified, fixed or reported per policy; a run with nothing to change
writes nothing; a full run killed part way (a real ``provisor reconcile`` process) resumes from
its checkpoint and ends where an uninterrupted run does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select

from provisor.connectors.base import AccountRecord, Connector
from provisor.connectors.scim import ScimConnector
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities, marks, reconcile
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from provisor.testing import CountingConnector
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import apply, event, people, plan, server_user

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ROOT = Path(__file__).resolve().parents[2]

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    leaver_action: disable
    correlation: [email]
    remediation: {{orphan: {orphan}, drift: auto, terminated-active: auto}}
    connection: {{url: "{url}", timeout: 5{extra}}}
    entitlements: [{{name: staff}}, {{name: engineering}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
  - name: engineering
    when: {{attr: department, equals: Engineering}}
    grant: [{{target: app, entitlements: [engineering]}}]
"""


class SlowScim:
    """A SCIM connector whose listing takes ``delay`` seconds per account, so a process can be
    killed part way through a reconciliation (``connection.connector`` points here)."""

    def __init__(self, inner: ScimConnector, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list_accounts(self) -> Iterator[AccountRecord]:
        for record in self.inner.list_accounts():
            time.sleep(self.delay)
            yield record


def slow_scim(name: str, settings: Mapping[str, Any]) -> Connector:
    own = {k: v for k, v in settings.items() if k != "delay"}  # the wrapper's own setting
    connector: Any = SlowScim(ScimConnector(name, own), float(settings.get("delay", 0)))
    return connector  # type: ignore[no-any-return]


def workspace_for(folder: Path, url: str, orphan: str = "auto", extra: str = "") -> Workspace:
    return scratch_workspace(folder, POLICY.format(url=url, orphan=orphan, extra=extra))


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    workspace = workspace_for(tmp_path, scim_url)
    yield workspace
    workspace.close()


def raw_user(url: str, user_name: str, active: bool = True, **extra: Any) -> str:
    body = {"schemas": [USER_SCHEMA], "userName": user_name, "active": active, **extra}
    response = httpx2.post(f"{url}/Users", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def raw_patch(url: str, path: str, op: str, attr: str, value: Any) -> None:
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": op, "path": attr, "value": value}],
    }
    response = httpx2.patch(f"{url}/{path}", json=body)
    response.raise_for_status()


def group_members(url: str, name: str) -> set[str]:
    response = httpx2.get(f"{url}/Groups", params={"filter": f'displayName eq "{name}"'})
    found = response.json()["Resources"]
    return {m["value"] for m in found[0].get("members", [])} if found else set()


def classes(ws: Workspace) -> dict[str, tuple[str | None, str | None]]:
    with ws.sessions() as session:
        rows = session.execute(
            select(
                models.ObservedAccount.account,
                models.ObservedAccount.classification,
                models.ObservedAccount.classified_detail,
            ).where(models.ObservedAccount.target == "app")
        )
        return {a: (c, d) for a, c, d in rows}


def snapshot(ws: Workspace) -> list[tuple[Any, ...]]:
    with ws.sessions() as session:
        oa, oe = models.ObservedAccount, models.ObservedEntitlement
        ents: dict[int, list[str]] = {}
        for account_id, name in session.execute(select(oe.account_id, oe.entitlement)):
            ents.setdefault(account_id, []).append(name)
        return sorted(
            (r.account, r.identity, r.enabled, tuple(sorted(ents.get(r.id, []))), r.classification)
            for r in session.execute(select(oa)).scalars()
        )


def test_planted_changes_are_found_classified_and_fixed(ws: Workspace, scim_url: str) -> None:
    people(ws, "E1", "E2", "E3")
    plan(ws)
    assert apply(ws).failed == 0
    event(ws, "E2", EventKind.TERMINATE)
    plan(ws)
    apply(ws)
    ids = {u: server_user(scim_url, f"{u.lower()}@example.com")["id"] for u in ("E1", "E2", "E3")}  # type: ignore[index]
    # behind Provisor's back: an extra group, a leaver re-enabled, accounts made by hand,
    # a renamed user
    extra_group = make_group(scim_url, "contractors")
    raw_patch(scim_url, f"Groups/{extra_group}", "add", "members", [{"value": ids["E1"]}])
    raw_patch(scim_url, f"Users/{ids['E2']}", "replace", "active", True)
    stranger = raw_user(scim_url, "stranger@example.com")
    breakglass = raw_user(scim_url, "breakglass@example.com")
    raw_patch(scim_url, f"Users/{ids['E3']}", "replace", "userName", "e3.renamed@example.com")
    with ws.sessions() as session, session.begin():
        marks.set_mark(
            ws, session, "app", breakglass, "protected", "break-glass admin", by="ann", now=NOW
        )
    later = NOW + timedelta(hours=1)
    report = reconcile.reconcile_target(ws, "app", now=later)
    assert report.status == "completed" and report.mode == "full"
    found = classes(ws)
    assert found[ids["E1"]][0] == "drift" and "extra contractors" in (found[ids["E1"]][1] or "")
    assert found[ids["E2"]][0] == "terminated-active"
    assert "account enabled" in (found[ids["E2"]][1] or "")
    assert found[ids["E3"]][0] == "drift"
    assert "e3.renamed@example.com" in (found[ids["E3"]][1] or "")
    assert found[stranger][0] == "orphan" and found[breakglass][0] == "orphan"
    assert report.held == 1
    assert report.classes == {"drift": 2, "orphan": 2, "terminated-active": 1}
    by_account = {f["account"]: f for f in report.findings}
    assert by_account[breakglass]["remedy"] == "held by mark"
    assert by_account[stranger]["remedy"] == "auto"
    with ws.sessions() as session:
        ops = session.execute(
            select(
                models.Operation.identity, models.Operation.kind, models.Operation.entitlement
            ).where(models.Operation.status == "pending")
        ).all()
    assert ("E1", "remove-entitlement", "contractors") in ops
    assert ("E2", "disable", None) in ops and ("E3", "update", None) in ops
    assert (f"orphan:{stranger}", "disable", None) in ops
    assert not any(i == f"orphan:{breakglass}" for i, _, _ in ops)
    # the debt snapshot was recorded with the run
    with ws.sessions() as session:
        shot = session.execute(select(models.DebtSnapshot)).scalars().all()
    assert shot and shot[-1].reconcile_run == report.run and shot[-1].items >= 1

    fixed = apply(ws, later)
    assert fixed.failed == 0, fixed.errors
    assert ids["E1"] not in group_members(scim_url, "contractors")
    assert server_user(scim_url, "e2@example.com")["active"] is False  # type: ignore[index]
    assert server_user(scim_url, "e3@example.com") is not None  # renamed back
    assert server_user(scim_url, "stranger@example.com")["active"] is False  # type: ignore[index]
    assert server_user(scim_url, "breakglass@example.com")["active"] is True  # type: ignore[index]

    # again: everything is as desired (orphans disabled, the protected one held); then a
    # third run and an apply through counting connectors make no writes at all
    again = reconcile.reconcile_target(ws, "app", now=later + timedelta(hours=1))
    assert again.planned == 0 and again.new == 0
    assert {f["account"]: f["class"] for f in again.findings} == {
        stranger: "orphan",
        breakglass: "orphan",
    }
    counting = CountingConnector(ScimConnector("app", {"url": scim_url}))
    third = reconcile.reconcile_target(
        ws,
        "app",
        now=later + timedelta(hours=2),
        connector=counting,  # type: ignore[arg-type]
    )
    assert third.planned == 0 and third.changed == 0
    assert apply(ws, later + timedelta(hours=2), connectors={"app": counting}).writes == 0
    assert counting.writes == []
    audit_actions = set()
    with ws.sessions() as session:
        audit_actions = set(session.execute(select(models.AuditEvent.action)).scalars())
    assert {"reconcile.started", "reconcile.finished", "account.marked"} <= audit_actions


def hire_twins(ws: Workspace) -> None:
    """Two contractors, C1 and C2, sharing one email (in another case, with a trailing space)."""
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [
                LifecycleEvent(
                    i,
                    EventKind.HIRE,
                    NOW - timedelta(days=3),
                    NOW,
                    {"email": "Shared@Example.com ", "employment_type": "contractor"},
                )
                for i in ("C1", "C2")
            ],
            origin="test",
            now=NOW,
        )


def test_report_policy_ambiguity_case_and_marks(
    tmp_path: Path, scim_url: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    ws = workspace_for(tmp_path, scim_url, orphan="report")
    try:
        people(ws, "E1")
        hire_twins(ws)
        shared = raw_user(scim_url, "shared@example.com")
        loner = raw_user(scim_url, "loner@example.com")
        quiet = raw_user(scim_url, "quiet@example.com")
        e1 = raw_user(scim_url, " E1@EXAMPLE.com")  # matched by email despite case and spaces
    finally:
        ws.close()
    assert (
        cli(
            "--now",
            NOW.isoformat(),
            "marks",
            "set",
            "app",
            quiet,
            "--mark",
            "ignore",
            "--reason",
            "test account",
        ).code
        == 0
    )
    result = cli("--now", NOW.isoformat(), "reconcile", "--target", "app", "--json")
    assert result.code == 0, result.err
    report = result.json()["reports"][0]
    kinds = {f["account"]: (f["class"], f["remedy"]) for f in report["findings"]}
    assert kinds[shared] == ("unlinked", "report")
    assert kinds[loner] == ("orphan", "report")  # reported, nothing planned
    assert kinds[e1][0] == "drift" and quiet not in kinds and report["ignored"] == 1
    assert report["cases_opened"] == 1
    cases = cli("cases", "list", "--json").json()
    assert len(cases) == 1 and cases[0]["candidates"] == ["C1", "C2"]
    assert "matches 2 identities" in cases[0]["reason"]
    assert (
        cli(
            "--now",
            NOW.isoformat(),
            "cases",
            "resolve",
            str(cases[0]["id"]),
            "--identity",
            "C2",
            "--note",
            "asked HR",
        ).code
        == 0
    )
    again = cli("--now", NOW.isoformat(), "reconcile", "--target", "app", "--json").json()
    kinds = {f["account"]: f["class"] for f in again["reports"][0]["findings"]}
    assert shared not in kinds or kinds[shared] != "unlinked"  # linked to C2 now
    assert again["reports"][0]["cases_opened"] == 0
    marks = cli("marks", "list", "--json").json()
    assert [m["mark"] for m in marks] == ["ignore"]
    assert cli("marks", "set", "app", quiet, "--mark", "bogus", "--reason", "x").code != 0
    assert cli("marks", "clear", "app", quiet).code == 0


def test_killed_full_run_resumes_from_its_checkpoint(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    extra = ', connector: "tests.engine.test_reconcile:slow_scim", delay: 0.04'
    ws = workspace_for(tmp_path, scim_url, extra=extra)
    count = 60
    ids = [f"E{i}" for i in range(count)]
    people(ws, *ids)
    with httpx2.Client() as client:
        for i in ids:
            body = {"schemas": [USER_SCHEMA], "userName": f"{i.lower()}@example.com"}
            client.post(f"{scim_url}/Users", json=body).raise_for_status()
    env = {**os.environ, "PROVISOR_WORKSPACE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-c",
        "from provisor.cli import main; main()",
        "--now",
        NOW.isoformat(),
        "reconcile",
        "--target",
        "app",
        "--batch",
        "5",
        "--json",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    done = 0
    try:
        deadline = time.monotonic() + 60
        while done < 20:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the reconciliation made no progress"
            time.sleep(0.05)
            try:
                with ws.sessions() as session:
                    run = session.execute(select(models.ReconcileRun)).scalars().first()
                    done = int((run.checkpoint or {}).get("done", 0)) if run else 0
            except Exception:  # the other process holds the write lock for a moment
                continue
    finally:
        process.kill()
        process.wait()
    with ws.sessions() as session:
        run = session.execute(select(models.ReconcileRun)).scalar_one()
        assert run.status == "running" and 20 <= run.checkpoint["done"] < count
        stored = run.checkpoint["done"]
    resumed = reconcile.reconcile_target(
        ws, "app", now=NOW + timedelta(minutes=5), connector=ScimConnector("app", {"url": scim_url})
    )
    assert resumed.resumed and resumed.run == run.id and resumed.status == "completed"
    assert resumed.skipped >= stored and resumed.skipped + resumed.read == count
    assert resumed.new == count and resumed.gone == 0
    after_resume = snapshot(ws)
    assert len(after_resume) == count
    assert all(identity for _, identity, _, _, _ in after_resume)
    uninterrupted = reconcile.reconcile_target(
        ws,
        "app",
        now=NOW + timedelta(minutes=10),
        connector=ScimConnector("app", {"url": scim_url}),
    )
    assert not uninterrupted.resumed and uninterrupted.read == count
    assert (uninterrupted.new, uninterrupted.changed, uninterrupted.gone) == (0, 0, 0)
    assert snapshot(ws) == after_resume
    ws.close()
