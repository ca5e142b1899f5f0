"""``provisor demo``: a guided tour on a sample organisation, in a throwaway workspace.

Does: write a sample organisation (about 200 people over seven departments and four locations,
contractors, two people on leave, service accounts, an API key and a bot with owners) and a
sample policy with five targets; start the live ones — a SCIM server, an OpenLDAP directory when
slapd is installed, a payroll application's SQLite tables — and write the manual ones' user
exports; then run the real engine services on them — import, provision, observe, a mover, two
leavers (one with a live session), a future-dated leaver, a rehire — and print the plans, an
explanation; then change the SCIM application behind Provisor's back (a leaver enabled again,
an extra group, an account made by hand) and show reconciliation finding and fixing it, the
revocation debt before and after, each leaver's evidence bundle from a live read of every
application, the coverage map and the audit verification.
Does not: contain engine logic of its own; everything it shows is what the CLI commands do.
"""

from __future__ import annotations

import csv
import os
import random
import sqlite3
import tempfile
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from provisor.config.workspace import CONFIG_FILE
from provisor.domain.desired import desired_access, explain
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.domain.policy import TargetClass
from provisor.engine import debt
from provisor.engine import identities as lifecycle_service
from provisor.engine.coverage import coverage
from provisor.engine.imports import import_feed
from provisor.engine.leavers import LeaverVerifier
from provisor.engine.observed import import_observed
from provisor.engine.planner import state_from_row, sync_journal
from provisor.engine.reconcile import reconcile_target
from provisor.engine.runner import ApplyReport, Runner
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.slapd import SLAPD, Slapd
from provisor.store import db, models

DEMO_CONFIG = """\
policy: [policy]
feeds:
  hr:
    mode: snapshot
    columns: {id: employee_id, manager: manager_id}
  history:
    mode: events
    columns: {id: employee_id}
guard: {max_share: 0.10, max_count: 50, min_count: 5}
lifecycle: {rescind_window_days: 30}
"""

# The directory is a live OpenLDAP server when slapd is installed, else handled by hand.
DIRECTORY_LIVE = """\
    class: ldap
    owner: identity-team@example.com
    leaver_action: disable
    on_leave: disable
    connection: {url: "LDAP_URL", bind_dn: "LDAP_BIND_DN", password: {env: DEMO_DIRECTORY_PASSWORD},
                 base_dn: "LDAP_PEOPLE_DN", groups_dn: "LDAP_GROUPS_DN", disable: ppolicy}
"""
DIRECTORY_MANUAL = """\
    class: manual
    owner: identity-team@example.com
    leaver_action: disable
    on_leave: disable
"""
PASSWORD_VARIABLE = "DEMO_DIRECTORY_PASSWORD"
SHOWN = {"verified-removed": "removed", "still-present": "STILL THERE"}  # evidence states, short

