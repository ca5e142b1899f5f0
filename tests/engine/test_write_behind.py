"""Bulk inserts written behind (``store.write_behind``) on PostgreSQL, and passed through on
SQLite: what is handed over is in the database before the session's next statement, raw read
or commit, in the order given; an insert that fails is raised in the caller, nothing handed
over after it is written, and the transaction rolls back whole; the audit chain appended
batch by batch behind another append in the same transaction stays intact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provisor.evidence import audit
from provisor.store import db, models
from provisor.store.bulk import driver_rows
from provisor.store.db import bulk_insert
from provisor.store.write_behind import writing_behind

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
COLUMNS = (
    "external_id",
    "feed",
    "needs_plan",
    "flags",
    "kind",
    "attributes",
    "updated_at",
    "materialized_at",
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = db.make_engine(database_url)
    db.upgrade(made)
    yield made
    made.dispose()


def people(first: int, count: int) -> list[tuple[object, ...]]:
    return [
        (f"P{i}", "hr", True, "[]", "human", "{}", NOW, NOW) for i in range(first, first + count)
    ]


def count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(models.Identity)).scalar_one()


def writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "provisor-write-behind"]


def test_what_is_handed_over_is_written_before_the_next_statement(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        with writing_behind(session):
            if engine.dialect.name == "postgresql":
                assert len(writers()) == 1
            for first in range(0, 600, 100):
                bulk_insert(session, models.Identity, COLUMNS, people(first, 100))
            assert count(session) == 600  # a statement through SQLAlchemy waits for them
            bulk_insert(session, models.Identity, COLUMNS, people(600, 50))
            raw = driver_rows(session, select(models.Identity.external_id))
            assert len(list(raw)) == 650  # and so does a read on the driver's own cursor
            bulk_insert(session, models.Identity, COLUMNS, people(650, 50))
        assert writers() == []
    with Session(engine) as session:
        assert count(session) == 700  # the last ones went in before the block ended


def test_a_failed_insert_is_raised_and_nothing_after_it_is_written(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(Exception) as failed, session.begin(), writing_behind(session):
            bulk_insert(session, models.Identity, COLUMNS, people(0, 100))
            bulk_insert(session, models.Identity, COLUMNS, people(50, 100))  # P50… again
            bulk_insert(session, models.Identity, COLUMNS, people(200, 100))
            session.execute(select(models.Identity.id).limit(1))
        assert "P50" in str(failed.value) or "UNIQUE" in str(failed.value)
        assert writers() == []
    with Session(engine) as session:
        assert count(session) == 0  # the transaction rolled back whole


def test_leaving_the_block_on_an_error_of_the_caller_stops_the_writer(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(RuntimeError), session.begin(), writing_behind(session):
            bulk_insert(session, models.Identity, COLUMNS, people(0, 100))
            raise RuntimeError("the caller failed")
        assert writers() == []
    with Session(engine) as session:
        assert count(session) == 0


def test_an_audit_chain_appended_in_batches_around_another_append_verifies(
    engine: Engine,
) -> None:
    with Session(engine) as session, session.begin():
        audit.record(session, "test.before", "x", {"n": 0})
    with Session(engine) as session, session.begin(), writing_behind(session):
        chain = audit.Chain(session, at=NOW)
        chain.add([audit.Entry("test.batch", f"b{i}", {"i": i}) for i in range(300)])
        audit.record(session, "test.between", "y", {"n": 1})  # reads the head as moved
        chain.add([audit.Entry("test.batch", f"c{i}", {"i": i}) for i in range(300)])
        head = chain.close()
    with Session(engine) as session:
        checked = audit.verify(session)
        assert checked.ok, checked.problem
        assert checked.events == 602 and checked.head_hash == head


def test_a_failed_load_is_raised_again_however_often_it_is_swallowed(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite writes in the caller: its error is raised where it happens")
    # as the driver raised it, or as SQLAlchemy wraps it when raised before its statement
    duplicate = (psycopg.errors.UniqueViolation, IntegrityError)
    session = Session(engine)
    with pytest.raises(duplicate), session, session.begin(), writing_behind(session):
        bulk_insert(session, models.Identity, COLUMNS, people(0, 100))
        bulk_insert(session, models.Identity, COLUMNS, people(50, 100))
        with pytest.raises(duplicate):
            session.execute(select(models.Identity.id).limit(1))
        with pytest.raises(duplicate):  # swallowed once: still there
            bulk_insert(session, models.Identity, COLUMNS, people(200, 100))
        # and once more: leaving the block raises it, and nothing commits
    with Session(engine) as session:
        assert count(session) == 0
