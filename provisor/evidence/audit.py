"""Tamper-evident audit log: an append-only chain of events, each holding the previous one's hash.

Does: append audit events (one or many in a batch) inside the caller's transaction, credentials
redacted from their subject and payload before they are hashed, chaining
each to the one before with SHA-256 over its length-prefixed fields (payloads stored as
canonical JSON); keep the chain head in its own row so a deleted tail is noticed; verify the
whole chain and name the first event that was edited, deleted or reordered; re-hash every
recorded lifecycle event against the key its audit entry committed to (an audit entry names the
event by that content hash rather than repeating its attributes) and its status against the
chain, and have the stored decisions (marks, cases, holds, policy versions) checked against it
(``decisions``); export a time range as JSON
Lines or CSV (cells a spreadsheet would run as formulas neutralised).
Does not: decide what is worth auditing (callers do), or commit.
"""

from __future__ import annotations

import csv
import dataclasses
import getpass
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from provisor.domain.lifecycle import EventKind, canonical_json, event_key
from provisor.domain.spreadsheet import safe_row
from provisor.evidence import decisions
from provisor.redaction import redact, redact_data
from provisor.store.db import bulk_insert
from provisor.store.models import AuditEvent, AuditHead, IdentityEvent

GENESIS = "0" * 64
# The columns of an audit event, in the order they are written and exported.
EXPORT_FIELDS = ("seq", "at", "actor", "action", "subject", "data", "prev_hash", "hash")


# the person the service signed in for the work running now (``acting_as``)
_signed_in: ContextVar[str | None] = ContextVar("provisor_signed_in", default=None)


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Within the block, ``current_actor()`` is ``name``: the service binds the authenticated
    operator around each request, so every audit entry the engine writes names them."""
    token = _signed_in.set(name)
    try:
        yield
    finally:
        _signed_in.reset(token)


def current_actor() -> str:
    """Who is acting: the signed-in operator inside ``acting_as``, else ``PROVISOR_ACTOR`` when
    set (services, automation), else the OS user."""
    signed_in = _signed_in.get()
    if signed_in:
        return signed_in
    configured = os.environ.get("PROVISOR_ACTOR")
    if configured:
        return configured
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def chain_hash(
    seq: int, at: datetime, actor: str, action: str, subject: str, data: str, prev: str
) -> str:
    """SHA-256 over every field of an event and the previous event's hash."""
    return _link(_stamp(at, actor), seq, action, subject, data, prev)


def _stamp(at: datetime, actor: str) -> str:
    """The time and actor fields, which a whole batch shares, encoded as ``_link`` hashes them."""
    when = at.astimezone(UTC).isoformat()
    return f"{len(when)}:{when}{len(actor)}:{actor}"


