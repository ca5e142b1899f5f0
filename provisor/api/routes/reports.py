"""Routes for what Provisor reports: revocation debt, coverage, evidence, the audit log.

Does: serve the metrics for Prometheus (``/metrics``, a token with the ``metrics`` scope); show
the revocation debt (grouped, or one identity's or target's; a target owner sees
their targets'), the coverage map, start a leaver's evidence bundle in the background, list
and download bundles, verify the audit chain and export it (JSON Lines or CSV).
Does not: compute or verify anything itself (``provisor.engine.debt``, ``coverage``,
``leavers``, ``audit_log``; ``provisor.evidence.audit`` for the export).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, Field

from provisor.api.problems import Problem
from provisor.api.security import (
    EvidenceReader,
    Monitor,
    OwnReader,
    Reader,
    Space,
    acting,
    instant,
)
from provisor.domain.debt import GROUPINGS
from provisor.domain.roles import Permission, Reach
from provisor.engine import debt, jobs
from provisor.engine.audit_log import verify_log
from provisor.engine.coverage import coverage
from provisor.engine.leavers import bundle_path, list_bundles
from provisor.engine.metrics import CONTENT_TYPE
from provisor.evidence import audit

router = APIRouter(prefix="/api/v1", tags=["reports"])


@router.get("/debt", summary="Revocation debt (an owner: their targets')")
def revocation_debt(
    who: OwnReader,
    workspace: Space,
    by: str | None = Query(None, description="Group totals: class, target or owner."),
    identity: str | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    if by is not None and by not in GROUPINGS:
        raise Problem(422, f"by: use one of {', '.join(GROUPINGS)}")
    if who.reach(Permission.READ) is not Reach.ALL and (target is None or not who.owns(target)):
        owned = ", ".join(sorted(who.targets)) or "none"
        raise Problem(403, f"a target owner asks for one of their targets ({owned})")
    found = debt.ledger(workspace, datetime.now(UTC), identity=identity, target=target)
    return found.as_dict(by)


@router.get("/coverage", summary="Every target: what can and cannot be verified")
def coverage_map(who: Reader, workspace: Space) -> list[dict[str, Any]]:
    return [c.as_dict() for c in coverage(workspace)]


class LeaverRequest(BaseModel):
    identity: str = Field(min_length=1, max_length=128)


@router.post("/evidence/leavers", status_code=202, summary="Verify a leaver in the background")
def verify_leaver(
    body: LeaverRequest, who: EvidenceReader, workspace: Space, request: Request
) -> dict[str, Any]:
    with acting(who), workspace.sessions() as session, session.begin():
        job = jobs.enqueue(
            session,
            "verify-leaver",
            {"identity": body.identity},
            by=who.name,
            now=datetime.now(UTC),
        )
        answer = {"job": job.id, "status": job.status, "href": f"/api/v1/jobs/{job.id}"}
    request.app.state.wake.set()
    return answer


@router.get("/evidence/bundles", summary="Leaver evidence bundles, newest first")
def bundles(who: EvidenceReader, workspace: Space) -> list[dict[str, Any]]:
    return list_bundles(workspace)


@router.get(
    "/evidence/bundles/{name}",
    summary="Download one evidence bundle (JSON or HTML)",
    response_class=FileResponse,
)
def bundle(name: str, who: EvidenceReader, workspace: Space) -> FileResponse:
    path = bundle_path(workspace, name)
    kind = "application/json" if path.suffix == ".json" else "text/html"
    return FileResponse(path, media_type=kind, filename=path.name)


@router.get("/audit/verify", summary="Verify the audit chain against its signed checkpoints")
def audit_verify(who: EvidenceReader, workspace: Space) -> dict[str, Any]:
    return verify_log(workspace).as_dict()


@router.get(
    "/audit/export",
    summary="Export the audit log (JSON Lines or CSV)",
    response_class=StreamingResponse,
)
def audit_export(
    who: EvidenceReader,
    workspace: Space,
    since: datetime | None = None,
    until: datetime | None = None,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    start = instant(since, "since", workspace)
    end = instant(until, "until", workspace)

    def lines() -> Iterator[str]:
        with workspace.sessions() as session:
            yield from audit.export(session, since=start, until=end, fmt=format)

    kind = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(lines(), media_type=kind)


@router.get(
    "/metrics",
    summary="Metrics for Prometheus (text format; the metrics scope)",
    response_class=Response,
)
def metrics(request: Request, who: Monitor) -> Response:
    """Debt by target and class, the journal's queue, operations and reconciliations timed,
    leavers' time to verified: counts only, never a name."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE)
