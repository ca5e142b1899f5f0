"""Holds: change sets the mass-change guard stopped for approval.

Does: decide whether a batch of deprovisioning transitions trips the guard and open a hold for
it (``guard``), list holds of both kinds (lifecycle events; plan batches the removal guard,
``provisor.engine.removal_guard``, stopped) with what still waits (``list_holds``), and mark a
hold's events approved or rejected, wholly or for some identities (``release``).
Does not: fold identity state or write audit entries for identity changes; the identity service
(``provisor.engine.identities``) calls these and brings the released identities up to date.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisor.config.workspace import WorkspaceConfig
from provisor.domain.guard import hold_reason
from provisor.domain.lifecycle import LifecycleState
from provisor.errors import LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.store.models import Hold, Identity, IdentityEvent, Operation

WAITING = ("open", "partial")


def active_population(session: Session) -> int:
    """Identities active or on leave: the base the guard's share is taken of."""
    states = [LifecycleState.ACTIVE.value, LifecycleState.LEAVE.value]
    return session.execute(
        select(func.count()).select_from(Identity).where(Identity.state.in_(states))
    ).scalar_one()


@dataclass(frozen=True)
class Recent:
    """For a source of single changes (inbound SCIM): the deprovisioning transitions it made
    lately, counted with each new one, and the span they were counted over."""

    count: int
    span: str


# the lifecycle events that take access away
DEPROVISIONING = ("terminate", "suspend")


def recent(session: Session, source: str, minutes: int, now: datetime) -> Recent:
    """The leavers and suspensions recorded from ``source`` (a prefix of events' source, such
    as ``scim:scim:`` or ``api:``) within the last ``minutes``, held ones included: a source
    of single changes is judged by its wave."""
    count = session.execute(
        select(func.count())
        .select_from(IdentityEvent)
        .where(
            IdentityEvent.kind.in_(DEPROVISIONING),
            IdentityEvent.recorded_at >= now - timedelta(minutes=minutes),
            IdentityEvent.source.like(source + "%"),
        )
    ).scalar_one()
    return Recent(int(count), f"in the last {minutes} minutes")


def guard(
    session: Session,
    config: WorkspaceConfig,
    candidates: int,
    origin: str,
    now: datetime,
    recent: Recent | None = None,
    population: int | None = None,
) -> Hold | None:
    """An open hold when ``candidates`` deprovisioning transitions (with ``recent`` ones of
    the same source) trip the guard, else None. With ``recent``, a hold of the same origin
    still open takes the new ones too: the wave waits as one. ``population``: the active
    population to weigh them against, when the caller counted it earlier (else counted now)."""
    if recent is not None:
        waiting = session.execute(
            select(Hold)
            .where(Hold.origin == origin, Hold.kind == "events", Hold.status == "open")
            .order_by(Hold.id.desc())
            .limit(1)
            .with_for_update()  # a decision committing meanwhile waits, or is seen
        ).scalar_one_or_none()
        if waiting is not None:
            return waiting
    earlier = recent.count if recent is not None else 0
    reason = hold_reason(
        candidates + earlier,
        active_population(session) if population is None else population,
        max_share=config.guard.max_share,
        max_count=config.guard.max_count,
        min_count=config.guard.min_count,
    )
    if reason is None:
        return None
    if recent is not None:
        reason += f" ({earlier} of them earlier from {origin}, {recent.span})"
    hold = Hold(
        created_at=now,
        origin=origin,
        reason=reason,
        status="open",
        created_by=audit.current_actor(),
    )
    session.add(hold)
    session.flush()
    return hold


