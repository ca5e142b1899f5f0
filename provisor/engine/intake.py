"""Lifecycle events arriving one by one from many callers (the REST API), recorded together.

Does: take single events from any number of threads and record them through the identity
service in batches — one writer thread drains what has queued up (grouped by the person
acting), records each group in one transaction with ``record_events`` (strictly: an event with
no effect is refused), and answers each caller with its own event's outcome: accepted or held
(with its hold), a duplicate, or the error that refuses it. When a batch is refused as a
whole, its events are recorded one by one so that only the refused one fails. The mass-change
guard counts the leavers and suspensions posted through the API within ``guard.window_minutes``
with each batch, as it does for inbound SCIM: a wave of single requests is judged as one, and
a hold still open takes the rest of the wave.
Does not: validate requests (callers do), or rescind (a rescind naming no termination needs the
latest one looked up first; ``provisor.engine.views.record_event`` records those singly).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from provisor.domain.lifecycle import ORPHAN_PREFIX, EventKind, LifecycleEvent
from provisor.engine import holds, identities
from provisor.engine.workspace import Workspace
from provisor.engine.writer import drain
from provisor.errors import LifecycleError
from provisor.evidence import audit
from provisor.store import models

log = logging.getLogger(__name__)

# the most events one transaction takes
BATCH = 500


@dataclass
class _Asked:
    event: LifecycleEvent
    actor: str
    answer: Future[dict[str, Any]] = field(default_factory=Future)


class Intake:
    """One writer thread recording the events submitted to it, in batches."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._queue: queue.Queue[_Asked | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="provisor-intake", daemon=True)
        self._thread.start()

    def submit(
        self,
        identity: str,
        kind: EventKind,
        *,
        effective: datetime,
        changes: dict[str, Any],
        source: str,
        actor: str,
        local: str | None = None,
    ) -> Future[dict[str, Any]]:
        """Queue one event (``local``: the local time ``effective`` was given as); the future
        answers with its outcome or raises its refusal."""
        if identity.startswith(ORPHAN_PREFIX):
            raise LifecycleError(
                f"{identity!r}: ids starting {ORPHAN_PREFIX!r} name accounts linked to no identity"
            )
        if kind is EventKind.RESCIND:
            raise LifecycleError("a rescind is recorded on its own (views.record_event)")
        now = datetime.now(UTC)
        event = LifecycleEvent(identity, kind, effective, now, changes, None, source, local=local)
        asked = _Asked(event, actor)
        self._queue.put(asked)
        return asked.answer

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _work(self) -> None:
        while (batch := drain(self._queue, BATCH)) is not None:
            by_actor: dict[str, list[_Asked]] = {}
            for asked in batch:
                by_actor.setdefault(asked.actor, []).append(asked)
            for actor, group in by_actor.items():
                self._record(actor, group)

    def _record(self, actor: str, group: list[_Asked]) -> None:
        try:
            with audit.acting_as(actor):
                answers = self._together(group)
        except LifecycleError:
            if len(group) == 1:
                self._one(actor, group[0])
                return
            for asked in group:  # only the refused one fails
                self._one(actor, asked)
            return
        except Exception as exc:  # answered to every caller; the writer keeps going
            log.warning("recording %d events failed: %s", len(group), exc)
            for asked in group:
                asked.answer.set_exception(exc)
            return
        for asked, answer in zip(group, answers, strict=True):
            asked.answer.set_result(answer)

    def _one(self, actor: str, asked: _Asked) -> None:
        try:
            with audit.acting_as(actor):
                answer = self._together([asked])[0]
        except Exception as exc:  # the caller's refusal, or the database's
            asked.answer.set_exception(exc)
        else:
            asked.answer.set_result(answer)

    def _together(self, group: Sequence[_Asked]) -> list[dict[str, Any]]:
        events = [a.event for a in group]
        now = datetime.now(UTC)
        with self.workspace.sessions() as session, session.begin():
            before = set(
                session.execute(
                    select(models.IdentityEvent.key).where(
                        models.IdentityEvent.key.in_([e.key for e in events])
                    )
                ).scalars()
            )
            window = self.workspace.config.guard.window_minutes
            outcome = identities.record_events(
                session,
                self.workspace.config,
                events,
                origin="api",
                now=now,
                strict=True,
                recent=lambda: holds.recent(session, "api:", window, now),
            )
            stored = {
                key: (status, hold)
                for key, status, hold in session.execute(
                    select(
                        models.IdentityEvent.key,
                        models.IdentityEvent.status,
                        models.IdentityEvent.hold_id,
                    ).where(models.IdentityEvent.key.in_([e.key for e in events]))
                )
            }
            states = {
                identity: state
                for identity, state in session.execute(
                    select(models.Identity.external_id, models.Identity.state).where(
                        models.Identity.external_id.in_({e.identity for e in events})
                    )
                )
            }
        return [
            {
                "event": e.key,
                "identity": e.identity,
                "kind": e.kind.value,
                "effective": e.effective.isoformat(),
                "state": states.get(e.identity),
                "status": stored.get(e.key, ("refused", None))[0],
                "hold": stored.get(e.key, (None, None))[1],
                "hold_reason": outcome.hold_reason if stored.get(e.key, (None, None))[1] else None,
                "duplicate": e.key in before,
                "warnings": [w for w in outcome.warnings if w.startswith(f"{e.identity}:")],
            }
            for e in events
        ]
