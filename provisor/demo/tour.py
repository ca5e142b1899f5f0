"""The demo's guided tour: the real engine services run on the sample organisation, stage by
stage, with what each did printed for people (or kept as a summary for ``--json``).

Does: import the HR snapshot and history; provision the live applications and read the manual
ones' exports; a mover, two leavers (one with a live session), a future-dated leaver and a
rehire, each with its plan; explanations; changes made behind Provisor's back found and fixed
by reconciliation, with the revocation debt before and after; each leaver's evidence bundle
from a live read of every application; the coverage map; the audit verification.
Does not: contain engine logic of its own; everything it shows is what the CLI commands do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from provisor.demo.organisation import log_in_to_payroll, write_exports
from provisor.domain.debt import DebtItem
from provisor.domain.desired import explain
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import debt, identities
from provisor.engine.coverage import coverage
from provisor.engine.imports import import_feed
from provisor.engine.leavers import LeaverVerifier, Written
from provisor.engine.observed import import_observed
from provisor.engine.planner import sync_journal
from provisor.engine.reconcile import reconcile_target
from provisor.engine.runner import ApplyReport, Runner
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.sandbox.slapd import Slapd
from provisor.store import models

SHOWN = {"verified-removed": "removed", "still-present": "STILL THERE"}  # evidence states, short
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@dataclass
class Tour:
    """Where the tour runs and how it speaks: to a console, or into ``summary`` only."""

    console: Console | None
    workspace: Workspace
    folder: Path
    scim_url: str
    directory: Slapd | None
    payroll_url: str
    now: datetime
    summary: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def heading(self, text: str) -> None:
        if self.console is not None:
            self.console.rule(f"[bold]{text}")

    def table(
        self, columns: list[str], rows: Sequence[tuple[str, ...]], title: str | None = None
    ) -> None:
        if self.console is None:
            return
        shown = Table(title=title, title_justify="left")
        for column in columns:
            shown.add_column(column, overflow="fold")
        for row in rows:
            shown.add_row(*(Text(cell) for cell in row))
        self.console.print(shown)

    def plan(self, identity: str, title: str, now: datetime | None = None) -> None:
        """Plan ``identity`` and show the operations."""
        with self.workspace.sessions() as session, session.begin():
            synced = sync_journal(self.workspace, session, now=now or self.now, identity=identity)
        rows = [
            (
                op.target,
                op.kind.value,
                op.entitlement or "",
                op.not_before.date().isoformat() if op.not_before else "",
                op.reason,
            )
            for op, _status, _id in synced.operations
        ]
        if not rows:
            self.say(f"{title}: nothing to do")
            return
        columns = ["target", "operation", "entitlement", "not before", "reason"]
        self.table(columns, rows, title=title)

    def event(self, event: LifecycleEvent) -> None:
        with self.workspace.sessions() as session, session.begin():
            identities.record_events(
                session, self.workspace.config, [event], origin="demo", now=self.now, strict=True
            )

    def apply(self, identity: str | None = None, now: datetime | None = None) -> None:
        runner = Runner(self.workspace)
        try:
            at = now or self.now
            report = runner.apply(now=lambda: at, identity=identity)
        finally:
            runner.close()
        self.say(_applied(report))


def _applied(report: ApplyReport) -> str:
    waiting = ", ".join(f"{t}: {n}" for t, n in sorted(report.no_connector.items()))
    return (
        f"apply: {report.verified} verified by read-back, {report.unverifiable} unverifiable, "
        f"{report.failed} failed, {report.waiting} waiting"
        + (f"; without a connector yet: {waiting}" if waiting else "")
    )


def run(tour: Tour) -> None:
    """Every stage of the tour, in order."""
    for stage in (
        imports,
        provision,
        mover,
        leavers,
        future_leaver,
        rehire,
        explanations,
        behind_our_back,
        proof,
        coverage_map,
        audit_check,
    ):
        stage(tour)


def imports(tour: Tour) -> None:
    tour.heading("1. Import the HR snapshot and the history feed")
    report = import_feed(tour.workspace, tour.folder / "people.csv", now=tour.now)
    history = import_feed(tour.workspace, tour.folder / "history.csv", feed="history", now=tour.now)
    tour.say(f"Workspace: {tour.folder}")
    tour.say(
        f"people.csv: {report.rows_accepted} rows accepted, events {report.counts}; "
        f"history.csv: events {history.counts}"
    )
    with tour.workspace.sessions() as session:
        query = select(models.Identity.state, func.count()).group_by(models.Identity.state)
        counts = {state: n for state, n in session.execute(query)}
    tour.say(f"Identities by state: {counts}")
    tour.summary["import"] = report.as_dict() | {"errors": report.errors}


def provision(tour: Tour) -> None:
    tour.heading("2. Provision: live applications, and what the manual ones hold")
    tour.say(f"github is a real SCIM 2.0 application (scim2-server) at {tour.scim_url}")
    if tour.directory is not None:
        tour.say(f"directory is a real OpenLDAP directory (slapd) at {tour.directory.url}")
    else:
        tour.say("directory is handled by hand here: slapd is not installed")
    tour.say(f"payroll-db is the payroll application's own database: {tour.payroll_url}")
    for path in write_exports(tour.workspace, tour.folder, tour.now):
        observed = import_observed(tour.workspace, path.stem, path, now=tour.now)
        tour.say(f"{path.stem}: {observed.accounts} accounts read from its user export")
    with tour.workspace.sessions() as session, session.begin():
        initial = sync_journal(tour.workspace, session, now=tour.now)
    summary: dict[str, int] = {}
    for op, _status, _id in initial.operations:
        key = f"{op.target} {op.kind.value}"
        summary[key] = summary.get(key, 0) + 1
    tour.say(f"Initial plan: {len(initial.operations)} operations: {summary}")
    tour.apply()


def mover(tour: Tour) -> None:
    tour.heading("3. Mover: E1130 moves from Support to Engineering")
    changes = {"department": "Engineering", "title": "Engineer Analyst"}
    tour.event(LifecycleEvent("E1130", EventKind.MOVE, tour.now, tour.now, changes, source="demo"))
    tour.plan("E1130", "Plan for E1130")
    tour.apply("E1130")


def leavers(tour: Tour) -> None:
    tour.heading("4. Leavers: E1010 (engineer) and E1134 (finance, logged in to payroll) leave")
    log_in_to_payroll(tour.payroll_url, "E1134")
    for leaver in ("E1010", "E1134"):
        tour.event(LifecycleEvent(leaver, EventKind.TERMINATE, tour.now, tour.now, source="demo"))
        tour.plan(leaver, f"Plan for {leaver}")
        tour.apply(leaver)


def future_leaver(tour: Tour) -> None:
    tour.heading("5. Future-dated leaver: E1132 (finance) leaves in 14 days")
    later = tour.now + timedelta(days=14)
    tour.event(LifecycleEvent("E1132", EventKind.TERMINATE, later, tour.now, source="demo"))
    tour.plan("E1132", "Plan for E1132 today")
    rehearsal = later + timedelta(hours=1)
    with tour.workspace.sessions() as session, session.begin():
        ticked = identities.tick(session, tour.workspace.config, now=rehearsal)
    tour.say(f"Tick as of {rehearsal.date()} (a rehearsal): {dict(ticked.transitions)}")
    tour.plan("E1132", f"Plan for E1132 on {rehearsal.date()}", now=rehearsal)


def rehire(tour: Tour) -> None:
    tour.heading("6. Rehire: E0999, terminated in April, comes back")
    changes = {"title": "Engineer Senior Specialist"}
    tour.event(
        LifecycleEvent("E0999", EventKind.REHIRE, tour.now, tour.now, changes, source="demo")
    )
    tour.plan("E0999", "Plan for E0999")
    tour.apply("E0999")


def explanations(tour: Tour) -> None:
    tour.heading("7. Explain")
    answers = []
    with tour.workspace.sessions() as session:
        for who, target, ent in [
            ("E1002", "github", "platform-admins"),
            ("E1010", "github", "members"),
            ("E1133", "payroll-db", "vendor-create"),
            ("E1132", "payroll-db", "vendor-create"),
        ]:
            state = identities.identity_state(session, tour.workspace.config, who, as_of=tour.now)
            answer = explain(tour.workspace.compiled, state, target, ent)
            answers.append(answer)
            tour.say(f"{who} {'has' if answer.granted else 'does not have'} {target}:{ent}")
            for line in answer.reasons:
                tour.say(f"    granted by {line}")
            for line in answer.why_not:
                tour.say(f"    {line}")
    tour.summary["explain"] = [a.__dict__ for a in answers]


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
    enable = [{"op": "replace", "path": "active", "value": True}]
    join = [{"op": "add", "path": "members", "value": [{"value": linked["E1001"]}]}]
    with httpx2.Client(base_url=scim_url, timeout=10) as client:
        user = f"/Users/{linked['E1010']}"
        client.patch(user, json={"schemas": [PATCH], "Operations": enable}).raise_for_status()
        groups = client.get("/Groups", params={"filter": 'displayName eq "platform-admins"'})
        group = f"/Groups/{groups.raise_for_status().json()['Resources'][0]['id']}"
        client.patch(group, json={"schemas": [PATCH], "Operations": join}).raise_for_status()
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


def _github_debt(tour: Tour, at: datetime) -> list[DebtItem]:
    with tour.workspace.sessions() as session:
        return debt.debt_items(tour.workspace, session, at, target="github")


def behind_our_back(tour: Tour) -> None:
    later = tour.now + timedelta(minutes=5)
    tour.heading("8. Behind our back: reconciliation reads what github really holds")
    planted = _tamper(tour.workspace, tour.scim_url)
    tour.say("Changed directly in github, not through Provisor: " + "; ".join(planted))
    found = reconcile_target(tour.workspace, "github", now=later)
    tour.say(
        f"Reconciled github ({found.mode}): {found.read} accounts read, classes {found.classes}; "
        f"{found.planned} fixes planned, {found.tickets} work items for the owner"
    )
    columns = ["user_name", "identity", "class", "detail", "remedy"]
    tour.table(
        ["account", "identity", "class", "why", "remedy"],
        [tuple(str(f[c] or "-") for c in columns) for f in found.findings],
    )
    owed = _github_debt(tour, later)
    tour.say(f"Revocation debt in github: {len(owed)} items")
    for item in owed:
        tour.say(f"    {item.identity} {item.item}: {item.state}")
    tour.apply(now=later)
    again = reconcile_target(tour.workspace, "github", now=later + timedelta(minutes=1))
    tour.say(
        f"Reconciled again: classes {again.classes}; debt in github now "
        f"{len(_github_debt(tour, later))} items "
        "(the leaver's account waits for its delete after the grace period)"
    )
    tour.summary["reconcile"] = {"first": found.as_dict(), "again": again.as_dict()}


def _layers(written: Written) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for section in written.bundle["targets"]:
        states = {layer["layer"]: layer for layer in section["layers"]}
        notes = "; ".join(
            f"{name}: {layer['why']}"
            for name, layer in states.items()
            if layer["state"] != "verified-removed"
        )
        shown = (
            SHOWN.get(str(states[name]["state"]), str(states[name]["state"]))
            if name in states
            else "-"
            for name in ("account", "entitlements", "sessions")
        )
        rows.append((str(section["target"]), *shown, notes))
    return rows


def proof(tour: Tour) -> None:
    tour.heading("9. Proof of removal: every application read live for each leaver")
    at = tour.now + timedelta(minutes=7)
    verifier = LeaverVerifier(tour.workspace, tour.folder / "evidence")
    try:
        for leaver in ("E1010", "E1134"):
            written = verifier.verify(leaver, lambda: at)
            tour.say(f"{leaver}: {written.outcome}")
            columns = ["target", "account", "entitlements", "sessions", "why not removed"]
            tour.table(columns, _layers(written))
            tour.say(f"    evidence: {written.json_path} and {written.html_path.name}")
            tour.summary.setdefault("leavers", {})[leaver] = written.as_dict()
    finally:
        verifier.close()


def coverage_map(tour: Tour) -> None:
    tour.heading("10. Coverage: where removal can and cannot be verified")
    mapped = coverage(tour.workspace)
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


def audit_check(tour: Tour) -> None:
    tour.heading("11. Audit")
    with tour.workspace.sessions() as session:
        verified = audit.verify(session)
    tour.say(
        f"audit verify: {'intact' if verified.ok else 'TAMPERED'}, {verified.events} "
        f"events, head {verified.head_hash[:16]}"
    )
    tour.summary["audit"] = {"ok": verified.ok, "events": verified.events}
    tour.summary["workspace"] = str(tour.folder)
    tour.say(
        f"\nThe workspace stays in {tour.folder}; the SCIM application and the directory stop "
        "with the tour."
    )
    tour.say(f"Try: provisor -w {tour.folder} identities show E1132")