DEMO_POLICY = """\
targets:
  - name: directory
DIRECTORY
    entitlements:
      - {name: all-staff}
      - {name: engineering}
      - {name: sales}
      - {name: finance}
      - {name: vpn}
  - name: github
    class: scim
    owner: platform-team@example.com
    leaver_action: delete
    grace_days: 7
    on_leave: disable
    connection: {url: "SCIM_URL", timeout: 5}
    remediation: {orphan: ticket}
    entitlements:
      - {name: members}
      - {name: platform-admins}
  - name: crm
    class: manual
    owner: sales-ops@example.com
    leaver_action: disable
    entitlements:
      - {name: sales-user}
      - {name: sales-manager}
  - name: payroll-db
    class: sql
    owner: finance-it@example.com
    leaver_action: delete
    grace_days: 30
    connection:
      mode: users-table
      url: "PAYROLL_URL"
      table: users
      user_name_column: login
      external_id_column: employee_id
      columns: {full_name: name, mail: email}
      active_column: active
      active_value: 1
      inactive_value: 0
      membership_table: user_roles
      membership_account_column: user_id
      membership_entitlement_column: role_id
      entitlement_table: roles
      entitlement_name_column: name
      entitlement_key_column: id
      sessions_table: sessions
      sessions_account_column: user_id
    entitlements:
      - {name: payroll-read}
      - {name: payroll-approve}
      - {name: vendor-create}
  - name: legacy-erp
    class: manual
    owner: finance-ops@example.com
    leaver_action: delete
    grace_days: 14
    sla_days: 2
    entitlements:
      - {name: erp-user}

rules:
  - name: all-staff
    when: {attr: employment_type, in: [employee, contractor]}
    grant: [{target: directory, entitlements: [all-staff]}]
  - name: employees-vpn
    when: {attr: employment_type, equals: employee}
    grant: [{target: directory, entitlements: [vpn]}]
  - name: engineering
    when: {attr: department, equals: Engineering}
    grant:
      - {target: directory, entitlements: [engineering]}
      - {target: github, entitlements: [members]}
  - name: sales
    when: {attr: department, equals: Sales}
    grant:
      - {target: directory, entitlements: [sales]}
      - {target: crm, entitlements: [sales-user]}
  - name: sales-managers
    when:
      all:
        - {attr: department, equals: Sales}
        - {attr: title, prefix: "Sales Manager"}
    roles: [sales-manager]
  - name: finance
    when: {attr: department, equals: Finance}
    grant:
      - {target: directory, entitlements: [finance]}
      - {target: payroll-db, entitlements: [payroll-read]}
      - {target: legacy-erp, entitlements: [erp-user]}
  - name: build-bots
    kinds: [service_account, bot]
    when: {attr: department, equals: Engineering}
    grant: [{target: github, entitlements: [members]}]

roles:
  - name: sales-manager
    owner: head-of-sales@example.com
    grants: [{target: crm, entitlements: [sales-user, sales-manager]}]
  - name: platform-admin
    owner: cto@example.com
    grants: [{target: github, entitlements: [members, platform-admins]}]
  - name: payment-approver
    owner: cfo@example.com
    grants: [{target: payroll-db, entitlements: [payroll-read, payroll-approve]}]

assignments:
  - {identity: E1002, role: platform-admin, approver: E1001, granted: 2024-02-01,
     justification: on-call platform lead}
  - {identity: E1132, role: payment-approver, approver: E1131, granted: 2024-03-01,
     justification: approves supplier payments}
  - {identity: E1133, role: payment-approver, approver: E1131, granted: 2024-03-01,
     justification: approves payroll runs}

exceptions:
  - identity: E1132
    grant: [{target: payroll-db, entitlements: [vendor-create]}]
    allow_sod: [pay-and-create-vendor]
    approver: E1131
    justification: year-end vendor clean-up, second approver checks every payment
    granted: 2024-11-01
    expires: 2099-01-31
  - identity: E1133
    grant: [{target: payroll-db, entitlements: [vendor-create]}]
    approver: E1131
    justification: asked for vendor set-up rights, no SoD waiver
    granted: 2024-11-01
    expires: 2099-01-31

sod:
  - name: pay-and-create-vendor
    description: one person must not both create vendors and approve payments
    conflicts: [payroll-db:payroll-approve, payroll-db:vendor-create]
"""

DEPARTMENTS = [
    ("Engineering", 60),
    ("Sales", 40),
    ("Support", 30),
    ("Finance", 20),
    ("Marketing", 20),
    ("Operations", 20),
    ("People", 10),
]
LOCATIONS = ["London", "Berlin", "New York", "Singapore"]
FIRST = [
    "Ada",
    "Ben",
    "Chloé",
    "Dmitri",
    "Eva",
    "Farah",
    "Günter",
    "Hana",
    "Ivan",
    "Jun",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Oskar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tomás",
    "Uma",
    "Viktor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
]
LAST = [
    "Andersen",
    "Becker",
    "Costa",
    "Dubois",
    "Eriksson",
    "Fischer",
    "García",
    "Hoffmann",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Müller",
    "Nakamura",
    "O'Brien",
    "Petrov",
    "Quispe",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Ueda",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zhang",
]
FIELDS = [
    "employee_id",
    "name",
    "email",
    "department",
    "title",
    "location",
    "cost_centre",
    "manager_id",
    "employment_type",
    "kind",
    "owner",
    "start_date",
    "status",
]


