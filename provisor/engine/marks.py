"""Account marks: a person's standing instruction about one account of one target.

Does: keep, per (target, account), one mark with its reason, author and optional expiry —
``protected`` (never touched by any plan), ``decommission-later`` (reported, left alone until
the mark expires) or ``ignore`` (not reported either) — audited when set or cleared; and answer
which marks apply now (expired ones no longer do) and which accounts they hold.
Does not: decide classes or plan: the planner drops operations on held accounts and
reconciliation reports findings with their marks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from provisor.engine import removal_guard
from provisor.engine.tasks import cancel_operations
from provisor.engine.workspace import Workspace
from provisor.errors import LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.store import models

MARKS = ("protected", "decommission-later", "ignore")
HOLDING_MARKS = ("protected", "decommission-later")  # reported, never remediated


def active_marks(session: Session, now: datetime) -> dict[tuple[str, str], models.AccountMark]:
    """Marks that apply now: not expired."""
    query = select(models.AccountMark).where(
        or_(models.AccountMark.expires_at.is_(None), models.AccountMark.expires_at > now)
    )
    return {(m.target, m.account): m for m in session.execute(query).scalars()}


def set_mark(
    workspace: Workspace,
    session: Session,
    target: str,
    account: str,
    mark: str,
    reason: str,
    *,
    by: str,
    now: datetime,
    expires: datetime | None = None,
) -> models.AccountMark:
    """Mark one account (replacing an earlier mark on it), audited."""
    if target not in workspace.compiled.targets:
        names = ", ".join(workspace.compiled.targets) or "none"
        raise NotFoundError(f"no target {target!r} in the policy; targets: {names}")
    if mark not in MARKS:
        raise LifecycleError(f"--mark {mark!r}: use one of {', '.join(MARKS)}")
    if not reason.strip():
        raise LifecycleError("say why: --reason 'ticket or explanation'")
    if expires is not None and expires <= now:
        raise LifecycleError(f"--expires {expires.date().isoformat()} is not in the future")
    row = session.execute(
        select(models.AccountMark).where(
            models.AccountMark.target == target, models.AccountMark.account == account
        )
    ).scalar_one_or_none()
    if row is None:
        row = models.AccountMark(target=target, account=account)
        session.add(row)
    row.mark, row.reason, row.marked_by, row.created_at, row.expires_at = (
        mark,
        reason,
        by,
        now,
        expires,
    )
    session.flush()
    if mark in HOLDING_MARKS:
        _cancel_held(session, row, now)
    audit.record(
        session,
        "account.marked",
        f"{target}:{account}",
        {
            "target": target,
            "account": account,
            "mark": mark,
            "reason": reason,
            "expires": expires.isoformat() if expires else None,
        },
        actor=by,
    )
    return row


def _cancel_held(session: Session, mark: models.AccountMark, now: datetime) -> None:
    """Operations not yet started (or parked as failed, or held by the removal guard) on an
    account a mark now holds are cancelled, with their owners' work items: the mark wins over
    any plan made before it."""
    rows = list(
        session.execute(
            select(models.Operation).where(
                models.Operation.target == mark.target,
                models.Operation.account == mark.account,
                # parked failures and held batches too: neither a retry nor an approval may
                # touch a held account
                models.Operation.status.in_(["pending", "ticket", "failed", "held"]),
            )
        ).scalars()
    )
    cancel_operations(session, rows, f"account marked {mark.mark}: {mark.reason}", now)
    session.flush()
    closed = removal_guard.close_emptied(session, {row.hold_id for row in rows}, now)
    if closed:
        audit.append(session, closed, at=now)


def clear_mark(session: Session, target: str, account: str, *, by: str) -> None:
    """Remove the mark on one account, audited; its identity is planned again next cycle."""
    row = session.execute(
        select(models.AccountMark).where(
            models.AccountMark.target == target, models.AccountMark.account == account
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no mark on {target}:{account}; 'provisor marks list' shows them")
    session.delete(row)
    owner = session.execute(
        select(models.ObservedAccount.identity).where(
            models.ObservedAccount.target == target, models.ObservedAccount.account == account
        )
    ).scalar_one_or_none()
    if owner is not None:
        session.execute(
            update(models.Identity)
            .where(models.Identity.external_id == owner)
            .values(needs_plan=True)
        )
    audit.record(
        session,
        "account.unmarked",
        f"{target}:{account}",
        {"target": target, "account": account, "mark": row.mark},
        actor=by,
    )


def list_marks(session: Session, *, target: str | None = None) -> list[models.AccountMark]:
    query = select(models.AccountMark).order_by(
        models.AccountMark.target, models.AccountMark.account
    )
    if target is not None:
        query = query.where(models.AccountMark.target == target)
    return list(session.execute(query).scalars())


def mark_dict(mark: models.AccountMark, now: datetime) -> dict[str, Any]:
    return {
        "target": mark.target,
        "account": mark.account,
        "mark": mark.mark,
        "reason": mark.reason,
        "marked_by": mark.marked_by,
        "created_at": mark.created_at.isoformat(),
        "expires_at": mark.expires_at.isoformat() if mark.expires_at else None,
        "expired": mark.expires_at is not None and mark.expires_at <= now,
    }


def held_accounts(session: Session, now: datetime) -> dict[tuple[str, str], models.AccountMark]:
    """(target, account) of every account a mark holds now: no plan may touch these."""
    return {key: m for key, m in active_marks(session, now).items() if m.mark in HOLDING_MARKS}
