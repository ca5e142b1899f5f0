"""Errors as JSON problem details (RFC 9457), and SCIM errors (RFC 7644 §3.12) under /scim.

Does: map every Provisor error class to an HTTP status and a problem document (type, title,
status, detail), request validation errors to 422 with each field named, HTTP errors to their
status, and anything unexpected to a 500 that names a reference logged with the trace —
never the trace itself; everything said is redacted of credentials.
Does not: decide when an error happens (the engine raises, the routes let it through).
"""

from __future__ import annotations

import html
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException

from provisor.errors import (
    ConfigError,
    CredentialsError,
    DeniedError,
    FeedError,
    LifecycleError,
    NotFoundError,
    PolicyError,
    ProvisorError,
    WorkspaceError,
)
from provisor.redaction import redact, redact_data

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Provisor: {status}</title>'
    '<link rel="stylesheet" href="/console/static/console.css"></head><body><main>'
    '<h1>{status}</h1><p class="problem">{detail}</p><p><a href="/console/">Back</a></p>'
    "</main></body></html>"
)
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"

# the most specific class first
STATUSES: list[tuple[type[ProvisorError], int, str]] = [
    (CredentialsError, 401, "not signed in"),
    (DeniedError, 403, "not allowed"),
    (NotFoundError, 404, "not found"),
    (LifecycleError, 409, "refused in the current state"),
    (FeedError, 422, "the feed is refused"),
    (ConfigError, 422, "invalid settings"),
    (PolicyError, 422, "invalid policy"),
    (WorkspaceError, 503, "the workspace is not ready"),
]


class Problem(Exception):
    """An error a route raises with its own status (and, for /scim, its scimType)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        scim_type: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.title = status, detail, title
        self.scim_type, self.headers, self.extra = scim_type, headers or {}, extra or {}


def status_of(exc: ProvisorError) -> tuple[int, str]:
    for cls, status, title in STATUSES:
        if isinstance(exc, cls):
            return status, title
    return 400, "refused"


def respond(request: Request, problem: Problem) -> Response:
    """The problem as the client expects it: a SCIM error under /scim, a page in the console,
    else RFC 9457."""
    detail = redact(problem.detail)
    headers = dict(problem.headers)
    if request.url.path.startswith("/console/"):
        page = _PAGE.format(status=problem.status, detail=html.escape(detail))
        return HTMLResponse(page, problem.status, headers=headers)
    if problem.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="provisor"')
    if request.url.path.startswith("/scim/"):
        body: dict[str, Any] = {
            "schemas": [SCIM_ERROR],
            "status": str(problem.status),
            "detail": detail,
        }
        if problem.scim_type:
            body["scimType"] = problem.scim_type
        return JSONResponse(
            body, problem.status, headers=headers, media_type="application/scim+json"
        )
    body = {
        "type": "about:blank",
        "title": problem.title or "error",
        "status": problem.status,
        "detail": detail,
        "instance": request.url.path,
        **redact_data(problem.extra),
    }
    return JSONResponse(body, problem.status, headers=headers, media_type=PROBLEM)


def install(app: FastAPI) -> None:
    """Answer every error raised in ``app`` as a problem document."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return respond(request, exc)

    @app.exception_handler(ProvisorError)
    async def _provisor(request: Request, exc: ProvisorError) -> Response:
        status, title = status_of(exc)
        return respond(request, Problem(status, str(exc), title=title))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['problem']}" for e in errors) or "invalid request"
        problem = Problem(
            422, detail, title="invalid request", scim_type="invalidValue", extra={"errors": errors}
        )
        if request.url.path.startswith("/scim/"):
            problem.status = 400
        return respond(request, problem)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        headers = dict(exc.headers or {})
        return respond(request, Problem(exc.status_code, str(exc.detail), headers=headers))

    @app.exception_handler(OperationalError)
    async def _busy(request: Request, exc: OperationalError) -> Response:
        log.warning("database busy on %s: %s", request.url.path, redact(str(exc).splitlines()[0]))
        problem = Problem(503, "the database is busy; try again", headers={"Retry-After": "1"})
        return respond(request, problem)

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> Response:
        return _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> Response:
        return _unexpected(request, exc)


def _unexpected(request: Request, exc: Exception) -> Response:
    reference = uuid.uuid4().hex[:12]
    log.error("unexpected error %s on %s", reference, request.url.path, exc_info=exc)
    detail = f"an unexpected error; the service log names it {reference}"
    return respond(request, Problem(500, detail, title="internal error"))
