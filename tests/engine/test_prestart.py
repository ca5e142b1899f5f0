"""Pre-start provisioning against a real SCIM server and slapd: a hire's account is made the
target's ``prestart_days`` before the start, locked (never enabled before it), enabled and
verified at the start; an offer withdrawn before the start takes it away as from any leaver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities, views
from provisor.engine.workspace import Workspace
from provisor.sandbox.slapd import Slapd
from provisor.store import models
from tests.connectors.test_ldap import directory_workspace, raw_entry, slapd  # noqa: F401
from tests.engine.test_move_grace import LDAP_RULES, groups_of, record, scim_workspace
from tests.engine.test_runner import NOW, POLICY, apply, plan, server_user

PRESTART = POLICY.replace("    grace_days: 7\n", "    grace_days: 7\n    prestart_days: 3\n")
START = NOW + timedelta(days=10)


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    workspace = scim_workspace(tmp_path, scim_url, PRESTART)
    yield workspace
    workspace.close()


def hire(ws: Workspace, who: str) -> None:
    attributes = {
        "name": f"Person {who}",
        "email": f"{who.lower()}@example.com",
        "employment_type": "employee",
        "department": "Engineering",
    }
    record(ws, LifecycleEvent(who, EventKind.HIRE, START, NOW, attributes))


def tick(ws: Workspace, at: datetime) -> None:
    with ws.sessions() as session, session.begin():
        identities.tick(session, ws.config, now=at)


def review(ws: Workspace, who: str) -> tuple[datetime | None, datetime | None]:
    """(next change, review) of ``who``."""
    with ws.sessions() as session:
        found = session.execute(
            select(models.Identity.next_change_at, models.Identity.review_at).where(
                models.Identity.external_id == who
            )
        ).one()
        return found[0], found[1]


def test_an_account_made_before_the_start_is_locked_until_it(ws: Workspace, scim_url: str) -> None:
    hire(ws, "E9")
    assert [op for op, _, _ in plan(ws).operations if op.target == "app"] == []
    window = START - timedelta(days=3)
    # planned again when the window opens; the next change is still the start
    assert review(ws, "E9") == (START, window)

    tick(ws, window)
    ops = [(op.kind.value, op.entitlement) for op, _, _ in plan(ws, window).operations]
    assert ("create", None) in ops and ("disable", None) in ops
    done = apply(ws, window)
    assert done.failed == 0
    user = server_user(scim_url, "e9@example.com")
    assert user is not None and user["active"] is False  # made locked, never enabled
    assert groups_of(scim_url, "e9@example.com") == {"staff", "engineering"}
    why = views.explain_identity(ws, "E9", "app", now=window)
    assert why["granted"] and not why["enabled"]
    assert why["why_not"] == ["locked until the start, 2026-06-11 12:00 UTC"]

    tick(ws, START)  # the start: active, enabled and verified
    ops = [(op.kind.value, op.entitlement) for op, _, _ in plan(ws, START).operations]
    assert ops.count(("enable", None)) == 1
    assert apply(ws, START).failed == 0
    user = server_user(scim_url, "e9@example.com")
    assert user is not None and user["active"] is True


def test_a_withdrawn_offer_takes_away_what_was_made_ahead(ws: Workspace, scim_url: str) -> None:
    """As for any leaver, by the target's leaver action: disabled and stripped at once, deleted
    after its grace (an account matched rather than made by Provisor is never deleted early)."""
    hire(ws, "E8")
    window = START - timedelta(days=3)
    plan(ws)
    tick(ws, window)
    plan(ws, window)
    apply(ws, window)
    assert server_user(scim_url, "e8@example.com") is not None
    withdrawn = window + timedelta(days=1)
    record(ws, LifecycleEvent("E8", EventKind.TERMINATE, withdrawn, withdrawn))
    ops = [op.kind.value for op, _, _ in plan(ws, withdrawn).operations if op.target == "app"]
    assert ops[-1] == "delete"
    assert apply(ws, withdrawn).failed == 0
    user = server_user(scim_url, "e8@example.com")
    assert user is not None and user["active"] is False
    assert groups_of(scim_url, "e8@example.com") == set()
    apply(ws, withdrawn + timedelta(days=31))  # 7 grace days; the rescind window is 30
    assert server_user(scim_url, "e8@example.com") is None


def test_in_a_directory_the_entry_is_made_locked_then_unlocked_at_the_start(
    tmp_path: Path,
    slapd: Slapd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws, space = directory_workspace(
        tmp_path, slapd, monkeypatch, ("staff", "engineering"), LDAP_RULES, "    prestart_days: 3\n"
    )
    try:
        hire(ws, "E9")
        window = START - timedelta(days=3)
        tick(ws, window)
        plan(ws, window)
        assert apply(ws, window).failed == 0
        dn = f"uid=e9@example.com,{space.people}"
        locked = raw_entry(space.server, dn, "pwdAccountLockedTime") or {}
        assert locked.get("pwdaccountlockedtime")  # made, locked, in its groups
        assert dn in space.members("engineering") and dn in space.members("staff")
        tick(ws, START)
        plan(ws, START)
        assert apply(ws, START).failed == 0
        assert not (raw_entry(space.server, dn, "pwdAccountLockedTime") or {}).get(
            "pwdaccountlockedtime"
        )
    finally:
        ws.close()
