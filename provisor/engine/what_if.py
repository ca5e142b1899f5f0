"""What a change would do, worked out on a copy that is thrown away.

Does: record a lifecycle event, import an HR file or take another policy (``what_if``) in a
sandbox of the workspace (``sandbox``: on SQLite a copy of the database made with SQLite's
backup, on PostgreSQL one transaction, every commit in it a savepoint, rolled back at the
end), then plan everyone there, and report what it would come to: the events and holds the
recording makes (the mass-change guard), the operations the plan would add and cancel (and
the plan batches the removal guard would hold), the revocation debt before and after, and
why each person it changes would hold what they would. Nothing is recorded, nothing is
written in the workspace's database, no target is asked or changed, no audit checkpoint is
signed. On PostgreSQL its transaction holds what planning locks (the planner's lock, the audit
chain's head) until it ends: the service's planning and recording wait for it meanwhile.
Does not: apply operations, read targets, or notify anyone.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from provisor.domain.lifecycle import EventKind
from provisor.engine import debt, views
from provisor.engine.imports import import_feed
from provisor.engine.planner import sync_journal
from provisor.engine.workspace import Workspace
from provisor.sources.hr import FeedMode
from provisor.store import db, models

EXPLAINED = 20  # people whose access is explained, at most


@contextmanager
def sandbox(workspace: Workspace) -> Iterator[Workspace]:
    """``workspace`` as a copy whose every change is thrown away when the block ends."""
    engine = workspace.engine
    if engine.dialect.name == "sqlite":
        with tempfile.TemporaryDirectory(prefix="provisor-what-if-") as folder:
            path = Path(folder) / "what-if.db"
            # SQLite's online backup, read through a connection the workspace already has
            # (the database file is only read), into a plain file: the copy keeps the
            # original's page size, which an engine's settings could not change afterwards
            source = engine.raw_connection()
            target = sqlite3.connect(path)
            try:
                source.driver_connection.backup(target)  # type: ignore[union-attr]
            finally:
                target.close()
                source.close()
            copy = db.make_engine(f"sqlite:///{path}")
            try:
                yield dataclasses.replace(
                    workspace, engine=copy, sessions=db.session_factory(copy), current=False
                )
            finally:
                copy.dispose()
        return
    # one snapshot for the whole what-if: others' commits meanwhile are not seen in it
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
        outer = connection.begin()
        try:
            sessions = sessionmaker(
                bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
            )
            yield dataclasses.replace(workspace, sessions=sessions, current=False)
        finally:
            outer.rollback()


def with_policy(workspace: Workspace, policy: Path) -> Workspace:
    """``workspace`` taking its policy from ``policy`` (a file or folder) instead."""
    config = workspace.config.model_copy(update={"policy": [str(policy.resolve())]})
    return dataclasses.replace(workspace, config=config, _policy=None, _compiled=None)


def what_if(
    workspace: Workspace,
    *,
    now: datetime,
    change: Change | None = None,
    policy: Path | None = None,
) -> dict[str, Any]:
    """What ``change`` (given the sandbox; returns what it recorded and the ids of the people
    it changed) and ``policy`` would do, nothing of it kept."""
    with sandbox(workspace) as ws:
        before = debt.ledger(ws, now)
        first_hold = _last_hold(ws)
        if policy is not None:
            ws = with_policy(ws, policy)
        recorded, changed = change(ws) if change is not None else ({}, [])
        with ws.sessions() as session, session.begin():
            synced = sync_journal(ws, session, now=now)
            holds = _holds_after(session, first_hold)
        after = debt.ledger(ws, now)
        planned = synced.summary()
        rows = planned["operations"]
        if not changed:  # a policy: the people whose plan it changes
            changed = [r["identity"] for r in rows if r["journal"] == "new"]
        changed = list(dict.fromkeys(changed))
        explained = {
            who: views.explain_identity(ws, who, None, now=now) for who in changed[:EXPLAINED]
        }
    return {
        "recorded": recorded,
        **planned,
        "operations": [r for r in rows if r["journal"] in ("new", "held")],
        "holds": holds,
        "debt": {"before": _debt(before), "after": _debt(after)},
        "explained": explained,
        "nothing_kept": True,
    }


Change = Callable[[Workspace], tuple[dict[str, Any], list[str]]]


def event_change(
    identity: str,
    kind: EventKind,
    *,
    effective: date | datetime | None,
    changes: dict[str, str | None],
    now: datetime,
) -> Change:
    """The change of recording one lifecycle event (as ``provisor event`` would)."""

    def change(ws: Workspace) -> tuple[dict[str, Any], list[str]]:
        recorded = views.record_event(
            ws,
            identity,
            kind,
            effective=effective,
            changes=changes,
            ref=None,
            source="what-if",
            now=now,
        )
        return recorded, [identity]

    return change


def import_change(path: Path, *, feed: str | None, mode: FeedMode | None, now: datetime) -> Change:
    """The change of importing an HR file (as ``provisor import`` would)."""

    def change(ws: Workspace) -> tuple[dict[str, Any], list[str]]:
        report = import_feed(ws, path, feed=feed, mode=mode, now=now)
        return report.as_dict(), report.outcome.changed

    return change


def _debt(ledger: debt.Ledger) -> dict[str, Any]:
    counts = ledger.as_dict()
    return {k: counts[k] for k in ("items", "overdue", "unknown") if k in counts}


def _last_hold(workspace: Workspace) -> int:
    with workspace.sessions() as session:
        return session.execute(select(func.coalesce(func.max(models.Hold.id), 0))).scalar_one()


def _holds_after(session: Any, last: int) -> list[dict[str, Any]]:
    """The holds made after hold ``last``: by whom they wait, and why."""
    found = session.execute(
        select(models.Hold).where(models.Hold.id > last).order_by(models.Hold.id)
    ).scalars()
    return [{"hold": h.id, "kind": h.kind, "reason": h.reason} for h in found]
