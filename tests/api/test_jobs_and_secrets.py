"""Long work through the background runner (feed uploads, reconciliations, leaver evidence),
and no token or password in the service's logs or answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import PASSWORD, Service, serving
from tests.api.test_scim_inbound import scim_token


@pytest.fixture
def running(erp_workspace: Path) -> Iterator[Service]:
    """The service with its background runner."""
    with serving(erp_workspace, runner=True, log_level="info") as running:  # access log too
        yield running


def _finished(service: Service, job: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = service.call("audrey", "GET", f"/api/v1/jobs/{job}").json()
        if found["status"] in ("succeeded", "failed"):
            return dict(found)
        assert time.monotonic() < deadline, found
        time.sleep(0.2)


def test_an_uploaded_feed_is_kept_then_imported_by_the_runner(running: Service) -> None:
    feed = (
        "id,name,email,department,employment_type\n"
        "F1,Fay Finance,fay@example.com,Finance,employee\n"
        "F2,Gus Finance,gus@example.com,Finance,employee\n"
        "S1,Sal Sales,sal@example.com,Sales,employee\n"
        "N1,New Person,new@example.com,Sales,employee\n"
        "B1,Bad\x01Row,bad@example.com,Sales,employee\n"
    )
    answer = running.call(
        "olga", "POST", "/api/v1/feeds?name=../../etc/hr.csv", content=feed.encode()
    )
    assert answer.status_code == 202, answer.text
    uploads = list((running.workspace.path / "uploads").iterdir())
    assert len(uploads) == 1 and uploads[0].read_bytes() == feed.encode()
    assert ".." not in uploads[0].name and uploads[0].stat().st_mode & 0o077 == 0
    done = _finished(running, answer.json()["job"])
    assert done["status"] == "succeeded", done
    assert done["result"]["rows_accepted"] == 4
    assert any("B1" in e or ":6" in e for e in done["result"]["errors"]), done["result"]
    shown = running.call("rita", "GET", "/api/v1/identities/N1").json()
    assert shown["state"] == "active"
    assert done["requested_by"] == "olga"
    events = running.call("audrey", "GET", "/api/v1/audit/export").text
    assert '"actor":"olga","action":"import.completed"' in events.replace(" ", "")


def test_an_empty_or_unknown_feed_is_refused_before_anything_is_queued(running: Service) -> None:
    assert running.call("olga", "POST", "/api/v1/feeds", content=b"").status_code == 422
    unknown = running.call("olga", "POST", "/api/v1/feeds?feed=nope", content=b"id,name\n")
    assert unknown.status_code == 422 and "no feed 'nope'" in unknown.json()["detail"]
    assert running.call("audrey", "GET", "/api/v1/jobs").json() == []


def test_reconciliation_and_leaver_evidence_run_as_jobs(running: Service) -> None:
    asked = running.call("olga", "POST", "/api/v1/reconciliations", json={"target": "erp"})
    assert asked.status_code == 202
    done = _finished(running, asked.json()["job"])
    # a manual target is reconciled from its export, never read live: the job says so
    assert done["status"] in ("succeeded", "failed"), done
    missing = running.call("olga", "POST", "/api/v1/reconciliations", json={"target": "nope"})
    assert missing.status_code == 404
    assert (
        running.call(
            "olga", "POST", "/api/v1/events", json={"identity": "S1", "kind": "terminate"}
        ).status_code
        == 201
    )
    evidence = running.call("audrey", "POST", "/api/v1/evidence/leavers", json={"identity": "S1"})
    assert evidence.status_code == 202
    done = _finished(running, evidence.json()["job"])
    assert done["status"] == "succeeded", done
    # the manual targets cannot be read: the bundle must not claim the access is gone
    assert done["result"]["outcome"] in ("incomplete", "fail"), done["result"]
    bundles = running.call("audrey", "GET", "/api/v1/evidence/bundles").json()
    assert bundles
    name = bundles[0]["name"]
    got = running.call("audrey", "GET", f"/api/v1/evidence/bundles/{name}")
    assert got.status_code == 200 and len(got.content) == bundles[0]["bytes"]
    assert (
        running.call("audrey", "GET", "/api/v1/evidence/bundles/..%2Fprovisor.db").status_code
        == 404
    )


def test_tokens_and_passwords_never_appear_in_logs_or_answers(
    running: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [PASSWORD, *running.tokens.values()]
    answers: list[str] = []
    signed = running.call(
        None, "POST", "/api/v1/session", json={"name": "alice", "password": PASSWORD}
    )
    session_token = signed.json()["token"]
    secrets.append(session_token)
    wrong = running.call(
        None, "POST", "/api/v1/session", json={"name": "alice", "password": PASSWORD + "x"}
    )
    answers.append(wrong.text)
    for who in running.tokens:
        answers.append(running.call(who, "GET", "/api/v1/me").text)
        answers.append(running.call(who, "GET", "/api/v1/tokens").text)
    answers.append(running.call("root", "GET", "/api/v1/operators").text)
    answers.append(running.call("audrey", "GET", "/api/v1/audit/export").text)
    # a token presented where a password belongs is not repeated
    answers.append(
        running.call(
            None,
            "POST",
            "/api/v1/session",
            json={"name": "root", "password": running.tokens["root"]},
        ).text
    )
    scim = scim_token(running)
    secrets.append(scim)
    import httpx2

    with httpx2.Client(
        base_url=running.url + "/scim/v2", headers={"Authorization": f"Bearer {scim}"}
    ) as client:
        okta_password = "Sup3r-Secret-Okta-Passw0rd!"
        secrets.append(okta_password)
        created = client.post(
            "/Users",
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "tara@example.com",
                "password": okta_password,
                "active": True,
            },
        )
        assert created.status_code == 201
        answers.append(created.text)
        answers.append(client.get(f"/Users/{created.json()['id']}").text)
        answers.append(client.get("/Users").text)
        bad = client.get("/Users", headers={"Authorization": "Bearer " + PASSWORD})
        answers.append(bad.text)
    with running.workspace.sessions() as session:
        from sqlalchemy import text

        stored = " ".join(
            str(row)
            for table in (
                "audit_events",
                "api_tokens",
                "operators",
                "scim_resources",
                "identity_events",
            )
            for row in session.execute(text(f"select * from {table}"))
        )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /api/v1/session" in logged  # the access log was captured
    for secret in secrets:
        for where, text_ in (
            ("log", logged),
            ("stored", stored),
            *(("answer", a) for a in answers),
        ):
            assert secret not in text_, f"a secret appears in the {where}"
