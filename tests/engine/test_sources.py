"""Two authoritative feeds for overlapping people — an HR system and a contractor database —
matched by e-mail, each attribute from the feed with precedence for it, with access checked on
a real SCIM server and slapd: a contractor who becomes an employee is one identity whose access
follows (contractor group off, staff group on, the same account); the contractor feed dropping
them terminates nobody while HR lists them; HR's end date ends them; a row two people match
waits for a person."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from provisor.engine import correlate, views
from provisor.engine.imports import import_feed
from provisor.engine.workspace import Workspace
from provisor.errors import ConfigError
from provisor.sandbox.slapd import Slapd
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.test_ldap import directory_workspace, raw_entry, slapd  # noqa: F401
from tests.connectors.test_scim import make_group
from tests.engine.test_move_grace import groups_of
from tests.engine.test_runner import apply, plan, server_user

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
CONFIG = """\
feeds:
  hr:
    columns: {id: employee_id}
  contractors:
    columns: {id: contractor_id}
sources:
  match: [email, national_id_hash]
  precedence:
    "*": [hr, contractors]
    title: [contractors, hr]
"""
POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    connection: {{url: "{url}", timeout: 3}}
    entitlements: [{{name: staff}}, {{name: contractors}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app, entitlements: [staff]}}]
  - name: contractors
    when: {{attr: employment_type, equals: contractor}}
    grant: [{{target: app, entitlements: [contractors]}}]
"""
HR = "employee_id,name,email,employment_type,title,start_date,end_date,status\n"
CONTRACTORS = "contractor_id,name,email,employment_type,title,national_id_hash,status\n"


