"""Bulk inserts written behind: a transaction's large inserts run in a thread of their own while
the caller prepares the next ones.

Does: while ``writing_behind(session)`` is open, take the bulk loads of ``db.bulk_insert`` on
that session (PostgreSQL's COPY, SQLite's inserts of thousands of rows per statement), their
rows already formatted, and execute them in the order given, in one thread, on the session's own
connection, inside its transaction: the database's work then overlaps the caller's Python work
instead of following it (the drivers let go of Python's lock while the database works). Any
other use of that connection first waits until every load handed over is written — a statement
or flush through SQLAlchemy, a commit or rollback, a raw cursor (``settled``), the end of the
block — so statements keep their order and never run two at once on the connection. A load that
fails is raised (as SQLAlchemy's error) in the caller at its next statement, savepoint or
commit, or when the block ends; what was handed over after it is not executed, and the
transaction (which the caller owns) is left to be rolled back — a commit rolls it back before it
fails, so nothing of it commits then or with the connection's next user. An SQLite database in
memory, whose connection serves one thread only, gets its loads written in place. At most
``depth`` loads wait at a time, so the caller cannot run ahead and pile rows up in memory. While
a block is open, Python hands its lock from thread to thread every half millisecond rather than
every five (``_quick_turns``), so the writer waits less for it after each statement.
Does not: open, commit or roll back anything (but the transaction of a commit that follows a
failed load, see above); format values; decide what is written."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session

Write = Callable[[Any], None]  # given the driver's connection
_KEY = "provisor.write_behind"
# the connection events after which the writer's inserts must already be in the database,
# and what a load that failed then does: raised before a statement or a savepoint (a rollback
# to a savepoint is a statement too); before a commit the transaction is rolled back first
# (nothing of it may commit, and the connection goes back to its pool clean); the rollback of
# the whole transaction just goes ahead
_EVENTS = (
    ("before_cursor_execute", "settle"),
    ("savepoint", "settle"),
    ("release_savepoint", "settle"),
    ("commit", "settle_before_commit"),
    ("rollback", "wait"),
)


class _Writer:
    """One thread executing handed-over inserts in order on one driver connection."""

    def __init__(self, connection: Connection, depth: int) -> None:
        self._driver: Any = connection.connection.dbapi_connection
        self._queue: queue.Queue[Write | None] = queue.Queue(depth)
        self._failed: BaseException | None = None
        self._stopped = False
        self._committed = False
        self._thread = threading.Thread(target=self._run, name="provisor-write-behind", daemon=True)
        self._thread.start()

    def hand_over(self, write: Write) -> None:
        self._raise()
        if self._committed:
            raise RuntimeError(
                "the transaction a write-behind block writes into was committed inside it; "
                "commit when the block has ended, or open a new block"
            )
        self._queue.put(write)

    def wait(self, *_event: Any) -> None:
        """Wait until everything handed over is written (or skipped after a failure)."""
        self._queue.join()

    def settle(self, *_event: Any) -> None:
        """Wait until everything handed over is written; raise what failed."""
        self._queue.join()
        self._raise()

    def settle_before_commit(self, *_event: Any) -> None:
        """``settle``, the transaction rolled back first when a load failed: the commit then
        fails, and neither it nor the next user of the connection commits what went in. Once
        the transaction commits, nothing more may be handed over: the session's next
        transaction may be on another connection."""
        self._queue.join()
        if self._failed is not None:
            try:
                self._driver.rollback()
            finally:
                self._raise()
        self._committed = True

    def stop(self, *, discard: bool) -> None:
        """End the thread once what was handed over is written (or, ``discard``, skipped)."""
        self._stopped = discard
        self._queue.put(None)
        self._thread.join()

    def _raise(self) -> None:
        # raised again at every use of the connection, however often a caller swallows it:
        # nothing after a failed load is written, and the transaction must not commit
        if self._failed is not None:
            self._stopped = True
            raise self._failed

    def _run(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if write is None:
                    return
                if not self._stopped and self._failed is None:
                    write(self._driver)
            except BaseException as error:  # handed to the caller, who owns the transaction
                self._failed = error
            finally:
                self._queue.task_done()


@contextmanager
def writing_behind(session: Session, depth: int = 4) -> Iterator[None]:
    """Within the block, ``db.bulk_insert`` on ``session`` writes behind (see the module).
    Leaving it waits for every insert and raises the first that failed."""
    connection = session.connection()
    if not _shared_across_threads(connection):
        yield
        return
    writer = _Writer(connection, depth)
    for name, what in _EVENTS:
        event.listen(connection, name, getattr(writer, what))
    session.info[_KEY] = writer
    failed = True
    try:
        with _quick_turns():
            yield
            writer.settle()
        failed = False
    finally:
        del session.info[_KEY]
        for name, what in _EVENTS:
            event.remove(connection, name, getattr(writer, what))
        writer.stop(discard=failed)


def _shared_across_threads(connection: Connection) -> bool:
    """Whether the driver's connection may be used from the writer's thread: always but for
    an SQLite connection SQLAlchemy opens with ``check_same_thread`` (a database in memory,
    or the URL asks for it; a file's it opens without); there the block writes nothing
    behind."""
    if connection.dialect.name != "sqlite":
        return True
    _args, options = connection.dialect.create_connect_args(connection.engine.url)
    return not options.get("check_same_thread", True)


# How long a thread holding Python's lock keeps it while another waits for it, while a writer
# works behind: the writer wants it back each time the database has finished a statement, and
# with Python's 5 ms it spent a third of its time waiting (a million-row import on SQLite took
# 56 s; 48 s with 1 ms, 47 s with 0.5 or 0.1 ms).
_TURN = 0.0005
_turns = {"open": 0, "before": 0.0}
_turns_lock = threading.Lock()


@contextmanager
def _quick_turns() -> Iterator[None]:
    """Python's switch interval at most ``_TURN`` while any block is open (it is the process's:
    the first block to open sets it, the last to close puts the one before back)."""
    with _turns_lock:
        if _turns["open"] == 0:
            _turns["before"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_TURN, _turns["before"]))
        _turns["open"] += 1
    try:
        yield
    finally:
        with _turns_lock:
            _turns["open"] -= 1
            if _turns["open"] == 0:
                sys.setswitchinterval(_turns["before"])


def hand_over(session: Session, write: Write) -> bool:
    """Have ``write`` run behind, if a block is open on ``session``; False when it is not (the
    caller then writes itself)."""
    writer = session.info.get(_KEY)
    if writer is None:
        return False
    writer.hand_over(write)
    return True


def settled(session: Session) -> None:
    """Before using ``session``'s driver connection directly: every insert handed over is
    written (SQLAlchemy's own statements wait by themselves)."""
    writer = session.info.get(_KEY)
    if writer is not None:
        writer.settle()
