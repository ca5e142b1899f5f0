"""``provisor demo``: a guided tour on a sample organisation, in a throwaway workspace.

Does: start the sample applications — a SCIM server, an OpenLDAP directory when slapd is
installed, a payroll application's SQLite tables — write the sample workspace
(``organisation``, from the files in ``data/``) and run the tour (``tour``) on it; stop the
applications when it ends, leaving the workspace folder in place; or first hand the toured
workspace to the caller (``then``), which serves it; make the demo's operator accounts, one
per role (``accounts``).
Does not: contain engine logic of its own; everything it shows is what the CLI commands do.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from provisor.demo import tour as stages
from provisor.demo.organisation import create_payroll_app, prepare, start_directory
from provisor.engine import operators
from provisor.engine.workspace import Workspace
from provisor.sandbox.scim import ScimApp


def run_demo(
    directory: Path | None,
    console: Console | None,
    *,
    json_out: bool = False,
    then: Callable[[Workspace], None] | None = None,
) -> None:
    """Run the tour in ``directory`` (default: a new temporary folder); print it to
    ``console``, or only its summary as JSON. ``then`` runs on the toured workspace while the
    sample applications still run (``provisor demo --serve`` serves it until interrupted)."""
    folder = directory or Path(tempfile.mkdtemp(prefix="provisor-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    ldap_server = start_directory()
    summary: dict[str, Any] = {}
    try:
        with ScimApp() as github:
            github.create_groups(github.url, "members", "platform-admins")
            payroll_url = create_payroll_app(folder / "payroll-app.db")
            prepare(folder, github.url, ldap_server, payroll_url)
            workspace = Workspace.open(folder)
            try:
                tour = stages.Tour(
                    console, workspace, folder, github.url, ldap_server, payroll_url, now
                )
                stages.run(tour)
                summary = tour.summary
                if then is not None:
                    then(workspace)
            finally:
                workspace.close()
    finally:
        if ldap_server is not None:
            ldap_server.stop()
    if json_out:
        Console().print_json(data=summary, default=str)


DEMO_ROLES = ("admin", "operator", "approver", "owner", "reviewer", "auditor")


def accounts(workspace: Workspace) -> list[tuple[str, str, str]]:
    """An operator per role, each with a fresh random password: (name, role, password). The
    owner answers for the manual targets (their tasks wait in the console)."""
    manual = [t.name for t in workspace.policy.policy.targets if t.target_class.value == "manual"]
    now = datetime.now(UTC)
    made = []
    with workspace.sessions() as session, session.begin():
        for role in DEMO_ROLES:
            name, password = f"demo-{role}", secrets.token_urlsafe(12)
            operators.add_operator(
                session,
                name,
                roles=[role],
                targets=manual if role == "owner" else [],
                email=f"{name}@example.com",
                password=password,
                by="demo",
                now=now,
            )
            made.append((name, role, password))
    return made