def sample_people(seed: int = 7) -> list[dict[str, str]]:
    """The sample organisation: deterministic for a given seed."""
    rng = random.Random(seed)
    people: list[dict[str, str]] = []
    number = 1001
    for department, size in DEPARTMENTS:
        head = f"E{number}"
        for i in range(size):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            contractor = i > 0 and rng.random() < 0.15
            if i == 0:
                title = f"Head of {department}"
            elif department == "Sales" and i < 5:
                title = "Sales Manager"
            else:
                title = rng.choice(["Specialist", "Senior Specialist", "Analyst", "Lead"])
                title = f"{'Engineer' if department == 'Engineering' else department} {title}"
            # mail addresses are ASCII (a directory's mail attribute holds nothing else)
            folded = unicodedata.normalize("NFKD", f"{first}.{last}")
            slug = folded.encode("ascii", "ignore").decode().lower().replace("'", "")
            people.append(
                {
                    "employee_id": f"E{number}",
                    "name": f"{first} {last}",
                    "email": f"{slug}.{number}@example.com",
                    "department": department,
                    "title": title,
                    "location": rng.choice(LOCATIONS),
                    "cost_centre": f"CC-{department[:3].upper()}",
                    "manager_id": "" if i == 0 else head,
                    "employment_type": "contractor" if contractor else "employee",
                    "kind": "human",
                    "owner": "",
                    "start_date": (datetime(2019, 1, 7) + timedelta(days=rng.randrange(0, 2000)))
                    .date()
                    .isoformat(),
                    "status": "active",
                }
            )
            number += 1
    people[45]["status"] = "leave"
    people[120]["status"] = "leave"
    bots = [
        ("S001", "ci-runner", "service_account", "Engineering", "E1002"),
        ("S002", "deploy-bot", "bot", "Engineering", "E1003"),
        ("S003", "billing-export", "api_key", "Finance", "E1131"),
        ("S004", "backup-agent", "service_account", "Operations", "E1171"),
        ("S005", "support-triage", "bot", "Support", "E1101"),
    ]
    for sid, name, kind, department, owner in bots:
        people.append(
            {
                "employee_id": sid,
                "name": name,
                "email": "",
                "department": department,
                "title": kind.replace("_", " "),
                "location": "",
                "cost_centre": "",
                "manager_id": "",
                "employment_type": "",
                "kind": kind,
                "owner": owner,
                "start_date": "2023-06-01",
                "status": "active",
            }
        )
    return people


def write_csv(path: Path, rows: list[dict[str, str]], fields: list[str]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# The payroll application's own tables: accounts, roles, memberships and live sessions.
PAYROLL_TABLES = """\
CREATE TABLE roles (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE users (
    id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE, employee_id TEXT,
    full_name TEXT, mail TEXT, active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE user_roles (
    user_id INTEGER NOT NULL REFERENCES users (id), role_id INTEGER NOT NULL REFERENCES roles (id),
    PRIMARY KEY (user_id, role_id)
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id), started_at TEXT
);
INSERT INTO roles (name) VALUES ('payroll-read'), ('payroll-approve'), ('vendor-create');
"""


def create_payroll_app(path: Path) -> str:
    """The sample payroll application's database (SQLite); returns its SQLAlchemy URL."""
    with sqlite3.connect(path) as connection:
        connection.executescript(PAYROLL_TABLES)
    connection.close()
    return f"sqlite:///{path.resolve()}"


def log_in_to_payroll(url: str, identity: str) -> None:
    """Someone opens a session in the payroll application (as its own login code would)."""
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO sessions (user_id, started_at) "
            "SELECT id, datetime('now') FROM users WHERE employee_id = ?",
            (identity,),
        )
    connection.close()


def start_directory() -> Slapd | None:
    """A live OpenLDAP directory for the tour, or None when slapd is not installed."""
    if not SLAPD.exists():
        return None
    directory = Slapd(base_dn="dc=example,dc=com").start()
    directory.create_groups(["all-staff", "engineering", "sales", "finance", "vpn"])
    os.environ[PASSWORD_VARIABLE] = directory.password
    return directory


