"""Manual targets: operations become work items for the target's revocation owner.

Does: open one task per pending operation of a ``manual`` target (due after the target's
``sla_days``, with instructions and the reason), record it done (by whom, with evidence), and
verify it — by a second person's attestation, or by a later import of the application's user
list that shows the intent — moving the journal operation from ``pending`` to ``succeeded``
(done, not yet verified) to ``verified``; cancel tasks whose operation a newer plan cancelled,
cancel journal operations with their tasks for whoever decides it (reconciliation, marks) and
put parked ones back in line (``provisor apply --retry-failed``, reconciliation);
open work items for any journal operation handed to an owner (reconciliation's tickets use the
same); list tasks, overdue first. Every step is an audit event.
Does not: talk to applications; an unverified manual change is never reported as done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisor.connectors.base import AccountRecord
from provisor.domain.lifecycle import utc
from provisor.domain.plan import OpKind
from provisor.domain.policy import TargetClass, TargetDef
from provisor.domain.readback import unmet
from provisor.domain.roles import second_person
from provisor.engine.workspace import Workspace
from provisor.errors import DeniedError, LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import chunks

_DO = {
    OpKind.CREATE: "Create an account for {who}",
    OpKind.ENABLE: "Enable the account of {who}",
    OpKind.ADD_ENTITLEMENT: "Grant {ent} to {who}",
    OpKind.REVOKE_SESSIONS: "End every open session and revoke tokens/credentials of {who}",
    OpKind.DISABLE: "Disable (lock) the account of {who}",
    OpKind.REMOVE_ENTITLEMENT: "Remove {ent} from {who}",
    OpKind.DELETE: "Delete the account of {who}",
}


def instructions(op: models.Operation, name: str | None) -> str:
    who = f"{op.identity} ({name})" if name else op.identity
    account = f" — account {op.account}" if op.account else ""
    return f"{_DO[OpKind(op.kind)].format(who=who, ent=op.entitlement)}{account}. Why: {op.reason}"


def open_tasks(
    workspace: Workspace, session: Session, now: datetime, targets: Sequence[str] | None = None
) -> int:
    """Open a task for every pending operation of a manual target that has none yet."""
    manual = {
        name: t
        for name, t in workspace.compiled.targets.items()
        if t.target_class is TargetClass.MANUAL and (targets is None or name in targets)
    }
    if not manual:
        return 0
    has_task = select(models.Task.operation_id)
    ops = (
        session.execute(
            select(models.Operation)
            .where(
                models.Operation.target.in_(sorted(manual)),
                models.Operation.status == "pending",
                models.Operation.id.not_in(has_task),
            )
            .order_by(models.Operation.identity, models.Operation.step)
        )
        .scalars()
        .all()
    )
    names: dict[str, str | None] = {}
    for part in chunks(sorted({op.identity for op in ops})):
        query = select(models.Identity.external_id, models.Identity.name).where(
            models.Identity.external_id.in_(part)
        )
        names.update((i, n) for i, n in session.execute(query))
    open_for(
        session,
        [(op, manual[op.target], instructions(op, names.get(op.identity))) for op in ops],
        now,
    )
    return len(ops)


def open_for(
    session: Session,
    work: Sequence[tuple[models.Operation, TargetDef, str]],
    now: datetime,
) -> list[models.Task]:
    """A work item for each (operation, target, instructions), owned by the target's
    revocation owner and due ``sla_days`` after the operation may start; audited."""
    tasks: list[models.Task] = []
    entries = []
    for op, target, text in work:
        start = max(now, utc(op.not_before)) if op.not_before else now
        task = models.Task(
            operation_id=op.id,
            target=op.target,
            identity=op.identity,
            owner=target.owner,
            instructions=text,
            status="open",
            due_at=start + timedelta(days=target.sla_days),
            created_at=now,
        )
        session.add(task)
        tasks.append(task)
        entries.append(
            audit.Entry(
                "task.opened",
                op.identity,
                {
                    "target": op.target,
                    "operation": op.key,
                    "owner": target.owner,
                    "due": task.due_at.isoformat(),
                    "instructions": task.instructions,
                },
            )
        )
    session.flush()
    audit.append(session, entries, at=now)
    return tasks


def cancel_operations(
    session: Session, rows: Sequence[models.Operation], why: str, now: datetime
) -> int:
    """Cancel journal rows (never delete them) and their open work items, audited."""
    entries = []
    for row in rows:
        row.status, row.updated_at, row.last_error = "cancelled", now, why
        entries.append(
            audit.Entry(
                "operation.cancelled",
                row.identity,
                {
                    "key": row.key,
                    "target": row.target,
                    "kind": row.kind,
                    "entitlement": row.entitlement,
                    "why": why,
                },
            )
        )
    session.flush()
    cancel_for(session, [r.id for r in rows], now)
    audit.append(session, entries, at=now)
    return len(rows)


def requeue_operations(
    session: Session, rows: Sequence[models.Operation], why: str, now: datetime
) -> int:
    """Put parked (failed) journal rows back in line with a fresh set of attempts, audited;
    the last error stays on the row until the next attempt replaces it."""
    for row in rows:
        row.status, row.attempts, row.next_attempt_at, row.updated_at = "pending", 0, None, now
    audit.append(
        session,
        [
            audit.Entry(
                "operation.requeued",
                row.identity,
                {
                    "key": row.key,
                    "target": row.target,
                    "kind": row.kind,
                    "last_error": row.last_error,
                    "why": why,
                },
            )
            for row in rows
        ],
        at=now,
    )
    return len(rows)


def task_scope(session: Session, task_id: int) -> tuple[str, str]:
    """The target and revocation owner of a task (who may work on it depends on them)."""
    task, _ = _task(session, task_id)
    return task.target, task.owner


def _task(session: Session, task_id: int) -> tuple[models.Task, models.Operation]:
    task = session.get(models.Task, task_id)
    if task is None:
        raise NotFoundError(f"no task {task_id}; 'provisor tasks' lists them")
    op = session.get(models.Operation, task.operation_id)
    assert op is not None
    return task, op


def complete(session: Session, task_id: int, *, by: str, evidence: str, now: datetime) -> None:
    """The owner did it: record who and the evidence (ticket, screenshot reference, note)."""
    task, op = _task(session, task_id)
    if task.status != "open":
        raise LifecycleError(f"task {task_id} is {task.status}, not open")
    if not evidence.strip():
        raise LifecycleError("say what shows it was done: --evidence 'ticket or note'")
    task.status, task.done_by, task.done_at, task.evidence = "done", by, now, evidence
    if not task.read_back:  # else the operation stays open: the runner reads it back
        op.status, op.updated_at = "succeeded", now
    audit.record(
        session,
        "task.done",
        task.identity,
        {"task": task.id, "operation": op.key, "by": by, "evidence": evidence},
        actor=by,
    )


def _observe_intent(session: Session, op: models.Operation, now: datetime) -> None:
    """Apply an attested operation to the observed-state store (as observed by a person)."""
    row = (
        session.execute(
            select(models.ObservedAccount).where(
                models.ObservedAccount.target == op.target,
                models.ObservedAccount.identity == op.identity,
            )
        )
        .scalars()
        .first()
    )
    kind = OpKind(op.kind)
    if kind is OpKind.DELETE:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        if kind is not OpKind.CREATE:
            return
        row = models.ObservedAccount(
            target=op.target,
            account=op.account or op.identity,
            identity=op.identity,
            enabled=True,
            observed_at=now,
            source="attestation",
        )
        session.add(row)
        session.flush()
    row.observed_at, row.source = now, "attestation"
    if kind in (OpKind.ENABLE, OpKind.DISABLE):
        row.enabled = kind is OpKind.ENABLE
    elif kind is OpKind.REVOKE_SESSIONS:
        row.sessions = 0
    elif kind is OpKind.ADD_ENTITLEMENT and op.entitlement:
        session.merge(
            models.ObservedEntitlement(
                account_id=row.id, entitlement=op.entitlement, observed_at=now
            )
        )
    elif kind is OpKind.REMOVE_ENTITLEMENT and op.entitlement:
        gone = session.get(models.ObservedEntitlement, (row.id, op.entitlement))
        if gone is not None:
            session.delete(gone)


def verify(session: Session, task_id: int, *, by: str, now: datetime) -> str:
    """A second person attests the task was done: ``verified``; or, on an automated target's
    work item, ``attested`` (the removal waits for Provisor's read-back)."""
    task, op = _task(session, task_id)
    if task.status != "done":
        raise LifecycleError(f"task {task_id} is {task.status}; only a done task is verified")
    if not second_person(task.done_by, by):
        raise DeniedError(f"task {task_id} was done by {by}; a second person must verify it")
    if task.read_back:
        # an automated target's: the attestation is kept on the task, and the removal stays
        # open until Provisor's own read-back shows it (a person's word never closes it)
        task.verified_by, task.verification = by, "attested; awaiting read-back"
        audit.record(
            session,
            "task.attested",
            task.identity,
            {"task": task.id, "operation": op.key, "by": by},
        )
        return "attested"
    _verified(session, task, op, by=by, how="attestation", now=now)
    _observe_intent(session, op, now)
    return "verified"


def _verified(
    session: Session, task: models.Task, op: models.Operation, *, by: str, how: str, now: datetime
) -> None:
    task.status, task.verified_by, task.verified_at, task.verification = "verified", by, now, how
    op.status, op.verified_at, op.updated_at = "verified", now, now
    audit.record(
        session,
        "task.verified",
        task.identity,
        {"task": task.id, "operation": op.key, "by": by, "how": how},
    )


def confirm_from_observed(session: Session, target: str, source: str, now: datetime) -> int:
    """Verify done tasks of ``target`` whose intent the freshly imported user list shows."""
    done = session.execute(
        select(models.Task, models.Operation)
        .join(models.Operation, models.Operation.id == models.Task.operation_id)
        .where(
            models.Task.target == target,
            models.Task.status == "done",
            models.Task.read_back.is_(False),  # those wait for Provisor's own read-back
        )
    ).all()
    confirmed = 0
    for task, op in done:
        # The account the operation named, when it named one: an account that merely failed to
        # correlate this time must not pass for a deleted one.
        which = (
            models.ObservedAccount.account == op.account
            if op.account
            else models.ObservedAccount.identity == op.identity
        )
        row = (
            session.execute(
                select(models.ObservedAccount).where(models.ObservedAccount.target == target, which)
            )
            .scalars()
            .first()
        )
        record = None
        if row is not None:
            ents = session.execute(
                select(models.ObservedEntitlement.entitlement).where(
                    models.ObservedEntitlement.account_id == row.id
                )
            ).scalars()
            record = AccountRecord(
                row.account, row.account, row.enabled, frozenset(ents), sessions=row.sessions
            )
        if OpKind(op.kind) is OpKind.REVOKE_SESSIONS:
            continue  # a user list does not show sessions; that needs an attestation
        if unmet(OpKind(op.kind), op.entitlement, record) is None:
            _verified(session, task, op, by=source, how="export", now=now)
            confirmed += 1
    return confirmed


def verified_by_read_back(
    session: Session, operation_ids: Sequence[int], now: datetime
) -> list[audit.Entry]:
    """Work items (open, or done by a person) of operations Provisor's own read-back has just
    verified: verified by it. Their audit entries, for the caller to append."""
    entries = []
    for part in chunks(list(operation_ids)):
        query = select(models.Task).where(
            models.Task.operation_id.in_(part), models.Task.status.in_(("open", "done"))
        )
        for task in session.execute(query).scalars():
            task.status, task.verified_by, task.verified_at = "verified", "provisor", now
            task.verification = "read-back"
            entries.append(
                audit.Entry(
                    "task.verified",
                    task.identity,
                    {"task": task.id, "target": task.target, "by": "provisor", "how": "read-back"},
                )
            )
    return entries


def cancel_for(session: Session, operation_ids: Sequence[int], now: datetime) -> None:
    """Tasks of operations a newer plan cancelled are cancelled too."""
    for part in chunks(list(operation_ids)):
        session.execute(
            update(models.Task)
            .where(models.Task.operation_id.in_(part), models.Task.status == "open")
            .values(status="cancelled", verified_at=now)
        )


@dataclass(frozen=True)
class TaskView:
    id: int
    target: str
    identity: str
    owner: str
    status: str
    due: datetime
    overdue: bool
    instructions: str
    done_by: str | None
    evidence: str | None
    verified_by: str | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "due": self.due.isoformat()}


def list_tasks(
    session: Session, now: datetime, *, every: bool = False, owner: str | None = None
) -> list[TaskView]:
    """Tasks still needing someone (open or done but unverified), overdue first."""
    query = select(models.Task)
    if not every:
        query = query.where(models.Task.status.in_(["open", "done"]))
    if owner:
        query = query.where(models.Task.owner == owner)
    views = [
        TaskView(
            t.id,
            t.target,
            t.identity,
            t.owner,
            t.status,
            t.due_at,
            t.status == "open" and t.due_at < now,
            t.instructions,
            t.done_by,
            t.evidence,
            t.verified_by,
        )
        for t in session.execute(query).scalars()
    ]
    views.sort(key=lambda v: (not v.overdue, v.due, v.id))
    return views
