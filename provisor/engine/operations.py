"""The operation journal as people see it: list operations, retry a failed one, cancel one.

Does: list journal rows with filters (status, target, identity), newest first, limited to the
targets a person may see; put a failed operation back in line (``retry``) or cancel one that is
still open (``cancel``), each audited through the same functions the planner and runner use.
Does not: execute or verify anything (``provisor.engine.runner``), or plan
(``provisor.engine.planner``).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.engine.tasks import cancel_operations, requeue_operations
from provisor.errors import LifecycleError, NotFoundError
from provisor.store.models import Operation

# an operation still in these may be cancelled (a running one is being written: not that)
CANCELLABLE = ("ticket", "pending", "held", "failed", "unverifiable")


def operation_dict(op: Operation) -> dict[str, Any]:
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": op.id,
        "key": op.key,
        "identity": op.identity,
        "target": op.target,
        "account": op.account,
        "kind": op.kind,
        "entitlement": op.entitlement,
        "step": op.step,
        "reason": op.reason,
        "status": op.status,
        "attempts": op.attempts,
        "not_before": when(op.not_before),
        "next_attempt_at": when(op.next_attempt_at),
        "last_error": op.last_error,
        "verified_at": when(op.verified_at),
        "created_at": when(op.created_at),
        "updated_at": when(op.updated_at),
        "hold": op.hold_id,
    }


def list_operations(
    session: Session,
    *,
    status: str | None = None,
    target: str | None = None,
    identity: str | None = None,
    targets: Collection[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Operations, newest first; ``targets`` (when given) limits them to those targets."""
    query = select(Operation).order_by(Operation.id.desc())
    if status:
        query = query.where(Operation.status == status)
    if target:
        query = query.where(Operation.target == target)
    if identity:
        query = query.where(Operation.identity == identity)
    if targets is not None:
        query = query.where(Operation.target.in_(sorted(targets)))
    rows = session.execute(query.limit(limit).offset(offset)).scalars()
    return [operation_dict(op) for op in rows]


def _operation(session: Session, op_id: int) -> Operation:
    op = session.get(Operation, op_id)
    if op is None:
        raise NotFoundError(f"no operation {op_id}")
    return op


def retry(session: Session, op_id: int, *, why: str, now: datetime) -> dict[str, Any]:
    """Put a failed operation back in line with a fresh set of attempts."""
    op = _operation(session, op_id)
    if op.status != "failed":
        raise LifecycleError(f"operation {op_id} is {op.status}; only a failed one is retried")
    requeue_operations(session, [op], why, now)
    return operation_dict(op)


def cancel(session: Session, op_id: int, *, why: str, now: datetime) -> dict[str, Any]:
    """Cancel an operation that is still open (never delete it); its work item too."""
    op = _operation(session, op_id)
    if op.status not in CANCELLABLE:
        raise LifecycleError(
            f"operation {op_id} is {op.status}; only {', '.join(CANCELLABLE)} ones are cancelled"
        )
    if not why.strip():
        raise LifecycleError("say why the operation is cancelled")
    cancel_operations(session, [op], why, now)
    return operation_dict(op)
