"""The command line through its real entry point: happy paths and every error path."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA

FEEDS = DATA / "feeds"

CONFIG = """\
feeds:
  hr: {mode: snapshot}
  events: {mode: events}
guard: {max_share: 0.10, max_count: 50, min_count: 5}
"""


@pytest.fixture
def ws(workspace: Path) -> Path:
    (workspace / "provisor.yaml").write_text(CONFIG, encoding="utf-8")
    return workspace


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


PEOPLE = """\
id,name,email,department,employment_type,manager,start_date,end_date,status
E1,Ann Head,ann@example.com,Engineering,employee,,2020-01-01,,active
E2,Bob Dev,bob@example.com,Engineering,employee,E1,2021-01-01,,active
E3,Cy Sales,cy@example.com,Sales,contractor,E1,2022-01-01,,leave
E4,Di Future,di@example.com,Sales,employee,E1,2022-01-01,2030-01-31,active
"""


def test_help_lists_verbs_and_every_command_has_an_example(cli: Any) -> None:
    result = cli("--help")
    assert result.code == 0
    for verb in (
        "init",
        "import",
        "event",
        "tick",
        "holds",
        "approve",
        "plan",
        "explain",
        "identities",
        "audit",
        "demo",
        "observe",
        "policy",
    ):
        assert verb in result.out
    for command in (
        ["init"],
        ["import"],
        ["event"],
        ["tick"],
        ["holds"],
        ["approve"],
        ["plan"],
        ["explain"],
        ["observe"],
        ["demo"],
        ["identities", "list"],
        ["identities", "show"],
        ["audit", "verify"],
        ["audit", "export"],
        ["policy", "check"],
        ["apply"],
        ["run"],
        ["tasks", "list"],
        ["reconcile"],
        ["cases", "list"],
        ["marks", "set"],
        ["debt"],
        ["verify-leaver"],
        ["coverage"],
    ):
        shown = cli(*command, "--help")
        assert shown.code == 0, command
        assert "Example:" in shown.out, command


def test_event_refuses_ids_reserved_for_orphan_accounts(cli: Any, ws: Path) -> None:
    result = cli("event", "hire", "orphan:x1")
    assert result.code == 6 and "name accounts linked to no identity" in result.err


def test_before_init_says_what_to_do(cli: Any, tmp_path: Path) -> None:
    result = cli("-w", str(tmp_path / "nowhere"), "identities")
    assert result.code == 7
    assert result.err.strip().endswith("run 'provisor init' first")
    assert "Traceback" not in result.err


def test_status_lists_every_target_with_its_state_and_work(cli: Any, ws: Path) -> None:
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    assert cli("plan").code == 0
    found = {t["target"]: t for t in cli("status", "--json").json()["targets"]}
    assert found and all(t["state"] == "available" for t in found.values())
    assert sum(t["due"] + t["later"] for t in found.values()) > 0  # planned, not yet applied
    table = cli("status")
    assert table.code == 0 and all(name in table.out for name in found)


def test_probe_asks_the_next_run_to_probe_an_unavailable_target_at_once(cli: Any, ws: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from provisor.engine.workspace import Workspace
    from provisor.store import models

    cli("import", str(write(ws / "people.csv", PEOPLE)))
    names = [t["target"] for t in cli("status", "--json").json()["targets"]]
    down, up = names[0], names[1]
    later = datetime.now(UTC) + timedelta(hours=1)
    workspace = Workspace.open(ws)
    try:
        with workspace.sessions() as session, session.begin():
            session.add(
                models.TargetCircuit(
                    target=down,
                    failures=5,
                    opened_at=datetime.now(UTC),
                    reason="connection refused",
                    probe_at=later,
                    probes=2,
                )
            )
        asked = cli("probe", down)
        assert asked.code == 0 and "probes it at once" in asked.out, asked.err
        assert "nothing to probe" in cli("probe", up).out
        unknown = cli("probe", "nowhere")
        assert unknown.code != 0 and "no target 'nowhere'" in unknown.err
        with workspace.sessions() as session:
            row = session.get(models.TargetCircuit, down)
            assert row is not None and row.opened_at is not None  # still open: a probe decides
            assert row.probe_at is not None and row.probe_at < later
            said = session.execute(
                select(models.AuditEvent.subject).where(
                    models.AuditEvent.action == "target.probe_asked"
                )
            ).scalars()
            assert list(said) == [down]
    finally:
        workspace.close()


def test_init_is_idempotent(cli: Any, ws: Path) -> None:
    again = cli("init", "--json").json()
    assert again["schema_before"] == again["schema"] and again["written"] == []


def test_snapshot_import_reimport_and_identities(cli: Any, ws: Path) -> None:
    feed = write(ws / "people.csv", PEOPLE)
    first = cli("import", str(feed), "--json")
    assert first.code == 0, first.err
    data = first.json()
    assert data["rows_accepted"] == 4 and data["events"] == {"hire": 4, "leave": 1, "terminate": 1}
    again = cli("import", str(feed), "--json").json()
    assert again["events"] == {} and again["unchanged"] == 4
    listed = {r["id"]: r for r in cli("identities", "list", "--json").json()}
    assert listed["E3"]["state"] == "leave"
    # end_date 2030-01-31 is the last working day: access ends when it does (workspace in UTC)
    assert listed["E4"]["next_change"] == "2030-02-01T00:00:00+00:00"
    table = cli("identities")
    assert "Ann Head" in table.out


def test_dates_typed_and_shown_in_the_persons_zone(cli: Any, ws: Path) -> None:
    """A workspace in Los Angeles with people located elsewhere: --now is a day there, an
    event's --effective date a day where the person is, and every time shown names its zone."""
    config = ws / "provisor.yaml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + "\ntime:\n  zone: America/Los_Angeles\n  locations: {Sydney: Australia/Sydney}\n",
        encoding="utf-8",
    )
    feed = write(
        ws / "people.csv",
        "id,name,location,start_date\nS1,Sam Sydney,Sydney,2026-01-05\nL1,Lee LA,,2026-01-05\n",
    )
    assert cli("--now", "2026-06-01", "import", str(feed)).code == 0
    said = cli("--now", "2026-06-01", "event", "terminate", "S1", "--effective", "2026-12-31")
    assert said.code == 0, said.err
    # the end of 2026-12-31 in Sydney (AEDT, +11), shown there
    assert "effective 2027-01-01 00:00 AEDT (Australia/Sydney) recorded" in said.out
    data = cli(
        "--now", "2026-06-01", "event", "terminate", "L1", "--effective", "2026-12-31", "--json"
    ).json()
    assert data["effective"] == "2027-01-01T08:00:00+00:00"  # the workspace's zone, PST
    shown = cli("--now", "2026-06-01", "identities", "show", "S1")
    # --now is the start of that day in the workspace's zone: 00:00 PDT, 17:00 in Sydney
    assert "S1: active as of 2026-06-01 17:00 AEST (Australia/Sydney)" in shown.out
    assert "next change: 2027-01-01 00:00 AEDT (Australia/Sydney)" in shown.out
    assert "2026-01-05 00:00 AEDT (Australia/Sydney)" in shown.out  # the hire, in the timeline
    listed = cli("identities", "list")
    assert "2026-12-31 05:00 PST (America/Los_Angeles)" in listed.out  # S1, in the workspace's
    bad = cli("event", "terminate", "S1", "--effective", "31/12/2026")
    assert bad.code != 0 and "--effective" in bad.err and "not a date" in bad.err


