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
