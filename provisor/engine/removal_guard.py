"""The removal guard: a plan batch that would remove too much access at once is held whole.

Does: before the planner (or reconciliation, for orphan accounts) writes a batch of new
operations, count its removals (disables,
deletes, entitlement removals) per target and overall against the accounts Provisor manages
there; over the limits (the target's own ``guard``, else ``provisor.yaml``'s ``guard``) open an
operations hold that says what would happen, by target and by cause (the policy change with its
diff, the identities' states, the plan's reasons) — the planner then writes the whole batch as
``held`` (all but the operations of identities being terminated or suspended). Release a held
batch whole or in part (by identity, by target), or reject it.
Does not: count removals of identities being terminated or suspended (the lifecycle guard,
``provisor.engine.holds``, holds those transitions before they reach a plan, so one change is
never held twice), plan, or run operations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisor.config.workspace import WorkspaceConfig
from provisor.domain.guard import Limits, removals_reason
from provisor.domain.lifecycle import LifecycleState
from provisor.domain.plan import REMOVALS, OpKind, PlannedOperation
from provisor.domain.policy import TargetDef
from provisor.errors import LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import chunks

# removals of identities in these states were held (or let through) by the lifecycle guard
GUARDED_BY_LIFECYCLE = frozenset({LifecycleState.TERMINATED.value, LifecycleState.SUSPENDED.value})


def limits_for(config: WorkspaceConfig, target: TargetDef | None) -> Limits:
    """The target's own limits where it sets them, else the workspace's."""
    base = config.guard
    own = target.guard if target is not None else None
    return Limits(
        max_share=(own.max_share if own and own.max_share is not None else base.max_share),
        max_count=(own.max_count if own and own.max_count is not None else base.max_count),
        min_count=(own.min_count if own and own.min_count is not None else base.min_count),
    )


def _states(session: Session, identities: set[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    identity = models.Identity
    for part in chunks(sorted(identities)):
        query = select(identity.external_id, identity.state).where(identity.external_id.in_(part))
        found.update((key, state) for key, state in session.execute(query))
    return found


def _managed(session: Session) -> dict[str, int]:
    """Accounts linked to an identity, per target: what a share of removals is taken of."""
    account = models.ObservedAccount
    query = (
        select(account.target, func.count())
        .where(account.identity.is_not(None))
        .group_by(account.target)
    )
    return {target: count for target, count in session.execute(query)}


def check(
    session: Session,
    config: WorkspaceConfig,
    targets: Mapping[str, TargetDef],
    ops: Sequence[PlannedOperation],
    *,
    policy_change: dict[str, Any] | None,
    now: datetime,
    origin: str = "plan",
) -> tuple[models.Hold | None, frozenset[str]]:
    """An open operations hold when ``ops`` (a batch about to be written) removes too much,
    else None; and the identities being terminated or suspended, whose operations were the
    lifecycle guard's to hold and go ahead even in a held batch."""
    # a new account made locked (a disable beside its create, before a start) takes nothing
    removals = [
        op
        for op in ops
        if op.kind in REMOVALS and not (op.kind is OpKind.DISABLE and op.account is None)
    ]
    if not removals:  # most batches (a first plan of everyone): no state to look up
        return None, frozenset()
    states = _states(session, {op.identity for op in removals})
    leaving = frozenset(i for i, state in states.items() if state in GUARDED_BY_LIFECYCLE)
    counted = [op for op in removals if op.identity not in leaving]
    if not counted:
        return None, leaving
    per_target = Counter(op.target for op in counted)
    managed = _managed(session)
    reasons = [
        why
        for target, count in sorted(per_target.items())
        if (
            why := removals_reason(
                count,
                managed.get(target, 0),
                f"target {target}",
                limits_for(config, targets.get(target)),
            )
        )
    ]
    overall = removals_reason(
        len(counted), sum(managed.values()), "all targets", limits_for(config, None)
    )
    if overall and len(per_target) > 1:
        reasons.append(overall)
    if not reasons:
        return None, leaving
    details = {
        "targets": {
            target: {"removals": count, "managed": managed.get(target, 0)}
            for target, count in sorted(per_target.items())
        },
        "causes": _causes(counted, states, policy_change),
        "operations": len(ops),
    }
    hold = models.Hold(
        created_at=now,
        origin=origin,
        reason="; ".join(reasons),
        status="open",
        kind="operations",
        details=details,
        created_by=audit.current_actor(),
    )
    session.add(hold)
    session.flush()
    return hold, leaving


