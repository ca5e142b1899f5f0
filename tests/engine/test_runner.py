"""The journal runner against a real SCIM server: verified by read-back, idempotent, retried."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select

from provisor.connectors.base import AccountSpec
from provisor.connectors.scim import ScimConnector
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.engine.connections import Pool
from provisor.engine.planner import sync_journal
from provisor.engine.runner import Runner, backoff
from provisor.engine.runner import runner as runner_module
from provisor.engine.workspace import Workspace
from provisor.errors import PolicyError
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.test_scim import make_group

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    leaver_action: delete
    grace_days: 7
    connection: {{url: "{url}", timeout: {timeout}}}
    entitlements: [{{name: staff}}, {{name: engineering}}]
  - name: paper
    class: manual
    owner: finance-ops
    entitlements: [{{name: viewer}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}, {{target: paper, entitlements: [viewer]}}]
  - name: engineering
    when: {{attr: department, equals: Engineering}}
    grant: [{{target: app, entitlements: [engineering]}}]
"""


def setup_workspace(folder: Path, url: str, timeout: float = 3) -> Workspace:
    return scratch_workspace(folder, POLICY.format(url=url, timeout=timeout))


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    workspace = setup_workspace(tmp_path, scim_url)
    yield workspace
    workspace.close()


def people(ws: Workspace, *ids: str, now: datetime = NOW) -> None:
    events = [
        LifecycleEvent(
            i,
            EventKind.HIRE,
            now - timedelta(days=30),
            now,
            {
                "name": f"Person {i}",
                "email": f"{i.lower()}@example.com",
                "employment_type": "employee",
                "department": "Engineering",
            },
        )
        for i in ids
    ]
    with ws.sessions() as session, session.begin():
        identities.record_events(session, ws.config, events, origin="test", now=now)


def event(ws: Workspace, identity: str, kind: EventKind, now: datetime = NOW) -> None:
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [LifecycleEvent(identity, kind, now, now)],
            origin="test",
            now=now,
            strict=True,
        )


def plan(ws: Workspace, now: datetime = NOW) -> Any:
    with ws.sessions() as session, session.begin():
        return sync_journal(ws, session, now=now)


def apply(ws: Workspace, now: datetime = NOW, **kwargs: Any) -> Any:
    runner = Runner(ws, rng=random.Random(1), **kwargs)
    try:
        return runner.apply(now=lambda: now)
    finally:
        runner.close()


def statuses(ws: Workspace) -> dict[str, int]:
    with ws.sessions() as session:
        found: dict[str, int] = {}
        for (status,) in session.execute(select(models.Operation.status)):
            found[status] = found.get(status, 0) + 1
        return found


def server_user(url: str, user_name: str) -> dict[str, Any] | None:
    response = httpx2.get(f"{url}/Users", params={"filter": f'userName eq "{user_name}"'})
    resources = response.json().get("Resources", [])
    return resources[0] if resources else None


def test_joiners_are_created_verified_and_rerun_writes_nothing(
    ws: Workspace, scim_url: str
) -> None:
    people(ws, "E1", "E2")
    plan(ws)
    report = apply(ws)
    assert report.verified == 6 and report.failed == 0  # 2 x (create + 2 groups)
    assert report.tasks_opened == 4 and report.no_connector == {}  # paper is manual
    user = server_user(scim_url, "e1@example.com")
    assert user is not None and user["externalId"] == "E1"
    assert plan(ws).operations == [
        (op, s, i) for op, s, i in plan(ws).operations if op.target == "paper"
    ]
    again = apply(ws)
    assert again.writes == 0 and again.verified == 0
    assert statuses(ws)["verified"] == 6


