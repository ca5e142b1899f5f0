"""Who is calling, and whether they may: bearer tokens, permissions per route, rate limits.

Does: read the bearer token of a request, sign its operator in through the engine (a token
that is unknown, revoked, expired or whose operator is disabled gets 401, never saying which),
refuse a route whose permission the operator's roles and the token's scopes do not grant
(403), and hold each token to a request rate and the whole service to a number of requests in
flight (429 with Retry-After beyond either). Every route declares its permission with
``allow(...)``, so a test can enumerate them.
Does not: decide what a permission allows (``provisor.domain.roles``) or store tokens
(``provisor.engine.operators``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi import Path as FastPath
from starlette.requests import Request as PlainRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from provisor.api.problems import Problem, respond
from provisor.domain import days
from provisor.domain.lifecycle import utc
from provisor.domain.roles import Permission, Reach
from provisor.engine import operators, zones
from provisor.engine.operators import Principal
from provisor.engine.workspace import Workspace
from provisor.errors import DeniedError
from provisor.evidence import audit


class Buckets:
    """A token bucket per key: ``rate`` a second, bursts of twice as many."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate, self.burst = rate, burst if burst is not None else max(1.0, 2 * rate)
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when a request may go now, else the seconds until one may."""
        with self._lock:
            now = time.monotonic()
            level, last = self._state.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level >= 1:
                self._state[key] = (level - 1, now)
                if len(self._state) > 10_000:  # forget idle keys now and then
                    self._state = {k: v for k, v in self._state.items() if now - v[1] < 60}
                return 0.0
            self._state[key] = (level, now)
            return (1 - level) / self.rate


def too_many(seconds: float, why: str) -> Problem:
    wait = str(max(1, math.ceil(seconds)))
    return Problem(429, why, title="too many requests", headers={"Retry-After": wait})


class InFlight:
    """ASGI middleware: at most ``limit`` requests in flight; beyond, 429 with Retry-After."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.count = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.count >= self.limit:
            why = f"more than {self.limit} requests in flight; try again shortly"
            response = respond(PlainRequest(scope), too_many(1, why))
            await response(scope, receive, send)
            return
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


async def workspace_of(request: Request) -> Workspace:
    # async: no I/O here, so no hop to a worker thread
    found: Workspace = request.app.state.workspace
    return found


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Problem(401, "sign in: send 'Authorization: Bearer TOKEN'", title="not signed in")
    return value.strip()


