"""Routes for the work people do: manual tasks, correlation cases, account marks,
reconciliation runs.

Does: list tasks (a target owner: their targets' and those they are the revocation owner of),
mark one done and verify it (never by the person who did it), list and decide correlation cases
(an owner: their targets'), list, set and clear account marks, start a reconciliation in the
background and list the runs.
Does not: judge or store anything itself (``provisor.engine.tasks``, ``correlate``, ``marks``,
``jobs``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from provisor.api.problems import Problem
from provisor.api.security import (
    CaseDecider,
    Marker,
    Offset,
    Operator,
    OwnReader,
    RowId,
    Space,
    TaskWorker,
    acting,
    instant,
)
from provisor.domain.roles import Permission
from provisor.engine import correlate, jobs, marks, tasks
from provisor.engine.operators import Principal
from provisor.engine.reconcile import list_runs

router = APIRouter(prefix="/api/v1", tags=["work"])


@router.get("/tasks", summary="Manual work items, overdue first (an owner: their own)")
def list_tasks(
    who: OwnReader, workspace: Space, every: bool = False, owner: str | None = None
) -> list[dict[str, Any]]:
    with workspace.sessions() as session:
        found = tasks.list_tasks(session, datetime.now(UTC), every=every, owner=owner)
    return [t.as_dict() for t in found if who.answers_for(Permission.READ, t.target, t.owner)]


class TaskDone(BaseModel):
    evidence: str = Field(min_length=1, max_length=4000, description="Ticket, note, reference.")


def _task_scope(workspace: Any, task_id: int) -> tuple[str, str]:
    with workspace.sessions() as session:
        return tasks.task_scope(session, task_id)


@router.post("/tasks/{task_id}/done", summary="Record that a task was done")
def task_done(task_id: RowId, body: TaskDone, who: TaskWorker, workspace: Space) -> dict[str, Any]:
    who.work_on(Permission.TASKS, *_task_scope(workspace, task_id))
    with acting(who), workspace.sessions() as session, session.begin():
        tasks.complete(session, task_id, by=who.name, evidence=body.evidence, now=datetime.now(UTC))
    return {"task": task_id, "status": "done", "by": who.name}


@router.post("/tasks/{task_id}/verify", summary="Attest, as a second person, a done task")
def task_verify(task_id: RowId, who: TaskWorker, workspace: Space) -> dict[str, Any]:
    who.work_on(Permission.TASKS, *_task_scope(workspace, task_id))
    with acting(who), workspace.sessions() as session, session.begin():
        status = tasks.verify(session, task_id, by=who.name, now=datetime.now(UTC))
    return {"task": task_id, "status": status, "by": who.name}


@router.get("/cases", summary="Correlation cases (an owner: their targets')")
def list_cases(
    who: OwnReader, workspace: Space, every: bool = False, target: str | None = None
) -> list[dict[str, Any]]:
    with workspace.sessions() as session:
        return [
            correlate.case_dict(c)
            for c in correlate.list_cases(session, every=every, target=target)
            if who.answers_for(Permission.READ, c.target)
        ]


class CaseDecision(BaseModel):
    identity: str | None = Field(default=None, description="Resolve: the account's identity.")
    note: str = Field(default="", max_length=4000)


def _decide_case(
    case_id: RowId, body: CaseDecision, who: Principal, workspace: Any, resolve: bool
) -> dict[str, Any]:
    with workspace.sessions() as session:
        target = correlate.case_target(session, case_id)
    who.work_on(Permission.CASES, target)
    now = datetime.now(UTC)
    with acting(who), workspace.sessions() as session, session.begin():
        if resolve:
            if not body.identity:
                raise Problem(422, "say which identity the account belongs to: 'identity'")
            decided = correlate.resolve_case(
                session, case_id, body.identity, by=who.name, now=now, note=body.note
            )
        else:
            decided = correlate.dismiss_case(session, case_id, by=who.name, now=now, note=body.note)
        return correlate.case_dict(decided)


@router.post("/cases/{case_id}/resolve", summary="Link the account to an identity")
def resolve_case(
    case_id: RowId, body: CaseDecision, who: CaseDecider, workspace: Space
) -> dict[str, Any]:
    return _decide_case(case_id, body, who, workspace, True)


@router.post("/cases/{case_id}/dismiss", summary="The account belongs to no candidate")
def dismiss_case(
    case_id: RowId, body: CaseDecision, who: CaseDecider, workspace: Space
) -> dict[str, Any]:
    return _decide_case(case_id, body, who, workspace, False)


@router.get("/marks", summary="Account marks")
def list_marks(who: OwnReader, workspace: Space, target: str | None = None) -> list[dict[str, Any]]:
    at = datetime.now(UTC)
    with workspace.sessions() as session:
        return [
            marks.mark_dict(m, at)
            for m in marks.list_marks(session, target=target)
            if who.answers_for(Permission.READ, m.target)
        ]


class NewMark(BaseModel):
    target: str = Field(min_length=1)
    account: str = Field(min_length=1)
    mark: str = Field(description="protected | decommission-later | ignore")
    reason: str = Field(min_length=1, max_length=4000)
    expires: datetime | None = None


@router.post("/marks", status_code=201, summary="Mark an account (replaces its mark)")
def set_mark(body: NewMark, who: Marker, workspace: Space) -> dict[str, Any]:
    at = datetime.now(UTC)
    with acting(who), workspace.sessions() as session, session.begin():
        made = marks.set_mark(
            workspace,
            session,
            body.target,
            body.account,
            body.mark,
            body.reason,
            by=who.name,
            now=at,
            expires=instant(body.expires, "expires", workspace),
        )
        return marks.mark_dict(made, at)


@router.delete("/marks/{target}/{account}", status_code=204, summary="Clear an account's mark")
def clear_mark(target: str, account: str, who: Marker, workspace: Space) -> None:
    with acting(who), workspace.sessions() as session, session.begin():
        marks.clear_mark(session, target, account, by=who.name)


class ReconcileRequest(BaseModel):
    target: str | None = Field(default=None, description="Default: every target.")
    full: bool = True
    report_only: bool = False


@router.post("/reconciliations", status_code=202, summary="Reconcile in the background")
def reconcile(
    body: ReconcileRequest, who: Operator, workspace: Space, request: Request
) -> dict[str, Any]:
    if body.target is not None and body.target not in workspace.compiled.targets:
        raise Problem(404, f"no target {body.target!r}")
    with acting(who), workspace.sessions() as session, session.begin():
        job = jobs.enqueue(
            session, "reconcile", body.model_dump(), by=who.name, now=datetime.now(UTC)
        )
        answer = {"job": job.id, "status": job.status, "href": f"/api/v1/jobs/{job.id}"}
    request.app.state.wake.set()
    return answer


@router.get("/reconciliations", summary="Reconciliation runs, newest first")
def reconciliation_runs(
    who: OwnReader,
    workspace: Space,
    target: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    visible = who.visible(Permission.READ, who.targets)
    with workspace.sessions() as session:
        return list_runs(
            session,
            target=target,
            targets=sorted(visible) if visible is not None else None,
            limit=limit,
            offset=offset,
        )
