"""Generated user names against a real SCIM server: the first free candidate, kept once
given, renamed only when policy says so and not given to anyone else for the reuse period; a
name an account that is not this person's holds in the target is skipped — found by
reconciliation beforehand, or met when creating — and never taken over, while an account that
is the person's by its e-mail is; concurrent writers never give one name to two people."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select

from provisor.domain.accounts import AccountRecord, AccountSpec
from provisor.domain.desired import DesiredAccess, TargetAccess
from provisor.domain.lifecycle import EventKind, LifecycleEvent, LifecycleState, fold
from provisor.domain.plan import OpKind
from provisor.domain.policy import Policy
from provisor.engine import names, reconcile
from provisor.engine.runner.execution import Job, _taken, owned_by
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.test_scim import make_group
from tests.engine.test_move_grace import record
from tests.engine.test_runner import NOW, apply, plan, server_user

POLICY = """\
generated:
  - name: username
    candidates: ["{{first_name|initial|name}}{{last_name|name}}"]
    rename: {rename}
    reuse_after_days: {reuse}
targets:
  - name: app
    class: scim
    owner: app-team
    connection: {{url: "{url}", timeout: 3, user_name_attribute: username}}
    entitlements: [{{name: staff}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
"""
USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def make_workspace(folder: Path, url: str, rename: bool = False, reuse: int = 365) -> Workspace:
    make_group(url, "staff")
    policy = POLICY.format(url=url, rename=str(rename).lower(), reuse=reuse)
    return scratch_workspace(folder, policy)


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    workspace = make_workspace(tmp_path, scim_url)
    yield workspace
    workspace.close()


def hire(ws: Workspace, who: str, first: str, last: str | None, email: str = "") -> None:
    attributes = {
        "first_name": first,
        "last_name": last,
        "email": email or f"{who.lower()}@example.com",
        "employment_type": "employee",
    }
    at = NOW - timedelta(days=30)
    record(ws, LifecycleEvent(who, EventKind.HIRE, at, at, attributes))


def held(ws: Workspace) -> dict[str, str | None]:
    """Each value made, and who holds it now (None: given up, or kept from everyone)."""
    g = models.GeneratedValue
    with ws.sessions() as session:
        rows = session.execute(select(g.value, g.identity, g.released_at)).all()
    return {value: who if released is None else None for value, who, released in rows}


def hand_made(url: str, user_name: str, email: str) -> str:
    body = {"schemas": [USER], "userName": user_name, "emails": [{"value": email}]}
    response = httpx2.post(f"{url}/Users", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def actions(ws: Workspace, action: str) -> list[dict[str, Any]]:
    a = models.AuditEvent
    with ws.sessions() as session:
        rows = session.execute(select(a.subject, a.data).where(a.action == action)).all()
    return [{"subject": subject, **json.loads(data or "{}")} for subject, data in rows]


def test_people_get_the_first_free_name_and_keep_it(ws: Workspace, scim_url: str) -> None:
    hire(ws, "E1", "John", "Doe")
    hire(ws, "E2", "Jane", "Doe")
    plan(ws)
    assert held(ws) == {"jdoe": "E1", "jdoe2": "E2"}
    assert apply(ws).failed == 0
    john, jane = server_user(scim_url, "jdoe"), server_user(scim_url, "jdoe2")
    assert john is not None and john["externalId"] == "E1"
    assert jane is not None and jane["externalId"] == "E2"

    later = NOW + timedelta(days=1)
    record(ws, LifecycleEvent("E1", EventKind.MOVE, later, later, {"last_name": "Smith"}))
    assert [op for op, _, _ in plan(ws, later).operations] == []  # stable once given
    assert held(ws) == {"jdoe": "E1", "jdoe2": "E2"}


def test_a_rename_when_policy_says_so_and_the_old_name_is_not_given_again(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    ws = make_workspace(tmp_path, scim_url, rename=True)
    try:
        hire(ws, "E1", "John", "Doe")
        hire(ws, "E2", "Jane", "Doe")
        plan(ws)
        assert apply(ws).failed == 0
        before = server_user(scim_url, "jdoe")
        assert before is not None
        later = NOW + timedelta(days=1)
        record(ws, LifecycleEvent("E1", EventKind.MOVE, later, later, {"last_name": "Smith"}))
        planned = plan(ws, later)
        assert [(op.kind.value, op.account) for op, _, _ in planned.operations] == [
            ("update", before["id"])
        ]
        assert apply(ws, later).failed == 0
        after = server_user(scim_url, "jsmith")
        assert after is not None and after["id"] == before["id"]
        assert server_user(scim_url, "jdoe") is None
        hire(ws, "E3", "Jim", "Doe")  # jdoe was given up a day ago: not his
        plan(ws, later)
        assert held(ws) == {"jdoe": None, "jdoe2": "E2", "jsmith": "E1", "jdoe3": "E3"}
    finally:
        ws.close()


def test_a_name_another_account_holds_is_skipped_and_never_taken_over(
    ws: Workspace, scim_url: str
) -> None:
    other = hand_made(scim_url, "jdoe", "someone.else@example.com")
    hire(ws, "E1", "John", "Doe")
    plan(ws)
    assert held(ws) == {"jdoe": "E1"}  # nothing here knows the target holds it yet
    apply(ws)
    apply(ws)  # the create is tried again, under the next name
    assert held(ws) == {"jdoe": None, "jdoe2": "E1"}
    mine = server_user(scim_url, "jdoe2")
    assert mine is not None and mine["externalId"] == "E1"
    theirs = server_user(scim_url, "jdoe")
    assert theirs is not None and theirs["id"] == other and "externalId" not in theirs
    assert [e["value"] for e in actions(ws, "identity.name_held_by_another")] == ["jdoe"]

    hire(ws, "E2", "Jack", "Doe")  # the name kept from everyone stays so
    plan(ws)
    assert held(ws)["jdoe3"] == "E2"


def test_a_name_reconciliation_saw_in_the_target_is_skipped_at_once(
    ws: Workspace, scim_url: str
) -> None:
    hand_made(scim_url, "jdoe", "someone.else@example.com")
    assert reconcile.reconcile_target(ws, "app", now=NOW).status == "completed"
    hire(ws, "E1", "John", "Doe")
    plan(ws)
    assert held(ws) == {"jdoe2": "E1"}
    made = actions(ws, "identity.name_generated")
    assert made[0]["skipped"] == ["jdoe: held in a target by an account not linked to E1"]
    assert apply(ws).failed == 0


def test_an_account_that_is_the_persons_by_email_follows_the_adoption_rule(
    ws: Workspace, scim_url: str
) -> None:
    existing = hand_made(scim_url, "jdoe", "e1@example.com")
    hire(ws, "E1", "John", "Doe")
    plan(ws)
    report = apply(ws)  # not skipped as another's: the adoption rule decides, here a person
    assert report.failed == 1 and "correlation case" in report.errors[0]
    assert held(ws) == {"jdoe": "E1"}
    account = server_user(scim_url, "jdoe")
    assert account is not None and account["id"] == existing and "externalId" not in account


def test_an_account_linked_to_the_person_gives_them_its_name(ws: Workspace, scim_url: str) -> None:
    existing = hand_made(scim_url, "johnd", "e1@example.com")
    hire(ws, "E1", "John", "Doe")
    assert reconcile.reconcile_target(ws, "app", now=NOW).status == "completed"  # by e-mail
    planned = plan(ws)
    assert held(ws) == {"johnd": "E1"}  # the name they have, not a new one to rename to
    assert [(op.kind.value, op.account) for op, _, _ in planned.operations] == [
        ("add-entitlement", existing)
    ]


def test_someone_no_name_can_be_made_for_is_not_planned_and_said(ws: Workspace) -> None:
    hire(ws, "E9", "Prince", None)
    planned = plan(ws)
    assert planned.unnamed == {"E9": {"username": "no candidate can be made: last_name empty"}}
    assert [op for op, _, _ in planned.operations if op.identity == "E9"] == []


@pytest.mark.usefixtures("workspace_store")
def test_writers_at_once_never_give_one_name_to_two_people(tmp_path: Path, scim_url: str) -> None:
    ws = make_workspace(tmp_path, scim_url)
    access = {"app": TargetAccess("app", True)}
    policy = ws.compiled.policy
    failures: list[BaseException] = []

    def name_some(batch: int) -> None:
        try:
            for n in range(5):
                who = f"W{batch}-{n}"
                event = LifecycleEvent(
                    who, EventKind.HIRE, NOW, NOW, {"first_name": "John", "last_name": "Doe"}
                )
                state = fold(who, [event], as_of=NOW)
                desired = {who: DesiredAccess(who, LifecycleState.ACTIVE, access)}
                with ws.sessions() as session, session.begin():
                    names.assign(session, policy, {who: state}, desired, NOW)
        except BaseException as exc:
            failures.append(exc)

    try:
        threads = [threading.Thread(target=name_some, args=(b,)) for b in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        values = held(ws)
        assert len(values) == 30 and len(set(values.values())) == 30
        assert set(values) == {"jdoe", *(f"jdoe{n}" for n in range(2, 31))}
    finally:
        ws.close()


def test_someone_without_a_name_still_loses_what_an_account_of_theirs_holds(
    ws: Workspace, scim_url: str
) -> None:
    existing = hand_made(scim_url, "prince", "e9@example.com")
    hire(ws, "E9", "Prince", None)
    assert reconcile.reconcile_target(ws, "app", now=NOW).status == "completed"
    later = NOW + timedelta(days=1)
    record(ws, LifecycleEvent("E9", EventKind.TERMINATE, later, later))
    ops = [(op.kind.value, op.account) for op, _, _ in plan(ws, later).operations]
    assert ("disable", existing) in ops  # a missing name holds back no removal


def test_a_leavers_name_waits_while_a_rescind_may_bring_them_back(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    ws = make_workspace(tmp_path, scim_url, reuse=0)
    try:
        hire(ws, "E1", "John", "Doe")
        plan(ws)
        record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, NOW))
        soon, later = NOW + timedelta(days=10), NOW + timedelta(days=31)
        hire(ws, "E2", "Jim", "Doe")
        plan(ws, soon)  # within the 30-day rescind window: not Jim's
        assert held(ws) == {"jdoe": "E1", "jdoe2": "E2"}
        hire(ws, "E3", "Jo", "Doe")
        plan(ws, later)
        assert held(ws)["jdoe"] == "E3"
    finally:
        ws.close()


def test_an_account_is_told_apart_by_correlation_or_left_to_the_adoption_rule() -> None:
    target = Policy.model_validate(
        {
            "targets": [
                {
                    "name": "app",
                    "class": "scim",
                    "owner": "it",
                    "correlation": ["email"],
                    "connection": {"user_name_attribute": "username"},
                }
            ]
        }
    ).targets[0]
    spec = AccountSpec("E1", "jdoe", {"email": "E1@example.com"})
    owns = owned_by(target, spec)
    record = AccountRecord("a1", "jdoe", True, frozenset(), attributes={"email": "e1@example.com"})
    assert owns(record) is True
    assert owns(replace_record(record, {"email": "x@example.com"})) is False
    assert owns(replace_record(record, {})) is None  # cannot tell: the adoption rule decides


def replace_record(record: AccountRecord, attributes: dict[str, str]) -> AccountRecord:
    return AccountRecord(record.account, record.user_name, True, frozenset(), attributes=attributes)


def test_a_name_clash_whose_holder_cannot_be_read_is_never_taken_for_theirs() -> None:
    """A create refused as a clash, then a search by the name that finds nothing: the name is
    another's (the next one is given), never assumed to be this person's account."""
    job = Job(1, "k", "E1", "app", None, OpKind.CREATE, None, None, None, 0)
    owns = owned_by(_named_target(), AccountSpec("E1", "jdoe", {"email": "e1@example.com"}))
    assert _taken(job, None, owns) is True  # found nothing after the clash
    theirs = AccountRecord("a9", "jdoe", True, frozenset(), external_id="E7")
    assert _taken(job, theirs, owns) is True
    mine = AccountRecord("a1", "jdoe", True, frozenset(), external_id="E1")
    assert _taken(job, mine, owns) is False
    assert _taken(job, None, None) is False  # a name that was not generated: as before


def _named_target() -> Any:
    return Policy.model_validate(
        {
            "targets": [
                {
                    "name": "app",
                    "class": "scim",
                    "owner": "it",
                    "connection": {"user_name_attribute": "username"},
                }
            ]
        }
    ).targets[0]