class Tokens:
    """Tokens signed in within the last ``ttl`` seconds, so a busy client is not looked up on
    every request. Revoking a token, signing out or changing an operator through this service
    forgets them all at once; a token revoked from the command line while the service runs
    stops working here within ``ttl``."""

    def __init__(self, workspace: Workspace, ttl: float = 1.0) -> None:
        self.workspace, self.ttl = workspace, ttl
        self._seen: dict[str, tuple[float, Principal]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def sign_in(self, secret: str, digest: str) -> Principal:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(digest)
            generation = self._generation
        if seen is not None and now - seen[0] < self.ttl:
            return seen[1]
        with self.workspace.sessions() as session, session.begin():
            who = operators.authenticate(session, secret, datetime.now(UTC))
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            if generation == self._generation:  # not read before a revocation it missed
                self._seen[digest] = (now, who)
        return who

    def forget(self) -> None:
        with self._lock:
            self._seen.clear()
            self._generation += 1


def signed_in(request: Request) -> Principal:
    """The operator the request's token signs in (checked against the token's rate)."""
    secret = _bearer(request)
    digest = operators.digest(secret)
    wait = request.app.state.buckets.take(digest)
    if wait:
        raise too_many(wait, "this token exceeds its request rate; slow down")
    tokens: Tokens = request.app.state.tokens
    return tokens.sign_in(secret, digest)


def allow(permission: Permission, *, own: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the signed-in operator, when ``permission`` reaches everything for them —
    or, with ``own`` (a route that narrows itself to the operator's targets), anything."""

    async def dependency(who: Annotated[Principal, Depends(signed_in)]) -> Principal:
        if who.require(permission) is not Reach.ALL and not own:
            raise DeniedError(f"{who.name} may {permission.value} only for their own targets")
        return who

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the route test
    dependency.own = own  # type: ignore[attr-defined]
    return dependency


def permission_of(call: Callable[..., Any]) -> Permission | None:
    """The permission a dependency made by ``allow`` checks (None for any other)."""
    found = getattr(call, "permission", None)
    return found if isinstance(found, Permission) else None


@contextmanager
def acting(who: Principal) -> Iterator[None]:
    """Everything the engine audits inside the block names ``who``."""
    with audit.acting_as(who.name):
        yield


def instant(
    value: datetime | None, field: str, workspace: Workspace | None = None
) -> datetime | None:
    """A date-time given by a client, in UTC (without an offset: a wall-clock time in the
    workspace's zone when ``workspace`` is given, else UTC), or a 422 naming the field when
    it cannot be one (beyond the year 9999 once in UTC)."""
    if value is None:
        return None
    try:
        if value.tzinfo is None and workspace is not None:
            return zones.workspace_instant(workspace.config, value)
        return utc(value)
    except (OverflowError, ValueError):
        raise Problem(422, f"{field}: {value} is out of range", title="invalid request") from None


def workspace_when(workspace: Workspace, value: str | None, field: str) -> datetime | None:
    """A date or date-time a client gives for the workspace as a whole (``as_of``): a date is
    the start of that day in the workspace's zone (``zones.workspace_instant``)."""
    if value is None:
        return None
    typed = typed_when(value, field)
    try:
        return zones.workspace_instant(workspace.config, typed)
    except (OverflowError, ValueError):
        raise Problem(422, f"{field}: {value} is out of range", title="invalid request") from None


def typed_when(value: str, field: str) -> date | datetime:
    """A date or date-time as a client typed it (placed in time by ``engine.zones``), or a
    422 naming the field."""
    try:
        typed = days.parse_value(value)
        if isinstance(typed, datetime) and typed.tzinfo is not None:
            typed.astimezone(UTC)  # beyond the year 9999 once in UTC
    except days.TimeError as exc:
        raise Problem(422, f"{field}: {exc}", title="invalid request") from None
    except (OverflowError, ValueError):
        raise Problem(422, f"{field}: {value} is out of range", title="invalid request") from None
    return typed


# a row number in a path, and how far a listing may skip: within what the database's integers
# hold (a larger one is a 422, never a database error)
RowId = Annotated[int, FastPath(ge=1, le=2**53)]
Offset = Annotated[int, Query(ge=0, le=2**53)]

Reader = Annotated[Principal, Depends(allow(Permission.READ))]
# a listing that shows a target owner their own targets' rows
OwnReader = Annotated[Principal, Depends(allow(Permission.READ, own=True))]
EventWriter = Annotated[Principal, Depends(allow(Permission.EVENTS))]
Operator = Annotated[Principal, Depends(allow(Permission.OPERATE))]
Approver = Annotated[Principal, Depends(allow(Permission.APPROVE))]
TaskWorker = Annotated[Principal, Depends(allow(Permission.TASKS, own=True))]
CaseDecider = Annotated[Principal, Depends(allow(Permission.CASES, own=True))]
Marker = Annotated[Principal, Depends(allow(Permission.MARKS))]
EvidenceReader = Annotated[Principal, Depends(allow(Permission.EVIDENCE))]
ScimClient = Annotated[Principal, Depends(allow(Permission.SCIM))]
Monitor = Annotated[Principal, Depends(allow(Permission.METRICS))]
Admin = Annotated[Principal, Depends(allow(Permission.ADMIN))]
Anyone = Annotated[Principal, Depends(signed_in)]
Space = Annotated[Workspace, Depends(workspace_of)]