def test_snapshot_moves_and_missing_people(cli: Any, ws: Path) -> None:
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    changed = PEOPLE.replace(
        "E2,Bob Dev,bob@example.com,Engineering", "E2,Bob Dev,bob@example.com,Sales"
    ).replace(
        "E3,Cy Sales,cy@example.com,Sales,contractor,E1,2022-01-01,,leave",
        "E3,Cy Sales,cy@example.com,Sales,employee,E1,2022-01-01,,active",
    )
    without_e1 = "\n".join(line for line in changed.splitlines() if not line.startswith("E1,"))
    data = cli("import", str(write(ws / "people2.csv", without_e1 + "\n")), "--json").json()
    assert data["events"] == {"move": 1, "convert": 1, "return": 1, "terminate": 1}
    assert data["missing_from_snapshot"] == 1
    shown = cli("identities", "show", "E1", "--json").json()
    assert shown["state"] == "terminated"
    assert shown["timeline"][-1]["source"].endswith("missing from snapshot")


def test_bad_rows_are_reported_and_good_rows_apply(cli: Any, ws: Path) -> None:
    result = cli("import", str(FEEDS / "bad-rows.csv"))
    assert result.code == 10
    assert "bad-rows.csv:3 start_date: invalid date '2020-13-45'" in result.err
    assert "bad-rows.csv:4 email: invalid email" in result.err
    ids = {r["id"] for r in cli("identities", "list", "--json").json()}
    assert {"E001"} <= ids and "E002" not in ids


