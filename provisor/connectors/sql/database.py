"""What the SQL connectors share: the database, its quoting and its errors.

Does: give the SQL modes (:mod:`provisor.connectors.sql.roles`,
:mod:`provisor.connectors.sql.table`) what they share: one SQLAlchemy engine
per target from ``connection.url`` with a small connection pool, identifiers and string literals
quoted by the database's own dialect (names come from people's user names: never trusted), and
driver failures turned into the connector error family (lost connections, lock and deadlock
timeouts, too many connections: retryable; refused privileges, bad names: permanent; a name
taken: ``Conflict``), with messages that name the target and never carry the URL.
Does not: decide what to change, retry, or hold any state beyond the engine and its pool.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.sql.elements import TextClause

from provisor.connectors.base import (
    Conflict,
    ConnectorError,
    NotFound,
    PermanentError,
    RetryableError,
    Unavailable,
)
from provisor.connectors.sql.settings import SqlSettings

# PostgreSQL SQLSTATE classes and codes worth another try: connection exceptions (08),
# transaction rollbacks such as serialization failures and deadlocks (40), insufficient
# resources like too many connections (53), operator intervention such as a shutdown (57),
# system errors (58), a lock not available (55P03).
_PG_RETRY_CLASSES = ("08", "40", "53", "57", "58")
_PG_RETRY_CODES = frozenset({"55P03", "55006"})
# the server is not there: connection exceptions, shutting down, system errors
_PG_DOWN_CLASSES = ("08", "57P", "58")
_PG_CONFLICT = frozenset({"42710", "23505"})  # duplicate object, unique violation
_PG_NOT_FOUND = frozenset({"42704"})  # undefined object (a role that does not exist)
# Messages of failures before a session exists (psycopg gives them no SQLSTATE) that trying
# again will not mend.
_CONNECT_PERMANENT = re.compile(
    r"authentication failed|not permitted to log in|does not exist|no pg_hba\.conf entry|"
    r"Access denied|Unknown database",
    re.I,
)
# MariaDB/MySQL error numbers worth another try: too many connections (1040), server shutdown
# (1053), lock wait timeout (1205), deadlock (1213), query interrupted (1317), connection killed
# (1927), client-side connection failures (2002, 2003, 2006, 2013, 2055).
_MYSQL_RETRY = frozenset({1040, 1053, 1205, 1213, 1317, 1927, 2002, 2003, 2006, 2013, 2055})
_MYSQL_DOWN = frozenset({1053, 2002, 2003, 2006, 2013, 2055})  # cannot connect, gone away
_MYSQL_CONFLICT = frozenset({1062, 1396})  # duplicate key; CREATE USER for a taken name
_MYSQL_ACCESS = frozenset({1044, 1045, 1142, 1227, 1698})


def error_code(exc: BaseException) -> str | int | None:
    """The server's error code behind a SQLAlchemy error: a PostgreSQL SQLSTATE string, a
    MariaDB/MySQL error number, or None (SQLite, or a failure before a session existed)."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return None
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if args and isinstance(args[0], int):  # pymysql: (errno, message); its sqlstate is vague
        return int(args[0])
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else None


