"""Every route refuses anonymous and under-privileged callers; four-eyes rules hold with
authenticated people; tokens are hashed, shown once, revocable."""

from __future__ import annotations

import re
from typing import Any

import httpx2
import pytest
from fastapi.routing import APIRoute

from provisor.api.security import permission_of
from provisor.domain.roles import GRANTS, OWNER_GRANTS, Permission, Role
from provisor.engine import operators
from tests.api.conftest import PASSWORD, Service, leaver_with_tasks

# signing in is how a token is had: with a password, or through the OpenID Connect provider
OPEN_ROUTES = {
    ("POST", "/api/v1/session"),
    ("GET", "/api/v1/oidc/login"),
    ("GET", "/api/v1/oidc/callback"),
    ("GET", "/console/login"),
    ("POST", "/console/login"),
}


def _routes(service: Service) -> list[tuple[str, str, Permission | None, bool]]:
    """Every (method, path, permission, own) the application serves."""
    app = service_app(service)
    found = []
    for path, methods, dependant in _served(app.routes):
        checks = [
            (permission_of(d.call), getattr(d.call, "own", False))
            for d in _walk(dependant)
            if permission_of(d.call) is not None
        ]
        for method in methods:
            permission, own = checks[0] if checks else (None, False)
            found.append((method, path, permission, own))
    return found


def _served(routes: Any) -> list[tuple[str, set[str], Any]]:
    """(path, methods, dependant) of every route, through included routers too."""
    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append((route.path, set(route.methods), route.dependant))
        elif hasattr(route, "effective_route_contexts"):
            for context in route.effective_route_contexts():
                out.append((context.path, set(context.methods), context.dependant))
    return out


def _walk(dependant: Any) -> list[Any]:
    out = []
    for d in dependant.dependencies:
        out.append(d)
        out.extend(_walk(d))
    return out


def service_app(service: Service) -> Any:
    from provisor.api.app import create_app

    return create_app(service.workspace, runner=False)


def _path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_route_refuses_anonymous_callers(service: Service) -> None:
    routes = _routes(service)
    assert len(routes) >= 30
    for method, path, _, _ in routes:
        if (method, path) in OPEN_ROUTES:
            continue
        answer = service.call(None, method, _path(path), json={})
        if path.startswith("/console"):  # the console's pages send a stranger to sign in
            assert answer.status_code == 303, (method, path, answer.text)
            assert answer.headers["location"] == "/console/login"
            forged = {"provisor_session": "pvt_not-a-session-of-anyone-at-all"}
            with httpx2.Client(base_url=service.url, cookies=forged) as stranger:
                assert stranger.request(method, _path(path)).status_code == 303
            continue
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.headers["www-authenticate"].startswith("Bearer")
        bad = service.client(token="pvt_not-a-token-of-anyone-at-all")
        assert bad.request(method, _path(path), json={}).status_code == 401, (method, path)
    assert service.call(None, "GET", "/openapi.json").status_code == 401


def _lacking(permission: Permission, own: bool) -> list[str]:
    """Operators of the test service whose roles do not reach ``permission`` far enough."""
    names = {
        "olga": Role.OPERATOR,
        "alice": Role.APPROVER,
        "rita": Role.REVIEWER,
        "audrey": Role.AUDITOR,
    }
    lacking = [n for n, role in names.items() if permission not in GRANTS[role]]
    if not own or permission not in OWNER_GRANTS:
        lacking.append("owen")
    return lacking


def test_every_route_refuses_under_privileged_callers(service: Service) -> None:
    checked = 0
    for method, path, permission, own in _routes(service):
        if (method, path) in OPEN_ROUTES or permission is None:
            continue
        for who in _lacking(permission, own):
            if path.startswith("/console"):
                browser = _console(service, who)
                answer = browser.request(method, _path(path))
                browser.close()
                assert answer.status_code == 403, (who, method, path, answer.text)
                assert "403" in answer.text
            else:
                answer = service.call(who, method, _path(path), json={})
                assert answer.status_code == 403, (who, method, path, answer.text)
                assert answer.json()["status"] == 403
            checked += 1
    assert checked > 50


def _console(service: Service, who: str) -> httpx2.Client:
    """A client signed in to the console as ``who`` (a session cookie)."""
    client = httpx2.Client(base_url=service.url, timeout=30)
    signed = client.post("/console/login", data={"name": who, "password": PASSWORD})
    assert signed.status_code == 303, signed.text
    return client


def test_a_token_reaches_no_further_than_its_scopes(service: Service) -> None:
    made = service.call(
        "olga", "POST", "/api/v1/tokens", json={"name": "ro", "scopes": ["read"]}
    ).json()
    with service.client(token=made["token"]) as client:
        assert client.get("/api/v1/identities").status_code == 200
        denied = client.post("/api/v1/events", json={"identity": "F2", "kind": "terminate"})
        assert denied.status_code == 403
    # and never beyond what its maker holds
    wider = service.call("alice", "POST", "/api/v1/tokens", json={"scopes": ["admin"]})
    assert wider.status_code == 403


