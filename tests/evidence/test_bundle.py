"""Proof of removal against a real SCIM server and a manual target: every target and layer,
changes made behind Provisor's back, tampering after the fact, sampled termination tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select, text

from provisor.domain.lifecycle import EventKind
from provisor.engine import tasks
from provisor.engine.leavers import verify_leaver
from provisor.engine.workspace import Workspace
from provisor.sandbox import free_port
from provisor.store import models
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import (
    NOW,
    apply,
    event,
    people,
    plan,
    server_user,
    setup_workspace,
)

LATER = NOW + timedelta(hours=1)
HIRED = NOW - timedelta(days=1)  # joiners provisioned the day before the leavers leave


def finish_tasks(ws: Workspace, now: datetime) -> None:
    """Every open manual task done by one person and verified by another."""
    with ws.sessions() as session, session.begin():
        for view in tasks.list_tasks(session, now):
            if view.status == "open":
                tasks.complete(session, view.id, by="olga", evidence="RITM1", now=now)
    with ws.sessions() as session, session.begin():
        for view in tasks.list_tasks(session, now):
            tasks.verify(session, view.id, by="pete", now=now)


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """E1 and E2 provisioned in the SCIM application and, by people, in the manual one."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    workspace = setup_workspace(tmp_path, scim_url)
    people(workspace, "E1", "E2", now=HIRED)
    plan(workspace, HIRED)
    apply(workspace, HIRED)
    finish_tasks(workspace, HIRED)
    yield workspace
    workspace.close()


def leave(ws: Workspace, *ids: str) -> None:
    """Terminate, plan, apply; the manual target's removal tasks done and attested."""
    for identity in ids:
        event(ws, identity, EventKind.TERMINATE)
    plan(ws)
    apply(ws)
    finish_tasks(ws, NOW)


def states(bundle: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (t["target"], layer["layer"]): layer["state"]
        for t in bundle["targets"]
        for layer in t["layers"]
    }


def test_removed_leaver_lists_every_target_and_layer(ws: Workspace, tmp_path: Path) -> None:
    leave(ws, "E1")
    written = verify_leaver(ws, "E1", now=lambda: LATER, out_dir=tmp_path / "out")
    bundle = written.bundle
    assert states(bundle) == {
        ("app", "account"): "verified-removed",
        ("app", "entitlements"): "verified-removed",
        ("app", "sessions"): "unverifiable",
        ("paper", "account"): "verified-removed",
        ("paper", "entitlements"): "verified-removed",
        ("paper", "sessions"): "verified-removed",
    }
    assert written.outcome == "pass"  # SCIM sessions: a blind spot of the target, said so
    app, paper = bundle["targets"]
    assert "disabled; deletion due 2026-07-01" in app["layers"][0]["why"]
    assert "no session interface" in app["layers"][2]["why"] and app["layers"][2]["structural"]
    assert app["accounts"][0]["enabled"] is False and app["accounts"][0]["entitlements"] == []
    kinds = [(o["kind"], o["status"]) for o in app["operations"]]
    assert ("disable", "verified") in kinds and ("delete", "pending") in kinds
    assert ("revoke-sessions", "unverifiable") in kinds
    assert "verified by pete (attestation)" in paper["layers"][0]["why"]
    assert {t["status"] for t in paper["tasks"]} == {"verified"}
    # the files: JSON whose hash the audit log holds, and a page for people
    data = written.json_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == written.sha256
    assert json.loads(data) == bundle
    assert written.json_path.name.startswith("leaver-E1-20260601T130000Z")
    page = written.html_path.read_text()
    assert "<td>still-present</td>" not in page and written.sha256 in page
    assert bundle["audit"]["chain_verified"] is True
    with ws.sessions() as session:
        recorded = session.execute(
            select(models.AuditEvent).where(models.AuditEvent.action == "evidence.leaver")
        ).scalar_one()
        head = json.loads(recorded.data)
        assert head["sha256"] == written.sha256
        assert head["head_hash"] == bundle["audit"]["head_hash"] == recorded.prev_hash
        assert head["head_seq"] == recorded.seq - 1


def test_leaver_re_enabled_behind_our_back_is_still_present(
    ws: Workspace, scim_url: str, tmp_path: Path
) -> None:
    leave(ws, "E1")
    user = server_user(scim_url, "e1@example.com")
    assert user is not None and user["active"] is False
    httpx2.patch(
        f"{scim_url}/Users/{user['id']}",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": True}],
        },
    ).raise_for_status()
    written = verify_leaver(ws, "E1", now=lambda: LATER, out_dir=tmp_path / "out")
    assert written.outcome == "fail"
    assert states(written.bundle)[("app", "account")] == "still-present"
    assert written.failures == [f"app account: still-present: account {user['id']} is enabled"]
    assert "<td>still-present</td>" in written.html_path.read_text()


