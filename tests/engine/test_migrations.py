"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from provisor.store import db
from provisor.store.models import Base


def _ours(name: str | None, kind: str, _parents: object) -> bool:
    """Everything but the job queue's own tables (procrastinate's schema, on PostgreSQL)."""
    return not (kind == "table" and (name or "").startswith("procrastinate_"))


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        db.upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"include_name": _ours})
            assert compare_metadata(context, Base.metadata) == []
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_the_open_removals_index_names_every_removal_kind() -> None:
    from provisor.domain.plan import REMOVAL_KINDS
    from provisor.store.models import OPEN_REMOVALS, OPEN_WORK

    kinds = ", ".join(f"'{kind}'" for kind in REMOVAL_KINDS)
    assert f"{OPEN_WORK} AND kind IN ({kinds})" == OPEN_REMOVALS


# (table, column, a query the engine runs on it): indexed only where set, and still used
DUE = "SELECT id FROM identities WHERE next_change_at <= {at} OR review_at <= {at}"  # tick
PARTIAL = [
    ("identities", "owner", "SELECT id FROM identities WHERE owner = 'E1'"),
    ("identities", "next_change_at", DUE.format(at="'2026-12-06 00:00:00'")),
    ("identities", "review_at", DUE.format(at="'2026-12-06 00:00:00'")),
    ("identity_events", "hold_id", "SELECT id FROM identity_events WHERE hold_id IN (1, 2)"),
    ("operations", "hold_id", "SELECT id FROM operations WHERE hold_id = 1"),
]


def test_columns_most_rows_leave_empty_are_indexed_where_set(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        db.upgrade(engine)
        with engine.begin() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:  # the tables are empty: the planner would scan them whatever it had
                connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            for table, column, query in PARTIAL:
                name = f"ix_{table}_{column}"
                if postgres:
                    found = connection.exec_driver_sql(
                        f"SELECT indexdef FROM pg_indexes WHERE indexname = '{name}'"
                    ).scalar_one()
                    plan = "\n".join(connection.exec_driver_sql(f"EXPLAIN {query}").scalars())
                else:
                    found = connection.exec_driver_sql(
                        f"SELECT sql FROM sqlite_master WHERE name = '{name}'"
                    ).scalar_one()
                    rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}").all()
                    plan = "\n".join(str(row[-1]) for row in rows)
                bare = " ".join(found.replace("(", " ").replace(")", " ").split())
                assert f"WHERE {column} IS NOT NULL" in bare, found
                assert name in plan, (query, plan)
    finally:
        engine.dispose()