@pytest.fixture
def ws(tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "contractors")
    (tmp_path / "provisor.yaml").write_text(CONFIG, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    yield workspace
    workspace.close()


def feed(ws: Workspace, name: str, header: str, *rows: str, at: datetime = NOW) -> dict:
    path = ws.path / f"{name}-{at:%Y%m%d%H%M}.csv"
    path.write_text(header + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    report = import_feed(ws, path, feed=name, now=at)
    return report.as_dict()


def person(ws: Workspace, who: str, at: datetime) -> dict:
    return views.show_identity(ws, who, as_of=at, known_at=None, now=at)


def identities(ws: Workspace) -> list[str]:
    with ws.sessions() as session:
        return sorted(session.execute(select(models.Identity.external_id)).scalars())


ANN_C = "C7,Ann Lee,ann@example.com,contractor,Consultant,h-ann,active"
CY_C = "C8,Cy Oh,cy@example.com,contractor,Tester,h-cy,active"


def test_a_contractor_who_becomes_an_employee_is_one_person_whose_access_follows(
    ws: Workspace, scim_url: str
) -> None:
    feed(ws, "contractors", CONTRACTORS, ANN_C)
    plan(ws)
    assert apply(ws).failed == 0
    assert groups_of(scim_url, "ann@example.com") == {"contractors"}
    account = server_user(scim_url, "ann@example.com")
    assert account is not None

    day2 = NOW + timedelta(days=1)
    hired = feed(
        ws, "hr", HR, "E100,Ann Lee,ANN@example.com,employee,Engineer,2026-06-02,,active", at=day2
    )
    assert hired["errors"] == [] and identities(ws) == ["C7"]  # the same person
    shown = person(ws, "C7", day2)
    assert shown["attributes"]["employment_type"] == "employee"  # HR's word
    assert shown["attributes"]["title"] == "Consultant"  # the contractor feed's, for titles
    plan(ws, day2)
    assert apply(ws, day2).failed == 0
    assert groups_of(scim_url, "ann@example.com") == {"staff"}
    after = server_user(scim_url, "ann@example.com")
    assert after is not None and after["id"] == account["id"]

    day3 = NOW + timedelta(days=2)
    dropped = feed(ws, "contractors", CONTRACTORS, CY_C, at=day3)  # Ann's contract ends
    assert dropped["missing_from_snapshot"] == 0
    shown = person(ws, "C7", day3)
    assert shown["state"] == "active" and shown["attributes"]["title"] == "Engineer"
    ops = [(o.kind.value, o.reason) for o, _, _ in plan(ws, day3).operations if o.identity == "C7"]
    assert ops == [("update", "title is 'Consultant', not 'Engineer'")]  # HR's title now


def test_a_leaver_only_when_the_feed_with_precedence_says_so(ws: Workspace) -> None:
    feed(ws, "hr", HR, "E100,Ann Lee,ann@example.com,employee,Engineer,2026-05-01,,active")
    day2 = NOW + timedelta(days=1)
    feed(
        ws,
        "contractors",
        CONTRACTORS,
        "C7,Ann Lee,ann@example.com,contractor,X,h,terminated",
        at=day2,
    )
    assert person(ws, "E100", day2)["state"] == "active"  # HR decides, and lists her active
    day3 = NOW + timedelta(days=2)
    feed(
        ws,
        "hr",
        HR,
        "E100,Ann Lee,ann@example.com,employee,Engineer,2026-05-01,2026-06-03,active",
        at=day3,
    )
    assert person(ws, "E100", NOW + timedelta(days=4))["state"] == "terminated"
    assert identities(ws) == ["E100"]


def test_someone_no_feed_lists_any_more_is_missing(ws: Workspace) -> None:
    feed(ws, "contractors", CONTRACTORS, ANN_C, CY_C)
    day2 = NOW + timedelta(days=1)
    report = feed(ws, "contractors", CONTRACTORS, CY_C, at=day2)
    assert report["missing_from_snapshot"] == 1
    assert person(ws, "C7", day2)["state"] == "terminated"


def test_a_row_two_people_match_waits_for_a_person(ws: Workspace) -> None:
    feed(
        ws,
        "hr",
        HR,
        "E1,Ann Lee,ann@example.com,employee,A,2026-05-01,,active",
        "E2,Bo Ek,bo@example.com,employee,B,2026-05-01,,active",
    )
    feed(ws, "contractors", CONTRACTORS, "C9,Bo Ek,bo@example.com,contractor,C,h-bo,active")
    day2 = NOW + timedelta(days=1)
    # e-mail says Ann, the national id hash says Bo (held by the contractor feed's record)
    report = feed(
        ws,
        "contractors",
        CONTRACTORS,
        "C9,Bo Ek,bo@example.com,contractor,C,h-bo,active",
        "C10,Ann Lee,ann@example.com,contractor,D,h-bo,active",
        at=day2,
    )
    assert any("C10" in w and "provisor cases" in w for w in report["warnings"])
    with ws.sessions() as session:
        cases = correlate.list_cases(session)
        assert [(c.target, c.account, sorted(c.candidates)) for c in cases] == [
            ("feed:contractors", "C10", ["E1", "E2"])
        ]
        case_id = cases[0].id
    assert person(ws, "E1", day2)["attributes"]["title"] == "A"  # nothing applied yet
    with ws.sessions() as session, session.begin():
        correlate.resolve_case(session, case_id, "E1", by="admin", now=day2)
    day3 = NOW + timedelta(days=2)
    feed(
        ws,
        "contractors",
        CONTRACTORS,
        "C9,Bo Ek,bo@example.com,contractor,C,h-bo,active",
        "C10,Ann Lee,ann@example.com,contractor,D,h-bo,active",
        at=day3,
    )
    assert person(ws, "E1", day3)["attributes"]["title"] == "D"  # contractors: titles
    assert identities(ws) == ["E1", "E2"]
    timeline = person(ws, "E1", day3)["timeline"]
    assert timeline[-1]["source"].startswith("contractors:")  # the move, and whose word it was


def test_precedence_naming_an_unknown_feed_is_refused_with_where(tmp_path: Path) -> None:
    (tmp_path / "provisor.yaml").write_text(
        CONFIG.replace("title: [contractors, hr]", "title: [contractor, hr]"), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"sources\.precedence\.title: no feed 'contractor'"):
        scratch_workspace(tmp_path, "targets: []\nrules: []\n")


def test_a_match_with_someone_who_has_left_waits_for_a_person(ws: Workspace) -> None:
    feed(ws, "contractors", CONTRACTORS, ANN_C, CY_C)
    day2 = NOW + timedelta(days=1)
    feed(ws, "contractors", CONTRACTORS, CY_C, at=day2)  # Ann leaves
    assert person(ws, "C7", day2)["state"] == "terminated"
    day3 = NOW + timedelta(days=2)  # someone in HR now has Ann's old address
    report = feed(
        ws, "hr", HR, "E5,Ann Other,ann@example.com,employee,X,2026-06-03,,active", at=day3
    )
    assert any("who has left" in w for w in report["warnings"])
    assert identities(ws) == ["C7", "C8"]  # nobody new yet, and C7 not rehired on a guess


def test_two_new_rows_of_one_import_with_one_address_are_not_two_people(ws: Workspace) -> None:
    report = feed(
        ws,
        "contractors",
        CONTRACTORS,
        ANN_C,
        "C70,Ann Lee,ann@example.com,contractor,Consultant,h-ann2,active",
    )
    assert identities(ws) == ["C7"]
    assert any(
        "C70" in w and "already linked to contractors id C7" in w for w in report["warnings"]
    )


def test_a_feed_imported_before_feeds_were_merged_keeps_its_people(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    single = CONFIG[: CONFIG.index("sources:")]
    (tmp_path / "provisor.yaml").write_text(single, encoding="utf-8")
    ws = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    rows = (
        "E1,Ann Lee,ann@example.com,employee,A,2026-05-01,,active",
        "E2,Bo Ek,bo@example.com,employee,B,2026-05-01,,active",
    )
    feed(ws, "hr", HR, *rows)
    ws.close()
    (tmp_path / "provisor.yaml").write_text(CONFIG, encoding="utf-8")  # now merged
    ws = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    try:
        day2 = NOW + timedelta(days=1)
        report = feed(ws, "hr", HR, rows[0], at=day2)  # Bo has left
        assert identities(ws) == ["E1", "E2"]  # Ann is still E1, not a new hr:E1
        assert report["missing_from_snapshot"] == 1
        assert person(ws, "E2", day2)["state"] == "terminated"
    finally:
        ws.close()


def test_in_a_directory_the_contractor_turned_employee_keeps_one_entry(
    tmp_path: Path,
    slapd: Slapd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "provisor.yaml").write_text(CONFIG, encoding="utf-8")
    rules = POLICY[POLICY.index("rules:") :].replace("target: app", "target: dir")
    ws, space = directory_workspace(
        tmp_path,
        slapd,
        monkeypatch,
        ("staff", "contractors"),
        rules.replace("{{", "{").replace("}}", "}"),
    )
    try:
        feed(ws, "contractors", CONTRACTORS, ANN_C)
        plan(ws)
        assert apply(ws).failed == 0
        dn = f"uid=ann@example.com,{space.people}"
        uuid = (raw_entry(space.server, dn, "entryUUID") or {}).get("entryuuid")
        assert uuid and dn in space.members("contractors")
        day2 = NOW + timedelta(days=1)
        feed(ws, "hr", HR, "E100,Ann Lee,ann@example.com,employee,Eng,2026-06-02,,active", at=day2)
        plan(ws, day2)
        assert apply(ws, day2).failed == 0
        assert (raw_entry(space.server, dn, "entryUUID") or {}).get("entryuuid") == uuid
        assert dn in space.members("staff") and dn not in space.members("contractors")
    finally:
        ws.close()