def test_unattested_manual_and_unreachable_targets_are_unverifiable_with_why(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    dead = f"http://127.0.0.1:{free_port()}/v2"
    workspace = setup_workspace(tmp_path, dead, timeout=1)
    try:
        people(workspace, "E1", now=HIRED)
        plan(workspace, HIRED)
        apply(workspace, HIRED)  # the SCIM application is down; the manual tasks are opened
        finish_tasks(workspace, HIRED)
        event(workspace, "E1", EventKind.TERMINATE)
        plan(workspace)
        apply(workspace)  # removal tasks opened, nobody did them
    finally:
        workspace.close()
    result = cli("--now", LATER.isoformat(), "verify-leaver", "E1", "--json")
    assert result.code == 13, result.err  # nothing present, but not everything verified
    bundle = result.json()["bundle"]
    assert result.json()["outcome"] == "incomplete"
    app = bundle["targets"][0]
    assert app["error"].startswith("reading the target failed")
    assert {layer["state"] for layer in app["layers"]} == {"unverifiable"}
    paper = bundle["targets"][1]
    # observed (attested) before the termination: nothing since shows it gone
    assert all("before the termination" in layer["why"] for layer in paper["layers"])
    assert {layer["state"] for layer in paper["layers"]} == {"unverifiable"}
    assert cli("verify-leaver", "E404").code == 5
    assert cli("verify-leaver").code == 2


def test_tampering_after_the_bundle_is_detected(ws: Workspace, cli: Any) -> None:
    leave(ws, "E1")
    result = cli("--now", LATER.isoformat(), "verify-leaver", "E1")
    assert result.code == 0, result.err
    assert "Outcome: pass" in result.out and "verified-removed" in result.out
    assert cli("audit", "verify").code == 0
    with ws.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE audit_events SET data = replace(data, 'pass', 'fail') "
                "WHERE action = 'evidence.leaver'"
            )
        )
    tampered = cli("audit", "verify")
    assert tampered.code == 8 and "TAMPERED" in tampered.err


def test_sampled_termination_tests_are_repeatable(ws: Workspace, cli: Any, tmp_path: Path) -> None:
    leave(ws, "E1", "E2")
    out = tmp_path / "sampled"
    args = ["--now", LATER.isoformat(), "verify-leaver", "--sample", "1", "--since", "2026-05-01"]
    first = cli(*args, "--seed", "7", "--out", str(out), "--json").json()
    again = cli(*args, "--seed", "7", "--out", str(out), "--json").json()
    assert first["population"] == 2 and first["sampled"] == 1
    assert first["results"][0]["identity"] == again["results"][0]["identity"]
    every = cli(*args[:-4], "--sample", "5", "--since", "2026-05-01", "--out", str(out))
    assert every.code == 0, every.err
    assert "Sampled 2 of 2 leavers" in every.out and "2 pass, 0 incomplete, 0 fail" in every.out
    assert len(list(out.glob("leaver-*.json"))) == 4  # same second: new files, none rewritten
    assert len(list(out.glob("leaver-*.html"))) == 4
    none = cli(*args[:-4], "--sample", "3", "--since", "2026-07-01", "--json").json()
    assert none["population"] == 0 and none["sampled"] == 0
    assert cli(*args[:-4], "--sample", "3").code == 2  # --since is required
    assert "Example:" in cli("verify-leaver", "--help").out


def test_a_leaver_still_active_is_refused(ws: Workspace, tmp_path: Path) -> None:
    from provisor.errors import LifecycleError

    with pytest.raises(LifecycleError, match="E1 is active, not terminated"):
        verify_leaver(ws, "E1", now=lambda: LATER, out_dir=tmp_path)


def test_bundle_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    """Ids that read alike as file names (``X/1``, ``X_1``) and bundles of the same second get
    files of their own, readable by the owner only."""
    from provisor.engine.leavers import _file_base, _new_files

    out = tmp_path / "evidence"
    made = [_new_files(out, _file_base(i, NOW)) for i in ("X/1", "X_1", "X_1")]
    paths = [p for pair in made for p in pair]
    assert len(set(paths)) == 6 and all(p.exists() for p in paths)
    assert made[2][0].name.endswith("-2.json")  # same identity, same second
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o600}
    assert out.stat().st_mode & 0o777 == 0o700
