"""Reading many rows at once: the machinery planning, assessment, debt and imports share.

Planning and assessment read hundreds of thousands of identities and accounts at a time; the
ORM's, and even Core's, per-row and per-value work would cost more than the rest of the job.
Does: pause Python's cyclic collector for bulk work (``collector_paused``), read a query's rows
through the driver's cursor (``driver_rows``) and convert only the columns that need it, each
distinct value once (``Converted``, ``time_reader``, ``json_reader``, ``names_reader``), read
observed accounts with their entitlements in one query (``accounts_query``) and identities'
materialised columns (``identity_rows``), and split long ``IN`` lists (``chunks``).
Does not: decide anything about what it reads; the engine's services do.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import ClauseElement, ColumnElement, Dialect, Select, func, select
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import aggregate_strings
from sqlalchemy.types import TypeEngine

from provisor.store import models, write_behind

SEP = "\x1f"  # joins entitlement names in one string; no name contains it
# SQLite allows 32k bound parameters; stay well below for IN lists.
CHUNK = 900
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``: one ``IN`` list each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class IdentityRow(NamedTuple):
    """The materialised columns an identity's current state is made of."""

    external_id: str
    state: str | None
    attributes: dict[str, Any]
    employment_start: datetime | None
    terminated_at: datetime | None
    state_since: datetime | None
    next_change_at: datetime | None


_COLLECTOR = threading.Lock()
_paused = 0  # bulk jobs under way that paused the collector (threads may overlap)
_restart = False  # whether the collector ran before the first of them


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for bulk work: it makes millions of objects,
    none of them in a cycle, which the collector would otherwise walk again and again as
    they pile up. When the last overlapping job ends the collector runs again if it ran
    before, and the new objects go straight to the oldest generation (``gc.freeze`` then
    ``gc.unfreeze``), where a collection of the young ones would put them after walking
    them all once more — unless the host froze objects of its own, which stay frozen."""
    global _paused, _restart
    with _COLLECTOR:
        if _paused == 0:
            _restart = gc.isenabled()
        _paused += 1
        gc.disable()
    try:
        yield
    finally:
        with _COLLECTOR:
            _paused -= 1
            if _paused == 0 and _restart:
                if gc.get_freeze_count() == 0:
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()


def driver_rows(session: Session, query: ClauseElement) -> Generator[tuple[Any, ...], None, None]:
    """The rows of ``query`` as the driver returns them, without type processing (so its
    bound values must be plain strings and numbers). Pending ORM changes are flushed first,
    as a query through the session would."""
    session.flush()
    write_behind.settled(session)
    connection = session.connection()
    compiled = cast(
        SQLCompiler,
        query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True}),
    )
    params = compiled.params
    unplain = [k for k, v in params.items() if not isinstance(v, str | int | float | None)]
    if unplain:  # bool is an int, and every driver binds it alike
        raise TypeError(f"driver_rows binds plain values only, not {', '.join(unplain)}")
    args: Any = (
        tuple(params[name] for name in compiled.positiontup or ())
        if compiled.positional
        else params
    )
    cursor = connection.connection.cursor()
    try:
        cursor.execute(compiled.string, args)
        while True:
            # inserts a caller handed over between batches are written before the next one
            write_behind.settled(session)
            batch = cursor.fetchmany(10000)
            if not batch:
                break
            yield from batch
    finally:
        cursor.close()


K = TypeVar("K")
V = TypeVar("V")


class Converted(dict[K, V]):
    """Raw driver values and what each converts to, converted on first lookup (``self[raw]``,
    which costs a plain dict lookup after that): the rows of one read share few distinct
    times and entitlement sets. Holds at most ``limit`` values; cleared when full."""

    def __init__(self, convert: Callable[[K], V], limit: int = 65536) -> None:
        super().__init__()
        self._convert = convert
        self._limit = limit

    def __missing__(self, raw: K) -> V:
        if len(self) >= self._limit:
            self.clear()
        value = self[raw] = self._convert(raw)
        return value


def time_reader(kind: TypeEngine[Any], dialect: Dialect) -> Converted[Any, Any]:
    """Raw driver values of a time column to the aware datetimes the column type gives
    (None stays None)."""
    process = kind.dialect_impl(dialect).result_processor(dialect, None)
    if process is None:
        return Converted(lambda value: value)
    return Converted(lambda value: None if value is None else process(value))


def json_reader(kind: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], dict[str, Any]]:
    """What turns a JSON object column's raw driver value into a dict (a new one each time)."""
    process = kind.dialect_impl(dialect).result_processor(dialect, None)

    def read(value: Any) -> dict[str, Any]:
        if value is None or value == "{}":
            return {}
        found: dict[str, Any] | None = process(value) if process is not None else value
        return found or {}

    return read


def accounts_query(
    columns: Sequence[QueryableAttribute[Any]], *where: ColumnElement[bool]
) -> Select[*tuple[Any, ...]]:
    """``columns`` of the observed accounts matching ``where``, in id order, then the names
    of the entitlements each holds joined by ``SEP`` (None when it holds none): one read,
    cheaper than a join grouped by the database or a second read merged here."""
    oa, oe = models.ObservedAccount, models.ObservedEntitlement
    held = (
        select(aggregate_strings(oe.entitlement, SEP))
        .where(oe.account_id == oa.id)
        .scalar_subquery()
    )
    return select(*columns, held).where(*where).order_by(oa.id)


def names_reader() -> Converted[str | None, frozenset[str]]:
    """Names joined by ``SEP`` (or None for none) to a frozenset; accounts that hold the same
    names (most do) share one."""
    empty: frozenset[str] = frozenset()
    return Converted(lambda joined: empty if joined is None else frozenset(joined.split(SEP)))


def identity_rows(
    session: Session, *where: ColumnElement[bool], ids: Iterable[str] | None = None
) -> list[IdentityRow]:
    """The identities matching ``where`` (and among ``ids`` when given), in no set order."""
    i = models.Identity
    dialect = session.get_bind().dialect
    when = time_reader(i.employment_start.type, dialect)
    attributes = json_reader(i.attributes.type, dialect)
    query = select(
        i.external_id,
        i.state,
        i.attributes,
        i.employment_start,
        i.terminated_at,
        i.state_since,
        i.next_change_at,
    ).where(*where)
    wanted = None if ids is None else set(ids)
    queries = [query]
    if wanted is not None:
        everyone = session.execute(select(func.count()).select_from(i)).scalar_one()
        if 2 * len(wanted) < everyone:
            queries = [query.where(i.external_id.in_(part)) for part in chunks(sorted(wanted))]
            wanted = None
        # else most of them: one scan costs less than looking each one up
    return [
        IdentityRow(who, state, attributes(attrs), when[start], when[end], when[since], when[nxt])
        for q in queries
        for who, state, attrs, start, end, since, nxt in driver_rows(session, q)
        if wanted is None or who in wanted
    ]