def test_leaver_is_disabled_stripped_then_deleted_after_grace(ws: Workspace, scim_url: str) -> None:
    people(ws, "E1")
    plan(ws)
    apply(ws)
    event(ws, "E1", EventKind.TERMINATE)
    ops = [op.kind.value for op, _, _ in plan(ws).operations if op.target == "app"]
    assert ops == [
        "revoke-sessions",
        "disable",
        "remove-entitlement",
        "remove-entitlement",
        "delete",
    ]
    first = apply(ws)
    assert first.unverifiable == 1  # SCIM has no session interface: said, not claimed
    assert first.verified == 3 and first.waiting >= 1  # delete waits for the grace period
    user = server_user(scim_url, "e1@example.com")
    assert user is not None and user["active"] is False
    # 7 grace days, but the 30-day rescind window is longer: kept (disabled) until it passes
    assert apply(ws, NOW + timedelta(days=8)).verified == 0
    assert server_user(scim_url, "e1@example.com") is not None
    later = NOW + timedelta(days=31)
    done = apply(ws, later)
    assert done.verified == 1
    assert server_user(scim_url, "e1@example.com") is None
    with ws.sessions() as session:
        assert (
            session.execute(
                select(models.ObservedAccount).where(
                    models.ObservedAccount.identity == "E1", models.ObservedAccount.target == "app"
                )
            ).first()
            is None
        )


def test_existing_account_is_adopted_or_clash_reported(ws: Workspace, scim_url: str) -> None:
    own = ScimConnector("app", {"url": scim_url})
    own.create(AccountSpec("E1", "e1@example.com"))
    own.create(AccountSpec("X9", "e2@example.com"))
    own.close()
    people(ws, "E1", "E2")
    plan(ws)
    report = apply(ws)
    assert report.failed == 1
    assert "belongs to X9, not E2" in report.errors[0]
    with ws.sessions() as session:
        created = session.execute(
            select(models.Operation).where(
                models.Operation.identity == "E1",
                models.Operation.target == "app",
                models.Operation.kind == "create",
            )
        ).scalar_one()
    assert created.status == "verified" and created.last_error == (
        "already as intended; nothing written"
    )


def test_unreachable_target_is_retried_then_parked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ws = setup_workspace(tmp_path, f"http://127.0.0.1:{port}/v2")
    try:
        people(ws, "E1")
        plan(ws)
        first = apply(ws, max_attempts=3)
        assert first.retrying == 1 and first.waiting == 4  # 2 behind the create, 2 manual
        when = NOW
        for _ in range(2):
            when += timedelta(hours=1)
            apply(ws, when, max_attempts=3)
        with ws.sessions() as session:
            create = session.execute(
                select(models.Operation).where(
                    models.Operation.target == "app", models.Operation.kind == "create"
                )
            ).scalar_one()
        assert create.status == "failed" and create.attempts == 3
        assert "ConnectError" in (create.last_error or "")
    finally:
        ws.close()


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(3)
    delays = [backoff(n, None, rng) for n in range(1, 6)]
    assert all(0.5 <= d / (2.0 * 2**n) <= 1.5 for n, d in enumerate(delays))
    assert backoff(4, 12.0, rng) == 12.0


def test_changed_name_and_email_are_updated_and_renamed(ws: Workspace, scim_url: str) -> None:
    people(ws, "E1")
    plan(ws)
    apply(ws)
    later = NOW + timedelta(days=1)
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [
                LifecycleEvent(
                    "E1",
                    EventKind.MOVE,
                    later,
                    later,
                    {"name": "Person Renamed", "email": "renamed@example.com"},
                )
            ],
            origin="test",
            now=later,
            strict=True,
        )
    ops = [(op.kind.value, op.reason) for op, _, _ in plan(ws, later).operations]
    updates = [reason for kind, reason in ops if kind == "update"]
    assert len(updates) == 1 and "renamed@example.com" in updates[0]
    report = apply(ws, later)
    assert report.failed == 0 and report.writes == 1
    user = server_user(scim_url, "renamed@example.com")
    assert user is not None and user["displayName"] == "Person Renamed"
    assert server_user(scim_url, "e1@example.com") is None
    assert [op for op, _, _ in plan(ws, later).operations if op.target == "app"] == []