def prepare(
    folder: Path, scim_url: str, directory: Slapd | None = None, payroll_url: str | None = None
) -> None:
    """Write the sample workspace files and create its database; ``scim_url`` is where the
    sample SCIM application (the github target) answers, ``directory`` the live LDAP server
    (None: the directory is a manual application), ``payroll_url`` the payroll application's
    database (default: a new one in the workspace)."""
    (folder / "policy").mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(DEMO_CONFIG, encoding="utf-8")
    if payroll_url is None:
        payroll_url = create_payroll_app(folder / "payroll-app.db")
    if directory is None:
        block = DIRECTORY_MANUAL
    else:
        block = (
            DIRECTORY_LIVE.replace("LDAP_URL", directory.url)
            .replace("LDAP_BIND_DN", directory.bind_dn)
            .replace("LDAP_PEOPLE_DN", directory.people_dn)
            .replace("LDAP_GROUPS_DN", directory.groups_dn)
        )
    policy = (
        DEMO_POLICY.replace("DIRECTORY\n", block)
        .replace("SCIM_URL", scim_url)
        .replace("PAYROLL_URL", payroll_url)
    )
    (folder / "policy" / "demo.yaml").write_text(policy, encoding="utf-8")
    write_csv(folder / "people.csv", sample_people(), FIELDS)
    # A former engineer, terminated last spring, to be rehired during the tour.
    history = [
        {
            "employee_id": "E0999",
            "event": "hire",
            "effective": "2021-04-01",
            "name": "Rafael Ortega",
            "email": "rafael.ortega@example.com",
            "department": "Engineering",
            "title": "Engineer Lead",
            "location": "Berlin",
            "employment_type": "employee",
            "manager_id": "E1001",
        },
        {"employee_id": "E0999", "event": "terminate", "effective": "2026-04-30"},
    ]
    write_csv(
        folder / "history.csv",
        history,
        [
            "employee_id",
            "event",
            "effective",
            "name",
            "email",
            "department",
            "title",
            "location",
            "employment_type",
            "manager_id",
        ],
    )
    engine = db.make_engine(db.database_url(folder))
    db.upgrade(engine)
    engine.dispose()


def write_exports(workspace: Workspace, folder: Path, now: datetime) -> list[Path]:
    """User exports of the manual applications (no live connector), as they stand after their
    initial provisioning; one hand-made change (an extra entitlement) is left in to show drift
    being planned away."""
    exports: dict[str, list[dict[str, str]]] = {
        name: []
        for name, target in workspace.compiled.targets.items()
        if target.target_class is TargetClass.MANUAL
    }
    with workspace.sessions() as session:
        rows = session.execute(select(models.Identity).order_by(models.Identity.external_id))
        for row in rows.scalars():
            desired = desired_access(workspace.compiled, state_from_row(row, now))
            for name, access in desired.targets.items():
                if name not in exports:
                    continue
                ents = sorted(access.entitlements)
                if row.external_id == "E1070" and name == "crm":
                    ents.append("sales-manager")
                exports[name].append(
                    {
                        "account": row.email or row.external_id,
                        "email": row.email or "",
                        "identity": "" if row.email else row.external_id,
                        "enabled": "true" if access.enabled else "false",
                        "entitlements": ";".join(ents),
                        "sessions": "",
                    }
                )
    paths = []
    for name, accounts in exports.items():
        path = folder / "exports" / f"{name}.csv"
        path.parent.mkdir(exist_ok=True)
        write_csv(
            path, accounts, ["account", "email", "identity", "enabled", "entitlements", "sessions"]
        )
        paths.append(path)
    return paths


