"""Database connection and schema management for a workspace.

Does: build the SQLAlchemy engine for the workspace's database (an SQLite file by default,
``PROVISOR_DATABASE_URL`` to use PostgreSQL), tune SQLite for a single busy writer, run the Alembic
migrations (``upgrade``), and refuse to work on a database whose schema is not current.
Does not: define tables (``models``) or hold any query logic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Engine, Table, create_engine, event, insert
from sqlalchemy.orm import Session, sessionmaker

from provisor.errors import WorkspaceError
from provisor.store.models import UTCDateTime

MIGRATIONS = Path(__file__).parent / "migrations"
DATABASE_FILE = "provisor.db"


def database_url(workspace: Path) -> str:
    """The database of ``workspace``: ``PROVISOR_DATABASE_URL`` if set, else its SQLite file."""
    configured = os.environ.get("PROVISOR_DATABASE_URL")
    return configured or default_url(workspace)


def default_url(workspace: Path) -> str:
    """The embedded default: an SQLite file in the workspace folder."""
    return f"sqlite:///{(workspace / DATABASE_FILE).resolve()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# JSON columns are written often and in bulk; one encoder reused beats json.dumps per value.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=_json)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, json_serializer=_json)


def table(model: type[Any]) -> Table:
    """The Core table of a model."""
    mapped: Table = model.__table__
    return mapped


def _converter(column_type: Any, sqlite: bool) -> Callable[[Any], Any] | None:
    """Value conversion for one column; conversions are memoised (a bulk insert repeats the
    same few timestamps and empty lists over and over)."""
    if isinstance(column_type, JSON):
        empty: dict[str, str] = {"[]": "[]", "{}": "{}"}

        def to_json(value: Any) -> Any:
            if value is None:
                return None
            if not value and isinstance(value, list | dict):
                return empty["[]" if isinstance(value, list) else "{}"]
            return _json(value)

        return to_json
    if isinstance(column_type, UTCDateTime):
        seen: dict[datetime, Any] = {}

        def to_time(value: datetime | None) -> Any:
            if value is None:
                return None
            found = seen.get(value)
            if found is None:
                naive = value.astimezone(UTC).replace(tzinfo=None)
                # SQLAlchemy's own storage format for DATETIME on SQLite
                found = naive.isoformat(sep=" ", timespec="microseconds") if sqlite else naive
                seen[value] = found
            return found

        return to_time
    return None


_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def bulk_insert(session: Session, model: type[Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert many rows of ``model`` in one executemany.

    Values are converted here, column by column, instead of by SQLAlchemy row by row: imports
    write hundreds of thousands of rows and the per-value processing would dominate. Every row
    must carry the same keys.
    """
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    mark = _MARKS.get(dialect.paramstyle)
    mapped = table(model)
    if mark is None:
        session.execute(insert(mapped), list(rows))
        return
    names = list(rows[0])
    sqlite = dialect.name == "sqlite"
    converters = [
        (i, convert)
        for i, name in enumerate(names)
        if (convert := _converter(mapped.c[name].type, sqlite)) is not None
    ]
    quote = dialect.identifier_preparer.quote
    statement = (
        f"INSERT INTO {quote(mapped.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({', '.join(mark for _ in names)})"
    )
    pick = itemgetter(*names)
    params: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(pick(row)) if len(names) > 1 else [row[names[0]]]
        for i, convert in converters:
            values[i] = convert(values[i])
        params.append(tuple(values))
    connection.exec_driver_sql(statement, params)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; returns (revision before, revision after)."""
    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    return before, head_revision()


def check_schema(engine: Engine) -> None:
    current = current_revision(engine)
    if current is None:
        raise WorkspaceError(
            f"no Provisor workspace database at {engine.url.render_as_string(hide_password=True)}; "
            "run 'provisor init' first"
        )
    if current != head_revision():
        raise WorkspaceError(
            f"the workspace database is at schema {current}, this Provisor needs "
            f"{head_revision()}; run 'provisor init' to upgrade it"
        )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back if it raises."""
    with factory() as session, session.begin():
        yield session
