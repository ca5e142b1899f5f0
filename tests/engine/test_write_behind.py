"""Bulk inserts written behind (``store.write_behind``), on PostgreSQL (COPY) and on SQLite
(many rows per statement): what is handed over is in the database before the session's next
statement, raw read or commit, in the order given; an insert that fails is raised in the
caller, nothing handed over after it is written, and the transaction rolls back whole; the
audit chain appended batch by batch behind another append in the same transaction stays
intact. Rows beyond what one SQLite statement takes are split over several, written behind or
not, every value where it belongs."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import SingletonThreadPool

from provisor.evidence import audit
from provisor.store import db, models
from provisor.store.bulk import driver_rows
from provisor.store.db import _SMALLER, _many_at_once, bulk_insert
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
def engine(store_engine: Engine) -> Engine:
    return store_engine


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
        with pytest.raises(IntegrityError) as failed, session.begin(), writing_behind(session):
            bulk_insert(session, models.Identity, COLUMNS, people(0, 100))
            bulk_insert(session, models.Identity, COLUMNS, people(50, 100))  # P50… again
            bulk_insert(session, models.Identity, COLUMNS, people(200, 100))
            session.execute(select(models.Identity.id).limit(1))
        assert "P50" in str(failed.value) or "UNIQUE" in str(failed.value)
        # named as SQLAlchemy names a failed statement, without a page of placeholders
        assert "INSERT INTO identities" in str(failed.value) or "COPY" in str(failed.value)
        assert len(str(failed.value)) < 2_000
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
    duplicate = IntegrityError  # as SQLAlchemy raises a failed statement, on both stores
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


@pytest.mark.parametrize("behind", [True, False], ids=["behind", "in-place"])
def test_more_rows_than_one_statement_takes_are_all_written_as_given(
    engine: Engine, behind: bool
) -> None:
    rows = [
        (f"Q{i}", "hr" if i % 3 else None, i % 2 == 0, "[]", "human", f'{{"n":{i}}}', NOW, NOW)
        for i in range(4_321)  # over two statements' worth on SQLite, the last one partial
    ]
    with Session(engine) as session, session.begin():
        if behind:
            with writing_behind(session):
                bulk_insert(session, models.Identity, COLUMNS, rows)
        else:
            bulk_insert(session, models.Identity, COLUMNS, rows)
    with Session(engine) as session:
        stored = session.execute(
            select(
                models.Identity.external_id,
                models.Identity.feed,
                models.Identity.needs_plan,
                models.Identity.attributes,
            ).order_by(models.Identity.id)
        ).all()
    assert [tuple(r) for r in stored] == [(r[0], r[1], r[2], {"n": i}) for i, r in enumerate(rows)]


def test_a_failed_insert_in_place_is_wrapped_as_every_statement_is(engine: Engine) -> None:
    with Session(engine) as session, pytest.raises(IntegrityError), session.begin():
        bulk_insert(session, models.Identity, COLUMNS, people(0, 10) + people(5, 1))


def test_python_switches_threads_quickly_while_a_block_is_open_and_as_before_after(
    engine: Engine,
) -> None:
    before = sys.getswitchinterval()
    with Session(engine) as first, Session(engine) as second:
        with writing_behind(first):
            quick = sys.getswitchinterval()
            assert quick < before
            with writing_behind(second):  # another block (another thread's, say) meanwhile
                assert sys.getswitchinterval() == quick
            assert sys.getswitchinterval() == quick  # the first is still open
        assert sys.getswitchinterval() == before
        with pytest.raises(RuntimeError), writing_behind(first):
            raise RuntimeError("the caller failed")
        assert sys.getswitchinterval() == before


def test_a_row_of_another_length_is_refused_before_anything_is_written(engine: Engine) -> None:
    rows = [*people(0, 3), ("P9", "hr", True)]
    with Session(engine) as session, session.begin():
        with pytest.raises(ValueError, match="identities must hold 8 values"):
            bulk_insert(session, models.Identity, COLUMNS, rows)
        assert count(session) == 0


def test_a_commit_after_a_failed_insert_commits_nothing_then_or_later(database_url: str) -> None:
    engine = db.make_engine(database_url, pool=(1, 0))  # the next session gets the connection
    db.upgrade(engine)
    session = Session(engine)
    with pytest.raises(IntegrityError), writing_behind(session):
        bulk_insert(session, models.Identity, COLUMNS, people(0, 10))
        bulk_insert(session, models.Identity, COLUMNS, people(5, 10))  # P5… again
        session.commit()
    session.close()
    with Session(engine) as later, later.begin():
        bulk_insert(later, models.Identity, COLUMNS, people(100, 1))
    with Session(engine) as reading:
        assert count(reading) == 1  # only the later session's row
    engine.dispose()


@pytest.mark.parametrize(("rows", "limit"), [(4_321, 32_766), (1_999, 32_766), (37, 15), (9, 999)])
def test_statements_take_few_sizes_and_every_value_in_order(rows: int, limit: int) -> None:
    width = 8
    values = list(range(rows * width))
    inserts = _many_at_once("INSERT INTO t (a)", width, values, limit)
    assert [v for _, chunk in inserts for v in chunk] == values
    per = max(1, min(limit // width, 2_000))
    sizes = {statement.count("(?") for statement, _ in inserts}
    assert sizes <= {per, *_SMALLER}
    assert all(statement.count("?") == len(chunk) for statement, chunk in inserts)


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///file:provisor_behind?mode=memory&cache=shared&uri=true"]
)
def test_an_sqlite_database_in_memory_writes_in_place(url: str) -> None:
    # connections usable by their own thread only, one per thread
    engine = create_engine(url, poolclass=SingletonThreadPool)
    models.Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin(), writing_behind(session):
        assert writers() == []
        bulk_insert(session, models.Identity, COLUMNS, people(0, 2_500))
        assert count(session) == 2_500
    engine.dispose()


def test_nothing_is_handed_over_once_the_block_s_transaction_committed(engine: Engine) -> None:
    session = Session(engine)
    with session, pytest.raises(RuntimeError, match="committed inside"), writing_behind(session):
        bulk_insert(session, models.Identity, COLUMNS, people(0, 10))
        session.commit()  # what was handed over is in it
        bulk_insert(session, models.Identity, COLUMNS, people(10, 10))
    with Session(engine) as session:
        assert count(session) == 10