class _Tour:
    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.summary: dict[str, Any] = {}

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def heading(self, text: str) -> None:
        if self.console is not None:
            self.console.rule(f"[bold]{text}")

    def table(self, columns: list[str], rows: list[tuple[str, ...]]) -> None:
        if self.console is None:
            return
        table = Table()
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        self.console.print(table)

    def plan_table(self, title: str, rows: list[tuple[str, ...]]) -> None:
        if self.console is None:
            return
        if not rows:
            self.console.print(f"{title}: nothing to do")
            return
        table = Table(title=title, title_justify="left")
        for column in ("target", "operation", "entitlement", "not before", "reason"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        self.console.print(table)


def _plan_rows(workspace: Workspace, identity: str, now: datetime) -> list[tuple[str, ...]]:
    with workspace.sessions() as session, session.begin():
        synced = sync_journal(workspace, session, now=now, identity=identity)
    return [
        (
            op.target,
            op.kind.value,
            op.entitlement or "",
            op.not_before.date().isoformat() if op.not_before else "",
            op.reason,
        )
        for op, _status, _id in synced.operations
    ]


def _event(workspace: Workspace, event: LifecycleEvent, now: datetime) -> None:
    with workspace.sessions() as session, session.begin():
        lifecycle_service.record_events(
            session, workspace.config, [event], origin="demo", now=now, strict=True
        )


def _apply(workspace: Workspace, now: datetime, identity: str | None = None) -> ApplyReport:
    runner = Runner(workspace)
    try:
        return runner.apply(now=lambda: now, identity=identity)
    finally:
        runner.close()


def _applied(report: ApplyReport) -> str:
    waiting = ", ".join(f"{t}: {n}" for t, n in sorted(report.no_connector.items()))
    return (
        f"apply: {report.verified} verified by read-back, {report.unverifiable} unverifiable, "
        f"{report.failed} failed, {report.waiting} waiting"
        + (f"; without a connector yet: {waiting}" if waiting else "")
    )


def _tamper(workspace: Workspace, scim_url: str) -> list[str]:
    """Changes made in github directly, as an administrator would: a leaver's account enabled
    again, an extra group for one engineer, and an account created by hand."""
    with workspace.sessions() as session:
        linked = dict(
            session.execute(
                select(models.ObservedAccount.identity, models.ObservedAccount.account).where(
                    models.ObservedAccount.target == "github",
                    models.ObservedAccount.identity.in_(["E1010", "E1001"]),
                )
            ).all()
        )
    patch = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    with httpx2.Client(base_url=scim_url, timeout=10) as client:
        client.patch(
            f"/Users/{linked['E1010']}",
            json={
                "schemas": [patch],
                "Operations": [{"op": "replace", "path": "active", "value": True}],
            },
        ).raise_for_status()
        groups = client.get("/Groups", params={"filter": 'displayName eq "platform-admins"'})
        group = groups.raise_for_status().json()["Resources"][0]["id"]
        client.patch(
            f"/Groups/{group}",
            json={
                "schemas": [patch],
                "Operations": [
                    {"op": "add", "path": "members", "value": [{"value": linked["E1001"]}]}
                ],
            },
        ).raise_for_status()
        client.post(
            "/Users",
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "temp.admin@example.com",
                "active": True,
            },
        ).raise_for_status()
    return [
        "leaver E1010's account enabled again",
        "E1001 added to platform-admins",
        "an account temp.admin@example.com created by hand",
    ]


