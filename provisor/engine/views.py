"""Read-side views of identities that the CLI and the API present the same way.

Does: list identities with filters, show one identity's state, attributes and timeline on any
date as known on any date, explain what an identity should hold and why, and record one event
typed by a person, show a target's accounts by class with its latest reconciliations and read
paths — each as plain data (dicts of JSON-ready values).
Does not: print, fold lifecycle history itself (``provisor.domain.lifecycle``), or compute
desired access (``provisor.domain.desired``); this module only asks them and shapes the answer.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from provisor.domain import days
from provisor.domain.desired import desired_access, explain
from provisor.domain.lifecycle import ORPHAN_PREFIX, EventKind, LifecycleEvent, utc
from provisor.engine import identities, names, readpaths, rescinds, zones
from provisor.engine.reconcile import list_runs
from provisor.engine.workspace import Workspace
from provisor.errors import LifecycleError, NotFoundError
from provisor.store import models


def record_event(
    workspace: Workspace,
    identity: str,
    kind: EventKind,
    *,
    effective: date | datetime | None,
    changes: dict[str, Any],
    ref: str | None,
    source: str,
    now: datetime,
) -> dict[str, Any]:
    """Record one event typed by a person (strictly: an event with no effect is refused);
    ``effective`` as typed (``zones.place``), None for now."""
    if identity.startswith(ORPHAN_PREFIX):
        raise LifecycleError(
            f"{identity!r}: ids starting {ORPHAN_PREFIX!r} name accounts linked to no identity"
        )
    with workspace.sessions() as session, session.begin():
        if kind is EventKind.RESCIND and ref is None:
            ref = identities.latest_termination_key(session, identity)
            if ref is None:
                raise LifecycleError(f"{identity}: has no termination to rescind")
        placed = zones.place(session, workspace.config, identity, kind, effective or now, changes)
        new = LifecycleEvent(
            identity, kind, placed.at, now, changes, ref, source, local=placed.local
        )
        outcome = identities.record_events(
            session, workspace.config, [new], origin="event", now=now, strict=True
        )
        state = session.execute(
            select(models.Identity.state).where(models.Identity.external_id == identity)
        ).scalar_one_or_none()
    return {
        "event": new.key,
        "identity": identity,
        "kind": kind.value,
        "effective": placed.at.isoformat(),
        "effective_local": placed.local,
        "effective_shown": str(placed),
        "state": state,
        **outcome.as_dict(),
    }


def place_event(
    workspace: Workspace,
    identity: str,
    kind: EventKind,
    effective: date | datetime,
    changes: dict[str, Any],
) -> days.Placed:
    """When an event typed for ``identity`` takes effect (``zones.place``)."""
    with workspace.sessions() as session:
        return zones.place(session, workspace.config, identity, kind, effective, changes)


def list_identities(
    workspace: Workspace,
    *,
    state: str | None = None,
    department: str | None = None,
    kind: str | None = None,
    limit: int = 0,
    search: str | None = None,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Identities by id with their state (``limit`` of them from ``offset``, 0: all) and how
    many match; ``search``: those whose id, name or e-mail starts with it."""
    with workspace.sessions() as session:
        query = select(models.Identity).order_by(models.Identity.external_id)
        if state:
            query = query.where(models.Identity.state == state)
        if kind:
            query = query.where(models.Identity.kind == kind)
        if search:
            start = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(
                    models.Identity.external_id.like(start, escape="\\"),
                    models.Identity.name.like(start, escape="\\"),
                    models.Identity.email.like(start, escape="\\"),
                )
            )
        total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        if limit and not department:  # a page read as a page (the department filters below)
            query = query.limit(limit).offset(offset)
        rows = [
            {
                "id": r.external_id,
                "name": r.name,
                "kind": r.kind,
                "state": r.state,
                "department": (r.attributes or {}).get("department"),
                "email": r.email,
                "owner": r.owner,
                "flags": r.flags,
                "next_change": r.next_change_at.isoformat() if r.next_change_at else None,
            }
            for r in session.execute(query).scalars()
            if not department or (r.attributes or {}).get("department") == department
        ]
    if department:
        total = len(rows)  # the department lives in the attributes, filtered here
        rows = rows[offset : offset + limit] if limit else rows[offset:]
    return rows, total


def _as_stored(session: Session, identity: str, now: datetime) -> datetime:
    """``now``, or the later moment the identity's stored state was brought up to (a command
    run with ``--now`` in the future): what ``identities list`` and ``plan`` see, shown alike."""
    materialized = session.execute(
        select(models.Identity.materialized_at).where(models.Identity.external_id == identity)
    ).scalar_one_or_none()
    return max(now, utc(materialized)) if materialized is not None else now


