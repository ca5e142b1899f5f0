"""A rescinded termination against a real SCIM server: a target whose delete grace (7 days) is
shorter than the rescind window (30) keeps the leaver's account disabled until the window
passes, so a rescind on day 10 finds the same account and gives back the same groups."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine.workspace import Workspace, check_policy
from tests.engine.test_move_grace import groups_of, record, scim_workspace
from tests.engine.test_runner import NOW, POLICY, apply, people, plan, server_user


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    workspace = scim_workspace(tmp_path, scim_url, POLICY)
    yield workspace
    workspace.close()


def test_terminate_apply_rescind_apply_gives_back_the_same_account(
    ws: Workspace, scim_url: str
) -> None:
    people(ws, "E1")
    plan(ws)
    apply(ws)
    before = server_user(scim_url, "e1@example.com")
    assert before is not None and groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}

    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, NOW))
    plan(ws)
    apply(ws)
    day10 = NOW + timedelta(days=10)  # past the 7 grace days, within the 30-day window
    plan(ws, day10)
    apply(ws, day10)
    kept = server_user(scim_url, "e1@example.com")
    assert kept is not None and kept["active"] is False  # disabled, not deleted
    assert groups_of(scim_url, "e1@example.com") == set()

    record(ws, LifecycleEvent("E1", EventKind.RESCIND, day10, day10))
    ops = [
        (op.kind.value, op.entitlement)
        for op, _, _ in plan(ws, day10).operations
        if op.target == "app"
    ]
    assert ("create", None) not in ops and ("enable", None) in ops
    assert apply(ws, day10).failed == 0
    after = server_user(scim_url, "e1@example.com")
    assert after is not None and after["id"] == before["id"] and after["active"] is True
    assert groups_of(scim_url, "e1@example.com") == {"staff", "engineering"}


def test_policy_check_warns_of_a_grace_shorter_than_the_rescind_window(ws: Workspace) -> None:
    warnings = check_policy(ws.path)["warnings"]
    assert (
        len(warnings) == 1
        and "targets[0] app: grace_days 7 is shorter than the rescind" in (warnings[0])
    )
    assert "kept disabled 30 days" in warnings[0]
