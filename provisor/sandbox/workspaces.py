"""Scratch workspaces and sample employees, for tests and benchmarks.

Does: create a workspace in a folder from one policy text with its database at the current
schema; hire a batch of sample employees and plan their access.
Does not: start servers (see the sibling modules) or clean up the folder.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.engine.planner import sync_journal
from provisor.engine.workspace import Workspace
from provisor.store import db


def scratch_workspace(folder: Path, policy: str) -> Workspace:
    """A workspace in ``folder`` whose only policy file holds ``policy``, database current."""
    (folder / "policy").mkdir(parents=True, exist_ok=True)
    (folder / "policy" / "policy.yaml").write_text(policy, encoding="utf-8")
    engine = db.make_engine(db.database_url(folder))
    db.upgrade(engine)
    engine.dispose()
    return Workspace.open(folder)


def hire_employees(workspace: Workspace, count: int, now: datetime) -> None:
    """Employees E0 … E{count-1} (email p{i}@example.com), hired yesterday, access planned."""
    events = [
        LifecycleEvent(
            f"E{i}",
            EventKind.HIRE,
            now - timedelta(days=1),
            now,
            {"name": f"Person {i}", "email": f"p{i}@example.com", "employment_type": "employee"},
        )
        for i in range(count)
    ]
    with workspace.sessions() as session, session.begin():
        identities.record_events(session, workspace.config, events, origin="sandbox", now=now)
    with workspace.sessions() as session, session.begin():
        sync_journal(workspace, session, now=now)
