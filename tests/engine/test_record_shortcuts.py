"""The shortcuts record_events takes on large imports give exactly what the general path gives."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from provisor.config.workspace import write_starter
from provisor.domain.lifecycle import EventKind, LifecycleEvent, canonical_json, fold
from provisor.engine import identities
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import db, models

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)

attributes = st.sampled_from(
    [
        {},
        {},
        {"name": "Ann"},
        {"name": 'Zoë "Q"', "kind": "bot", "owner": "E2"},
        {"title": None},
        {"name": "Ann", "manager": None},
    ]
)
event = st.builds(
    lambda kind, day, attrs, ref: LifecycleEvent(
        "E1",
        kind,
        NOW + timedelta(days=day),
        NOW,
        attrs,
        ref if kind is EventKind.RESCIND else None,
    ),
    st.sampled_from(
        [EventKind.HIRE] * 3
        + [EventKind.LEAVE, EventKind.SUSPEND, EventKind.TERMINATE] * 2
        + [EventKind.MOVE, EventKind.RETURN, EventKind.RESCIND, EventKind.REHIRE]
    ),
    st.sampled_from([-400, -30, -1, 0, 1, 30, 400]),
    attributes,
    st.one_of(st.none(), st.just("0" * 32)),
)


def general(events: list[LifecycleEvent]) -> dict[str, Any]:
    return identities._columns(fold("E1", events, as_of=NOW), NOW)


@settings(max_examples=600, deadline=None)
@given(events=st.lists(event, min_size=1, max_size=4, unique_by=lambda e: e.key))
def test_new_hire_shortcut_matches_the_fold(events: list[LifecycleEvent]) -> None:
    hired = identities._hired(events, NOW)
    if hired is not None:
        assert hired == general(events)
        assert list(hired) == list(general(events))


@pytest.mark.parametrize("start", [-400, 0, 30])
@pytest.mark.parametrize("status", [None, EventKind.LEAVE, EventKind.SUSPEND])
@pytest.mark.parametrize("end", [None, 1, 500])
def test_every_new_snapshot_row_takes_the_shortcut(
    start: int, status: EventKind | None, end: int | None
) -> None:
    """What a snapshot import makes of a new person's row: a hire, their status from the later
    of the start and now, and a planned end."""
    began = NOW + timedelta(days=start)
    events = [LifecycleEvent("E1", EventKind.HIRE, began, NOW, {"name": "Ann", "kind": "human"})]
    if status is not None:
        events.append(LifecycleEvent("E1", status, max(began, NOW), NOW))
    if end is not None and began < NOW + timedelta(days=end):
        events.append(LifecycleEvent("E1", EventKind.TERMINATE, NOW + timedelta(days=end), NOW))
    hired = identities._hired(events, NOW)
    assert hired is not None and hired == general(events)
    # The row holds the hire's own attributes mapping, so it is encoded once for both.
    assert hired["attributes"] is events[0].attributes


@settings(max_examples=200, deadline=None)
@given(
    recorded=event,
    status=st.sampled_from(["accepted", "held"]),
    before=st.sampled_from([None, "active", "pre-hire"]),
    after=st.sampled_from([None, "terminated"]),
    source=st.text(max_size=8),
)
def test_audit_payload_is_canonical_json(
    recorded: LifecycleEvent, status: str, before: str | None, after: str | None, source: str
) -> None:
    recorded = LifecycleEvent(
        recorded.identity,
        recorded.kind,
        recorded.effective,
        recorded.recorded,
        recorded.attributes,
        recorded.ref,
        source,
    )
    payload = {
        "event": recorded.key,
        "effective": recorded.effective.isoformat(),
        "ref": recorded.ref,
        "source": recorded.source,
        "status": status,
        "state_before": before,
        "state_after": after,
    }
    assert identities._audit_data(recorded, status, before, after) == canonical_json(payload)


def test_chain_hash_keeps_field_boundaries() -> None:
    base = ("lifecycle.hire", "E1", '{"a":1}')
    digest = audit.chain_hash(1, NOW, "ann", *base, audit.GENESIS)
    assert digest == audit.chain_hash(1, NOW, "ann", *base, audit.GENESIS)
    moved = [
        ("lifecycle.hireE", "1", '{"a":1}'),
        ("lifecycle.hire", "E1{", '"a":1}'),
    ]
    for fields in moved:
        assert audit.chain_hash(1, NOW, "ann", *fields, audit.GENESIS) != digest
    assert audit.chain_hash(11, NOW, "ann", *base, audit.GENESIS) != digest
    assert audit.chain_hash(1, NOW, "ann ", *base, audit.GENESIS) != digest
    assert audit.chain_hash(1, NOW + timedelta(microseconds=1), "ann", *base, audit.GENESIS) != (
        digest
    )


@pytest.fixture
def ws(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", database_url)
    write_starter(tmp_path)
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    engine.dispose()
    workspace = Workspace.open(tmp_path)
    yield workspace
    workspace.close()


def test_bulk_insert_with_named_parameters_writes_the_same_rows(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver without positional parameters goes through SQLAlchemy's named ones."""
    names = ("seq", "at", "actor", "action", "subject", "data", "prev_hash", "hash")

    def rows(first: int) -> list[tuple[Any, ...]]:
        return [(first + i, NOW, "ann", "test", f"s{i}", "{}", "p", "h") for i in range(3)]

    with ws.sessions() as session, session.begin():
        db.bulk_insert(session, models.AuditEvent, names, rows(1))
        monkeypatch.setattr(db, "_MARKS", {})
        db.bulk_insert(session, models.AuditEvent, names, rows(4))
    with ws.sessions() as session:
        stored = session.execute(
            select(models.AuditEvent.seq, models.AuditEvent.at, models.AuditEvent.subject)
        ).all()
        raw = session.execute(text("select at from audit_events order by seq")).scalars().all()
    assert sorted(stored) == [(n, NOW, f"s{(n - 1) % 3}") for n in range(1, 7)]
    assert len(set(raw)) == 1