def show_identity(
    workspace: Workspace,
    identity: str,
    *,
    as_of: datetime | None,
    known_at: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """One identity's state, attributes, flags and timeline as of ``as_of`` (default: now, or
    the later moment its stored state was brought up to), as known at ``known_at`` (default:
    everything recorded)."""
    with workspace.sessions() as session:
        as_of = as_of or _as_stored(session, identity, now)
        state = identities.identity_state(
            session, workspace.config, identity, as_of=as_of, known_at=known_at
        )
        flags = session.execute(
            select(models.Identity.flags).where(models.Identity.external_id == identity)
        ).scalar_one()
        made = names.values(session, workspace.compiled.policy, [identity]).get(identity, {})
    timeline: list[dict[str, Any]] = [
        {
            "effective": t.event.effective.isoformat(),
            "recorded": t.event.recorded.isoformat(),
            "event": t.event.kind.value,
            "applied": t.applied,
            "state": t.state_after.value if t.state_after else None,
            "changes": {k: list(v) for k, v in t.changes.items()},
            "note": t.note,
            "source": t.event.source,
            "key": t.event.key,
            "local": t.event.local,  # the local time it was given as, when it was
        }
        for t in state.timeline
    ]
    return {
        "id": identity,
        "zone": workspace.config.time.zones().of(state.attributes).key,
        "state": state.state.value if state.state else None,
        "as_of": as_of.isoformat(),
        "known_at": known_at.isoformat() if known_at else None,
        "attributes": dict(state.attributes),
        "generated": made,  # values made for it (``policy.generated``): user names
        "flags": flags,
        "employment_start": state.employment_start,
        "terminated_at": state.terminated_at,
        "next_change": state.next_change,
        "timeline": timeline,
    }


def explain_identity(
    workspace: Workspace,
    identity: str,
    item: str | None,
    *,
    now: datetime,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Why ``identity`` has (or lacks) ``item`` (``TARGET`` or ``TARGET:ENTITLEMENT``); without
    an item, everything it should hold and why — as of ``as_of`` when given, else ``now`` or
    the later moment its stored state was brought up to."""
    compiled = workspace.compiled
    with workspace.sessions() as session:
        as_of = as_of or _as_stored(session, identity, now)
        state = identities.identity_state(session, workspace.config, identity, as_of=as_of)
        held = rescinds.held_for(workspace, session, {identity: state}).get(identity)
    if item is None:
        desired = desired_access(compiled, state, held=held)
        return {
            "identity": identity,
            "state": state.state.value if state.state else None,
            "note": desired.note,
            "targets": {
                name: {
                    "enabled": a.enabled,
                    "note": a.note,
                    "account": [str(r) for r in a.account_reasons],
                    "entitlements": {e: [str(r) for r in rs] for e, rs in a.entitlements.items()},
                    "withheld": a.withheld,
                }
                for name, a in sorted(desired.targets.items())
            },
            "sod": [
                {
                    "constraint": v.constraint,
                    "entitlements": list(v.entitlements),
                    "allowed_by": v.allowed_by,
                }
                for v in desired.sod
            ],
            "restored": desired.restored.as_json() if desired.restored else None,
        }
    target, _, entitlement = item.partition(":")
    if target not in compiled.targets:
        raise NotFoundError(f"no target {target!r}; targets: {', '.join(compiled.targets)}")
    answer = explain(compiled, state, target, entitlement or None, held)
    return {
        "identity": identity,
        "target": target,
        "entitlement": answer.entitlement,
        "granted": answer.granted,
        "enabled": answer.enabled,
        "reasons": list(answer.reasons),
        "why_not": list(answer.why_not),
    }


def target_accounts(
    workspace: Workspace,
    target: str,
    *,
    classification: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """One target as reconciliation last saw it: accounts by class (a page of them, of one
    class when given), its latest runs, and what probes showed about each way of reading it."""
    if target not in workspace.compiled.targets:
        names = ", ".join(workspace.compiled.targets) or "none"
        raise NotFoundError(f"no target {target!r}; targets: {names}")
    account = models.ObservedAccount
    with workspace.sessions() as session:
        counts = {
            str(found or "not classified"): int(n)
            for found, n in session.execute(
                select(account.classification, func.count())
                .where(account.target == target)
                .group_by(account.classification)
            )
        }
        query = select(account).where(account.target == target).order_by(account.account)
        if classification:
            query = query.where(account.classification == classification)
        page = [
            {
                "account": a.account,
                "identity": a.identity,
                "enabled": a.enabled,
                "class": a.classification,
                "why": a.classified_detail,
                "observed_at": a.observed_at.isoformat(),
                "source": a.source,
            }
            for a in session.execute(query.limit(limit).offset(offset)).scalars()
        ]
        runs = list_runs(session, target=target, limit=5)
    paths = [p.as_dict() for p in readpaths.load(workspace, target)]
    return {"target": target, "counts": counts, "accounts": page, "runs": runs, "paths": paths}
