"""The web console in a real browser (Debian's chromium, driven by Playwright): signing in as
each role, the debt on the dashboard, a manual removal done by its owner and verified by a
second person, part of a hold approved; forms without their CSRF token refused."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from provisor.engine.observed import import_observed
from tests.api.conftest import PASSWORD, Service, leaver_with_tasks

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# a folder to keep screenshots of the pages in (the docs' pictures are taken so)
SHOTS = os.environ.get("PROVISOR_SCREENSHOTS")


def _shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


def _sign_in(browser: Any, service: Service, name: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(service.url + "/console/")
    assert page.url.endswith("/console/login")  # no session: the sign-in page
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(service.url + "/console/")
    return page


def test_each_role_signs_in_and_sees_what_it_may(browser: Any, service: Service) -> None:
    leaver_with_tasks(service)
    for name in ("root", "olga", "alice", "owen", "rita", "audrey"):
        page = _sign_in(browser, service, name)
        assert name in page.inner_text("header")
        assert int(page.inner_text("#debt-items")) >= 1
        has_tasks = page.locator("nav a[href='/console/tasks']").count() == 1
        assert has_tasks == (name in ("root", "olga", "owen"))
        has_holds = page.locator("nav a[href='/console/holds']").count() == 1
        assert has_holds == (name in ("root", "alice"))
        page.close()
    # an approver may not open the tasks page at all
    page = _sign_in(browser, service, "alice")
    page.goto(service.url + "/console/tasks")
    assert "403" in page.inner_text("h1")
    page.close()


def test_an_owner_completes_a_removal_and_a_second_person_verifies_it(
    browser: Any, service: Service
) -> None:
    leaver_with_tasks(service)
    owner = _sign_in(browser, service, "owen")
    before = int(owner.inner_text("#debt-items"))
    owner.goto(service.url + "/console/tasks")
    _shot(owner, "tasks")
    row = owner.locator("tr[id^=task-]").first
    task = row.get_attribute("id")
    row.locator("input[name=evidence]").fill("RITM0012345")
    row.locator("button", has_text="Done").click()
    owner.wait_for_url(service.url + "/console/tasks")
    assert "done by owen" in owner.inner_text(f"#{task} .status")
    owner.locator(f"#{task} button", has_text="Verify").click()
    assert "second person" in owner.inner_text("main")  # four eyes, in the browser too
    owner.close()
    second = _sign_in(browser, service, "olga")
    second.goto(service.url + "/console/tasks")
    second.locator(f"#{task} button", has_text="Verify").click()
    second.wait_for_url(service.url + "/console/tasks")
    assert second.locator(f"#{task}").count() == 0  # verified: no longer waiting
    second.goto(service.url + "/console/")
    assert int(second.inner_text("#debt-items")) == before - 1
    second.close()


def test_an_approver_releases_part_of_a_hold(browser: Any, service: Service) -> None:
    service.workspace.config.guard.min_count = 2
    for person in ("F1", "F2"):
        assert (
            service.call(
                "olga", "POST", "/api/v1/events", json={"identity": person, "kind": "terminate"}
            ).status_code
            == 201
        )
    held = service.call("alice", "GET", "/api/v1/holds").json()
    assert held and held[0]["identities"]
    hold = held[0]["hold"]
    page = _sign_in(browser, service, "alice")
    page.goto(service.url + "/console/holds")
    _shot(page, "holds")
    first = held[0]["identities"][0]
    page.check(f"#hold-{hold} input[value={first}]")
    page.click(f"#hold-{hold} button[value=approve]")
    page.wait_for_url(service.url + "/console/holds")
    after = service.call("alice", "GET", "/api/v1/holds?every=true").json()
    decided = next(h for h in after if h["hold"] == hold)
    assert first not in decided["identities"] and decided["status"] in ("partial", "approved")
    page.close()


def test_a_form_without_its_csrf_token_is_refused(service: Service) -> None:
    with httpx2.Client(base_url=service.url, timeout=30) as client:
        signed = client.post("/console/login", data={"name": "root", "password": PASSWORD})
        assert signed.status_code == 303 and "provisor_session" in client.cookies
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        forged = client.post("/console/logout", data={})
        assert forged.status_code == 403 and "CSRF" in forged.text
        forged = client.post("/console/tasks/1/done", data={"evidence": "x", "csrf": "nope"})
        assert forged.status_code in (403, 404)
        wrong = client.post("/console/login", data={"name": "root", "password": "wrong"})
        assert wrong.status_code == 401


def test_identities_are_searched_paged_and_explained(browser: Any, service: Service) -> None:
    page = _sign_in(browser, service, "rita")
    page.click("nav a[href='/console/identities']")
    assert "3 identities" in page.inner_text("#identity-count")
    page.fill("input[name=q]", "Fay")
    page.click("form.search button")
    assert page.locator("#identities tbody tr").count() == 1
    page.click("#identities a")
    assert "F1" in page.inner_text("h1")
    assert "erp" in page.inner_text("#access") and "finance" in page.inner_text("#access")
    assert "hire" in page.inner_text("#timeline")
    _shot(page, "identity")
    page.close()
    owner = _sign_in(browser, service, "owen")
    owner.goto(service.url + "/console/identities/F1")
    assert "403" in owner.inner_text("h1")  # an owner sees their targets' work, not everyone
    owner.close()


def test_a_correlation_case_is_resolved_in_the_console(browser: Any, service: Service) -> None:
    from provisor.engine.correlate import Match, open_case

    with service.workspace.sessions() as session, session.begin():
        case = open_case(
            session,
            "erp",
            "acct-7",
            "f.finance",
            Match(None, "email", candidates=("F1", "F2"), case_reason="two people share it"),
            datetime.now(UTC),
        ).id
    page = _sign_in(browser, service, "owen")
    page.click("nav a[href='/console/cases']")
    _shot(page, "cases")
    page.check(f"#case-{case} input[value=F2]")
    page.click(f"#case-{case} button[value=resolve]")
    page.wait_for_url(service.url + "/console/cases")
    assert page.locator(f"#case-{case}").count() == 0
    decided = service.call("olga", "GET", "/api/v1/cases?every=true").json()
    found = next(c for c in decided if c["id"] == case)
    assert found["resolved_identity"] == "F2" and found["resolved_by"] == "owen"
    page.close()


def test_the_dashboard_draws_the_debts_trend(browser: Any, service: Service) -> None:
    from datetime import timedelta

    from provisor.engine.debt import record_snapshot

    now = datetime.now(UTC)
    with service.workspace.sessions() as session, session.begin():
        record_snapshot(service.workspace, session, now=now - timedelta(days=1))
    leaver_with_tasks(service)
    with service.workspace.sessions() as session, session.begin():
        record_snapshot(service.workspace, session, now=now)
    page = _sign_in(browser, service, "audrey")
    _shot(page, "dashboard")
    points = page.get_attribute("#trend polyline", "points")
    assert points is not None and len(points.split()) == 2
    page.click("nav a[href='/console/evidence']")
    assert "Leaver evidence" in page.inner_text("h1")
    page.close()


def test_a_target_page_shows_its_accounts_runs_and_read_paths(
    browser: Any, service: Service
) -> None:
    leaver_with_tasks(service)
    page = _sign_in(browser, service, "owen")
    page.goto(service.url + "/console/targets/erp")
    _shot(page, "target")
    assert "fay" in page.inner_text("#accounts")
    assert "Never reconciled" in page.inner_text("#runs")
    assert "Not probed" in page.inner_text("#paths")
    page.goto(service.url + "/console/targets/wiki")
    assert "403" in page.inner_text("h1")  # not owen's target
    page.close()
    admin = _sign_in(browser, service, "root")
    admin.goto(service.url + "/console/targets/nope")
    assert "404" in admin.inner_text("h1")
    admin.close()


def test_the_debt_page_lists_what_is_still_held_and_an_owner_sees_only_theirs(
    browser: Any, service: Service
) -> None:
    leaver_with_tasks(service)
    export = service.workspace.path / "wiki.csv"
    export.write_text("account,email,enabled,entitlements\nfay,fay@example.com,true,editor\n")
    import_observed(service.workspace, "wiki", export, now=datetime.now(UTC))
    admin = _sign_in(browser, service, "root")
    admin.click("nav a[href='/console/debt']")
    assert admin.get_attribute("#ledger-status", "data-current") == "yes"
    listed = admin.inner_text("#debt")
    assert "F1" in listed and "erp" in listed and "wiki" in listed
    _shot(admin, "debt")
    admin.select_option("select[name=target]", "wiki")
    admin.click("form.search button")
    assert "erp" not in admin.inner_text("#debt tbody") and "wiki" in admin.inner_text("#debt")
    admin.goto(service.url + "/console/identities/F1")
    assert "erp" in admin.inner_text("#owed") and "wiki" in admin.inner_text("#owed")
    admin.close()

    owner = _sign_in(browser, service, "owen")
    owner.goto(service.url + "/console/tasks")
    row = owner.locator("tr[id^=task-]").first
    row.locator("input[name=evidence]").fill("RITM0099")
    row.locator("button", has_text="Done").click()
    owner.wait_for_url(service.url + "/console/tasks")
    owner.goto(service.url + "/console/debt")
    assert owner.get_attribute("#ledger-status", "data-current") == "yes"
    mine = owner.inner_text("#debt tbody")
    # done but not verified by a second person: the access is still owed, never shown as gone
    assert "erp" in mine and "F1" in mine and "wiki" not in mine
    owner.close()


def test_an_approver_releases_one_target_of_a_held_plan_batch(
    browser: Any, service: Service
) -> None:
    now = datetime.now(UTC)
    for target, held in (("erp", "erp-user"), ("wiki", "editor")):
        export = service.workspace.path / f"{target}.csv"
        rows = [f"{a},{a}@example.com,true,{held}" for a in ("fay", "gus")]
        export.write_text("account,email,enabled,entitlements\n" + "\n".join(rows) + "\n")
        import_observed(service.workspace, target, export, now=now)
    service.workspace.config.guard.min_count = 1
    policy = service.workspace.path / "policy" / "policy.yaml"
    policy.write_text(policy.read_text().split("rules:")[0] + "rules: []\n")
    service.workspace.refresh_policy()
    assert service.call("olga", "POST", "/api/v1/plans", json={}).status_code == 200
    [hold] = service.call("alice", "GET", "/api/v1/holds").json()
    assert hold["kind"] == "operations" and set(hold["details"]["targets"]) == {"erp", "wiki"}
    page = _sign_in(browser, service, "alice")
    page.goto(service.url + "/console/holds")
    offered = page.inner_text(f"#hold-{hold['hold']} .hold-targets")
    assert "erp: 6 waiting" in offered and "wiki: 6 waiting" in offered
    page.check(f"#hold-{hold['hold']} input[name=target][value=wiki]")
    page.click(f"#hold-{hold['hold']} button[value=approve]")
    page.wait_for_url(service.url + "/console/holds")
    page.close()
    with service.client("olga") as client:
        left = client.get("/api/v1/operations", params={"status": "held"}).json()
    assert {o["target"] for o in left} == {"erp"}  # wiki released, erp still waits
    # wiki has nothing waiting any more: deciding its part again is refused, nothing recorded
    nothing = service.call(
        "alice",
        "POST",
        f"/api/v1/holds/{hold['hold']}/approve",
        json={"only": ["F1"], "targets": ["wiki"]},
    )
    assert nothing.status_code in (404, 409, 422), nothing.text
    page = _sign_in(browser, service, "alice")
    page.goto(service.url + "/console/holds")
    offered = page.inner_text(f"#hold-{hold['hold']} .hold-targets")
    assert "erp: 6 waiting" in offered and "wiki" not in offered  # only what still waits
    page.close()