def test_completing_and_verifying_a_task_as_the_same_person_is_refused(service: Service) -> None:
    leaver_with_tasks(service)
    tasks = service.call("owen", "GET", "/api/v1/tasks").json()
    assert tasks and {t["target"] for t in tasks} == {"erp"}
    first = tasks[0]["id"]
    done = service.call("owen", "POST", f"/api/v1/tasks/{first}/done", json={"evidence": "RITM1"})
    assert done.status_code == 200, done.text
    same = service.call("owen", "POST", f"/api/v1/tasks/{first}/verify")
    assert same.status_code == 403 and "second person" in same.json()["detail"]
    other = service.call("olga", "POST", f"/api/v1/tasks/{first}/verify")
    assert other.status_code == 200, other.text
    trail = _audit(service, "task.verified")
    assert trail[-1]["actor"] == "olga"
    assert _audit(service, "task.done")[-1]["actor"] == "owen"
    # the owner of erp may not work on another target's tasks
    wiki = [t for t in service.call("olga", "GET", "/api/v1/tasks").json() if t["target"] == "wiki"]
    if wiki:
        refused = service.call(
            "owen", "POST", f"/api/v1/tasks/{wiki[0]['id']}/done", json={"evidence": "x"}
        )
        assert refused.status_code == 403


def _audit(service: Service, action: str) -> list[dict[str, Any]]:
    import json

    with service.client("audrey") as client:
        lines = client.get("/api/v1/audit/export").text.splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


def test_approving_ones_own_hold_is_refused(service: Service) -> None:
    workspace = service.workspace
    (workspace.path / "provisor.yaml").write_text(
        "feeds: {hr: {mode: snapshot}}\nguard: {min_count: 1, max_count: 1, max_share: 0.1}\n"
    )
    from provisor.engine.workspace import Workspace as Ws

    fresh = Ws.open(workspace.path)
    service.workspace.config = fresh.config
    fresh.close()
    one = service.call(
        "olga", "POST", "/api/v1/events", json={"identity": "F1", "kind": "terminate"}
    )
    assert one.status_code == 201, one.text
    held = one.json()["hold"]
    if held is None:
        two = service.call(
            "olga", "POST", "/api/v1/events", json={"identity": "F2", "kind": "terminate"}
        )
        held = two.json()["hold"]
    assert held is not None
    holds = service.call("alice", "GET", "/api/v1/holds").json()
    assert holds[0]["hold"] == held
    # olga caused it; as an operator she may not approve at all
    assert service.call("olga", "POST", f"/api/v1/holds/{held}/approve", json={}).status_code == 403
    # root (an admin, who may approve) caused nothing here; make root cause one and try
    mine = service.call(
        "root", "POST", "/api/v1/events", json={"identity": "S1", "kind": "terminate"}
    )
    root_hold = mine.json()["hold"]
    assert root_hold is not None
    refused = service.call("root", "POST", f"/api/v1/holds/{root_hold}/approve", json={})
    assert refused.status_code == 403 and "another person" in refused.json()["detail"]
    approved = service.call("alice", "POST", f"/api/v1/holds/{root_hold}/approve", json={})
    assert approved.status_code == 200, approved.text
    assert _audit(service, "hold.approved")[-1]["actor"] == "alice"


def test_tokens_are_hashed_shown_once_listed_with_last_use_and_revocable(
    service: Service,
) -> None:
    made = service.call(
        "root",
        "POST",
        "/api/v1/tokens",
        json={"name": "ci", "scopes": ["read"], "operator": "rita"},
    )
    assert made.status_code == 201
    secret = made.json()["token"]
    with service.client(token=secret) as client:
        assert client.get("/api/v1/me").json()["operator"] == "rita"
    listed = service.call("rita", "GET", "/api/v1/tokens").json()
    mine = next(t for t in listed if t["id"] == made.json()["id"])
    assert mine["last_used_at"] is not None and "token" not in mine
    assert secret not in str(listed)
    with service.workspace.sessions() as session:
        from sqlalchemy import text

        stored = [r[0] for r in session.execute(text("select token_hash from api_tokens"))]
    assert operators.digest(secret) in stored and secret not in stored
    assert service.call("rita", "DELETE", f"/api/v1/tokens/{mine['id']}").status_code == 204
    with service.client(token=secret) as client:
        assert client.get("/api/v1/me").status_code == 401


def test_sign_in_with_a_password_makes_a_session_token(service: Service) -> None:
    wrong = service.call(None, "POST", "/api/v1/session", json={"name": "alice", "password": "x"})
    assert wrong.status_code == 401
    nobody = service.call(None, "POST", "/api/v1/session", json={"name": "zed", "password": "x"})
    assert nobody.status_code == 401 and nobody.json()["detail"] == wrong.json()["detail"]
    right = service.call(
        None, "POST", "/api/v1/session", json={"name": "alice", "password": PASSWORD}
    )
    assert right.status_code == 200
    token = right.json()["token"]
    with service.client(token=token) as client:
        me = client.get("/api/v1/me").json()
        assert me["operator"] == "alice" and "approve" in me["permissions"]
        assert client.delete("/api/v1/session").status_code == 204
        assert client.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize("path", ["/api/v1/identities/NOPE", "/api/v1/jobs/999"])
def test_errors_are_problem_details(service: Service, path: str) -> None:
    answer = service.call("root", "GET", path)
    assert answer.status_code == 404
    body = answer.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert "Traceback" not in answer.text
