"""Reconciliation against a real slapd and real PostgreSQL roles: an extra group, a re-enabled
leaver, an account made by hand and a renamed user or role, planted with plain ldap3 and
SQL behind Provisor's back, are found, classified, and fixed (auto) or reported (orphans)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import ldap3
import pytest
from sqlalchemy import Engine, select, text

from provisor.domain.lifecycle import EventKind
from provisor.engine import reconcile
from provisor.engine.workspace import Workspace
from provisor.sandbox.slapd import Slapd
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.connectors.test_ldap import (  # noqa: F401
    Namespace,
    admin,
    directory_workspace,
    raw_entry,
    slapd,
)
from tests.connectors.test_sql import (  # noqa: F401
    pg_admin,
    pg_db,
    pg_groups,
    pg_prefix,
    pg_quote,
    run,
)
from tests.engine.test_reconcile import NOW
from tests.engine.test_runner import apply, event, people, plan

RULES = """\
rules:
  - name: engineering
    when: {{attr: department, equals: Engineering}}
    grant: [{{target: {target}, entitlements: [{ent}]}}]
"""


def found(ws: Workspace, target: str) -> dict[str, str | None]:
    with ws.sessions() as session:
        rows = session.execute(
            select(models.ObservedAccount.account, models.ObservedAccount.classification).where(
                models.ObservedAccount.target == target
            )
        )
        return {account: kind for account, kind in rows}


@pytest.fixture
def directory(
    tmp_path: Path,
    slapd: Slapd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Workspace, Namespace]]:
    rules = RULES.format(target="dir", ent="dev")
    extra = "    remediation: {orphan: report}\n"
    ws, space = directory_workspace(tmp_path, slapd, monkeypatch, ("dev", "ops"), rules, extra)
    yield ws, space
    ws.close()


def test_ldap_planted_changes(directory: tuple[Workspace, Namespace]) -> None:
    ws, space = directory
    people(ws, "E1", "E2", "E3")
    plan(ws)
    assert apply(ws).failed == 0
    event(ws, "E2", EventKind.TERMINATE)
    plan(ws)
    assert apply(ws).failed == 0
    e1, e2, e3 = (f"uid={u}@example.com,{space.people}" for u in ("e1", "e2", "e3"))
    assert raw_entry(space.server, e1) is not None, "the connector names users otherwise"
    connection = admin(space.server)
    try:
        connection.modify(f"cn=ops,{space.groups}", {"member": [(ldap3.MODIFY_ADD, [e1])]})
        connection.modify(e2, {"pwdAccountLockedTime": [(ldap3.MODIFY_DELETE, [])]})
        connection.add(
            f"uid=handmade,{space.people}",
            ["inetOrgPerson", "organizationalPerson", "person", "top"],
            {"cn": "Hand Made", "sn": "Made", "mail": "handmade@example.com"},
        )
        assert connection.result["result"] == 0, connection.result
        connection.modify_dn(e3, "uid=e3.renamed@example.com")  # renamed by hand
        assert connection.result["result"] == 0, connection.result
    finally:
        connection.unbind()
    later = NOW + timedelta(hours=1)
    report = reconcile.reconcile_target(ws, "dir", now=later)
    assert report.status == "completed", report.error
    kinds = {f["user_name"]: (f["class"], f["remedy"], f["detail"]) for f in report.findings}
    assert kinds["e1@example.com"][0] == "drift" and "extra ops" in kinds["e1@example.com"][2]
    assert kinds["e2@example.com"][:2] == ("terminated-active", "auto")
    assert kinds["handmade"][:2] == ("orphan", "report")
    renamed = kinds["e3.renamed@example.com"]
    assert renamed[:2] == ("drift", "auto") and "e3@example.com" in renamed[2]
    assert apply(ws, later).failed == 0
    assert raw_entry(space.server, e3) is not None  # renamed back (modrdn)
    assert raw_entry(space.server, f"uid=e3.renamed@example.com,{space.people}") is None
    members = raw_entry(space.server, f"cn=ops,{space.groups}", "member") or {}
    assert e1 not in members.get("member", [])
    locked = raw_entry(space.server, e2, "pwdAccountLockedTime") or {}
    assert locked.get("pwdaccountlockedtime")
    assert raw_entry(space.server, f"uid=handmade,{space.people}") is not None  # reported only
    again = reconcile.reconcile_target(ws, "dir", now=later + timedelta(hours=1))
    assert again.planned == 0
    assert [f["user_name"] for f in again.findings] == ["handmade"]


@pytest.fixture
def database(
    tmp_path: Path,
    postgres_url: str,
    pg_db: Engine,  # noqa: F811
    pg_prefix: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Workspace, str]]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    readers, writers = f"{pg_prefix}readers", f"{pg_prefix}writers"
    pg_groups(pg_db, readers, writers)
    policy = f"""\
