"""The store and the engine services, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from provisor.config.workspace import write_starter
from provisor.domain.lifecycle import EventKind, LifecycleEvent, LifecycleState
from provisor.engine import identities
from provisor.engine.planner import sync_journal
from provisor.engine.workspace import Workspace
from provisor.errors import LifecycleError, WorkspaceError
from provisor.evidence import audit
from provisor.store import db, models

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", database_url)
    write_starter(tmp_path)
    engine = db.make_engine(database_url)
    assert db.upgrade(engine) == (None, db.head_revision())
    engine.dispose()
    workspace = Workspace.open(tmp_path)
    yield workspace
    workspace.close()


def hire(identity: str, day: int = -100, **attrs: str) -> LifecycleEvent:
    base = {
        "name": identity,
        "email": f"{identity.lower()}@example.com",
        "employment_type": "employee",
        "department": "Engineering",
    }
    return LifecycleEvent(
        identity, EventKind.HIRE, NOW + timedelta(days=day), NOW, {**base, **attrs}, source="test"
    )


def record(
    ws: Workspace, *events: LifecycleEvent, now: datetime = NOW, strict: bool = False
) -> identities.Outcome:
    with ws.sessions() as session, session.begin():
        return identities.record_events(
            session, ws.config, list(events), origin="test", now=now, strict=strict
        )


def state_of(ws: Workspace, identity: str) -> str | None:
    with ws.sessions() as session:
        return session.execute(
            select(models.Identity.state).where(models.Identity.external_id == identity)
        ).scalar_one()


def test_schema_check_refuses_missing_database(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'none.db'}")
    with pytest.raises(WorkspaceError, match="run 'provisor init' first"):
        db.check_schema(engine)


def test_events_are_idempotent_and_materialised(ws: Workspace) -> None:
    first = record(ws, hire("E1"), hire("E2"))
    assert first.recorded == 2 and first.transitions == {"new->active": 2}
    again = record(ws, hire("E1"))
    assert again.recorded == 0 and again.duplicates == 1
    assert state_of(ws, "E1") == "active"


def test_future_termination_applies_at_tick(ws: Workspace) -> None:
    record(ws, hire("E1"))
    leave_day = NOW + timedelta(days=10)
    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, leave_day, NOW))
    assert state_of(ws, "E1") == "active"
    with ws.sessions() as session, session.begin():
        assert identities.tick(session, ws.config, now=NOW + timedelta(days=5)).transitions == {}
    with ws.sessions() as session, session.begin():
        outcome = identities.tick(session, ws.config, now=leave_day + timedelta(hours=1))
    assert outcome.transitions == {"active->terminated": 1}
    assert state_of(ws, "E1") == "terminated"


def test_strict_event_refuses_impossible_transition(ws: Workspace) -> None:
    record(ws, hire("E1"))
    with pytest.raises(LifecycleError, match="return is not possible from state active"):
        record(ws, LifecycleEvent("E1", EventKind.RETURN, NOW, NOW), strict=True)


def test_rescind_restores_and_late_rescind_is_refused(ws: Workspace) -> None:
    record(ws, hire("E1"))
    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW - timedelta(days=2), NOW))
    assert state_of(ws, "E1") == "terminated"
    record(ws, LifecycleEvent("E1", EventKind.RESCIND, NOW, NOW), strict=True)
    assert state_of(ws, "E1") == "active"
    record(ws, hire("E2"), LifecycleEvent("E2", EventKind.TERMINATE, NOW - timedelta(days=60), NOW))
    with pytest.raises(LifecycleError, match="rescind window of 30 days"):
        record(ws, LifecycleEvent("E2", EventKind.RESCIND, NOW, NOW), strict=True)
    assert state_of(ws, "E2") == "terminated"


def test_mass_termination_is_held_and_released_in_part(ws: Workspace) -> None:
    record(ws, *[hire(f"E{i}") for i in range(20)])
    leavers = [LifecycleEvent(f"E{i}", EventKind.TERMINATE, NOW, NOW) for i in range(6)]
    mover = LifecycleEvent("E10", EventKind.MOVE, NOW, NOW, {"department": "Sales"})
    outcome = record(ws, *leavers, mover)
    assert outcome.hold_id is not None and outcome.held == 6
    assert "6 of 20 active identities (30%)" in (outcome.hold_reason or "")
    assert state_of(ws, "E0") == "active"
    with ws.sessions() as session:  # the move beside the held terminations still applied
        row = session.execute(
            select(models.Identity).where(models.Identity.external_id == "E10")
        ).scalar_one()
        assert row.attributes["department"] == "Sales"
    with ws.sessions() as session, session.begin():
        identities.decide_hold(
            session, ws.config, outcome.hold_id, approve=True, only=["E0", "E1"], now=NOW
        )
    assert state_of(ws, "E0") == "terminated" and state_of(ws, "E2") == "active"
    with ws.sessions() as session, session.begin():
        identities.decide_hold(
            session, ws.config, outcome.hold_id, approve=False, only=None, now=NOW
        )
        hold = session.get(models.Hold, outcome.hold_id)
        assert hold is not None and hold.status == "rejected"
    assert state_of(ws, "E2") == "active"


def test_bitemporal_query(ws: Workspace) -> None:
    record(ws, hire("E1"))
    late = NOW + timedelta(days=3)
    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, late), now=late)
    with ws.sessions() as session:
        as_known_then = identities.identity_state(
            session, ws.config, "E1", as_of=NOW, known_at=NOW + timedelta(days=1)
        )
        as_known_now = identities.identity_state(session, ws.config, "E1", as_of=NOW)
    assert as_known_then.state is LifecycleState.ACTIVE
    assert as_known_now.state is LifecycleState.TERMINATED


def test_plan_journal_sync_supersedes(ws: Workspace) -> None:
    record(ws, hire("E1"))
    with ws.sessions() as session, session.begin():
        first = sync_journal(ws, session, now=NOW)
    kinds = sorted((op.target, op.kind.value) for op, _, _ in first.operations)
    assert ("directory", "create") in kinds and first.added == len(kinds)
    with ws.sessions() as session, session.begin():
        again = sync_journal(ws, session, now=NOW)
    assert again.added == 0 and again.cancelled == 0
    record(ws, LifecycleEvent("E1", EventKind.TERMINATE, NOW, NOW))
    with ws.sessions() as session, session.begin():
        after = sync_journal(ws, session, now=NOW)
        cancelled = (
            session.execute(select(models.Operation).where(models.Operation.status == "cancelled"))
            .scalars()
            .all()
        )
    assert after.operations == [] and after.cancelled == len(kinds) == len(cancelled)


def test_audit_chain_detects_edit_delete_and_reorder(ws: Workspace) -> None:
    record(ws, hire("E1"), hire("E2"), hire("E3"))
    with ws.sessions() as session:
        result = audit.verify(session)
        assert result.ok and result.events >= 3
    with ws.sessions() as session, session.begin():
        session.execute(
            update(models.AuditEvent).where(models.AuditEvent.seq == 2).values(subject="E9")
        )
    with ws.sessions() as session:
        bad = audit.verify(session)
    assert not bad.ok and bad.first_bad == 2 and "edited" in bad.problem


def test_audit_detects_deleted_tail_and_reordering(ws: Workspace) -> None:
    record(ws, hire("E1"), hire("E2"), hire("E3"))
    with ws.sessions() as session, session.begin():
        last = session.execute(text("select max(seq) from audit_events")).scalar_one()
        session.execute(text("delete from audit_events where seq = :s"), {"s": last})
    with ws.sessions() as session:
        bad = audit.verify(session)
    assert not bad.ok and bad.first_bad == last and "deleted" in bad.problem
    with ws.sessions() as session, session.begin():
        session.execute(text("update audit_events set seq = 100 where seq = 1"))
        session.execute(text("update audit_events set seq = 1 where seq = 2"))
        session.execute(text("update audit_events set seq = 2 where seq = 100"))
    with ws.sessions() as session:
        swapped = audit.verify(session)
    assert not swapped.ok and swapped.first_bad == 1


def test_non_human_needs_a_known_human_owner(ws: Workspace) -> None:
    record(ws, hire("E1"))
    bot = LifecycleEvent("S1", EventKind.HIRE, NOW, NOW, {"name": "ci", "kind": "bot"})
    with pytest.raises(LifecycleError, match="a bot needs an accountable owner"):
        record(ws, bot, strict=True)
    stray = LifecycleEvent(
        "S2", EventKind.HIRE, NOW, NOW, {"name": "key", "kind": "api_key", "owner": "S9"}
    )
    outcome = record(ws, stray)
    assert outcome.recorded == 0 and "owner S9 of this api_key is unknown" in outcome.warnings[0]
    owned = LifecycleEvent(
        "S3", EventKind.HIRE, NOW, NOW, {"name": "svc", "kind": "service_account", "owner": "E1"}
    )
    assert record(ws, owned, strict=True).recorded == 1


def test_audit_verify_rehashes_lifecycle_events(ws: Workspace) -> None:
    record(ws, hire("E1"), hire("E2"))
    with ws.sessions() as session:
        assert audit.verify(session).ok
    with ws.sessions() as session, session.begin():
        session.execute(
            text("update identity_events set attributes = :a where identity = 'E2'"),
            {"a": '{"name": "Mallory"}'},
        )
    with ws.sessions() as session:
        edited = audit.verify(session)
    assert not edited.ok and "E2 was edited" in edited.problem
    with ws.sessions() as session, session.begin():
        session.execute(text("delete from identity_events where identity = 'E2'"))
    with ws.sessions() as session:
        deleted = audit.verify(session)
    assert not deleted.ok and "was deleted" in deleted.problem
