"""What probes showed about each way of reading a target, kept between processes.

Does: load the read paths last recorded for a target and hand them to a connector that probes
(``ProbingConnector``), and record what its probes show whenever that changes — so a path shown
to work once (a group listing that has listed members) still counts when nothing on the target
shows it again, and one caught answering wrongly is not trusted by the next process either.
Also says whether a target's change listing is shown to work (the latest incremental
reconciliation with canaries listed every account Provisor had changed in its window).
Does not: judge a path; connectors do (``connectors/base.ReadPath``), and reconciliation
judges change listings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from provisor.connectors.base import Connector, ReadPath
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import models
from provisor.store.db import upsert


def load(workspace: Workspace, target: str) -> list[ReadPath]:
    """The read paths last recorded for ``target``."""
    with workspace.sessions() as session:
        rows = session.execute(
            select(models.TargetReadPath).where(models.TargetReadPath.target == target)
        ).scalars()
        return [ReadPath(r.path, r.status, r.detail) for r in rows]


def recorder(workspace: Workspace, target: str) -> Callable[[list[ReadPath]], None]:
    """A function that records ``target``'s read paths as probed, each time they change."""
    last: list[list[ReadPath]] = [load(workspace, target)]

    def record(paths: list[ReadPath]) -> None:
        if sorted(paths, key=lambda p: p.path) == sorted(last[0], key=lambda p: p.path):
            return
        now = datetime.now(UTC)
        with workspace.sessions() as session, session.begin():
            # one statement per path, never delete-then-insert: runners in other processes
            # record the same target's paths at the same moment
            table = models.TargetReadPath
            rows = [
                {"target": target, "path": p.path, "status": p.status, "detail": p.detail}
                | {"checked_at": now}
                for p in paths
            ]
            upsert(session, table, rows, ("target", "path"))
            names = [p.path for p in paths]
            session.execute(delete(table).where(table.target == target, table.path.not_in(names)))
            # what a read path is trusted for decides what counts as proof: a change is audited
            shown = {p.path: {"status": p.status, "detail": p.detail} for p in paths}
            entry = audit.Entry("target.read-paths", f"target {target}", {"paths": shown})
            audit.append(session, [entry], at=now)
        last[0] = list(paths)

    return record


def attach(workspace: Workspace, target: str, connector: Connector) -> None:
    """Give a probing connector what earlier probes of ``target`` showed, and a recorder."""
    remember = getattr(connector, "remember", None)
    if remember is not None:
        remember(load(workspace, target), recorder(workspace, target))


def recorded(workspace: Workspace) -> dict[str, list[ReadPath]]:
    """Every target's recorded read paths."""
    found: dict[str, list[ReadPath]] = {}
    with workspace.sessions() as session:
        for row in session.execute(
            select(models.TargetReadPath).order_by(
                models.TargetReadPath.target, models.TargetReadPath.path
            )
        ).scalars():
            found.setdefault(row.target, []).append(ReadPath(row.path, row.status, row.detail))
    return found


def change_filter_shown(session: Session, target: str) -> bool:
    """Whether the latest incremental run of ``target`` that had canaries to check listed
    every account Provisor had changed in its window (its proof starts ``proven``); a later
    run that missed one (``failed: ...``) undoes an earlier pass."""
    run = models.ReconcileRun
    rows = session.execute(
        select(run.counts)
        .where(run.target == target, run.mode == "incremental")
        .order_by(run.id.desc())
    ).scalars()
    for counts in rows:
        proof = str((counts or {}).get("proof", ""))
        if proof.startswith(("proven", "failed")):
            return proof.startswith("proven")
    return False