@pytest.mark.parametrize(
    "name,needle",
    [
        ("missing-columns.csv", "missing-columns.csv"),
        ("empty.csv", "would terminate everyone"),
        ("header-only.csv", "would terminate everyone"),
        ("not-utf8.csv", "not valid UTF-8"),
    ],
)
def test_refused_files_exit_4_with_one_line(cli: Any, ws: Path, name: str, needle: str) -> None:
    result = cli("import", str(FEEDS / name))
    assert result.code == 4
    assert needle in result.err
    assert result.err.startswith("error: ") and "Traceback" not in result.err


def test_empty_events_file_is_nothing_to_do(cli: Any, ws: Path) -> None:
    result = cli("import", str(FEEDS / "empty.csv"), "--feed", "events", "--json")
    assert result.code == 0 and result.json()["events"] == {}


def test_duplicate_ids_and_unknown_manager(cli: Any, ws: Path) -> None:
    dup = cli("import", str(FEEDS / "duplicate-ids.csv"), "--json")
    assert dup.code == 10
    data = dup.json()
    assert sum("duplicate id E100" in e for e in data["errors"]) == 2
    assert data["rows_accepted"] == 3
    manager = cli("import", str(FEEDS / "unknown-manager.csv"), "--json")
    assert manager.code == 0
    assert any("manager E999 is unknown" in w for w in manager.json()["warnings"])
    flags = {r["id"]: r["flags"] for r in cli("identities", "list", "--json").json()}
    assert flags["E003"] == ["unknown manager E999"]


def test_events_feed_and_reimport(cli: Any, ws: Path) -> None:
    first = cli("import", str(FEEDS / "events-good.csv"), "--feed", "events", "--json")
    assert first.code == 0, first.err
    again = cli("import", str(FEEDS / "events-good.csv"), "--feed", "events", "--json").json()
    assert again["recorded"] == 0 and again["duplicates"] == first.json()["recorded"]


def test_event_tick_and_rescind(cli: Any, ws: Path) -> None:
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    future = cli("event", "terminate", "E2", "--effective", "2030-06-01", "--json").json()
    assert future["state"] == "active"
    ticked = cli("--now", "2030-06-02", "tick", "--json").json()
    assert ticked["transitions"] == {"active->terminated": 2}  # E2 and E4 (2030-01-31)
    rescind = cli("--now", "2030-06-03", "event", "rescind", "E2", "--json")
    assert rescind.code == 0, rescind.err
    assert rescind.json()["state"] == "active"


def test_impossible_event_is_refused(cli: Any, ws: Path) -> None:
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    result = cli("event", "return", "E1")
    assert result.code == 6
    assert result.err.strip() == "error: E1: return: return is not possible from state active"
    bad = cli("event", "move", "E1", "--set", "department")
    assert bad.code == 2 and "NAME=VALUE" in bad.err


def test_mass_change_guard_holds_and_partial_approval(cli: Any, ws: Path) -> None:
    rows = ["id,name,email,department,employment_type"]
    rows += [f"P{i:02d},Person {i},p{i}@example.com,Ops,employee" for i in range(20)]
    cli("import", str(write(ws / "all.csv", "\n".join(rows) + "\n")))
    kept = [rows[0], *rows[7:]]  # P00..P05 missing: 6 of 20 leave at once
    data = cli("import", str(write(ws / "fewer.csv", "\n".join(kept) + "\n")), "--json").json()
    assert data["held"] == 6 and data["hold"] == 1
    holds = cli("holds", "--json").json()
    assert holds[0]["identities"] == [f"P{i:02d}" for i in range(6)]
    approved = cli("approve", "1", "--only", "P00,P01", "--json").json()
    assert approved["hold"] == 1 and approved["transitions"] == {"active->terminated": 2}
    states = {r["id"]: r["state"] for r in cli("identities", "list", "--json").json()}
    assert states["P00"] == "terminated" and states["P02"] == "active"
    unknown = cli("approve", "1", "--only", "P19")
    assert unknown.code == 5 and "holds nothing for: P19" in unknown.err
    rejected = cli("approve", "1", "--reject", "--json").json()
    assert rejected["approved"] is False
    assert cli("holds", "--json").json() == []
    # A rejected change comes back when the next feed says it again; four leavers are under
    # the guard's minimum, so this time they apply.
    again = cli("import", str(ws / "fewer.csv"), "--json").json()
    assert again["held"] == 0 and again["transitions"] == {"active->terminated": 4}