def _causes(
    ops: Sequence[PlannedOperation],
    states: Mapping[str, str | None],
    policy_change: dict[str, Any] | None,
) -> dict[str, Any]:
    """What the removals come from: the policy change (with its diff), the identities' states,
    and the plan's own reasons, most frequent first."""
    reasons = Counter(op.reason for op in ops).most_common(10)
    return {
        "policy_change": policy_change,
        "identity_states": dict(Counter(str(states.get(op.identity)) for op in ops)),
        "reasons": [{"reason": reason, "removals": count} for reason, count in reasons],
    }


def created_entry(hold: models.Hold) -> audit.Entry:
    """The audit entry of a new operations hold: what it holds and why."""
    return audit.Entry(
        "hold.created",
        f"hold {hold.id}",
        {"kind": "operations", "reason": hold.reason, **(hold.details or {})},
    )


def close_emptied(session: Session, hold_ids: set[int | None], now: datetime) -> list[audit.Entry]:
    """Holds among ``hold_ids`` whose held operations a newer plan has all cancelled (the
    change was undone) are closed as superseded; returns their audit entries."""

    entries = []
    op = models.Operation
    for hold_id in sorted(i for i in hold_ids if i is not None):
        waiting = session.execute(
            select(func.count()).where(op.hold_id == hold_id, op.status == "held")
        ).scalar_one()
        hold = session.get(models.Hold, hold_id)
        if waiting or hold is None or hold.status not in ("open", "partial"):
            continue
        hold.status, hold.decided_at, hold.decided_by = "superseded", now, "plan"
        data = {"kind": "operations", "why": "the plan no longer wants what it held"}
        entries.append(audit.Entry("hold.superseded", f"hold {hold_id}", data))
    return entries


@dataclass
class Released:
    """The operations a decision released or rejected, and how many still wait."""

    hold: models.Hold
    chosen: list[models.Operation]
    remaining: int


def release(
    session: Session,
    hold: models.Hold,
    *,
    approve: bool,
    identities: Sequence[str] | None,
    targets: Sequence[str] | None,
    actor: str,
    now: datetime,
) -> Released:
    """Put the held operations of ``hold`` (all, or those of some identities and/or targets)
    in line (``pending``) or cancel them, and record the decision on the hold."""
    op = models.Operation
    rows = list(
        session.execute(select(op).where(op.hold_id == hold.id, op.status == "held")).scalars()
    )
    if not rows:
        raise LifecycleError(f"hold {hold.id} has nothing waiting (status: {hold.status})")
    chosen = rows
    for given, field in ((identities, "identity"), (targets, "target")):
        if given:
            unknown = sorted(set(given) - {getattr(r, field) for r in rows})
            if unknown:
                raise NotFoundError(f"hold {hold.id} holds nothing for: {', '.join(unknown)}")
            chosen = [r for r in chosen if getattr(r, field) in set(given)]
    if not chosen:
        raise LifecycleError(
            f"hold {hold.id} holds nothing for both those identities and those targets"
        )
    for row in chosen:
        row.updated_at = now
        if approve:
            row.status = "pending"
        else:
            row.status, row.last_error = "cancelled", f"rejected with hold {hold.id} by {actor}"
    remaining = len(rows) - len(chosen)
    hold.status = "partial" if remaining else ("approved" if approve else "rejected")
    hold.decided_by, hold.decided_at = actor, now
    session.flush()
    return Released(hold, chosen, remaining)
