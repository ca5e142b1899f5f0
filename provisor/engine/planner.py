"""Planning: desired access against observed access, written into the operation journal.

Does: for a selection of identities (one, one target, or everyone), compute desired access from
the materialised identity state and the policy, diff it with the observed-state store, and bring
the journal in line — new operations are added as pending, pending operations the plan no longer
wants are cancelled (never deleted), each change with an audit event; work already in flight,
done but awaiting verification, parked as failed or handed to the owner as a ticket is matched,
not planned again; nothing is planned for an account a person's mark holds (protected,
decommission-later) — then clear the identities' "needs plan" mark.
Does not: execute operations or talk to targets.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisor.domain.desired import CompiledPolicy, desired_access
from provisor.domain.lifecycle import IdentityState, LifecycleState, fold
from provisor.domain.plan import ObservedAccount, PlannedOperation, plan_identity
from provisor.engine.lifecycle import chunks, load_history, window
from provisor.engine.marks import held_accounts
from provisor.engine.tasks import cancel_for as cancel_tasks
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError
from provisor.evidence import audit
from provisor.store import models


def state_from_row(row: models.Identity, now: datetime) -> IdentityState:
    """The materialised state of ``row`` as an ``IdentityState`` (without its timeline)."""
    return IdentityState(
        identity=row.external_id,
        state=LifecycleState(row.state) if row.state else None,
        attributes=row.attributes or {},
        employment_start=row.employment_start,
        terminated_at=row.terminated_at,
        state_since=row.state_since,
        next_change=row.next_change_at,
        timeline=(),
        as_of=now,
        known_at=None,
    )


def observed_for(
    session: Session, identities: Sequence[str] | None, target: str | None = None
) -> dict[str, list[ObservedAccount]]:
    """Observed accounts linked to ``identities`` (all linked accounts when None)."""
    found: dict[str, list[ObservedAccount]] = defaultdict(list)
    queries = []
    base = select(models.ObservedAccount).where(models.ObservedAccount.identity.is_not(None))
    if target is not None:
        base = base.where(models.ObservedAccount.target == target)
    if identities is None:
        queries.append(base)
    else:
        queries = [base.where(models.ObservedAccount.identity.in_(p)) for p in chunks(identities)]
    for query in queries:
        accounts = list(session.execute(query).scalars())
        ents: dict[int, set[str]] = defaultdict(set)
        for part in chunks([a.id for a in accounts]):
            for account_id, name in session.execute(
                select(
                    models.ObservedEntitlement.account_id, models.ObservedEntitlement.entitlement
                ).where(models.ObservedEntitlement.account_id.in_(part))
            ):
                ents[account_id].add(name)
        for a in accounts:
            assert a.identity is not None
            found[a.identity].append(
                ObservedAccount(
                    target=a.target,
                    account=a.account,
                    identity=a.identity,
                    enabled=a.enabled,
                    entitlements=frozenset(ents[a.id]),
                    observed_at=a.observed_at,
                    sessions=a.sessions,
                    attributes=a.attributes or {},
                )
            )
    return found


def _needs_timeline(compiled: CompiledPolicy, identity: str) -> bool:
    return identity in compiled.assignments or identity in compiled.exceptions


def compute_plan(
    workspace: Workspace,
    session: Session,
    *,
    now: datetime,
    identity: str | None = None,
    target: str | None = None,
    changed_only: bool = False,
) -> tuple[list[PlannedOperation], list[str]]:
    """Planned operations for the selection, and the identities that were planned.

    ``changed_only`` plans just the identities marked as needing it (a lifecycle change, a
    new observation) and those holding time-bound grants, which can expire with nothing else
    changing; everyone else's plan is what it was under the same policy."""
    compiled = workspace.compiled
    if target is not None and target not in compiled.targets:
        raise NotFoundError(
            f"no target {target!r} in the policy; targets: {', '.join(compiled.targets)}"
        )
    query = select(models.Identity).order_by(models.Identity.external_id)
    if identity is not None:
        query = query.where(models.Identity.external_id == identity)
    if changed_only and identity is None:
        timed = sorted(set(compiled.assignments) | set(compiled.exceptions))
        found = {
            r.external_id: r
            for r in session.execute(query.where(models.Identity.needs_plan.is_(True))).scalars()
        }
        for part in chunks(timed):
            for r in session.execute(query.where(models.Identity.external_id.in_(part))).scalars():
                found[r.external_id] = r
        rows = [found[i] for i in sorted(found)]
    else:
        rows = list(session.execute(query).scalars())
    if identity is not None and not rows:
        raise NotFoundError(f"no identity {identity!r}; see 'provisor identities'")
    ids = [r.external_id for r in rows]
    selection = [identity] if identity else (ids if changed_only else None)
    observed = observed_for(session, selection, target)
    detailed = [i for i in ids if _needs_timeline(compiled, i)]
    history = load_history(session, detailed) if detailed else {}
    targets = dict(compiled.targets)
    if target is not None:
        targets = {target: targets[target]}
    ops: list[PlannedOperation] = []
    for row in rows:
        if row.external_id in history:
            state = fold(
                row.external_id,
                history[row.external_id],
                as_of=now,
                rescind_window=window(workspace.config),
            )
        else:
            state = state_from_row(row, now)
        desired = desired_access(compiled, state)
        ops.extend(plan_identity(state, desired, observed.get(row.external_id, []), targets))
    return ops, ids