def test_plan_explain_and_observe(cli: Any, ws: Path) -> None:
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    plan = cli("plan", "--json").json()
    assert {(o["identity"], o["operation"]) for o in plan["operations"]} >= {
        ("E1", "create"),
        ("E2", "add-entitlement"),
    }
    export = write(
        ws / "directory.csv",
        "account,email,enabled,entitlements,sessions\n"
        "ann,ann@example.com,true,all-staff;engineering,2\n"
        "bob,bob@example.com,true,all-staff;engineering,0\n"
        "ghost,ghost@example.com,true,all-staff,\n",
    )
    observed = cli("observe", "directory", str(export), "--json").json()
    assert observed["linked"] == 2 and observed["unlinked"] == 1
    cli("event", "terminate", "E2")
    leaver = cli("plan", "--identity", "E2", "--json").json()["operations"]
    assert [(o["operation"], o["entitlement"]) for o in leaver] == [
        ("revoke-sessions", None),  # none at the export, but one may have opened since
        ("disable", None),
        ("remove-entitlement", "all-staff"),
        ("remove-entitlement", "engineering"),
    ]
    why = cli("explain", "E1", "directory:engineering", "--json").json()
    assert why["granted"] and why["reasons"] == ["rule engineers"]
    why_not = cli("explain", "E3", "directory:engineering", "--json").json()
    assert not why_not["granted"]
    assert why_not["why_not"] == [
        "rule engineers does not match: department is 'Sales', wanted 'Engineering'"
    ]
    everything = cli("explain", "E1", "--json").json()
    assert set(everything["targets"]["directory"]["entitlements"]) == {"all-staff", "engineering"}
    assert cli("explain", "E404").code == 5
    assert cli("explain", "E1", "nosuch:thing").code == 5


def _database_bytes(ws: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ws.glob("provisor.db*"))}


def test_what_if_shows_plan_holds_and_debt_and_keeps_nothing(cli: Any, ws: Path) -> None:
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    export = write(
        ws / "directory.csv",
        "account,email,enabled,entitlements,sessions\n"
        "ann,ann@example.com,true,all-staff;engineering,2\n"
        "bob,bob@example.com,true,all-staff;engineering,0\n",
    )
    cli("observe", "directory", str(export))
    cli("plan")
    assert cli("status").code == 0  # every command before this one has closed the database
    before = _database_bytes(ws)
    found = cli("what-if", "event", "terminate", "E2", "--json").json()
    assert found["recorded"]["state"] == "terminated"
    ops = {(o["identity"], o["operation"], o["entitlement"]) for o in found["operations"]}
    assert ("E2", "disable", None) in ops and ("E2", "remove-entitlement", "engineering") in ops
    # bob's access is now owed: debt goes up by what he holds
    assert found["debt"]["after"]["items"] > found["debt"]["before"]["items"]
    assert found["explained"]["E2"]["targets"] == {}
    shown = cli("what-if", "event", "terminate", "E2")
    assert "Would record 1 events" in shown.out and "Nothing was recorded" in shown.out
    # a snapshot without E2 and E3: leavers, but too few for the mass-change guard here
    lines = [line for line in PEOPLE.splitlines() if not line.startswith(("E2,", "E3,"))]
    snapshot = found = cli(
        "what-if", "import", str(write(ws / "next.csv", "\n".join(lines) + "\n")), "--json"
    ).json()
    assert snapshot["recorded"]["missing_from_snapshot"] == 2
    draft = ws / "draft.yaml"
    draft.write_text(
        (ws / "policy" / "policy.yaml")
        .read_text(encoding="utf-8")
        .replace("equals: Engineering", "equals: Nobody"),
        encoding="utf-8",
    )
    policy = cli("what-if", "policy", str(draft), "--json").json()
    assert ("E1", "remove-entitlement", "engineering") in {
        (o["identity"], o["operation"], o["entitlement"]) for o in policy["operations"]
    }
    assert _database_bytes(ws) == before  # byte for byte: nothing recorded, nothing signed
    assert cli("identities", "show", "E2", "--json").json()["state"] == "active"


