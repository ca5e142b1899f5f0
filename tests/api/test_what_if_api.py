"""What-if through the service: an event, an HR file and a policy draft, each answered with
what it would do and nothing kept; who may ask; bad drafts refused with where."""

from __future__ import annotations

from datetime import UTC, datetime

from provisor.engine import operators
from tests.api.conftest import POLICY, Service

NOW = datetime.now(UTC)


def state_of(service: Service, who: str) -> dict:
    found = service.call("olga", "GET", f"/api/v1/identities/{who}")
    assert found.status_code == 200, found.text
    return found.json()


def test_an_event_is_answered_and_not_recorded(service: Service) -> None:
    body = {"identity": "F1", "kind": "move", "changes": {"department": "Sales"}}
    answer = service.call("olga", "POST", "/api/v1/what-if/event", json=body)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["nothing_kept"] is True
    would = found["explained"]["F1"]["targets"]
    assert "wiki" in would and "erp" not in would  # Sales: the wiki, no ERP
    assert state_of(service, "F1")["attributes"]["department"] == "Finance"  # nothing kept
    refused = service.call("rita", "POST", "/api/v1/what-if/event", json=body)
    assert refused.status_code == 403
    with service.workspace.sessions() as session, session.begin():  # an HR system's token
        token, _ = operators.create_token(
            session, "olga", name="hr", scopes=["events"], expires_at=None, by="test", now=NOW
        )
    unread = service.call(None, "POST", "/api/v1/what-if/event", json=body, headers=bearer(token))
    assert unread.status_code == 403 and "may not read" in unread.text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_hr_file_is_answered_and_not_imported(service: Service) -> None:
    people = "id,name,email,department,employment_type\nF2,Gus,gus@example.com,Finance,employee\n"
    answer = service.call(
        "olga",
        "POST",
        "/api/v1/what-if/import",
        content=people.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["recorded"]["missing_from_snapshot"] == 2  # F1 and S1
    assert state_of(service, "F1")["state"] == "active"


def test_a_policy_draft_is_answered_and_bad_ones_refused(service: Service) -> None:
    draft = POLICY.replace("in: [Finance, Sales]", "in: [Finance]")  # the wiki for Finance only
    answer = service.call(
        "olga", "POST", "/api/v1/what-if/policy", json={"files": {"policy.yaml": draft}}
    )
    assert answer.status_code == 200, answer.text
    assert not any(o["identity"] == "S1" for o in answer.json()["operations"])
    bad_name = service.call(
        "olga", "POST", "/api/v1/what-if/policy", json={"files": {"../x.yaml": draft}}
    )
    assert bad_name.status_code == 422 and "no policy file name" in bad_name.text
    broken = service.call(
        "olga",
        "POST",
        "/api/v1/what-if/policy",
        json={"files": {"policy.yaml": draft.replace("class: manual", "class: nope", 1)}},
    )
    assert broken.status_code == 422 and "policy.yaml" in broken.text
    asked = {"files": {"policy.yaml": draft}}
    refused = service.call("alice", "POST", "/api/v1/what-if/policy", json=asked)
    assert refused.status_code == 403  # an approver does not try policies