targets:
  - name: db
    class: sql
    owner: dba-team
    remediation: {{orphan: report}}
    connection: {{mode: postgres-roles, url: "{postgres_url}", role_prefix: "{pg_prefix}"}}
    entitlements: [{{name: {readers}}}, {{name: {writers}}}]
""" + RULES.format(target="db", ent=readers)
    ws = scratch_workspace(tmp_path, policy)
    yield ws, pg_prefix
    ws.close()


def test_postgres_planted_changes(
    database: tuple[Workspace, str],
    pg_db: Engine,  # noqa: F811
) -> None:
    ws, prefix = database
    people(ws, "E1", "E2", "E3")
    plan(ws)
    assert apply(ws).failed == 0
    event(ws, "E2", EventKind.TERMINATE)
    plan(ws)
    assert apply(ws).failed == 0
    e1, e2, e3 = (f"{prefix}{u}@example.com" for u in ("e1", "e2", "e3"))
    with pg_db.connect() as connection:
        run(connection, f"GRANT {pg_quote(prefix + 'writers')} TO {pg_quote(e1)}")
        run(connection, f"ALTER ROLE {pg_quote(e2)} LOGIN")
        run(connection, f"CREATE ROLE {pg_quote(prefix + 'handmade')} LOGIN")
        run(connection, f"ALTER ROLE {pg_quote(e3)} RENAME TO {pg_quote(prefix + 'e3.old')}")
    later = NOW + timedelta(hours=1)
    report = reconcile.reconcile_target(ws, "db", now=later)
    assert report.status == "completed", report.error
    kinds = {f["account"]: (f["class"], f["remedy"], f["detail"]) for f in report.findings}
    assert kinds[e1][0] == "drift" and f"extra {prefix}writers" in kinds[e1][2]
    assert kinds[e2][:2] == ("terminated-active", "auto")
    assert kinds[prefix + "handmade"][:2] == ("orphan", "report")
    assert kinds[prefix + "e3.old"][0] == "drift" and "user name" in kinds[prefix + "e3.old"][2]
    assert apply(ws, later).failed == 0
    with pg_db.connect() as connection:
        rows: dict[str, Any] = {
            r[0]: r[1]
            for r in connection.execute(
                text(
                    "SELECT rolname::text, rolcanlogin FROM pg_roles WHERE starts_with(rolname, :p)"
                ),
                {"p": prefix},
            )
        }
        member = connection.execute(
            text("SELECT pg_has_role(:r, :g, 'MEMBER')"), {"r": e1, "g": prefix + "writers"}
        ).scalar()
    assert member is False
    assert rows[e2] is False and rows[prefix + "handmade"] is True  # the orphan is reported only
    assert e3 in rows and prefix + "e3.old" not in rows  # renamed back
    again = reconcile.reconcile_target(ws, "db", now=later + timedelta(hours=1))
    assert again.planned == 0
    assert [f["account"] for f in again.findings] == [prefix + "handmade"]
    assert found(ws, "db")[e1] == "ok"
