"""Routes for identities and what changes them: timelines, explain, events, feeds, jobs.

Does: list identities, show one with its timeline (as of a date, as known at a date), explain
what it should hold and why, record a lifecycle event, accept an HR feed upload (kept in the
workspace before 202 is answered, imported in the background), and show background jobs.
Does not: fold, validate or import anything itself (``provisor.engine.views``,
``provisor.engine.jobs``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from provisor.api.problems import Problem
from provisor.api.security import (
    EventWriter,
    Offset,
    Reader,
    RowId,
    Space,
    acting,
    instant,
    typed_when,
    workspace_when,
)
from provisor.domain.lifecycle import ENDS_ACCESS, EventKind
from provisor.engine import jobs, views
from provisor.sources.hr import FeedMode

router = APIRouter(prefix="/api/v1", tags=["identities"])


@router.get("/identities", summary="Identities with their state")
def list_identities(
    who: Reader,
    workspace: Space,
    state: str | None = None,
    department: str | None = None,
    kind: str | None = None,
    limit: int = Query(100, ge=1, le=10_000),
) -> dict[str, Any]:
    rows, total = views.list_identities(
        workspace, state=state, department=department, kind=kind, limit=limit
    )
    return {"total": total, "identities": rows}


AS_OF = (
    "A date (the start of that day in the workspace's time zone) or a date-time (without an "
    "offset: a wall-clock time there). Default: now."
)


@router.get("/identities/{identity}", summary="One identity: state, attributes, timeline")
def show_identity(
    identity: str,
    who: Reader,
    workspace: Space,
    as_of: str | None = Query(None, max_length=40, description=AS_OF),
    known_at: datetime | None = None,
) -> dict[str, Any]:
    return views.show_identity(
        workspace,
        identity,
        as_of=workspace_when(workspace, as_of, "as_of"),
        known_at=instant(known_at, "known_at", workspace),
        now=datetime.now(UTC),
    )


@router.get("/identities/{identity}/explain", summary="What it should hold and why")
def explain_identity(
    identity: str,
    who: Reader,
    workspace: Space,
    item: str | None = Query(None, description="TARGET or TARGET:ENTITLEMENT"),
    as_of: str | None = Query(None, max_length=40, description=AS_OF),
) -> dict[str, Any]:
    return views.explain_identity(
        workspace,
        identity,
        item,
        now=datetime.now(UTC),
        as_of=workspace_when(workspace, as_of, "as_of"),
    )


class NewEvent(BaseModel):
    identity: str = Field(min_length=1, max_length=128)
    kind: EventKind
    effective: str | None = Field(
        default=None,
        max_length=40,
        description="Default: now. A date (YYYY-MM-DD) is a day in the person's time zone: a "
        "terminate takes effect at the end of that last working day, a hire at the start of "
        "the first; a date-time without an offset is a wall-clock time there; one with an "
        "offset is taken as given.",
    )
    changes: dict[str, str | None] = Field(default_factory=dict, description="Attributes.")
    ref: str | None = Field(
        default=None,
        description="Rescind: the key of the termination it cancels (or of a hire not yet "
        "in effect).",
    )


@router.post("/events", status_code=201, summary="Record one lifecycle event")
async def record_event(
    body: NewEvent, who: EventWriter, workspace: Space, request: Request
) -> dict[str, Any]:
    """Recorded (or held by the mass-change guard) before it is answered; events arriving
    together are recorded in one transaction. A rescind is recorded on its own."""
    now = datetime.now(UTC)
    typed = typed_when(body.effective, "effective") if body.effective else None
    source = f"api:{who.name}"
    if body.kind is EventKind.RESCIND:

        def rescind() -> dict[str, Any]:
            with acting(who):
                return views.record_event(
                    workspace,
                    body.identity,
                    body.kind,
                    effective=typed,
                    changes=dict(body.changes),
                    ref=body.ref,
                    source=source,
                    now=now,
                )

        recorded = await run_in_threadpool(rescind)
        request.app.state.wake.set()  # planned and run now, not at the next cycle
        return recorded
    placed = await run_in_threadpool(
        views.place_event, workspace, body.identity, body.kind, typed or now, dict(body.changes)
    )
    wake = request.app.state.wake
    hurry = body.kind in ENDS_ACCESS and placed.at <= now
    if hurry:
        wake.warn()  # the workers' other work holds while this is recorded
    answer = request.app.state.intake.submit(
        body.identity,
        body.kind,
        effective=placed.at,
        changes=dict(body.changes),
        source=source,
        actor=who.name,
        local=placed.local,
    )
    recorded = dict(await asyncio.wrap_future(answer))
    if hurry:
        wake.hurry()  # removals first, across every worker
    else:
        wake.set()
    return recorded


@router.post(
    "/feeds",
    status_code=202,
    summary="Upload an HR feed (CSV body); imported in the background",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def upload_feed(
    request: Request,
    who: EventWriter,
    workspace: Space,
    feed: str | None = Query(None, description="The feed mapping (default: the first)."),
    mode: FeedMode | None = None,
    name: str = Query("feed.csv", max_length=200, description="The file's name, as recorded."),
) -> dict[str, Any]:
    content = await feed_body(request, workspace)

    def keep() -> Any:
        with acting(who):
            return jobs.queue_import(
                workspace,
                name,
                content,
                feed=feed,
                mode=mode,
                by=who.name,
                now=datetime.now(UTC),
            )

    job = await run_in_threadpool(keep)  # the file is written and queued before 202
    request.app.state.wake.set()
    return {"job": job.id, "status": job.status, "href": f"/api/v1/jobs/{job.id}"}


async def feed_body(request: Request, workspace: Any) -> bytes:
    """An uploaded feed (the request's body), no larger than the service allows."""
    limit = workspace.config.service.max_upload_mb * 1024 * 1024
    content = bytearray()
    async for chunk in request.stream():
        content += chunk
        if len(content) > limit:
            raise Problem(413, f"a feed may have at most {limit // (1024 * 1024)} MB")
    if not content:
        raise Problem(422, "the feed is empty: send the CSV file as the request body")
    return bytes(content)


@router.get("/jobs", summary="Background jobs, newest first")
def list_jobs(
    who: Reader,
    workspace: Space,
    status: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    with workspace.sessions() as session:
        return jobs.list_jobs(session, status=status, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", summary="One background job: status, result or error")
def get_job(job_id: RowId, who: Reader, workspace: Space) -> dict[str, Any]:
    with workspace.sessions() as session:
        return jobs.get_job(session, job_id)
