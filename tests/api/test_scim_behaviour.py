"""The inbound SCIM server's promises beyond the conformance suites: the mass-change guard
over a wave of single deactivations, ETags, rates, strict mode, scim-sanity's live probe."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from provisor.engine.views import show_identity
from tests.api.conftest import Service, serving
from tests.api.test_scim_inbound import scim_token

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def _user(number: int, **extra: Any) -> dict[str, Any]:
    return {
        "schemas": [USER, ENTERPRISE],
        "userName": f"person{number}@example.com",
        "externalId": f"X{number}",
        "active": True,
        "displayName": f"Person {number}",
        "emails": [{"value": f"person{number}@example.com", "type": "work", "primary": True}],
        ENTERPRISE: {"employeeNumber": f"P{number}", "department": "Sales"},
        **extra,
    }


def _scim(service: Service, token: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=service.url + "/scim/v2",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
        timeout=30,
    )


def _state(service: Service, identity: str) -> str:
    from datetime import UTC, datetime

    shown = show_identity(
        service.workspace, identity, as_of=None, known_at=None, now=datetime.now(UTC)
    )
    return str(shown["state"])


def _deactivate(client: httpx2.Client, scim_id: str) -> httpx2.Response:
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
    }
    return client.patch(f"/Users/{scim_id}", content=json.dumps(body))


def test_a_wave_of_single_deactivations_is_held_as_one(service: Service) -> None:
    service.workspace.config.guard.min_count = 2  # a small organisation: two is a wave
    token = scim_token(service)
    with _scim(service, token) as client:
        ids = [client.post("/Users", content=json.dumps(_user(n))).json()["id"] for n in range(6)]
        assert _deactivate(client, ids[0]).status_code == 200
        assert _state(service, "P0") == "terminated"  # one leaver is no mass change
        for scim_id in ids[1:4]:
            assert _deactivate(client, scim_id).status_code == 200
    # the second leaver within the window tripped the guard (2 of 8 active is over 10%);
    # the ones after it joined the same hold
    assert [_state(service, f"P{n}") for n in range(1, 4)] == ["active"] * 3
    holds = service.call("alice", "GET", "/api/v1/holds").json()
    assert len(holds) == 1 and holds[0]["origin"] == "scim:scim"
    assert holds[0]["identities"] == ["P1", "P2", "P3"]
    assert "earlier from scim:scim" in holds[0]["reason"]
    # the SCIM client caused it; an approver releases it
    hold = holds[0]["hold"]
    approved = service.call("alice", "POST", f"/api/v1/holds/{hold}/approve", json={})
    assert approved.status_code == 200, approved.text
    assert [_state(service, f"P{n}") for n in range(1, 4)] == ["terminated"] * 3


def test_etags_guard_against_lost_updates(service: Service) -> None:
    token = scim_token(service)
    with _scim(service, token) as client:
        made = client.post("/Users", content=json.dumps(_user(1)))
        etag = made.headers["etag"]
        assert made.json()["meta"]["version"] == etag
        changed = client.put(
            f"/Users/{made.json()['id']}",
            content=json.dumps(_user(1, title="Buyer")),
            headers={"If-Match": etag},
        )
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        stale = client.put(
            f"/Users/{made.json()['id']}",
            content=json.dumps(_user(1, title="Seller")),
            headers={"If-Match": etag},
        )
        assert stale.status_code == 412
        current = client.get(
            f"/Users/{made.json()['id']}", headers={"If-None-Match": changed.headers["etag"]}
        )
        assert current.status_code == 304
    config = service.call(None, "GET", "/scim/v2/ServiceProviderConfig")
    assert config.status_code == 401  # nothing is served to anonymous callers


def test_uniqueness_is_a_409_and_a_token_without_the_scim_scope_is_refused(
    service: Service,
) -> None:
    token = scim_token(service)
    with _scim(service, token) as client:
        assert client.post("/Users", content=json.dumps(_user(1))).status_code == 201
        again = client.post("/Users", content=json.dumps(_user(1, externalId="other")))
        assert again.status_code == 409 and again.json()["scimType"] == "uniqueness"
        shouted = _user(2, userName="PERSON1@EXAMPLE.COM")
        assert client.post("/Users", content=json.dumps(shouted)).status_code == 409
    with _scim(service, service.tokens["alice"]) as approver:
        refused = approver.get("/Users")
        assert refused.status_code == 403
        assert refused.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]


@pytest.fixture
def slow_service(erp_workspace: Path) -> Iterator[Service]:
    """The service with a low rate per token and few requests in flight."""
    with serving(
        erp_workspace, settings="  cycle_seconds: 3600\n  rate_per_token: 5\n  max_in_flight: 2\n"
    ) as running:
        yield running


def test_a_token_beyond_its_rate_gets_429_with_retry_after(slow_service: Service) -> None:
    token = scim_token(slow_service)
    with _scim(slow_service, token) as client:
        answers = [client.get("/Users") for _ in range(15)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["status"] == "429"
    # the REST API holds tokens to the same rate
    with slow_service.client("olga") as client:
        codes = [client.get("/api/v1/me").status_code for _ in range(15)]
    assert 429 in codes


def test_too_many_requests_in_flight_get_429(slow_service: Service) -> None:
    # an upload that is never finished holds its request in flight
    codes: list[int] = []
    gate = threading.Event()

    def dribble() -> Any:
        yield b"id,name\n"
        gate.wait(10)
        yield b"Z1,Zed\n"

    def upload() -> None:
        with slow_service.client("olga") as client:
            codes.append(client.post("/api/v1/feeds", content=dribble()).status_code)

    held = [threading.Thread(target=upload) for _ in range(2)]
    for thread in held:
        thread.start()
    import time

    time.sleep(1.0)
    with slow_service.client("root") as client:
        crowded = client.get("/api/v1/me")
    gate.set()
    for thread in held:
        thread.join(20)
    assert crowded.status_code == 429, crowded.text
    assert crowded.headers["retry-after"] == "1"
    assert codes == [202, 202]


@pytest.fixture
def strict_service(erp_workspace: Path) -> Iterator[Service]:
    with serving(
        erp_workspace, settings="  cycle_seconds: 3600\n  scim: {strict: true}\n"
    ) as running:
        yield running


def test_strict_mode_refuses_what_the_profile_forbids(strict_service: Service) -> None:
    token = scim_token(strict_service)
    with _scim(strict_service, token) as client:
        made = client.post("/Users", content=json.dumps(_user(1))).json()
        pathless = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "value": {"name.givenName": "Pat"}}],
        }
        refused = client.patch(f"/Users/{made['id']}", content=json.dumps(pathless))
        assert refused.status_code == 400
        bare_manager = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": "manager", "value": "abc"}],
        }
        assert (
            client.patch(f"/Users/{made['id']}", content=json.dumps(bare_manager)).status_code
            == 400
        )
        compliant = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "title", "value": "Buyer"}],
        }
        assert (
            client.patch(f"/Users/{made['id']}", content=json.dumps(compliant)).status_code == 200
        )


def test_scim_sanity_live_probe_passes(service: Service) -> None:
    from scim_sanity.probe.runner import run_probe_api

    token = scim_token(service)
    result = run_probe_api(service.url + "/scim/v2", token=token, timeout=30)
    summary = result.get("summary", result)
    print("scim-sanity:", json.dumps(summary))
    assert result["exit_code"] == 0, json.dumps(result, indent=1)[:4000]


def test_filters_and_pages_on_the_attributes_clients_search(service: Service) -> None:
    token = scim_token(service)
    with _scim(service, token) as client:
        ids = [client.post("/Users", content=json.dumps(_user(n))).json()["id"] for n in range(5)]
        group = client.post(
            "/Groups",
            content=json.dumps(
                {
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "Sales Team",
                    "members": [{"value": ids[1]}, {"value": ids[3]}],
                }
            ),
        )
        assert group.status_code == 201, group.text

        def found(path: str, query: str) -> list[str]:
            answer = client.get(path, params={"filter": query})
            assert answer.status_code == 200, (query, answer.text)
            return sorted(
                r.get("userName") or r.get("displayName") for r in answer.json()["Resources"]
            )

        assert found("/Users", 'userName eq "PERSON2@example.com"') == ["person2@example.com"]
        assert found("/Users", 'externalId eq "X3"') == ["person3@example.com"]
        assert found("/Users", 'userName sw "person1"') == ["person1@example.com"]
        assert found("/Users", 'emails co "n4@"') == ["person4@example.com"]
        assert found("/Users", 'emails[type eq "work" and value co "son0"]') == [
            "person0@example.com"
        ]
        assert found("/Users", 'displayName co "Person" and externalId eq "X1"') == [
            "person1@example.com"
        ]
        assert found("/Groups", f'members.value eq "{ids[3]}"') == ["Sales Team"]
        assert found("/Groups", f'members eq "{ids[1]}"') == ["Sales Team"]
        assert found("/Groups", 'displayName eq "Sales Team"') == ["Sales Team"]
        assert found("/Groups", f'members eq "{ids[2]}"') == []
        page = client.get("/Users", params={"startIndex": 2, "count": 2}).json()
        assert page["totalResults"] == 5 and page["startIndex"] == 2
        assert page["itemsPerPage"] == 2 and len(page["Resources"]) == 2
        bad = client.get("/Users", params={"filter": "userName eq"})
        assert bad.status_code == 400 and bad.json()["scimType"] == "invalidFilter"
    # the members' identities carry the group
    assert show_identity(service.workspace, "P1", as_of=None, known_at=None, now=_now())[
        "attributes"
    ]["groups"] == ["Sales Team"]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_provisor_serve_runs_the_api_scim_and_the_runner_in_one_process() -> None:
    from provisor.sandbox.service import served

    config = "feeds: {hr: {mode: snapshot}}\nservice: {cycle_seconds: 1}\n"
    with served(config) as (url, token, _):
        auth = {"Authorization": f"Bearer {token}"}
        with httpx2.Client(base_url=url, headers=auth, timeout=30) as client:
            assert client.get("/api/v1/me").json()["operator"] == "bench"
            upload = client.post(
                "/api/v1/feeds?name=hr.csv",
                content=b"id,name,email,employment_type\nE1,Ann,ann@example.com,employee\n",
            )
            assert upload.status_code == 202
            import time

            deadline = time.monotonic() + 60
            while client.get(upload.json()["href"]).json()["status"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert client.get(upload.json()["href"]).json()["status"] == "succeeded"
            assert client.get("/api/v1/identities/E1").json()["state"] == "active"
            # the runner planned the joiner's wiki access: a task for the wiki's owner
            deadline = time.monotonic() + 60
            while not client.get("/api/v1/tasks").json():
                assert time.monotonic() < deadline, "the runner did not plan and apply"
                time.sleep(0.2)
            scim = client.get("/scim/v2/ServiceProviderConfig")
            assert scim.status_code == 200 and scim.json()["etag"]["supported"] is True
