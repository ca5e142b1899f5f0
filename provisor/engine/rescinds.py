"""Exact rescind: what a leaver held when their termination took effect, and giving that back.

Does: record, when a termination is first planned within the rescind window, what the person
held just before it took effect (``desired.held_then``: each account and entitlement with its
reasons and until when its grant counts), with an audit entry; find, for people whose
termination was rescinded, that record while its give-back is in force — from the rescind for
``lifecycle.rescind_restore_days``, ending early at the person's next change — so that desired
access gives back exactly that (``desired_access(..., held=...)``); and name the identities
whose desired access needs their history for it.
Does not: compute access (``provisor.domain.desired``), plan operations (``planner``), or
decide whether a rescind is allowed (``provisor.domain.lifecycle``). What a person held is
worked out under the policy in force when the termination is first planned: in the service,
the moment it takes effect.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.domain.desired import held_then
from provisor.domain.held import Held, held_from_json
from provisor.domain.lifecycle import (
    EventKind,
    IdentityState,
    LifecycleEvent,
    LifecycleState,
    fold,
    utc,
)
from provisor.engine.identities import load_history, window
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import chunks

_NO_RESTORE = frozenset({None, LifecycleState.PRE_HIRE, LifecycleState.TERMINATED})


def record_held(
    workspace: Workspace, session: Session, ids: Collection[str] | None, now: datetime
) -> list[audit.Entry]:
    """Record what each of ``ids`` (everyone when None) terminated within the rescind window
    held when that termination took effect, once per termination; the audit entries of it."""
    config = workspace.config
    if not config.lifecycle.rescind_restore_days:
        return []
    i, h = models.Identity, models.HeldAtTermination
    query = select(i.external_id, i.terminated_at).where(
        i.state == LifecycleState.TERMINATED.value,
        i.terminated_at > now - window(config),
        i.terminated_at <= now,
    )
    wanted = None if ids is None else set(ids)
    leavers = {
        who: utc(at)
        for who, at in session.execute(query)
        if at is not None and (wanted is None or who in wanted)
    }
    recorded: set[tuple[str, datetime]] = set()  # by when the termination took effect
    keys: set[tuple[str, str]] = set()  # and by its key
    for part in chunks(sorted(leavers)):
        kept = select(h.identity, h.terminated_at, h.termination).where(h.identity.in_(part))
        for who, at, key in session.execute(kept):
            recorded.add((who, utc(at)))
            keys.add((who, key))
    todo = sorted(who for who, at in leavers.items() if (who, at) not in recorded)
    history = load_history(session, todo) if todo else {}
    entries: list[audit.Entry] = []
    for who in todo:
        held = _held(workspace, who, history.get(who, []), leavers[who], now)
        if held is None or (who, held.termination) in keys:
            continue
        session.add(
            models.HeldAtTermination(
                identity=who,
                termination=held.termination,
                terminated_at=held.terminated_at,
                recorded_at=now,
                grants=held.as_json(),
            )
        )
        data = {
            "termination": held.termination,
            "terminated_at": held.terminated_at.isoformat(),
            "held": sorted(f"{t}:{e}" if e else t for t, e in held.items()),
        }
        entries.append(audit.Entry("identity.held_at_termination", who, data))
    return entries


def _held(
    workspace: Workspace, who: str, events: list[LifecycleEvent], at: datetime, now: datetime
) -> Held | None:
    """What ``who`` held just before the termination in force that took effect ``at``."""
    rescind = window(workspace.config)
    state = fold(who, events, as_of=now, rescind_window=rescind)
    ended = [
        e.event
        for e in state.timeline
        if e.applied and e.event.kind is EventKind.TERMINATE and e.event.effective == at
    ]
    if not ended:
        return None
    termination = ended[-1]
    before = fold(
        who, events, as_of=termination.effective - timedelta(microseconds=1), rescind_window=rescind
    )
    return held_then(workspace.compiled, before, termination.key, termination.effective)


def held_for(
    workspace: Workspace, session: Session, states: Mapping[str, IdentityState]
) -> dict[str, Held]:
    """The record of what was held at a rescinded termination, for each of ``states`` whose
    give-back is in force at its ``as_of`` (with ``Held.until``: when it ends)."""
    days = workspace.config.lifecycle.rescind_restore_days
    if not days:
        return {}
    wanted: dict[str, tuple[str, datetime]] = {}
    for who, state in states.items():
        rescinded = state.rescinded
        if rescinded is None or state.state in _NO_RESTORE:
            continue
        until = rescinded.at + timedelta(days=days)
        if rescinded.changed_at is not None:
            until = min(until, rescinded.changed_at)
        if until > state.as_of:
            wanted[who] = (rescinded.termination, until)
    found: dict[str, Held] = {}
    h = models.HeldAtTermination
    for part in chunks(sorted(wanted)):
        for row in session.execute(select(h).where(h.identity.in_(part))).scalars():
            termination, until = wanted[row.identity]
            if row.termination == termination:
                held = held_from_json(row.termination, row.terminated_at, row.grants)
                found[row.identity] = replace(held, until=until)
    return found


def restoring(workspace: Workspace, session: Session, now: datetime) -> set[str]:
    """Identities that may be getting back what a rescinded termination took: their desired
    access needs their history (``planner.needs_timeline``)."""
    config = workspace.config
    days = config.lifecycle.rescind_restore_days
    if not days:
        return set()
    i, h = models.Identity, models.HeldAtTermination
    query = (
        select(h.identity)
        .join(i, i.external_id == h.identity)
        .where(
            h.terminated_at > now - window(config) - timedelta(days=days),
            i.state != LifecycleState.TERMINATED.value,
        )
    )
    return set(session.execute(query.distinct()).scalars())
