"""The demo's sample organisation and applications, written into a throwaway workspace.

Does: make the sample people (about 200 over seven departments and four locations, contractors,
two people on leave, service accounts, an API key and a bot with owners) from the data files
beside this module, deterministically for a seed; write the workspace's config, policy, HR
snapshot and history feed; create the payroll application's own SQLite tables; start a live
OpenLDAP directory when slapd is installed; write the manual applications' user exports.
Does not: run the engine (``provisor.demo.tour`` does).
"""

from __future__ import annotations

import csv
import json
import os
import random
import sqlite3
import unicodedata
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import select

from provisor.config.workspace import CONFIG_FILE
from provisor.domain.desired import desired_access
from provisor.domain.policy import TargetClass
from provisor.engine.planner import state_from_row
from provisor.engine.workspace import Workspace
from provisor.sandbox.slapd import SLAPD, Slapd
from provisor.store import db, models

PASSWORD_VARIABLE = "DEMO_DIRECTORY_PASSWORD"
EXPORT_FIELDS = ["account", "email", "identity", "enabled", "entitlements", "sessions"]


def data(name: str) -> str:
    """A data file of the demo, as text."""
    return resources.files("provisor.demo").joinpath("data", name).read_text(encoding="utf-8")


def _organisation() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(data("organisation.json"))
    return found


def _person(
    rng: random.Random, org: dict[str, Any], number: int, i: int, dept: str
) -> dict[str, str]:
    first, last = rng.choice(org["first_names"]), rng.choice(org["last_names"])
    contractor = i > 0 and rng.random() < 0.15
    if i == 0:
        title = f"Head of {dept}"
    elif dept == "Sales" and i < 5:
        title = "Sales Manager"
    else:
        title = rng.choice(["Specialist", "Senior Specialist", "Analyst", "Lead"])
        title = f"{'Engineer' if dept == 'Engineering' else dept} {title}"
    # mail addresses are ASCII (a directory's mail attribute holds nothing else)
    folded = unicodedata.normalize("NFKD", f"{first}.{last}")
    slug = folded.encode("ascii", "ignore").decode().lower().replace("'", "")
    location = rng.choice(org["locations"])  # drawn before the start date, as always
    start = datetime(2019, 1, 7) + timedelta(days=rng.randrange(0, 2000))
    return {
        "employee_id": f"E{number}",
        "name": f"{first} {last}",
        "email": f"{slug}.{number}@example.com",
        "department": dept,
        "title": title,
        "location": location,
        "cost_centre": f"CC-{dept[:3].upper()}",
        "manager_id": "",
        "employment_type": "contractor" if contractor else "employee",
        "kind": "human",
        "owner": "",
        "start_date": start.date().isoformat(),
        "status": "active",
    }


def sample_people(seed: int = 7) -> list[dict[str, str]]:
    """The sample organisation: deterministic for a given seed."""
    org = _organisation()
    rng = random.Random(seed)
    people: list[dict[str, str]] = []
    number = 1001
    for department, size in org["departments"]:
        head = f"E{number}"
        for i in range(size):
            person = _person(rng, org, number, i, department)
            person["manager_id"] = "" if i == 0 else head
            people.append(person)
            number += 1
    people[45]["status"] = "leave"
    people[120]["status"] = "leave"
    for sid, name, kind, department, owner in org["service_accounts"]:
        people.append(
            {field: "" for field in org["fields"]}
            | {
                "employee_id": sid,
                "name": name,
                "department": department,
                "title": kind.replace("_", " "),
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


def create_payroll_app(path: Path) -> str:
    """The sample payroll application's database (SQLite): accounts, roles, memberships and
    live sessions; returns its SQLAlchemy URL."""
    with sqlite3.connect(path) as connection:
        connection.executescript(data("payroll.sql"))
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
    (folder / CONFIG_FILE).write_text(data("provisor.yaml"), encoding="utf-8")
    if payroll_url is None:
        payroll_url = create_payroll_app(folder / "payroll-app.db")
    if directory is None:
        block = data("directory-manual.yaml")
    else:
        block = (
            data("directory-live.yaml")
            .replace("LDAP_URL", directory.url)
            .replace("LDAP_BIND_DN", directory.bind_dn)
            .replace("LDAP_PEOPLE_DN", directory.people_dn)
            .replace("LDAP_GROUPS_DN", directory.groups_dn)
        )
    policy = (
        data("policy.yaml")
        .replace("DIRECTORY\n", block)
        .replace("SCIM_URL", scim_url)
        .replace("PAYROLL_URL", payroll_url)
    )
    (folder / "policy" / "demo.yaml").write_text(policy, encoding="utf-8")
    write_csv(folder / "people.csv", sample_people(), _organisation()["fields"])
    # A former engineer, terminated last spring, to be rehired during the tour.
    (folder / "history.csv").write_text(data("history.csv"), encoding="utf-8")
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
        write_csv(path, accounts, EXPORT_FIELDS)
        paths.append(path)
    return paths
