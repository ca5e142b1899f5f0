"""A leaver's groups on a SCIM application whose membership filter cannot be trusted: the
application's real state against Provisor's claims in the journal, the debt and the evidence
bundle. Where a trustworthy read exists the access is really removed and verified; where the
application keeps it, nothing says verified, pass or no debt."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx2
import pytest
from sqlalchemy import select

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities, readpaths, reconcile
from provisor.engine.coverage import target_coverage
from provisor.engine.debt import debt_items
from provisor.engine.leavers import verify_leaver
from provisor.engine.workspace import Workspace
from provisor.store import models
from tests.connectors.faulty_proxy import FaultyProxy, Refuse
from tests.connectors.test_scim import make_group
from tests.connectors.test_scim_proof import (
    chain,
    no_members,
    server_groups,
    silently_empty,
    swallow_member_removals,
)
from tests.engine.test_reconcile import raw_patch, raw_user
from tests.engine.test_runner import NOW, apply, event, people, plan, server_user, someone_in

LATER = NOW.replace(hour=13)
# A change window starts 2 s before the last run started, written in whole seconds (earlier,
# never later): what was written this long before a run falls before the next window.
WINDOW_CLEAR = 3.2


@pytest.fixture
def leaver(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> Iterator[tuple[Workspace, FaultyProxy, str, str]]:
    """E1 and E2 provisioned with both groups (through the proxy, no deviation yet); E1 then
    terminated. Yields the workspace, the proxy, the server's own URL and E1's account."""
    ws, proxy, url = proxied
    people(ws, "E1", "E2")
    plan(ws)
    apply(ws)
    user = server_user(url, "e1@example.com")
    assert user is not None and server_groups(url, user["id"]) == {"staff", "engineering"}
    event(ws, "E1", EventKind.TERMINATE)
    yield ws, proxy, url, user["id"]


def move(ws: Workspace, identity: str, department: str, when: datetime) -> None:
    """A mover to ``department``, effective ``when``."""
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [LifecycleEvent(identity, EventKind.MOVE, when, when, {"department": department})],
            origin="test",
            now=when,
        )


def removal_statuses(ws: Workspace) -> dict[str, str]:
    with ws.sessions() as session:
        rows = session.execute(
            select(models.Operation).where(
                models.Operation.identity == "E1", models.Operation.kind == "remove-entitlement"
            )
        ).scalars()
        return {str(r.entitlement): r.status for r in rows}


def entitlement_debt(ws: Workspace) -> set[str]:
    with ws.sessions() as session:
        items = debt_items(ws, session, LATER, identity="E1")
    return {i.item for i in items if i.item.startswith("entitlement:")}


def test_filter_silently_empty_the_groups_are_really_removed(
    leaver: tuple[Workspace, FaultyProxy, str, str], tmp_path: Path
) -> None:
    ws, proxy, url, account = leaver
    proxy.on_response = silently_empty
    plan(ws)
    apply(ws)
    assert server_groups(url, account) == set()  # really removed, not skipped
    assert removal_statuses(ws) == {"staff": "verified", "engineering": "verified"}
    recorded = {p.path: p.status for p in readpaths.load(ws, "app")}
    assert recorded["member-filter"] != "trusted"  # E1 and E2 share both groups: no control
    assert recorded["group-listing"] == "trusted"


def test_filter_silently_empty_and_the_app_keeps_the_groups(
    leaver: tuple[Workspace, FaultyProxy, str, str], tmp_path: Path
) -> None:
    """The issue's case: the removals are accepted and not made, and the filter says the
    person is in no group. Provisor must not call anything gone."""
    ws, proxy, url, account = leaver
    proxy.on_response = silently_empty
    proxy.on_request = swallow_member_removals
    plan(ws)
    report = apply(ws)
    assert server_groups(url, account) == {"staff", "engineering"}  # the application's truth
    statuses = removal_statuses(ws)
    assert "verified" not in statuses.values(), statuses
    assert report.verified >= 1  # the disable is real and verified
    assert entitlement_debt(ws) == {"entitlement:staff", "entitlement:engineering"}
    written = verify_leaver(ws, "E1", now=lambda: LATER, out_dir=tmp_path / "out")
    assert written.outcome == "fail"
    layers = {
        (t["target"], x["layer"]): x["state"]
        for t in written.bundle["targets"]
        for x in t["layers"]
    }
    assert layers[("app", "entitlements")] == "still-present"


def test_no_membership_read_works_and_the_app_keeps_the_groups(
    leaver: tuple[Workspace, FaultyProxy, str, str], tmp_path: Path
) -> None:
    """Nothing on this application shows membership now (groups without members, a filter
    answering nothing) and it keeps the groups: unverifiable, never verified or pass. A new
    process, which never saw a membership itself, must not call them gone either."""
    ws, proxy, url, account = leaver
    with ws.sessions() as session, session.begin():
        session.query(models.TargetReadPath).delete()  # nothing learned before
    proxy.on_response = chain(no_members, silently_empty)
    proxy.on_request = swallow_member_removals
    plan(ws)
    apply(ws)
    assert server_groups(url, account) == {"staff", "engineering"}
    statuses = removal_statuses(ws)
    assert set(statuses.values()) == {"unverifiable"}, statuses
    assert entitlement_debt(ws) == {"entitlement:staff", "entitlement:engineering"}
    written = verify_leaver(ws, "E1", now=lambda: LATER, out_dir=tmp_path / "out")
    assert written.outcome != "pass"
    layers = {(t["target"], x["layer"]): x for t in written.bundle["targets"] for x in t["layers"]}
    assert layers[("app", "entitlements")]["state"] != "verified-removed"


def test_a_listing_shown_to_work_before_still_counts_when_no_group_has_members(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    """The only member of the only groups leaves: no group lists anyone now, but the group
    listing was shown to list members when it did, so the removal is proven."""
    ws, _, url = proxied
    people(ws, "E1")
    plan(ws)
    apply(ws)
    user = server_user(url, "e1@example.com")
    assert user is not None
    event(ws, "E1", EventKind.TERMINATE)
    plan(ws)
    apply(ws)
    assert server_groups(url, user["id"]) == set()
    assert removal_statuses(ws) == {"staff": "verified", "engineering": "verified"}
    recorded = {p.path: p for p in readpaths.load(ws, "app")}
    assert recorded["group-listing"].status == "trusted"
    assert httpx2.get(f"{url}/Groups").json()["totalResults"] == 2


def test_targets_check_and_coverage_show_what_was_shown(
    proxied: tuple[Workspace, FaultyProxy, str], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, proxy, _ = proxied
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(ws.path))
    people(ws, "E1")
    plan(ws)
    apply(ws)
    proxy.on_response = chain(no_members, silently_empty)
    remembered = cli("targets", "check", "app", "--json")
    assert remembered.code == 0, remembered.err
    paths = {p["path"]: p for p in remembered.json()["targets"][0]["paths"]}
    # the group listing was shown to list members when provisioning read it back
    assert paths["group-listing"]["status"] == "trusted"
    assert paths["group-listing"]["detail"].startswith("shown before: ")
    assert paths["member-filter"]["status"] != "trusted"
    with ws.sessions() as session, session.begin():
        session.query(models.TargetReadPath).delete()  # as if never shown
    blind = cli("targets", "check", "app", "--json")
    assert blind.code == 15, blind.err
    assert "trusted" not in {p["status"] for p in blind.json()["targets"][0]["paths"]}
    assert cli("coverage", "--json").json()["targets"][0]["layers"]["entitlements"] == "not shown"
    proxy.on_response = None
    table = cli("targets", "check")
    assert table.code == 0 and "group-listing" in table.out and "trusted" in table.out
    assert "Example:" in cli("targets", "check", "--help").out
    covered = {t["target"]: t for t in cli("coverage", "--json").json()["targets"]}
    assert covered["app"]["layers"]["entitlements"].startswith("read back (")
    assert cli("targets", "check", "nope").code == 5  # not found, as everywhere else


def test_a_mover_loses_the_old_group_when_the_new_one_fails(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    """The addition of the new department's group keeps failing; the old department's group
    is removed all the same, in the same run and in later ones."""
    ws, proxy, url = proxied
    people(ws, "E1")
    plan(ws)
    apply(ws)
    user = server_user(url, "e1@example.com")
    assert user is not None and server_groups(url, user["id"]) == {"staff", "engineering"}
    move(ws, "E1", "Sales", NOW)
    # the policy's staff rule stays; make the staff group's membership look missing so an
    # addition is planned, and have the application refuse additions
    with ws.sessions() as session, session.begin():
        row = session.execute(
            select(models.ObservedAccount).where(models.ObservedAccount.identity == "E1")
        ).scalar_one()
        session.query(models.ObservedEntitlement).filter(
            models.ObservedEntitlement.account_id == row.id,
            models.ObservedEntitlement.entitlement == "staff",
        ).delete()
    httpx2.patch(
        f"{url}/Groups/{group_id(url, 'staff')}",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "remove", "path": f'members[value eq "{user["id"]}"]'}],
        },
    ).raise_for_status()

    def refuse_additions(method: str, path: str, body: bytes) -> bytes:
        if method == "PATCH" and b'"add"' in body:
            raise Refuse(503, "additions are down")
        return body

    proxy.on_request = refuse_additions
    kinds = [(op.kind.value, op.entitlement) for op, _, _ in plan(ws).operations]
    assert ("add-entitlement", "staff") in kinds and ("remove-entitlement", "engineering") in kinds
    report = apply(ws)
    assert report.retrying == 1
    assert server_groups(url, user["id"]) == set()  # engineering removed regardless
    assert removal_statuses(ws) == {"engineering": "verified"}


def group_id(url: str, name: str) -> str:
    found = httpx2.get(f"{url}/Groups", params={"filter": f'displayName eq "{name}"'}).json()
    return str(found["Resources"][0]["id"])


def test_verify_leaver_fails_on_an_unreadable_target_the_store_shows_enabled(
    leaver: tuple[Workspace, FaultyProxy, str, str], tmp_path: Path
) -> None:
    """The application cannot be read now, and the last read showed the leaver's account
    enabled with both groups: that is a fail, not merely incomplete."""
    ws, proxy, _, account = leaver
    proxy.close()  # the target stops answering
    written = verify_leaver(ws, "E1", now=lambda: LATER, out_dir=tmp_path / "out")
    assert written.outcome == "fail"
    layers = {(t["target"], x["layer"]): x for t in written.bundle["targets"] for x in t["layers"]}
    assert layers[("app", "account")]["state"] == "still-present"
    assert f"account {account} is enabled (as last observed" in layers[("app", "account")]["why"]
    assert layers[("app", "entitlements")]["state"] == "still-present"
    assert layers[("app", "sessions")]["state"] == "unverifiable"


def no_changes(method: str, path: str, status: int, content: bytes) -> bytes:
    """The application answers every ``meta.lastModified`` filter with nothing."""
    if method == "GET" and "meta.lastModified" in unquote(path) and status == 200:
        return silently_empty_list()
    return content


def silently_empty_list() -> bytes:
    return json.dumps(
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": 0,
            "Resources": [],
        }
    ).encode()


def test_an_ignored_change_filter_is_caught_by_its_canary_and_read_in_full(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    """The issue's case: after a leaver is disabled by Provisor, someone enables them again
    and makes an admin account by hand; the application answers the change listing with
    nothing. The leaver's disable is a canary the listing must show: it does not, so the run
    reads everything and finds both changes."""
    ws, proxy, url = proxied
    start = datetime.now(UTC)
    people(ws, "E1", "E2", now=start)
    plan(ws, start)
    apply(ws, start)
    assert reconcile.reconcile_target(ws, "app", now=datetime.now(UTC)).mode == "full"
    time.sleep(2.2)
    left = datetime.now(UTC)
    event(ws, "E1", EventKind.TERMINATE, now=left)
    plan(ws, left)
    apply(ws, left)  # disabled and read back: a write of Provisor's in the next window
    user = server_user(url, "e1@example.com")
    assert user is not None and user["active"] is False
    raw_patch(url, f"Users/{user['id']}", "replace", "active", True)
    raw_user(url, "root-by-hand@example.com")
    proxy.on_response = no_changes
    report = reconcile.reconcile_target(ws, "app", now=datetime.now(UTC), full=False)
    assert report.mode == "full" and report.status == "completed"
    assert report.proof is not None and "cannot be trusted here; read in full" in report.proof
    assert report.classes.get("terminated-active") == 1 and report.classes.get("orphan") == 1
    with ws.sessions() as session:
        runs = session.execute(
            select(models.ReconcileRun).order_by(models.ReconcileRun.id)
        ).scalars()
        assert [(r.mode, r.status) for r in runs][-2:] == [
            ("incremental", "failed"),
            ("full", "completed"),
        ]
        items = debt_items(ws, session, datetime.now(UTC), identity="E1")
    assert ("account", "enabled") in {(i.item, i.state) for i in items}


def test_a_change_filter_never_shown_to_work_is_not_relied_on(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    """No write of Provisor's in the window, and no incremental run has ever passed: the run
    reads in full rather than trusting a listing that answered nothing."""
    ws, proxy, url = proxied
    start = datetime.now(UTC)
    people(ws, "E1", now=start)
    plan(ws, start)
    apply(ws, start)
    time.sleep(WINDOW_CLEAR)  # the create falls before the next window
    reconcile.reconcile_target(ws, "app", now=datetime.now(UTC))
    time.sleep(2.2)
    raw_user(url, "root-by-hand@example.com")
    proxy.on_response = no_changes
    report = reconcile.reconcile_target(ws, "app", now=datetime.now(UTC), full=False)
    assert report.mode == "full" and report.classes.get("orphan") == 1
    assert report.proof is not None and "never been shown" in report.proof
    covered = target_coverage(ws, ws.compiled.targets["app"])
    assert "changes-since (not shown yet)" in covered.read_back


def test_a_disabled_privileged_account_named_like_a_new_hire_is_not_adopted(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    """An old, disabled account holding admins carries the new hire's login. Provisor must not
    take it over (nor enable it, nor rename it): a case is opened and nothing is written."""
    ws, _, url = proxied
    make_group(url, "admins")
    old = raw_user(url, "e3@example.com", active=False, displayName="Someone Else")
    raw_patch(url, f"Groups/{group_id(url, 'admins')}", "add", "members", [{"value": old}])
    people(ws, "E3")
    plan(ws)
    report = apply(ws)
    assert report.failed >= 1 and "not taken over" in report.errors[0]
    assert "it is disabled" in report.errors[0] and "admins" in report.errors[0]
    user = httpx2.get(f"{url}/Users/{old}").json()
    assert user["active"] is False and "externalId" not in user
    assert user["displayName"] == "Someone Else"
    assert server_groups(url, old) == {"admins"}
    with ws.sessions() as session:
        case = session.execute(select(models.CorrelationCase)).scalar_one()
        assert (case.account, case.status, case.candidates) == (old, "open", ["E3"])
    plan(ws)
    apply(ws)  # later runs write nothing to it either, and open no second case
    assert httpx2.get(f"{url}/Users/{old}").json()["active"] is False
    assert server_groups(url, old) == {"admins"}
    with ws.sessions() as session:
        assert len(session.execute(select(models.CorrelationCase)).all()) == 1
        row = session.execute(
            select(models.ObservedAccount).where(models.ObservedAccount.account == old)
        ).scalar_one()
        assert row.identity is None  # stored as found, linked to nobody until decided


def test_an_enabled_account_holding_nothing_extra_is_adopted(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    ws, _, url = proxied
    someone_in(url, "staff")  # the group listing is seen to list members
    existing = raw_user(url, "e4@example.com", displayName="Person E4")
    people(ws, "E4")
    plan(ws)
    assert apply(ws).failed == 0
    user = httpx2.get(f"{url}/Users/{existing}").json()
    assert user["externalId"] == "E4" and server_groups(url, existing) == {"staff", "engineering"}


def test_reconciliation_puts_parked_removals_back_in_line(
    leaver: tuple[Workspace, FaultyProxy, str, str],
) -> None:
    """The leaver's disable was refused and parked; reconciliation still finds the account
    active, so the removal goes back in line (not 'remedy auto' with nothing planned)."""
    ws, proxy, url, account = leaver

    def forbid(method: str, path: str, body: bytes) -> bytes:
        if method in ("PATCH", "PUT"):
            raise Refuse(403, "read-only token")
        return body

    proxy.on_request = forbid
    plan(ws)
    apply(ws)
    assert removal_statuses(ws) == {"staff": "failed", "engineering": "failed"}
    parked = plan(ws).parked  # the plan shows parked work with its reason
    assert len(parked) == 3 and all("read-only token" in why for why in parked.values())
    proxy.on_request = None
    report = reconcile.reconcile_target(ws, "app", now=NOW + timedelta(hours=1))
    assert report.classes.get("terminated-active") == 1
    assert report.requeued >= 3  # the disable and both group removals
    apply(ws, NOW + timedelta(hours=2))
    assert server_groups(url, account) == set()
    user = server_user(url, "e1@example.com")
    assert user is not None and user["active"] is False


def no_group_changes(method: str, path: str, status: int, content: bytes) -> bytes:
    """The groups' change filter answers nothing; the users' one works."""
    if method == "GET" and "/Groups" in path and "meta.lastModified" in unquote(path):
        return silently_empty_list()
    return content


def test_a_membership_change_the_group_listing_hides_is_caught(
    proxied: tuple[Workspace, FaultyProxy, str],
) -> None:
    """Provisor moves a person out of engineering (a membership write only): the change
    listing of groups answers nothing, so neither the account nor the group shows it. The
    run is read in full, and finds what was changed by hand in the same window."""
    ws, proxy, url = proxied
    start = datetime.now(UTC)
    people(ws, "E1", "E2", now=start)
    plan(ws, start)
    apply(ws, start)
    time.sleep(WINDOW_CLEAR)  # the creates fall before the next window
    assert reconcile.reconcile_target(ws, "app", now=datetime.now(UTC)).mode == "full"
    time.sleep(2.2)
    moved = datetime.now(UTC)
    move(ws, "E1", "Sales", moved)
    plan(ws, moved)
    apply(ws, moved)
    e2 = server_user(url, "e2@example.com")
    assert e2 is not None
    make_group(url, "admins")
    raw_patch(url, f"Groups/{group_id(url, 'admins')}", "add", "members", [{"value": e2["id"]}])
    proxy.on_response = no_group_changes
    report = reconcile.reconcile_target(ws, "app", now=datetime.now(UTC), full=False)
    assert report.mode == "full" and report.proof is not None
    assert "memberships" in report.proof and "engineering of" in report.proof
    found = {f["account"]: f["detail"] for f in report.findings}
    assert "extra admins" in found[e2["id"]]
