"""Manual targets: work items for the revocation owner, done then verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

POLICY = """\
targets:
  - name: erp
    class: manual
    owner: finance-ops
    leaver_action: disable
    sla_days: 2
    entitlements: [{name: erp-user}, {name: approver}]
rules:
  - name: finance
    when: {attr: department, equals: Finance}
    grant: [{target: erp, entitlements: [erp-user]}]
"""

PEOPLE = """\
id,name,email,department,employment_type
F1,Fay Finance,fay@example.com,Finance,employee
F2,Gus Finance,gus@example.com,Finance,employee
"""


@pytest.fixture
def erp(workspace: Path, cli: Any) -> Path:
    (workspace / "policy" / "policy.yaml").write_text(POLICY)
    (workspace / "provisor.yaml").write_text("feeds: {hr: {mode: snapshot}}\n")
    (workspace / "people.csv").write_text(PEOPLE)
    assert cli("--now", "2026-03-01", "import", str(workspace / "people.csv")).code == 0
    return workspace


def test_leaver_tasks_done_then_verified_by_a_second_person(cli: Any, erp: Path) -> None:
    export = erp / "erp.csv"
    export.write_text(
        "account,email,enabled,entitlements\n"
        "fay,fay@example.com,true,erp-user;approver\n"
        "gus,gus@example.com,true,erp-user\n"
    )
    assert cli("--now", "2026-03-01", "observe", "erp", str(export)).code == 0
    cli("--now", "2026-03-02", "event", "terminate", "F1")
    cli("--now", "2026-03-02", "plan")
    applied = cli("--now", "2026-03-02", "apply", "--json").json()
    assert applied["tasks_opened"] == 4  # sessions, disable, two entitlements
    listed = cli("--now", "2026-03-02", "tasks", "list", "--json").json()
    assert [t["instructions"].split(" — ")[0] for t in listed] == [
        "End every open session and revoke tokens/credentials of F1 (Fay Finance)",
        "Disable (lock) the account of F1 (Fay Finance)",
        "Remove approver from F1 (Fay Finance)",
        "Remove erp-user from F1 (Fay Finance)",
    ]
    assert {t["owner"] for t in listed} == {"finance-ops"}
    assert listed[0]["due"].startswith("2026-03-04")
    overdue = cli("--now", "2026-03-10", "tasks", "list", "--json").json()
    assert all(t["overdue"] for t in overdue)
    first = listed[0]["id"]
    assert cli("tasks", "verify", str(first)).code == 6  # not done yet
    assert cli("tasks", "done", str(first), "--evidence", "RITM001", "--by", "olga").code == 0
    same = cli("tasks", "verify", str(first), "--by", "olga")
    assert same.code == 18 and "a second person must verify it" in same.err
    assert cli("tasks", "verify", str(first), "--by", "pete").code == 0
    # A later export of the application confirms the other removals once they are done.
    for task in listed[1:]:
        cli("tasks", "done", str(task["id"]), "--evidence", "RITM002", "--by", "olga")
    export.write_text(
        "account,email,enabled,entitlements\n"
        "fay,fay@example.com,false,\n"
        "gus,gus@example.com,true,erp-user\n"
    )
    observed = cli("--now", "2026-03-03", "observe", "erp", str(export), "--json").json()
    assert observed["confirmed"] == 3
    assert cli("tasks", "list", "--json").json() == []
    assert (
        cli("--now", "2026-03-03", "plan", "--identity", "F1", "--json").json()["operations"] == []
    )


def test_superseded_operation_cancels_its_task(cli: Any, erp: Path) -> None:
    cli("--now", "2026-03-01", "plan")
    opened = cli("--now", "2026-03-01", "apply", "--json").json()["tasks_opened"]
    assert opened == 4  # two joiners: create + erp-user each
    cli("--now", "2026-03-02", "event", "terminate", "F2")
    plan = cli("--now", "2026-03-02", "plan", "--json").json()
    assert plan["cancelled"] == 2
    remaining = cli("tasks", "list", "--json").json()
    assert {t["identity"] for t in remaining} == {"F1"}
