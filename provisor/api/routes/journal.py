"""Routes for the plan and the operation journal: plan, operations, holds.

Does: bring the journal in line with desired access (a plan, for everyone or one identity or
target), list operations (an owner sees their targets' only), retry a failed one, cancel an
open one, list holds and approve (whole or in part) or reject one — the person who caused a
hold may not decide it.
Does not: plan, execute or release anything itself (``provisor.engine.planner``,
``provisor.engine.operations``, ``provisor.engine.identities``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from provisor.api.security import (
    Approver,
    Offset,
    Operator,
    OwnReader,
    Reader,
    RowId,
    Space,
    acting,
)
from provisor.domain.roles import Permission
from provisor.engine import holds, operations
from provisor.engine.identities import decide_hold
from provisor.engine.planner import sync_journal

router = APIRouter(prefix="/api/v1", tags=["journal"])


class PlanRequest(BaseModel):
    identity: str | None = None
    target: str | None = None


@router.post("/plans", summary="Plan: bring the journal in line with desired access")
def plan(body: PlanRequest, who: Operator, workspace: Space, request: Request) -> dict[str, Any]:
    with acting(who), workspace.sessions() as session, session.begin():
        synced = sync_journal(
            workspace,
            session,
            now=datetime.now(UTC),
            identity=body.identity,
            target=body.target,
        )
    request.app.state.wake.set()
    return synced.summary()


@router.get("/operations", summary="Operations, newest first (an owner: their targets')")
def list_operations(
    who: OwnReader,
    workspace: Space,
    status: str | None = None,
    target: str | None = None,
    identity: str | None = None,
    limit: int = Query(100, ge=1, le=10_000),
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    visible = who.visible(Permission.READ, who.targets)
    with workspace.sessions() as session:
        return operations.list_operations(
            session,
            status=status,
            target=target,
            identity=identity,
            targets=visible,
            limit=limit,
            offset=offset,
        )


class Why(BaseModel):
    why: str = Field(min_length=1, max_length=2000)


@router.post("/operations/{op_id}/retry", summary="Put a failed operation back in line")
def retry_operation(
    op_id: RowId, body: Why, who: Operator, workspace: Space, request: Request
) -> dict[str, Any]:
    with acting(who), workspace.sessions() as session, session.begin():
        done = operations.retry(session, op_id, why=body.why, now=datetime.now(UTC))
    request.app.state.wake.set()
    return done


@router.post("/operations/{op_id}/cancel", summary="Cancel an open operation")
def cancel_operation(op_id: RowId, body: Why, who: Operator, workspace: Space) -> dict[str, Any]:
    with acting(who), workspace.sessions() as session, session.begin():
        return operations.cancel(session, op_id, why=body.why, now=datetime.now(UTC))


@router.get("/holds", summary="Held change sets (waiting ones, or all)")
def list_holds(who: Reader, workspace: Space, every: bool = False) -> list[dict[str, Any]]:
    with workspace.sessions() as session:
        return holds.list_holds(session, every=every)


class HoldDecision(BaseModel):
    only: list[str] | None = Field(default=None, description="Only these identities.")
    targets: list[str] | None = Field(default=None, description="Only these targets' part.")


def _decide(
    hold_id: RowId, body: HoldDecision, who: Any, workspace: Any, approve: bool
) -> dict[str, Any]:
    with acting(who), workspace.sessions() as session, session.begin():
        outcome = decide_hold(
            session,
            workspace.config,
            hold_id,
            approve=approve,
            only=body.only,
            targets=body.targets,
            now=datetime.now(UTC),
            actor=who.name,
            four_eyes=True,
        )
    return {**outcome.as_dict(), "hold": hold_id, "approved": approve}


@router.post("/holds/{hold_id}/approve", summary="Approve a hold, whole or in part")
def approve_hold(
    hold_id: RowId, body: HoldDecision, who: Approver, workspace: Space, request: Request
) -> dict[str, Any]:
    decided = _decide(hold_id, body, who, workspace, True)
    request.app.state.wake.set()
    return decided


@router.post("/holds/{hold_id}/reject", summary="Reject a hold, whole or in part")
def reject_hold(
    hold_id: RowId, body: HoldDecision, who: Approver, workspace: Space
) -> dict[str, Any]:
    return _decide(hold_id, body, who, workspace, False)