def _detail(exc: BaseException) -> str:
    """The server's message, first line only: no SQL statement, no parameters, no URL."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):  # pymysql: (errno, message)
        message = f"{args[1]} (error {args[0]})"
    else:
        message = str(orig)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


class Database:
    """One target's database: engine and pool, quoting, and error mapping.

    Settings read here: ``url`` (an SQLAlchemy URL such as ``postgresql+psycopg://host/db``,
    ``mysql+pymysql://host/``, ``sqlite:///path``), ``password`` (kept out of the URL, so the
    policy can reference it as a secret), ``pool_size`` (connections kept open, default 4: the
    target's default concurrency), ``timeout`` (seconds to connect, default 10) and
    ``statement_timeout`` (seconds one statement may run, default 60)."""

    def __init__(self, name: str, settings: SqlSettings, *, autocommit: bool) -> None:
        self.name = name
        try:
            url = make_url(settings.url)
        except sa_exc.ArgumentError:
            # the URL may carry a password: do not repeat it
            raise PermanentError(
                f"target {name}: connection.url is not an SQLAlchemy database URL "
                "(for example postgresql+psycopg://host/db, mysql+pymysql://host/, "
                "sqlite:///file.db)"
            ) from None
        if settings.password is not None:
            url = url.set(password=settings.password.get_secret_value())
        self.url: URL = url
        self.backend = url.get_backend_name()
        if self.backend not in ("postgresql", "mysql", "mariadb", "sqlite"):
            raise PermanentError(
                f"target {name}: connection.url is for {self.backend!r}; SQL targets are "
                "PostgreSQL, MariaDB/MySQL or SQLite"
            )
        self.kind = "mysql" if self.backend == "mariadb" else self.backend
        self._autocommit = autocommit
        self.pool_size = settings.pool_size
        self.timeout = settings.timeout
        self.statement_timeout = settings.statement_timeout
        self.engine = self._engine(url, self.pool_size)
        self._others: dict[str, Engine] = {}

    def _engine(self, url: URL, pool_size: int) -> Engine:
        options: dict[str, Any] = {"pool_pre_ping": True}
        connect: dict[str, Any] = {}
        if self.kind == "postgresql":
            connect = {
                "connect_timeout": self.timeout,
                "options": f"-c statement_timeout={self.statement_timeout * 1000}",
            }
        elif self.kind == "mysql":
            connect = {
                "connect_timeout": self.timeout,
                "read_timeout": self.statement_timeout,
                "write_timeout": self.statement_timeout,
            }
        else:
            connect = {"timeout": self.statement_timeout, "check_same_thread": False}
        if self.kind != "sqlite":
            options |= {"pool_size": pool_size, "max_overflow": 2, "pool_timeout": 30}
        if self._autocommit:
            options["isolation_level"] = "AUTOCOMMIT"
        try:
            return create_engine(url, connect_args=connect, **options)
        except (sa_exc.ArgumentError, ImportError) as exc:
            raise PermanentError(f"target {self.name}: cannot use connection.url: {exc}") from None

    def engine_for(self, database: str) -> Engine:
        """An engine on another database of the same server (one connection at most)."""
        if database == self.url.database:
            return self.engine
        if database not in self._others:
            self._others[database] = self._engine(self.url.set(database=database), 1)
        return self._others[database]

    # --- quoting ------------------------------------------------------------------------

    def ident(self, name: str) -> str:
        """``name`` as a quoted identifier, ready to go into :meth:`sql`."""
        # Not the dialect's quote_identifier: it doubles ``%`` for drivers with ``format``
        # parameters, and text() does that once more.
        quote = self.engine.dialect.identifier_preparer.initial_quote
        return _escape_colons(quote + name.replace(quote, quote * 2) + quote)

    def literal(self, value: str) -> str:
        """``value`` as a quoted string literal, ready to go into :meth:`sql`. Call it inside a
        connection: the dialect learns from the server whether backslashes are escapes
        (PostgreSQL's standard_conforming_strings, MariaDB's NO_BACKSLASH_ESCAPES)."""
        if "\x00" in value:
            raise PermanentError(f"{self.name}: a text value contains a NUL character")
        escaped = value.replace("'", "''")
        if getattr(self.engine.dialect, "_backslash_escapes", False):
            escaped = escaped.replace("\\", "\\\\")
        return _escape_colons("'" + escaped + "'")

    @staticmethod
    def sql(statement: str) -> TextClause:
        """A statement whose names and literals came from :meth:`ident` and :meth:`literal`;
        values that change per call go in ``:parameters``."""
        return text(statement)

    # --- connections and errors ---------------------------------------------------------

    @contextmanager
    def connect(self, what: str) -> Iterator[Connection]:
        """A connection (in autocommit or a transaction rolled back at the end, per engine)."""
        with self.failures(what), self.engine.connect() as connection:
            yield connection

    @contextmanager
    def begin(self, what: str, engine: Engine | None = None) -> Iterator[Connection]:
        """A transaction, committed when the block ends without an error."""
        with self.failures(what), (engine or self.engine).begin() as connection:
            yield connection

    @contextmanager
    def failures(self, what: str) -> Iterator[None]:
        """Turn every database failure inside the block into a connector error."""
        try:
            yield
        except ConnectorError:
            raise
        except sa_exc.SQLAlchemyError as exc:
            raise self.error(what, exc) from exc

    def error(self, what: str, exc: sa_exc.SQLAlchemyError) -> ConnectorError:
        message = f"{self.name}: {what}: {_detail(exc)}"
        if isinstance(exc, sa_exc.TimeoutError):
            return RetryableError(f"{self.name}: {what}: every pooled connection is busy")
        if not isinstance(exc, sa_exc.DBAPIError):
            return PermanentError(message)
        if exc.connection_invalidated:
            return Unavailable(message)
        code = error_code(exc)
        if code is not None:
            return _by_code(code, message)
        if isinstance(exc, sa_exc.IntegrityError):
            if "UNIQUE" in message.upper():
                return Conflict(message)
            return PermanentError(message)
        if isinstance(exc, sa_exc.OperationalError):
            # no code: the server was not reached, refused the session, or (SQLite) is busy
            if _CONNECT_PERMANENT.search(message):
                return PermanentError(message)
            if self.kind == "sqlite" and "locked" not in message and "busy" not in message:
                return PermanentError(message)
            return RetryableError(message) if self.kind == "sqlite" else Unavailable(message)
        if isinstance(exc, sa_exc.InterfaceError):
            return Unavailable(message)
        return PermanentError(message)

    def close(self) -> None:
        for engine in self._others.values():
            engine.dispose()
        self._others.clear()
        self.engine.dispose()


def _by_code(code: str | int, message: str) -> ConnectorError:
    """The error a database's own code means: a PostgreSQL SQLSTATE or a MariaDB number."""
    if isinstance(code, str):
        if code in _PG_CONFLICT:
            return Conflict(message)
        if code in _PG_NOT_FOUND:
            return NotFound(message)
        if code.startswith(_PG_DOWN_CLASSES):
            return Unavailable(message)
        if code.startswith(_PG_RETRY_CLASSES) or code in _PG_RETRY_CODES:
            return RetryableError(message)
        if code == "XX000" and "concurrently" in message:  # "tuple concurrently updated"
            return RetryableError(message)
        return PermanentError(message)
    if code in _MYSQL_DOWN:
        return Unavailable(message)
    if code in _MYSQL_RETRY:
        return RetryableError(message)
    if code in _MYSQL_CONFLICT:
        return Conflict(message)
    return PermanentError(message)


def _escape_colons(statement_part: str) -> str:
    # ``text()`` reads ``:word`` as a bind parameter; a quoted name may contain one.
    return statement_part.replace(":", "\\:")


def check_name(
    target: str, what: str, value: str, *, max_bytes: int = 0, max_chars: int = 0
) -> str:
    """``value`` if the database can hold it as a name exactly as given; else PermanentError.

    Names are quoted wherever they are used, so any printable character is fine; what is
    refused is what a database would silently change or cannot store: an empty name, control
    characters, and names over its length limit (PostgreSQL would cut them short)."""
    if not value:
        raise PermanentError(f"{target}: an empty {what} is not allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise PermanentError(f"{target}: {what} {value!r} contains control characters")
    if max_bytes and len(value.encode()) > max_bytes:
        raise PermanentError(f"{target}: {what} {value!r} is longer than {max_bytes} bytes")
    if max_chars and len(value) > max_chars:
        raise PermanentError(f"{target}: {what} {value!r} is longer than {max_chars} characters")
    return value
