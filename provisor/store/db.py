"""Database connection and schema management for a workspace.

Does: build the SQLAlchemy engine for the workspace's database (an SQLite file by default,
``PROVISOR_DATABASE_URL`` to use PostgreSQL; the SQLite file readable by its owner only), tune
SQLite for a single busy writer, run the Alembic
migrations (``upgrade``), and refuse to work on a database whose schema is not current; write
rows atomically whether or not they exist (``upsert``), or only those missing, locking none
(``insert_missing``); insert many rows at once, written behind within a ``writing_behind``
block (``bulk_insert``); let one writer of a kind at a time go on (``one_writer``).
Does not: define tables (``models``) or hold any query logic.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, Engine, Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from provisor.errors import WorkspaceError
from provisor.redaction import redact
from provisor.store import write_behind
from provisor.store.models import RedactedText, UTCDateTime

MIGRATIONS = Path(__file__).parent / "migrations"
DATABASE_FILE = "provisor.db"


def database_url(workspace: Path) -> str:
    """The database of ``workspace``: ``PROVISOR_DATABASE_URL`` if set, else its SQLite file."""
    configured = os.environ.get("PROVISOR_DATABASE_URL")
    return configured or default_url(workspace)


def default_url(workspace: Path) -> str:
    """The embedded default: an SQLite file in the workspace folder."""
    return f"sqlite:///{(workspace / DATABASE_FILE).resolve()}"


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    # read once here: bulk inserts size their statements by it, and the thread writing them
    # behind may be using the connection when the next ones are prepared
    record.info[_VARIABLES] = dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    cursor = dbapi_connection.cursor()
    # 16 KiB pages rather than 4 KiB: an import writes hundreds of thousands of rows (events,
    # identities, audit entries) in one transaction, and bigger pages cut its B-tree and WAL
    # work by about a sixth, while a small change still writes only a few pages. It only takes
    # effect when the database file is created (it must come before WAL mode is set); an
    # existing workspace keeps its page size.
    cursor.execute("PRAGMA page_size=16384")
    # WAL with synchronous=NORMAL: a commit is durable against a crash of the process, and a
    # power loss can at worst lose the last transactions, never corrupt the file; readers (the
    # CLI, reports) never block the writer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


# JSON columns are written often and in bulk; one encoder reused beats json.dumps per value.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def _owner_only(url: str) -> None:
    """An SQLite database file (and its WAL and shared-memory files, which SQLite creates with
    the file's own mode) readable and writable by its owner only, created so if new."""
    name = make_url(url).database
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    path = Path(name)
    try:
        if not path.exists() and path.parent.is_dir():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for file in (path, Path(f"{name}-wal"), Path(f"{name}-shm")):
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(0o600)
    except FileExistsError:
        pass  # another process made it at the same moment, with the same mode
    except PermissionError:
        pass  # another user's database: its mode is theirs to set


POOL_SIZE = 20


def make_engine(url: str, pool: tuple[int, int] = (POOL_SIZE, POOL_SIZE)) -> Engine:
    """The engine for ``url``; ``pool``: connections kept open, and more opened when busy."""
    size, overflow = pool
    if url.startswith("sqlite"):
        _owner_only(url)
        # a service's request threads, its runner and its event writer each hold one while
        # they work: enough connections that none waits for another to be handed back
        engine = create_engine(
            url,
            connect_args={"timeout": 30},
            json_serializer=_json,
            pool_size=size,
            max_overflow=overflow,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        json_serializer=_json,
        pool_size=size,
        max_overflow=overflow,
    )


def upsert(
    session: Session,
    model: type[Any],
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    where: ColumnElement[bool] | None = None,
) -> None:
    """Insert ``rows`` of ``model``; a row whose ``keys`` exist already updates that row's
    other columns instead (only where ``where`` holds of the existing row). One atomic
    statement on SQLite and PostgreSQL alike, so concurrent writers never collide."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table(model)).values(list(rows))
    changed = {name: statement.excluded[name] for name in rows[0] if name not in keys}
    session.execute(
        statement.on_conflict_do_update(index_elements=list(keys), set_=changed, where=where)
    )


def insert_missing(
    session: Session, model: type[Any], rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> None:
    """Insert those of ``rows`` whose ``keys`` are not there yet; an existing row is neither
    changed nor locked (``upsert`` locks it, even where ``where`` is false), so this takes no
    part in a deadlock over those rows and never waits for a transaction that only locked
    one (``FOR UPDATE``); on PostgreSQL it does wait for one that inserted or updated it."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table(model)).values(list(rows))
    session.execute(statement.on_conflict_do_nothing(index_elements=list(keys)))


def one_writer(session: Session, name: str) -> None:
    """Until the session's transaction ends, no other transaction passing ``name`` here gets
    past this point: on PostgreSQL a transaction-scoped advisory lock named by ``name``, on
    SQLite the database's write lock (taken now, so that what the transaction reads next is
    not changed by another writer before it commits)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        session.execute(text("UPDATE target_limits SET tokens = tokens WHERE 1 = 0"))


def changed(result: Any) -> int:
    """The rows an UPDATE or DELETE changed (its result's ``rowcount``)."""
    return int(getattr(result, "rowcount", 0) or 0)


def table(model: type[Any]) -> Table:
    """The Core table of a model."""
    mapped: Table = model.__table__
    return mapped


def json_text(value: Any) -> str:
    """The JSON text ``bulk_insert`` stores for a value of a JSON column."""
    return _json(value)


@lru_cache(maxsize=65536)  # bulk inserts spell the same instants again and again
def _sqlite_time(value: datetime | None) -> str | None:
    """An aware datetime as SQLAlchemy stores a DATETIME on SQLite (naive UTC text)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


@lru_cache(maxsize=65536)
def _naive_utc(value: datetime | None) -> datetime | None:
    """An aware datetime as other databases store it (naive UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None


_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def bulk_insert(
    session: Session, model: type[Any], names: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert many rows of ``model``: on SQLite thousands of rows per statement, on PostgreSQL
    with COPY; each row holds the values of ``names`` in that order, JSON columns as their
    text (``json_text``, so a value several rows share is encoded once). A row of another
    length is refused (``ValueError``) before anything is written.

    Values are converted here, column by column, instead of by SQLAlchemy row by row: imports
    write hundreds of thousands of rows and the per-value processing would dominate.
    """
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    mapped = table(model)
    width = len(names)
    if set(map(len, rows)) != {width}:
        raise ValueError(f"every row inserted into {mapped.name} must hold {width} values")
    converted = _conversions(mapped, names, dialect.name)
    quote = dialect.identifier_preparer.quote
    listed = f"{quote(mapped.name)} ({', '.join(quote(n) for n in names)})"
    into = f"INSERT INTO {listed}"
    if dialect.name == "sqlite" and dialect.driver == "pysqlite":
        # all values in one list, each converted column a stride of it: no row is rebuilt
        flat = list(chain.from_iterable(rows))
        for i, convert in converted:
            flat[i::width] = convert(flat[i::width])
        limit = connection.connection.info.get(_VARIABLES, _FEWEST_VARIABLES)
        write = partial(_execute_all, into, _many_at_once(into, width, flat, limit))
        if not write_behind.hand_over(session, write):
            write(connection.connection.dbapi_connection)
        return
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
    for i, convert in converted:
        columns[i] = convert(columns[i])
    params = list(zip(*columns, strict=True))
    mark = _MARKS.get(dialect.paramstyle)
    if dialect.name == "postgresql" and dialect.driver == "psycopg" and len(params) > 1:
        driver = connection.connection.dbapi_connection
        copy = _copy(driver, f"COPY {listed} FROM STDIN", params)
        if not write_behind.hand_over(session, copy):
            copy(driver)
        return
    if mark is not None:  # (after what is written behind, like every statement)
        connection.exec_driver_sql(f"{into} VALUES ({', '.join(mark for _ in names)})", params)
        return
    # Any other parameter style: named placeholders, which SQLAlchemy renders for the driver.
    marks = [f"p{i}" for i in range(len(names))]
    statement = text(f"{into} VALUES ({', '.join(f':{m}' for m in marks)})")
    connection.execute(statement, [dict(zip(marks, row, strict=True)) for row in params])


def _conversions(
    mapped: Table, names: Sequence[str], dialect: str
) -> list[tuple[int, Callable[[Sequence[Any]], list[Any]]]]:
    """What ``bulk_insert`` does to a column's values before the driver has them, by the
    column's place in ``names``: instants in the store's spelling, redacted text redacted."""
    stored_time = _sqlite_time if dialect == "sqlite" else _naive_utc

    def instants(values: Sequence[Any]) -> list[Any]:
        # Imports repeat the same few timestamps over and over: each distinct one is
        # converted once, and the column is mapped through a plain dict.
        stored = {value: stored_time(value) for value in set(values)}
        return list(map(stored.__getitem__, values))

    def redacted(values: Sequence[Any]) -> list[Any]:
        return [redact(value) if value else value for value in values]

    conversions: list[tuple[int, Callable[[Sequence[Any]], list[Any]]]] = []
    for i, name in enumerate(names):
        kind = mapped.c[name].type
        if isinstance(kind, UTCDateTime):
            conversions.append((i, instants))
        elif isinstance(kind, RedactedText):
            conversions.append((i, redacted))
    return conversions


def _many_at_once(
    into: str, width: int, values: list[Any], limit: int
) -> list[tuple[str, tuple[Any, ...]]]:
    """SQLite's inserts of ``values`` (rows of ``width`` values one after the other): as many
    rows per statement as its ``limit`` on parameters allows, up to ``_ROWS_PER_INSERT``. As
    fast as one statement per row alone, and written behind they let the caller work
    meanwhile: the driver gives Python's lock back while SQLite runs a statement and takes
    it again after it — once for thousands of rows, where one statement per row would leave
    the thread writing behind waiting for the lock at every row. The rows full statements
    leave go in statements of 512, 64, 8 or 1 rows (those sizes smaller than a full one): a
    connection keeps each statement it prepared (and the values last given to it), so their
    number of rows must take few values, not one per remainder."""
    per = max(1, min(limit // width, _ROWS_PER_INSERT))
    inserts = []
    start, rows = 0, len(values) // width
    for size in (per, *(s for s in _SMALLER if s < per)):
        while rows >= size:
            end = start + size * width
            inserts.append((_insert_text(into, width, size), tuple(values[start:end])))
            start, rows = end, rows - size
    return inserts


def _execute_all(into: str, inserts: list[tuple[str, tuple[Any, ...]]], driver: Any) -> None:
    """Run ``inserts`` on SQLite's own connection; an error is raised as SQLAlchemy's, as it
    would be through SQLAlchemy, naming the table and columns but neither the thousands of
    placeholders nor a value."""
    cursor = None
    try:
        cursor = driver.cursor()
        for statement, values in inserts:
            cursor.execute(statement, values)
    except Exception as error:  # SQLAlchemy's StatementError for what is not the driver's
        rows = sum(statement.count("(?") for statement, _ in inserts)
        shown = f"{into} VALUES (…) [{rows} rows in {len(inserts)} statements]"
        raise DBAPIError.instance(
            shown, None, error, sqlite3.Error, hide_parameters=True
        ) from error
    finally:
        if cursor is not None:
            cursor.close()


_ROWS_PER_INSERT = 2_000  # rows per statement at most (fewer when SQLite's limit says so)
_SMALLER = (512, 64, 8, 1)  # the rows per statement of what full statements leave
_VARIABLES = "provisor.sqlite_variables"  # a connection's limit on parameters per statement
_FEWEST_VARIABLES = 999  # SQLite's limit before 3.32, if a connection's was not read


@lru_cache(maxsize=256)
def _insert_text(into: str, width: int, count: int) -> str:
    """``into`` ... VALUES with ``count`` rows of ``width`` parameters, the same text object
    each time, which the driver's cache of prepared statements then finds at once."""
    row = f"({', '.join('?' * width)})"
    return f"{into} VALUES {', '.join([row] * count)}"


def _copy(driver: Any, statement: str, rows: list[tuple[Any, ...]]) -> write_behind.Write:
    """PostgreSQL's own bulk load, many times faster than one INSERT per row: the rows are
    put in COPY's format here, by the driver, and sent whole when written (a writer behind
    then only waits for the server, and holds Python's lock for a moment)."""
    import psycopg  # only PostgreSQL's stores need the driver
    from psycopg.copy import Copy, FileWriter

    data = io.BytesIO()
    with driver.cursor() as cursor, Copy(cursor, binary=False, writer=FileWriter(data)) as out:
        for row in rows:
            out.write_row(row)
    formatted = data.getvalue()

    def write(connection: Any) -> None:
        try:
            with connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.write(formatted)
        except psycopg.Error as error:  # raised as SQLAlchemy's, as through SQLAlchemy
            raise DBAPIError.instance(
                statement, None, error, psycopg.Error, hide_parameters=True
            ) from error

    return write


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