def _link(stamp: str, seq: int, action: str, subject: str, data: str, prev: str) -> str:
    # Each field is written as its length, a colon and itself, so no two different events
    # share an encoding (cheaper than JSON-encoding the list of fields, and as unambiguous).
    number = str(seq)
    payload = (
        f"{stamp}{len(number)}:{number}{len(action)}:{action}{len(subject)}:{subject}"
        f"{len(data)}:{data}{len(prev)}:{prev}"
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """An audit event to append; ``data`` is the payload, or its ``canonical_json`` text when
    the caller has built that already (then only of Provisor's own structured values: ids,
    keys, dates, states; it is stored as given, while a mapping's text is redacted)."""

    action: str
    subject: str
    data: Mapping[str, Any] | str


def _head(session: Session) -> AuditHead:
    head = session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = AuditHead(id=1, seq=0, hash=GENESIS)
        session.add(head)
        session.flush()
    return head


def head_for_update(session: Session) -> AuditHead:
    """The chain's head row, locked for the rest of the transaction (PostgreSQL), so an event
    appended in the same transaction follows exactly the head that was read."""
    return _head(session)


class Chain:
    """Appends to the audit chain, batch after batch, inside the caller's transaction: the
    head is read (and locked) once, when the chain is made; each batch moves it on in memory
    only, and ``close`` writes it. A caller appending many batches (an import) thus asks
    nothing of the database between them, and its inserts can be written behind
    (``store.write_behind``). Another append in the same transaction before ``close`` reads
    the head as moved (the session holds it) and writes it on; ``close`` then writes the
    later one. Between making and closing a chain the session keeps its head: no expunge,
    expiry or savepoint rollback (which would read the head back from the database)."""

    def __init__(
        self, session: Session, *, actor: str | None = None, at: datetime | None = None
    ) -> None:
        self._session = session
        self.head = _head(session)
        who = actor or current_actor()
        when = (at or datetime.now(UTC)).astimezone(UTC)
        self._fields = (when, who, _stamp(when, who))
        self._moved = False

    def add(self, entries: Iterable[Entry]) -> str:
        """Append ``entries`` in order; returns the new head hash."""
        head = self.head
        when, who, stamp = self._fields
        seq, prev = head.seq, head.hash
        rows: list[tuple[Any, ...]] = []
        for entry in entries:
            seq += 1
            if isinstance(entry.data, str):
                # prebuilt canonical JSON: the lifecycle service's own fields (event keys,
                # dates, states, the feed's file and line), written for every event of an
                # import; stored as given, so that no key or date it holds is ever altered
                data, subject = entry.data, entry.subject
            else:
                data = canonical_json(redact_data(dict(entry.data)))
                subject = redact(entry.subject)
            digest = _link(stamp, seq, entry.action, subject, data, prev)
            rows.append((seq, when, who, entry.action, subject, data, prev, digest))
            prev = digest
        if rows:
            bulk_insert(self._session, AuditEvent, EXPORT_FIELDS, rows)
            # moved as if read so: the session's flushes leave it to ``close``
            set_committed_value(head, "seq", seq)
            set_committed_value(head, "hash", prev)
            self._moved = True
        return prev

    def close(self) -> str:
        """The head written; returns its hash."""
        head = self.head
        if self._moved:
            self._session.execute(
                update(AuditHead)
                .where(AuditHead.id == head.id)
                .values(seq=head.seq, hash=head.hash)
            )
            self._moved = False
        return head.hash


def append(
    session: Session,
    entries: Iterable[Entry],
    *,
    actor: str | None = None,
    at: datetime | None = None,
) -> str:
    """Append ``entries`` in order; returns the new chain head hash."""
    chain = Chain(session, actor=actor, at=at)
    chain.add(entries)
    return chain.close()


def record(
    session: Session,
    action: str,
    subject: str,
    data: Mapping[str, Any],
    *,
    actor: str | None = None,
) -> str:
    """Append one audit event; returns the new chain head hash."""
    return append(session, [Entry(action, subject, data)], actor=actor)


@dataclass(frozen=True)
class Verification:
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad: int | None = None  # the first bad audit event; None when a lifecycle event is
    problem: str = ""
    checkpoints: int = 0  # signed checkpoints the chain was held to
    protected_through: int = 0  # the newest event a signed checkpoint covers
    unprotected: int = 0  # events after it: the tail no signature covers yet
    # False when the signed checkpoints could not be read or checked at all (no key): the log
    # is then neither shown intact nor shown tampered
    checkable: bool = True

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify(session: Session, signed: Mapping[int, str] | None = None) -> Verification:
    """Walk the whole chain; the first inconsistency is reported with its sequence number.

    ``signed`` (sequence number -> hash, from signed checkpoints) holds the chain to what was
    signed: a history rewritten and re-chained, or a tail deleted along with the head, no
    longer matches it."""
    signed = signed or {}
    expected_seq, prev = 1, GENESIS
    count = 0
    rows = session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()
    for event in rows.yield_per(5000):
        count += 1
        problem = _link_problem(event, expected_seq, prev, signed)
        if problem is not None:
            bad = min(event.seq, expected_seq)
            return Verification(False, count, bad - 1, prev, bad, problem)
        prev = event.hash
        expected_seq += 1
    last = expected_seq - 1
    beyond = [seq for seq in signed if seq > last]
    head = session.get(AuditHead, 1)
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    problem = None
    if beyond:
        problem = (
            f"the log ends at event {last} but a signed checkpoint covers event "
            f"{max(beyond)}: events at the end were deleted"
        )
    elif (head_seq, head_hash) != (last, prev):
        problem = (
            f"the chain head says event {head_seq} is the newest but the log ends at {last}: "
            "events at the end were deleted or replaced"
        )
    if problem is not None:
        return Verification(False, count, last, prev, last + 1, problem)
    problem = _check_events(session) or decisions.problem(session)
    if problem is not None:
        return Verification(False, count, last, prev, None, problem)
    covered = max(signed, default=0)
    return Verification(True, count, last, prev, None, "", len(signed), covered, last - covered)


def _link_problem(
    event: AuditEvent, expected_seq: int, prev: str, signed: Mapping[int, str]
) -> str | None:
    """What is wrong with one link of the chain, or None."""
    if event.seq != expected_seq:
        return f"event {expected_seq} is missing (next event found is {event.seq}): deleted"
    if event.prev_hash != prev:
        return (
            f"event {event.seq} does not follow event {event.seq - 1}: "
            "an earlier event was edited, removed or reordered"
        )
    digest = chain_hash(
        event.seq, event.at, event.actor, event.action, event.subject, event.data, prev
    )
    if digest != event.hash:
        return (
            f"event {event.seq} ({event.action} {event.subject}) was edited: "
            "its content no longer matches its hash"
        )
    if event.seq in signed and signed[event.seq] != event.hash:
        return (
            f"event {event.seq} is not the one a signed checkpoint recorded: the history up "
            "to it was rewritten"
        )
    return None


def _check_events(session: Session) -> str | None:
    """Every stored lifecycle event still hashes to its key and has the status the chain last
    gave it (recorded accepted or held; approved or rejected with its hold), and the chain
    records exactly the stored events: none edited, deleted, or slipped in without an audit
    entry."""
    status = _statuses(session)
    audited = set(status)
    rows = session.execute(select(IdentityEvent).order_by(IdentityEvent.id)).scalars()
    for row in rows.yield_per(5000):
        if row.key in status and row.status != status[row.key]:
            return (
                f"lifecycle event {row.key} of {row.identity} is {row.status!r} but the audit "
                f"log made it {status[row.key]!r}: its status was edited outside Provisor"
            )
        content = event_key(
            row.identity, EventKind(row.kind), row.effective_at, row.attributes or {}, row.ref
        )
        if content != row.key:
            return (
                f"lifecycle event {row.key} of {row.identity} was edited: its content no "
                "longer matches the key the audit log recorded"
            )
        if row.key not in audited:
            return (
                f"lifecycle event {row.key} of {row.identity} has no audit entry: it was "
                "written outside Provisor"
            )
        audited.discard(row.key)
    if audited:
        return f"lifecycle event {sorted(audited)[0]} is in the audit log but was deleted"
    return None


_DECIDED = {"hold.created": "held", "hold.approved": "accepted", "hold.rejected": "rejected"}


def _statuses(session: Session) -> dict[str, str]:
    """Each lifecycle event's status as the chain last set it, by event key: as recorded
    (accepted or held), held by a hold opened later (a tick's), approved or rejected."""
    status: dict[str, str] = {}
    query = (
        select(AuditEvent.action, AuditEvent.data)
        .where(AuditEvent.action.like("lifecycle.%") | AuditEvent.action.in_(list(_DECIDED)))
        .order_by(AuditEvent.seq)
    )
    for action, data in session.execute(query).yield_per(5000):
        payload = json.loads(data)
        if action in _DECIDED:
            for key in payload.get("events") or []:
                status[key] = _DECIDED[action]
        elif payload.get("event"):
            status[payload["event"]] = payload.get("status") or "accepted"
    return status


def export(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    fmt: Literal["jsonl", "csv"] = "jsonl",
) -> Iterator[str]:
    """Lines of the export (each ending with a newline), oldest first."""
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    buffer = io.StringIO()
    # RFC 4180 line ends: a value holding a carriage return is quoted, not split
    writer = csv.writer(buffer, lineterminator="\r\n")
    if fmt == "csv":
        writer.writerow(EXPORT_FIELDS)
        yield buffer.getvalue()
    for event in session.execute(query).scalars().yield_per(5000):
        values = {
            "seq": event.seq,
            "at": event.at.isoformat(),
            "actor": event.actor,
            "action": event.action,
            "subject": event.subject,
            "data": event.data,
            "prev_hash": event.prev_hash,
            "hash": event.hash,
        }
        if fmt == "jsonl":
            yield json.dumps({**values, "data": json.loads(event.data)}, ensure_ascii=False) + "\n"
        else:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(safe_row(values[f] for f in EXPORT_FIELDS))
            yield buffer.getvalue()