def someone_in(url: str, group: str) -> None:
    """Another person in ``group``, so the group listing shows it lists members: an account
    found by name is taken over only when its memberships can be read."""
    made = httpx2.post(
        f"{url}/Users",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "x@x.org"},
    ).json()["id"]
    found = httpx2.get(f"{url}/Groups", params={"filter": f'displayName eq "{group}"'}).json()
    group_id = found["Resources"][0]["id"]
    httpx2.patch(
        f"{url}/Groups/{group_id}",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": made}]}],
        },
    ).raise_for_status()


def test_account_adopted_by_name_is_stamped_with_the_identity_id(
    ws: Workspace, scim_url: str
) -> None:
    someone_in(scim_url, "staff")
    response = httpx2.post(
        f"{scim_url}/Users",
        json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "e1@example.com",
        },
    )
    assert response.status_code == 201
    people(ws, "E1")
    plan(ws)
    report = apply(ws)
    assert report.failed == 0
    user = server_user(scim_url, "e1@example.com")
    assert user is not None and user["externalId"] == "E1"
    assert user["displayName"] == "Person E1"
    assert apply(ws).writes == 0


def test_rate_limit_paces_every_http_request(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisor.engine import runner as runner_module
    from tests.connectors.faulty_proxy import FaultyProxy

    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    proxy = FaultyProxy(scim_url)
    policy = POLICY.format(url=proxy.url, timeout=3).replace(
        "    grace_days: 7\n", "    grace_days: 7\n    rate_limit: 1000\n", 1
    )
    workspace = scratch_workspace(tmp_path, policy)
    spent: list[int] = []
    original = runner_module.TokenBucket.acquire

    def counted(self: Any) -> None:
        spent.append(1)
        original(self)

    monkeypatch.setattr(runner_module.TokenBucket, "acquire", counted)
    try:
        people(workspace, "E1", "E2")
        plan(workspace)
        report = apply(workspace)
        assert report.verified == 6
    finally:
        workspace.close()
        proxy.close()
    assert len(spent) == len(proxy.requests) > 6  # one token per request, not per operation


def test_changed_only_plans_just_the_changed_identities(ws: Workspace) -> None:
    people(ws, "E1", "E2", "E3")
    first = plan(ws)
    assert {op.identity for op, _, _ in first.operations} == {"E1", "E2", "E3"}
    assert plan_changed(ws).operations == []  # nobody changed since
    e2_work = sum(1 for op, _, _ in first.operations if op.identity == "E2")
    event(ws, "E2", EventKind.TERMINATE)
    again = plan_changed(ws)
    assert again.operations == [] and again.cancelled == e2_work  # E2's joiner work is moot
    with ws.sessions() as session:  # the others' pending work is untouched
        pending = session.execute(
            select(models.Operation.identity).where(models.Operation.status == "pending")
        ).scalars()
        assert {"E1", "E3"} <= set(pending)


def plan_changed(ws: Workspace, now: datetime = NOW) -> Any:
    with ws.sessions() as session, session.begin():
        return sync_journal(ws, session, now=now, changed_only=True)


def test_refresh_policy_sees_changed_files(ws: Workspace) -> None:
    assert not ws.refresh_policy()
    policy_file = ws.path / ws.config.policy[0]
    files = sorted(policy_file.glob("*.yaml")) if policy_file.is_dir() else [policy_file]
    files[0].write_text(files[0].read_text().replace("owner: app-team", "owner: app-owners"))
    assert ws.refresh_policy()
    assert ws.compiled.targets["app"].owner == "app-owners"


def test_refresh_policy_parses_only_changed_files(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle asks every time; unchanged bytes are not parsed again, and an edit of the
    same length is still seen."""
    import provisor.engine.workspace as module

    loads: list[int] = []
    real = module.load_policy
    monkeypatch.setattr(module, "load_policy", lambda *a: loads.append(1) or real(*a))
    assert not ws.refresh_policy() and not ws.refresh_policy()
    assert loads == [1]  # the first question reads the files; the second sees them unchanged
    policy_file = ws.path / ws.config.policy[0]
    files = sorted(policy_file.glob("*.yaml")) if policy_file.is_dir() else [policy_file]
    text = files[0].read_text()
    files[0].write_text(text.replace("owner: app-team", "owner: app-mate"))  # same length
    assert ws.refresh_policy() and ws.compiled.targets["app"].owner == "app-mate"
    assert not ws.refresh_policy() and len(loads) == 2
    files[0].write_text(text.replace("owner: app-team", "owner: app-mate") + "# a note\n")
    assert not ws.refresh_policy() and len(loads) == 3  # other bytes, the same policy...
    assert not ws.refresh_policy() and len(loads) == 3  # ...kept with its bytes: not again
    files[0].write_text("targets: [")  # broken: said every time, the version in use stays
    for _ in range(2):
        with pytest.raises(PolicyError):
            ws.refresh_policy()
    assert ws.compiled.targets["app"].owner == "app-mate"


def test_a_shared_pool_opens_a_new_connector_when_the_policy_changes(ws: Workspace) -> None:
    """A worker's connectors outlive cycles: a target's changed settings must reach it."""
    pool = Pool(ws)
    try:
        first = pool.get("app")
        assert pool.get("app") is first  # unchanged: kept
        policy_file = ws.path / ws.config.policy[0]
        files = sorted(policy_file.glob("*.yaml")) if policy_file.is_dir() else [policy_file]
        files[0].write_text(files[0].read_text().replace("timeout: 3", "timeout: 7"))
        assert ws.refresh_policy()
        second = pool.get("app")
        assert second is not first and second is not None
        assert pool.get("paper") is None  # a manual target has none
    finally:
        pool.close()


def test_a_held_run_waits_before_each_joiner_operation_and_never_for_a_leaver(
    ws: Workspace, scim_url: str
) -> None:
    """A worker's run while a leaver's removals are on their way (``hold``, urgent until the
    leaver is disabled in the application): joiners' accounts wait before they start and
    between their operations; the leaver's own account never waits."""
    people(ws, "E1", "E2")
    plan(ws)
    assert apply(ws).failed == 0
    event(ws, "E1", EventKind.TERMINATE)
    people(ws, "E3", "E4")
    plan(ws)

    class Leaving:
        def __init__(self) -> None:
            self.seen: list[bool] = []  # the leaver still active when a wait ended

        @property
        def urgent(self) -> bool:
            user = server_user(scim_url, "e1@example.com")
            assert user is not None
            return bool(user["active"])

        def hold(self) -> None:
            deadline = time.monotonic() + 10
            while self.urgent and time.monotonic() < deadline:
                time.sleep(0.01)
            self.seen.append(self.urgent)

    leaving = Leaving()
    runner = Runner(ws, rng=random.Random(1))
    try:
        report = runner.apply(now=lambda: NOW, target="app", hold=leaving)
    finally:
        runner.close()
    assert report.failed == 0
    assert len(leaving.seen) >= 2  # each joiner's account waited before it started...
    assert not any(leaving.seen)  # ...until the leaver was disabled
    assert server_user(scim_url, "e3@example.com") is not None
    with ws.sessions() as session:
        op = models.Operation
        statuses = session.execute(
            select(op.status).where(op.identity.in_(["E3", "E4"]), op.target == "app")
        ).scalars()
        assert set(statuses) == {"verified"}


def test_an_accounts_slot_is_given_back_while_it_waits_for_a_leaver() -> None:
    """Between an account's operations, while leavers go first, its target slot is free for
    them (given back, taken again after the wait); the first operation never waits here (the
    account waited before it took the slot); nothing is waited for when nothing is urgent."""
    from provisor.domain.plan import OpKind
    from provisor.engine.runner.execution import Job
    from provisor.engine.runner.runner import _Slot

    calls: list[str] = []

    class Gate:
        def take(self, run: str, seconds: int, *, removal: bool = False) -> int:
            calls.append(f"take removal={removal}")
            return 7

        def give(self, run: str, slot: int) -> None:
            calls.append(f"give {slot}")

    class Leaving:
        urgent = True

        def hold(self) -> None:
            calls.append("hold")

    job = Job(1, "k", "E1", "app", None, OpKind.CREATE, None, None, None, 0)
    leaving = Leaving()
    slot = _Slot(Gate(), "run", 30, leaving)  # type: ignore[arg-type]
    assert slot.take(False, job) and slot.pause(job)  # the first operation: no wait
    assert calls == ["take removal=False"]
    assert slot.pause(job)
    assert calls[1:] == ["give 7", "hold", "take removal=False"]
    leaving.urgent = False
    assert slot.pause(job) and len(calls) == 4
    slot.give()
    slot.give()  # once only
    assert calls[4:] == ["give 7"]


def test_a_held_run_of_other_work_alone_leases_nothing_before_it_may_go(
    ws: Workspace, scim_url: str
) -> None:
    """A run with no removal among its accounts waits for leavers before it leases and
    claims any account (nothing of it is taken meanwhile), then runs as usual."""
    people(ws, "E3")
    plan(ws)
    leases: list[int] = []

    class Leaving:
        urgent = False

        def hold(self) -> None:
            with ws.sessions() as session:
                leases.append(len(session.execute(select(models.AccountLease)).all()))

    runner = Runner(ws, rng=random.Random(1))
    try:
        report = runner.apply(now=lambda: NOW, target="app", hold=Leaving())
    finally:
        runner.close()
    assert leases and leases[0] == 0
    assert report.failed == 0 and report.verified > 0


def test_a_runs_removals_are_written_together_and_never_wait_for_other_work(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcomes of a run's accounts with a removal wait for each other (up to
    ``TOGETHER_SECONDS``) and are written in one transaction, as soon as the last is in: not
    after a joiner's account of the same run, which here waits until they are written."""
    people(ws, "E1", "E2")
    plan(ws)
    assert apply(ws).failed == 0
    event(ws, "E1", EventKind.TERMINATE)
    event(ws, "E2", EventKind.TERMINATE)
    people(ws, "E3")
    plan(ws)
    monkeypatch.setattr(runner_module, "TOGETHER_SECONDS", 30.0)
    monkeypatch.setattr(runner_module, "FLUSH_SECONDS", 60.0)
    batches: list[list[tuple[str, str]]] = []
    written = threading.Event()  # the leavers' removals are recorded
    flush = Runner._flush

    def watched(self: Runner, outcomes: list[Any], report: Any) -> None:
        if outcomes:
            batches.append(sorted((o.job.identity, o.job.kind.value) for o in outcomes))
        flush(self, outcomes, report)
        if outcomes:
            written.set()

    monkeypatch.setattr(Runner, "_flush", watched)

    class Leaving:
        urgent = False

        def hold(self) -> None:  # the joiner's account waits until the leavers are written
            written.wait(30)

    runner = Runner(ws, rng=random.Random(1))
    try:
        report = runner.apply(now=lambda: NOW, target="app", hold=Leaving())
    finally:
        runner.close()
    assert report.failed == 0
    assert len(batches) == 2, batches
    assert {who for who, _ in batches[0]} == {"E1", "E2"}  # both leavers, every removal
    assert {kind for _, kind in batches[0]} >= {"disable", "remove-entitlement"}
    assert {who for who, _ in batches[1]} == {"E3"}  # the joiner, after them
