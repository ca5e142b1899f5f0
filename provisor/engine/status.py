"""The workspace's state of work now, target by target: available or not, and what waits.

Does: for every target in the policy, say whether it is available (its circuit closed) or
since when and why not, the failures in a row counted against it, and its journal's open work:
operations waiting (due now, or later), running, parked after their attempts, held by the
mass-change guard, the oldest due one, and open work items.
Does not: contact targets (``provisor targets check`` does), or judge access (``debt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, or_, select

from provisor.engine import circuit
from provisor.engine.workspace import Workspace
from provisor.store import models


@dataclass
class TargetStatus:
    target: str
    target_class: str
    owner: str
    unavailable: circuit.Outage | None
    failures: int  # operations in a row that found it unavailable
    due: int = 0  # pending operations due now
    later: int = 0  # pending operations due later (a start date, a retry's wait)
    running: int = 0
    failed: int = 0  # parked after their attempts
    held: int = 0  # held by the mass-change guard
    oldest_due: datetime | None = None
    open_tasks: int = 0

    @property
    def state(self) -> str:
        return "available" if self.unavailable is None else "unavailable"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "class": self.target_class,
            "owner": self.owner,
            "state": self.state,
            "unavailable": self.unavailable.as_dict() if self.unavailable else None,
            "failures_in_a_row": self.failures,
            "due": self.due,
            "later": self.later,
            "running": self.running,
            "failed": self.failed,
            "held": self.held,
            "oldest_due": self.oldest_due.isoformat() if self.oldest_due else None,
            "open_tasks": self.open_tasks,
        }


def target_status(workspace: Workspace, now: datetime) -> list[TargetStatus]:
    """Every target of the policy, by name."""
    targets = workspace.compiled.targets
    op = models.Operation
    due_now = (op.status == "pending") & or_(op.not_before.is_(None), op.not_before <= now)
    due_now &= or_(op.next_attempt_at.is_(None), op.next_attempt_at <= now)
    with workspace.sessions() as session:
        down = circuit.unavailable(session, targets)
        failures = circuit.failing(session)
        found = {
            name: TargetStatus(
                name,
                t.target_class.value,
                t.owner,
                down.get(name),
                failures.get(name, 0),
            )
            for name, t in sorted(targets.items())
        }
        query = select(
            op.target,
            func.sum(case((due_now, 1), else_=0)),
            func.sum(case(((op.status == "pending") & ~due_now, 1), else_=0)),
            func.sum(case((op.status == "running", 1), else_=0)),
            func.sum(case((op.status == "failed", 1), else_=0)),
            func.sum(case((op.status == "held", 1), else_=0)),
            func.min(
                case((due_now, func.coalesce(op.next_attempt_at, op.not_before, op.created_at)))
            ),
        ).where(op.status.in_(("pending", "running", "failed", "held")))
        for name, due, later, running, failed, held, oldest in session.execute(
            query.group_by(op.target)
        ):
            if name in found:
                each = found[name]
                each.due, each.later, each.running = (
                    int(due or 0),
                    int(later or 0),
                    int(running or 0),
                )
                each.failed, each.held, each.oldest_due = int(failed or 0), int(held or 0), oldest
        task = models.Task
        tasks = select(task.target, func.count()).where(task.status == "open").group_by(task.target)
        for name, count in session.execute(tasks):
            if name in found:
                found[name].open_tasks = int(count)
    return list(found.values())