@dataclass
class JournalSync:
    operations: list[tuple[PlannedOperation, str, int]]  # (op, "new" | "pending", journal id)
    cancelled: int

    @property
    def added(self) -> int:
        return sum(1 for _, status, _ in self.operations if status == "new")


# Journal rows that stand for work already under way, parked, or handed to the target's owner
# as a ticket: a plan that needs the same work again matches them instead of adding a
# duplicate. Only "pending" and "ticket" ones can be cancelled.
OPEN_STATUSES = ("ticket", "pending", "running", "succeeded", "failed", "unverifiable")
CANCELLABLE = ("pending", "ticket")


def _open_ops(
    session: Session, ids: Sequence[str], target: str | None
) -> Iterator[models.Operation]:
    for part in chunks(list(ids)):
        query = select(models.Operation).where(
            models.Operation.identity.in_(part), models.Operation.status.in_(OPEN_STATUSES)
        )
        if target is not None:
            query = query.where(models.Operation.target == target)
        yield from session.execute(query.order_by(models.Operation.id)).scalars()


def _take(rows: list[models.Operation], account: str | None) -> models.Operation | None:
    """The journal row for a planned operation on ``account``: same account first, then one
    whose account is not known yet (a create's later steps), else any for a new account."""
    for wanted in (account, None):
        for row in rows:
            if row.account == wanted:
                rows.remove(row)
                return row
    return rows.pop(0) if rows and account is None else None


def sync_journal(
    workspace: Workspace,
    session: Session,
    *,
    now: datetime,
    identity: str | None = None,
    target: str | None = None,
    changed_only: bool = False,
) -> JournalSync:
    """Compute the plan for the selection and make the journal's pending operations match it.

    With ``changed_only`` (the long-running service, between full plans) only identities that
    need it are planned; see ``compute_plan``. A new policy version always plans everyone."""
    if workspace.note_policy_version(session):
        changed_only = False
    ops, ids = compute_plan(
        workspace, session, now=now, identity=identity, target=target, changed_only=changed_only
    )
    held = held_accounts(session, now)
    if held:
        ops = [op for op in ops if op.account is None or (op.target, op.account) not in held]
    open_rows: dict[tuple[str, str, str, str], list[models.Operation]] = {}
    for row in _open_ops(session, ids, target):
        key = (row.identity, row.target, row.kind, row.entitlement or "")
        open_rows.setdefault(key, []).append(row)
    result: list[tuple[PlannedOperation, str, int]] = []
    entries: list[audit.Entry] = []
    new_rows: list[tuple[PlannedOperation, models.Operation]] = []
    for op in ops:
        existing = _take(open_rows.get(op.match_key, []), op.account)
        if existing is not None and existing.status not in CANCELLABLE:
            result.append((op, existing.status, existing.id))
            continue
        if existing is not None and existing.status == "ticket":
            result.append((op, "ticket", existing.id))
            continue
        if existing is not None:
            # A grace period counted from "now" started when the removal was first planned;
            # one counted from a termination date follows that date if HR corrects it.
            not_before = op.not_before
            if op.grace_from_now and existing.not_before is not None:
                not_before = existing.not_before
            if existing.not_before != not_before or existing.reason != op.reason:
                existing.not_before, existing.reason, existing.updated_at = (
                    not_before,
                    op.reason,
                    now,
                )
            result.append((op, "pending", existing.id))
            continue
        row = models.Operation(
            key=uuid.uuid4().hex,
            identity=op.identity,
            target=op.target,
            account=op.account,
            kind=op.kind.value,
            entitlement=op.entitlement,
            step=op.step,
            reason=op.reason,
            status="pending",
            not_before=op.not_before,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        new_rows.append((op, row))
        entries.append(audit.Entry("operation.planned", op.identity, _op_data(op, row.key)))
    stale_rows = [r for rows in open_rows.values() for r in rows if r.status in CANCELLABLE]
    for stale in stale_rows:
        mark = held.get((stale.target, stale.account or ""))
        stale.status = "cancelled"
        stale.updated_at = now
        stale.last_error = (
            f"account marked {mark.mark}: {mark.reason}"
            if mark is not None
            else "superseded: the current plan no longer needs it"
        )
        entries.append(
            audit.Entry(
                "operation.cancelled",
                stale.identity,
                {
                    "key": stale.key,
                    "target": stale.target,
                    "kind": stale.kind,
                    "entitlement": stale.entitlement,
                    "why": stale.last_error,
                },
            )
        )
    session.flush()
    cancel_tasks(session, [stale.id for stale in stale_rows], now)
    result.extend((op, "new", row.id) for op, row in new_rows)
    for part in chunks(ids):
        session.execute(
            update(models.Identity)
            .where(models.Identity.external_id.in_(part))
            .values(needs_plan=False)
        )
    audit.append(session, entries, at=now)
    result.sort(key=lambda r: (r[0].identity, r[0].target, r[0].step, r[0].entitlement or ""))
    return JournalSync(result, len(stale_rows))


def _op_data(op: PlannedOperation, key: str) -> dict[str, Any]:
    return {
        "key": key,
        "target": op.target,
        "account": op.account,
        "kind": op.kind.value,
        "entitlement": op.entitlement,
        "reason": op.reason,
        "not_before": op.not_before.isoformat() if op.not_before else None,
    }
