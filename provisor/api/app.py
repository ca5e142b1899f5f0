"""The service application: the REST API and the inbound SCIM server on one workspace, with
the background runner beside them.

Does: build the FastAPI application (``create_app``) over an open workspace — routes,
problem-details errors, the in-flight limit, per-token rates — with the OpenAPI document at
``/openapi.json`` behind sign-in like every other route; run the engine's cycle (tick, queued
jobs, reconciliations due, plan, apply) in a background thread for the application's
lifetime, woken early when a request queues work, and stopped cleanly on shutdown — or, when
``provisor worker`` processes run the journal (``runner.workers``), put a cycle in their job
queue whenever a request records a change.
Does not: listen on a socket (``provisor.api.server``) or hold any rule.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

from fastapi import FastAPI

from provisor.api import console, oidc, problems
from provisor.api.routes import identities, journal, people, reports, what_if, work
from provisor.api.scim import ScimApplication
from provisor.api.security import Anyone, Buckets, InFlight, Tokens
from provisor.engine import jobs
from provisor.engine.cycle import CycleReport, Cycles
from provisor.engine.debt_board import DebtBoard
from provisor.engine.intake import Intake
from provisor.engine.metrics import registry_for
from provisor.engine.runner.dispatch import Wake
from provisor.engine.workspace import Workspace

log = logging.getLogger(__name__)

ROUTERS = (people, oidc, identities, journal, work, reports, what_if)


class LocalWake(threading.Event):
    """The in-process runner's wake-up (``set``); ``hurry`` (a change that ends someone's
    access now) is the same: that runner puts removals first by itself. ``warn`` (such a
    change is about to be recorded) does nothing: no other work runs beside that runner."""

    def hurry(self) -> None:
        self.set()

    def warn(self) -> None:
        pass


class Background:
    """The engine's cycle in a thread: started with the application, stopped with it."""

    def __init__(self, workspace: Workspace, interval: float) -> None:
        self.workspace, self.interval = workspace, interval
        self.stop, self.wake = threading.Event(), LocalWake()
        self.thread: threading.Thread | None = None
        self.cycles = 0

    def start(self) -> None:
        with self.workspace.sessions() as session, session.begin():
            jobs.recover(session, _now())
        self.thread = threading.Thread(target=self._run, name="provisor-runner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        """Cycle until stopped; an unexpected error (a bug, a library's surprise) is logged
        and the cycles start again after an interval: the service never stops running work
        while it answers requests."""
        while not self.stop.is_set():
            cycles = Cycles(self.workspace)
            try:
                cycles.run(
                    interval=self.interval,
                    once=False,
                    on_cycle=self._done,
                    on_failure=lambda at, exc: log.warning("cycle at %s failed: %s", at, exc),
                    stop=self.stop,
                    wake=self.wake,
                )
            except Exception:
                log.exception("the background runner failed; it starts again")
                self.stop.wait(self.interval)
            finally:
                cycles.close()

    def _done(self, report: CycleReport) -> None:
        self.cycles += 1
        log.info("cycle: %s", report.as_dict())

    def close(self, timeout: float = 30) -> None:
        self.stop.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)


def _now() -> datetime:
    return datetime.now(UTC)


def create_app(workspace: Workspace, *, runner: bool = True) -> FastAPI:
    """The service over ``workspace``; with ``runner``, the background cycle runs beside it,
    unless workers run the journal (``runner.workers``): then a change recorded puts a cycle
    in their job queue."""
    settings = workspace.config.service
    handed = runner and workspace.config.runner.workers
    background = Background(workspace, settings.cycle_seconds) if runner and not handed else None
    wake: Wake | LocalWake = Wake(workspace) if handed else LocalWake()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.intake = Intake(workspace)
        app.state.debt_board.prime()
        if background is not None:
            background.start()
        try:
            yield
        finally:
            if background is not None:
                background.close()
            app.state.intake.close()
            app.state.debt_board.close()
            if isinstance(wake, Wake):
                wake.close()
            scim.source.close()

    app = FastAPI(
        title="Provisor",
        summary="Identity lifecycle engine: REST API and inbound SCIM 2.0",
        version="1",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.workspace = workspace
    app.state.buckets = Buckets(settings.rate_per_token)
    app.state.tokens = Tokens(workspace)
    # ten password guesses for a name at once, then one every six seconds
    app.state.sign_ins = Buckets(rate=1 / 6, burst=10)
    app.state.oidc = oidc.Provider(settings.oidc) if settings.oidc is not None else None
    app.state.wake = background.wake if background is not None else wake
    app.state.background = background
    app.state.debt_board = DebtBoard(workspace)
    app.state.metrics = registry_for(workspace, app.state.debt_board)
    problems.install(app)
    for module in ROUTERS:
        app.include_router(module.router)

    console.install(app)
    scim = ScimApplication(workspace, app.state.buckets, app.state.tokens, app.state.wake)
    app.mount("/scim", cast(Any, scim))

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(who: Anyone) -> dict[str, Any]:
        return app.openapi()

    app.add_middleware(InFlight, limit=settings.max_in_flight)
    return app