def list_holds(session: Session, *, every: bool = False) -> list[dict[str, Any]]:
    """Holds (waiting ones, or ``every`` one) with the identities whose events still wait."""
    query = select(Hold).order_by(Hold.id)
    if not every:
        query = query.where(Hold.status.in_(WAITING))
    holds = list(session.execute(query).scalars())
    waiting: dict[int, list[str]] = {h.id: [] for h in holds}
    by_target: dict[int, Counter[str]] = {h.id: Counter() for h in holds}
    if holds:
        events = select(IdentityEvent.hold_id, IdentityEvent.identity).where(
            IdentityEvent.hold_id.in_(list(waiting)), IdentityEvent.status == "held"
        )
        operations = select(Operation.hold_id, Operation.identity, Operation.target).where(
            Operation.hold_id.in_(list(waiting)), Operation.status == "held"
        )
        for hold_id, identity in session.execute(events):
            if hold_id is not None:
                waiting[hold_id].append(identity)
        for hold_id, identity, target in session.execute(operations):
            if hold_id is not None:
                waiting[hold_id].append(identity)
                by_target[hold_id][target] += 1
    return [
        {
            "hold": hold.id,
            "kind": hold.kind,
            "status": hold.status,
            "origin": hold.origin,
            "created": hold.created_at.isoformat(),
            "reason": hold.reason,
            "waiting": len(waiting[hold.id]),
            "identities": sorted(set(waiting[hold.id])),
            # a plan batch: the operations still waiting in each target
            "targets": dict(sorted(by_target[hold.id].items())),
            "decided_by": hold.decided_by,
            "details": hold.details,
        }
        for hold in holds
    ]


@dataclass
class Release:
    """The events a decision released or rejected, and how many still wait."""

    hold: Hold
    chosen: list[IdentityEvent]
    remaining: int


def release(
    session: Session,
    hold_id: int,
    *,
    approve: bool,
    only: Sequence[str] | None,
    actor: str,
    now: datetime,
) -> Release:
    """Mark the held events of ``hold_id`` (all, or ``only`` those identities') accepted or
    rejected and record the decision on the hold."""
    hold = session.get(Hold, hold_id)
    if hold is None:
        raise NotFoundError(f"no hold {hold_id}; 'provisor holds' lists the open ones")
    held_rows = list(
        session.execute(
            select(IdentityEvent).where(
                IdentityEvent.hold_id == hold_id, IdentityEvent.status == "held"
            )
        ).scalars()
    )
    if not held_rows:
        raise LifecycleError(f"hold {hold_id} has nothing waiting (status: {hold.status})")
    if only:
        unknown = sorted(set(only) - {r.identity for r in held_rows})
        if unknown:
            raise NotFoundError(f"hold {hold_id} holds nothing for: {', '.join(unknown)}")
        chosen = [r for r in held_rows if r.identity in set(only)]
    else:
        chosen = held_rows
    for row in chosen:
        row.status = "accepted" if approve else "rejected"
    remaining = len(held_rows) - len(chosen)
    hold.status = "partial" if remaining else ("approved" if approve else "rejected")
    hold.decided_by = actor
    hold.decided_at = now
    session.flush()
    return Release(hold, chosen, remaining)


def causers(session: Session, hold: Hold) -> set[str]:
    """Who caused ``hold``: whoever made the change that tripped the guard, whoever recorded
    an event it holds, and, for a held plan batch, whoever recorded the latest event of each
    identity it would remove access from (a tick or a plan run by the service stands for the
    people whose events it applied)."""
    found = {hold.created_by} if hold.created_by else set()
    found |= {
        by
        for by in session.execute(
            select(IdentityEvent.recorded_by).where(IdentityEvent.hold_id == hold.id).distinct()
        ).scalars()
        if by
    }
    if hold.kind == "operations":
        held = select(Operation.identity).where(Operation.hold_id == hold.id).distinct()
        latest = (
            select(IdentityEvent.identity, func.max(IdentityEvent.id).label("last"))
            .where(IdentityEvent.identity.in_(held), IdentityEvent.status == "accepted")
            .group_by(IdentityEvent.identity)
            .subquery()
        )
        found |= {
            by
            for by in session.execute(
                select(IdentityEvent.recorded_by).join(latest, IdentityEvent.id == latest.c.last)
            ).scalars()
            if by
        }
    return found