def run_demo(directory: Path | None, console: Console | None, *, json_out: bool = False) -> None:
    folder = directory or Path(tempfile.mkdtemp(prefix="provisor-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    tour = _Tour(console)
    now = datetime.now(UTC).replace(microsecond=0)
    ldap_server = start_directory()
    try:
        with ScimApp() as github:
            github.create_groups(github.url, "members", "platform-admins")
            payroll_url = create_payroll_app(folder / "payroll-app.db")
            prepare(folder, github.url, ldap_server, payroll_url)
            workspace = Workspace.open(folder)
            try:
                _tour(tour, workspace, folder, github.url, ldap_server, payroll_url, now)
            finally:
                workspace.close()
    finally:
        if ldap_server is not None:
            ldap_server.stop()
    if json_out:
        Console().print_json(data=tour.summary, default=str)


def _tour(
    tour: _Tour,
    workspace: Workspace,
    folder: Path,
    scim_url: str,
    directory: Slapd | None,
    payroll_url: str,
    now: datetime,
) -> None:
    tour.heading("1. Import the HR snapshot and the history feed")
    report = import_feed(workspace, folder / "people.csv", now=now)
    history = import_feed(workspace, folder / "history.csv", feed="history", now=now)
    tour.say(f"Workspace: {folder}")
    tour.say(
        f"people.csv: {report.rows_accepted} rows accepted, events {report.counts}; "
        f"history.csv: events {history.counts}"
    )
    with workspace.sessions() as session:
        query = select(models.Identity.state, func.count()).group_by(models.Identity.state)
        counts = {state: n for state, n in session.execute(query)}
    tour.say(f"Identities by state: {counts}")
    tour.summary["import"] = report.as_dict() | {"errors": report.errors}

    tour.heading("2. Provision: live applications, and what the manual ones hold")
    tour.say(f"github is a real SCIM 2.0 application (scim2-server) at {scim_url}")
    if directory is not None:
        tour.say(f"directory is a real OpenLDAP directory (slapd) at {directory.url}")
    else:
        tour.say("directory is handled by hand here: slapd is not installed")
    tour.say(f"payroll-db is the payroll application's own database: {payroll_url}")
    for path in write_exports(workspace, folder, now):
        observed = import_observed(workspace, path.stem, path, now=now)
        tour.say(f"{path.stem}: {observed.accounts} accounts read from its user export")
    with workspace.sessions() as session, session.begin():
        initial = sync_journal(workspace, session, now=now)
    summary: dict[str, int] = {}
    for op, _status, _id in initial.operations:
        key = f"{op.target} {op.kind.value}"
        summary[key] = summary.get(key, 0) + 1
    tour.say(f"Initial plan: {len(initial.operations)} operations: {summary}")
    tour.say(_applied(_apply(workspace, now)))

    tour.heading("3. Mover: E1130 moves from Support to Engineering")
    _event(
        workspace,
        LifecycleEvent(
            "E1130",
            EventKind.MOVE,
            now,
            now,
            {"department": "Engineering", "title": "Engineer Analyst"},
            source="demo",
        ),
        now,
    )
    tour.plan_table("Plan for E1130", _plan_rows(workspace, "E1130", now))
    tour.say(_applied(_apply(workspace, now, "E1130")))

    tour.heading("4. Leavers: E1010 (engineer) and E1134 (finance, logged in to payroll) leave")
    log_in_to_payroll(payroll_url, "E1134")
    for leaver in ("E1010", "E1134"):
        _event(workspace, LifecycleEvent(leaver, EventKind.TERMINATE, now, now, source="demo"), now)
        tour.plan_table(f"Plan for {leaver}", _plan_rows(workspace, leaver, now))
        tour.say(_applied(_apply(workspace, now, leaver)))

    tour.heading("5. Future-dated leaver: E1132 (finance) leaves in 14 days")
    later = now + timedelta(days=14)
    _event(workspace, LifecycleEvent("E1132", EventKind.TERMINATE, later, now, source="demo"), now)
    tour.plan_table("Plan for E1132 today", _plan_rows(workspace, "E1132", now))
    rehearsal = later + timedelta(hours=1)
    with workspace.sessions() as session, session.begin():
        ticked = lifecycle_service.tick(session, workspace.config, now=rehearsal)
    tour.say(f"Tick as of {rehearsal.date()} (a rehearsal): {dict(ticked.transitions)}")
    tour.plan_table(
        f"Plan for E1132 on {rehearsal.date()}", _plan_rows(workspace, "E1132", rehearsal)
    )

    tour.heading("6. Rehire: E0999, terminated in April, comes back")
    _event(
        workspace,
        LifecycleEvent(
            "E0999",
            EventKind.REHIRE,
            now,
            now,
            {"title": "Engineer Senior Specialist"},
            source="demo",
        ),
        now,
    )
    tour.plan_table("Plan for E0999", _plan_rows(workspace, "E0999", now))
    tour.say(_applied(_apply(workspace, now, "E0999")))

    tour.heading("7. Explain")
    answers = []
    with workspace.sessions() as session:
        for who, target, ent in [
            ("E1002", "github", "platform-admins"),
            ("E1010", "github", "members"),
            ("E1133", "payroll-db", "vendor-create"),
            ("E1132", "payroll-db", "vendor-create"),
        ]:
            state = lifecycle_service.identity_state(session, workspace.config, who, as_of=now)
            answer = explain(workspace.compiled, state, target, ent)
            answers.append(answer)
            tour.say(f"{who} {'has' if answer.granted else 'does not have'} {target}:{ent}")
            for line in answer.reasons:
                tour.say(f"    granted by {line}")
            for line in answer.why_not:
                tour.say(f"    {line}")
    tour.summary["explain"] = [a.__dict__ for a in answers]

    later = now + timedelta(minutes=5)
    tour.heading("8. Behind our back: reconciliation reads what github really holds")
    planted = _tamper(workspace, scim_url)
    tour.say(
        "Changed directly in github, not through Provisor: "
        + "; ".join(f"{what}" for what in planted)
    )
    found = reconcile_target(workspace, "github", now=later)
    tour.say(
        f"Reconciled github ({found.mode}): {found.read} accounts read, classes {found.classes}; "
        f"{found.planned} fixes planned, {found.tickets} work items for the owner"
    )
    tour.table(
        ["account", "identity", "class", "why", "remedy"],
        [
            (
                str(f["user_name"]),
                str(f["identity"] or "-"),
                str(f["class"]),
                str(f["detail"]),
                str(f["remedy"]),
            )
            for f in found.findings
        ],
    )
    with workspace.sessions() as session:
        owed = debt.debt_items(workspace, session, later, target="github")
    tour.say(f"Revocation debt in github: {len(owed)} items")
    for item in owed:
        tour.say(f"    {item.identity} {item.item}: {item.state}")
    tour.say(_applied(_apply(workspace, later)))
    again = reconcile_target(workspace, "github", now=later + timedelta(minutes=1))
    with workspace.sessions() as session:
        owed = debt.debt_items(workspace, session, later, target="github")
    tour.say(
        f"Reconciled again: classes {again.classes}; debt in github now {len(owed)} items "
        "(the leaver's account waits for its delete after the grace period)"
    )
    tour.summary["reconcile"] = {"first": found.as_dict(), "again": again.as_dict()}

    tour.heading("9. Proof of removal: every application read live for each leaver")
    verifier = LeaverVerifier(workspace, folder / "evidence")
    try:
        for leaver in ("E1010", "E1134"):
            written = verifier.verify(leaver, lambda: later + timedelta(minutes=2))
            rows: list[tuple[str, ...]] = []
            for section in written.bundle["targets"]:
                states = {layer["layer"]: layer for layer in section["layers"]}
                notes = "; ".join(
                    f"{name}: {layer['why']}"
                    for name, layer in states.items()
                    if layer["state"] != "verified-removed"
                )
                rows.append(
                    (
                        str(section["target"]),
                        *(
                            SHOWN.get(str(states[name]["state"]), str(states[name]["state"]))
                            if name in states
                            else "-"
                            for name in ("account", "entitlements", "sessions")
                        ),
                        notes,
                    )
                )
            tour.say(f"{leaver}: {written.outcome}")
            tour.table(["target", "account", "entitlements", "sessions", "why not removed"], rows)
            tour.say(f"    evidence: {written.json_path} and {written.html_path.name}")
            tour.summary.setdefault("leavers", {})[leaver] = written.as_dict()
    finally:
        verifier.close()

    tour.heading("10. Coverage: where removal can and cannot be verified")
    mapped = coverage(workspace)
    tour.table(
        ["target", "category", "write", "read back", "sessions"],
        [
            (
                c.target,
                c.category,
                ", ".join(c.write) or "-",
                ", ".join(c.read_back) or "-",
                "yes" if c.sessions else "no",
            )
            for c in mapped
        ],
    )
    for c in mapped:
        for spot in c.blind_spots:
            tour.say(f"    blind spot: {spot.target} {spot.layer}: {spot.why}")
    tour.summary["coverage"] = [c.as_dict() for c in mapped]

    tour.heading("11. Audit")
    with workspace.sessions() as session:
        verified = audit.verify(session)
    tour.say(
        f"audit verify: {'intact' if verified.ok else 'TAMPERED'}, {verified.events} "
        f"events, head {verified.head_hash[:16]}"
    )
    tour.summary["audit"] = {"ok": verified.ok, "events": verified.events}
    tour.summary["workspace"] = str(folder)
    tour.say(
        f"\nThe workspace stays in {folder}; the SCIM application and the directory stop "
        "with the tour."
    )
    tour.say(f"Try: provisor -w {folder} identities show E1132")
