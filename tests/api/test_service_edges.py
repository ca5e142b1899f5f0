"""Edges of the service a careful reader found: tokens minted through narrower tokens, dates
out of range, SCIM searches the index cannot answer, four-eyes over future-dated changes, the
manager removed only when it is the named one, concurrent changes to one group, jobs that fail
unexpectedly, jobs another process is running."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from provisor.engine import jobs, operators
from provisor.engine.views import show_identity
from tests.api.conftest import Service
from tests.api.test_scim_behaviour import ENTERPRISE, _scim, _user
from tests.api.test_scim_inbound import scim_token


def test_a_token_never_reaches_further_than_the_one_that_made_it(service: Service) -> None:
    narrow = service.call(
        "olga", "POST", "/api/v1/tokens", json={"scopes": ["read"], "name": "narrow"}
    ).json()["token"]
    with service.client(token=narrow) as client:
        everything = client.post("/api/v1/tokens", json={"scopes": ["*"]})
        assert everything.status_code == 201
        assert everything.json()["scopes"] == ["read"]  # "*" means all the maker's token has
        wider = client.post("/api/v1/tokens", json={"scopes": ["scim"]})
        assert wider.status_code == 403
    signed = service.call(
        None,
        "POST",
        "/api/v1/session",
        json={"name": "olga", "password": "correct horse battery staple"},
    ).json()
    with service.client(token=signed["token"]) as client:
        scim = client.post("/api/v1/tokens", json={"scopes": ["scim"]})
        assert scim.status_code == 403  # a sign-in never makes an identity source
        forever = client.post("/api/v1/tokens", json={"scopes": ["read"]}).json()
        assert forever["expires_at"] is not None
        assert datetime.fromisoformat(forever["expires_at"]) <= datetime.fromisoformat(
            signed["expires_at"].replace("Z", "+00:00")
        )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/tokens", {"scopes": ["read"], "expires_at": "2030-01-01T00:00:00"}),
        ("GET", "/api/v1/identities/F1?as_of=9999-12-31T23:59:59-05:00", None),
        (
            "POST",
            "/api/v1/events",
            {
                "identity": "F1",
                "kind": "move",
                "effective": "9999-12-31T23:59:59-05:00",
                "changes": {"department": "X"},
            },
        ),
        ("GET", "/api/v1/audit/export?since=9999-12-31T23:59:59-05:00", None),
    ],
)
def test_dates_without_a_zone_or_out_of_range_are_never_a_500(
    service: Service, method: str, path: str, body: Any
) -> None:
    answer = service.call("root", method, path, json=body)
    assert answer.status_code in (200, 201, 422), answer.text
    if answer.status_code == 422:
        assert "out of range" in answer.json()["detail"]


def test_scim_searches_with_or_and_escapes_find_what_they_name(service: Service) -> None:
    token = scim_token(service)
    with _scim(service, token) as client:
        for n in range(3):
            assert client.post("/Users", content=json.dumps(_user(n))).status_code == 201
        odd = _user(9, userName='dom\\user"9@example.com')
        assert client.post("/Users", content=json.dumps(odd)).status_code == 201

        def names(query: str) -> list[str]:
            answer = client.get("/Users", params={"filter": query})
            assert answer.status_code == 200, answer.text
            return sorted(r["userName"] for r in answer.json()["Resources"])

        assert names('userName eq "person0@example.com" OR userName eq "person2@example.com"') == [
            "person0@example.com",
            "person2@example.com",
        ]
        assert names('userName eq "person1@example.com" AND externalId eq "X1"') == [
            "person1@example.com"
        ]
        assert names('userName eq "dom\\\\user\\"9@example.com"') == ['dom\\user"9@example.com']


def test_whoever_recorded_future_leavers_cannot_approve_the_hold_a_tick_makes(
    service: Service,
) -> None:
    service.workspace.config.guard.min_count = 2
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    for person in ("F1", "F2", "S1"):
        recorded = service.call(
            "root",
            "POST",
            "/api/v1/events",
            json={"identity": person, "kind": "terminate", "effective": soon},
        )
        assert recorded.status_code == 201 and recorded.json()["hold"] is None
    import time

    time.sleep(2.5)
    from provisor.engine.identities import tick

    with service.workspace.sessions() as session, session.begin():
        ticked = tick(session, service.workspace.config, now=datetime.now(UTC))
    assert ticked.hold_id is not None  # three leavers of three: held when they fall due
    refused = service.call("root", "POST", f"/api/v1/holds/{ticked.hold_id}/approve", json={})
    assert refused.status_code == 403, refused.text
    approved = service.call("alice", "POST", f"/api/v1/holds/{ticked.hold_id}/approve", json={})
    assert approved.status_code == 200, approved.text


def test_strict_mode_refuses_a_password(service: Service) -> None:
    from provisor.domain.scim_quirks import strict_problem

    body = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "a",
        "password": "x",
    }
    known = ["urn:ietf:params:scim:schemas:core:2.0:User", "schemas", "userName", "password"]
    assert "password" in str(strict_problem(body, patch_request=False, known=known))


def test_a_manager_removed_by_filter_goes_only_if_it_is_the_named_one(service: Service) -> None:
    token = scim_token(service)
    with _scim(service, token) as client:
        boss = client.post("/Users", content=json.dumps(_user(1))).json()["id"]
        other = client.post("/Users", content=json.dumps(_user(2))).json()["id"]
        person = _user(3)
        person[ENTERPRISE] = {"employeeNumber": "P3", "manager": {"value": boss}}
        made = client.post("/Users", content=json.dumps(person)).json()["id"]

        def remove(named: str) -> httpx2.Response:
            body = {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Remove", "path": f'manager[value eq "{named}"]'}],
            }
            return client.patch(f"/Users/{made}", content=json.dumps(body))

        assert remove(other).status_code == 200
        kept = client.get(f"/Users/{made}").json()[ENTERPRISE]["manager"]["value"]
        assert kept == boss
        assert remove(boss).status_code == 200
        assert "manager" not in client.get(f"/Users/{made}").json().get(ENTERPRISE, {})


def test_concurrent_changes_to_one_group_all_apply(service: Service) -> None:
    token = scim_token(service)
    with _scim(service, token) as client:
        users = [client.post("/Users", content=json.dumps(_user(n))).json()["id"] for n in range(8)]
        group = client.post(
            "/Groups",
            content=json.dumps(
                {
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "Crowd",
                }
            ),
        ).json()["id"]
    codes: list[int] = []

    def add(member: str) -> None:
        with _scim(service, token) as mine:
            body = {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": member}]}],
            }
            codes.append(mine.patch(f"/Groups/{group}", content=json.dumps(body)).status_code)

    threads = [threading.Thread(target=add, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert codes == [200] * 8, codes  # no 412 for a client that asked for no version
    with _scim(service, token) as client:
        members = client.get(f"/Groups/{group}").json()["members"]
    assert sorted(m["value"] for m in members) == sorted(users)


def test_a_put_without_active_does_not_rehire_a_deactivated_user(service: Service) -> None:
    token = scim_token(service)
    with _scim(service, token) as client:
        made = client.post("/Users", content=json.dumps(_user(1))).json()["id"]
        off = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": False}],
        }
        assert client.patch(f"/Users/{made}", content=json.dumps(off)).status_code == 200
        again = _user(1, title="Buyer")
        del again["active"]
        assert client.put(f"/Users/{made}", content=json.dumps(again)).status_code == 200
    shown = show_identity(service.workspace, "P1", as_of=None, known_at=None, now=datetime.now(UTC))
    assert shown["state"] == "terminated"


def test_a_job_failing_unexpectedly_is_recorded_and_the_next_one_runs(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    with service.workspace.sessions() as session, session.begin():
        first = jobs.enqueue(session, "verify-leaver", {"identity": "F1"}, by="olga", now=now).id
        second = jobs.enqueue(session, "reconcile", {}, by="olga", now=now).id
    real = jobs._run

    def surprising(workspace: Any, job: Any, clock: Any) -> dict[str, Any]:
        if job.id == first:
            raise KeyError("a library's surprise")
        return real(workspace, job, clock)

    monkeypatch.setattr(jobs, "_run", surprising)
    assert jobs.run_queued(service.workspace, lambda: datetime.now(UTC)) == 2
    with service.workspace.sessions() as session:
        failed, done = jobs.get_job(session, first), jobs.get_job(session, second)
    assert failed["status"] == "failed" and "KeyError" in failed["error"]
    assert done["status"] == "succeeded"


def test_a_job_another_runner_is_running_is_not_taken_back(service: Service) -> None:
    from sqlalchemy import update

    from provisor.store.models import Job

    now = datetime.now(UTC)
    with service.workspace.sessions() as session, session.begin():
        alive = jobs.enqueue(session, "reconcile", {}, by="olga", now=now).id
        dead = jobs.enqueue(session, "reconcile", {}, by="olga", now=now).id
        session.execute(
            update(Job)
            .where(Job.id == alive)
            .values(status="running", heartbeat_at=now - timedelta(seconds=5))
        )
        session.execute(
            update(Job)
            .where(Job.id == dead)
            .values(status="running", heartbeat_at=now - timedelta(minutes=5))
        )
        assert jobs.recover(session, now) == 1
        assert jobs.get_job(session, alive)["status"] == "running"
        assert jobs.get_job(session, dead)["status"] == "queued"


def test_an_email_two_operators_share_signs_nobody_in(service: Service) -> None:
    now = datetime.now(UTC)
    with service.workspace.sessions() as session, session.begin():
        operators.add_operator(
            session, "twin1", roles=["auditor"], email="twin@example.com", by="test", now=now
        )
        operators.add_operator(
            session, "twin2", roles=["admin"], email="twin@example.com", by="test", now=now
        )
        assert (
            operators.sign_in_oidc(session, "sub-twin", "twin@example.com", hours=1, now=now)
            is None
        )


def test_a_leaver_in_effect_now_hurries_the_workers_and_nothing_else_does(
    erp_workspace: Path,
) -> None:
    """``POST /events``: a termination, suspension or leave in effect now is a warning as it
    is recorded, then a hurry (every worker puts its removals first); a termination dated
    ahead, a move or a hire only wakes the runner."""
    from provisor.engine.workspace import Workspace
    from tests.api.conftest import people, start

    class Told:
        def __init__(self) -> None:
            self.said: list[str] = []

        def set(self) -> None:
            self.said.append("set")

        def hurry(self) -> None:
            self.said.append("hurry")

        def warn(self) -> None:
            self.said.append("warn")

    workspace = Workspace.open(erp_workspace)
    tokens = people(workspace)
    server, thread, url = start(workspace, runner=False)
    told = Told()
    server.config.app.state.wake = told  # type: ignore[attr-defined]
    ahead = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    headers = {"Authorization": f"Bearer {tokens['olga']}"}
    try:
        with httpx2.Client(base_url=url, headers=headers) as api:
            for body, said in [
                ({"identity": "F1", "kind": "terminate", "effective": ahead}, ["set"]),
                ({"identity": "F2", "kind": "move", "changes": {"title": "Lead"}}, ["set"]),
                ({"identity": "N9", "kind": "hire", "changes": {"name": "Nia"}}, ["set"]),
                ({"identity": "S1", "kind": "suspend"}, ["warn", "hurry"]),
                ({"identity": "F2", "kind": "terminate"}, ["warn", "hurry"]),
            ]:
                told.said.clear()
                answer = api.post("/api/v1/events", json=body)
                assert answer.status_code == 201, answer.text
                assert told.said == said, body
    finally:
        server.should_exit = True
        thread.join(30)
        workspace.close()