def test_identities_show_bitemporal(cli: Any, ws: Path) -> None:
    cli("--now", "2026-01-10", "import", str(write(ws / "people.csv", PEOPLE)))
    cli("--now", "2026-02-20", "event", "terminate", "E2", "--effective", "2026-02-01")
    then = cli(
        "identities", "show", "E2", "--as-of", "2026-02-10", "--known-at", "2026-02-15", "--json"
    ).json()
    now = cli("identities", "show", "E2", "--as-of", "2026-02-10", "--json").json()
    assert then["state"] == "active" and now["state"] == "terminated"
    text = cli("identities", "show", "E2")
    assert "Timeline" in text.out and "terminate" in text.out


def test_a_future_now_is_seen_alike_by_every_command(cli: Any, ws: Path) -> None:
    """A change recorded with ``--now`` in the future: list, show, explain and plan without
    ``--now`` all see the identity as of that moment, until it has passed."""
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    assert cli("--now", "2099-01-02", "event", "terminate", "E2").code == 0
    listed = {r["id"]: r["state"] for r in cli("identities", "list", "--json").json()}
    shown = cli("identities", "show", "E2", "--json").json()
    explained = cli("explain", "E2", "--json").json()
    assert listed["E2"] == shown["state"] == explained["state"] == "terminated"
    assert shown["as_of"].startswith("2099-01-02")
    assert explained["targets"] == {}  # a leaver should hold nothing
    # an explicit --as-of still answers for that moment
    assert cli("identities", "show", "E2", "--as-of", "2098-12-31", "--json").json()["state"] == (
        "active"
    )
    # others are shown as of now
    assert cli("identities", "show", "E1", "--json").json()["as_of"] < "2099"


def test_audit_verify_tamper_and_export(cli: Any, ws: Path, tmp_path: Path) -> None:
    cli("import", str(write(ws / "people.csv", PEOPLE)))
    ok = cli("audit", "verify", "--json").json()
    assert ok["ok"] and ok["events"] > 4
    exported = tmp_path / "audit.csv"
    assert cli("audit", "export", "--format", "csv", "-o", str(exported)).code == 0
    assert exported.read_text().splitlines()[0].startswith("seq,at,actor,action")
    jsonl = cli("audit", "export", "--since", "2000-01-01")
    assert jsonl.out.count("\n") == ok["events"]
    with sqlite3.connect(ws / "provisor.db") as db:
        (seq,) = db.execute(
            "select seq from audit_events where action = 'lifecycle.hire' and subject = 'E1'"
        ).fetchone()
        db.execute(
            "update audit_events set data = replace(data, 'accepted', 'held') where seq = ?",
            (seq,),
        )
    bad = cli("audit", "verify")
    assert bad.code == 8 and f"event {seq} (lifecycle.hire E1) was edited" in bad.err


def test_policy_errors_name_file_and_line(cli: Any, ws: Path) -> None:
    policy = ws / "policy" / "policy.yaml"
    policy.write_text(
        policy.read_text().replace(
            "target: directory\n        entitlements: [engineering]", "target: nosuch"
        )
    )
    result = cli("policy", "check")
    assert result.code == 3
    assert "policy.yaml:" in result.err and "unknown target 'nosuch'" in result.err
    assert cli("plan").code == 3


def test_bad_config_names_the_field(cli: Any, ws: Path) -> None:
    (ws / "provisor.yaml").write_text("guard: {max_share: 2}\n")
    result = cli("identities")
    assert result.code == 2 and "guard.max_share" in result.err


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "provisor"
    result = subprocess.run(
        [str(script), "-w", str(tmp_path), "plan"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 7
    assert result.stderr.startswith(f"error: no Provisor workspace database in {tmp_path}")
    assert "Traceback" not in result.stderr


def test_demo_tour_reconciles_and_proves_removal(cli: Any, tmp_path: Path) -> None:
    """The guided tour end to end: what was changed behind Provisor's back is found and fixed,
    and each leaver's evidence is written from a live read."""
    result = cli("demo", "--dir", str(tmp_path / "tour"), "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    first, again = summary["reconcile"]["first"], summary["reconcile"]["again"]
    assert {"drift", "terminated-active", "orphan"} <= set(first["classes"])
    assert set(again["classes"]) == {"ok", "orphan"}  # the orphan went to its owner as a ticket
    assert first["tickets"] >= 1 and again["planned"] == 0
    outcomes = {who: leaver["outcome"] for who, leaver in summary["leavers"].items()}
    assert outcomes == {"E1010": "pass", "E1134": "fail"}  # a manual application still has E1134
    assert Path(summary["leavers"]["E1010"]["html"]).exists()
    assert summary["audit"]["ok"] is True
