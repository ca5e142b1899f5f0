"""Decisions held to the audit log: account marks, correlation cases, holds, policy versions and
the journal's finished operations as the database stores them must be what the chain last
recorded of them.

Does: replay the audit entries that record each such decision (``account.marked`` and
``account.unmarked``; ``case.opened``, ``case.resolved`` and ``case.dismissed``;
``hold.created``, ``hold.approved``, ``hold.rejected`` and ``hold.superseded``;
``policy.changed``; ``operation.verified``, ``operation.unverifiable``, ``operation.cancelled``
and ``task.verified``) and compare the stored rows with the outcome, naming the first row edited,
added or removed in the database without its audit entry; check that each stored policy
version still hashes to its digest.
Does not: walk or check the chain itself, or lifecycle events (``provisor.evidence.audit``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.store.bulk import chunks
from provisor.store.models import (
    AccountMark,
    AuditEvent,
    CorrelationCase,
    Hold,
    Operation,
    PolicyVersion,
)

# the journal's finished statuses and the entries that record them (the runner's outcome, a
# second person's attestation of a manual task, a cancellation by a plan, a mark or a person;
# a rejected hold lists its operations); nothing changes such a row afterwards
FINISHED = {
    "operation.verified": "verified",
    "operation.unverifiable": "unverifiable",
    "operation.cancelled": "cancelled",
    "task.verified": "verified",
}

ACTIONS = (
    "account.marked",
    "account.unmarked",
    "case.opened",
    "case.resolved",
    "case.dismissed",
    "hold.created",
    "hold.approved",
    "hold.rejected",
    "hold.superseded",
    "policy.changed",
    *FINISHED,
)


class _Replay:
    """What the chain says each decision is now."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], tuple[str, datetime | None]] = {}
        self.cases: dict[int, tuple[str, str | None]] = {}  # id -> (status, identity)
        self.holds: dict[int, str] = {}  # id -> status
        self.policies: set[str] = set()  # digests
        self.finished: dict[str, str] = {}  # operation key -> verified | unverifiable
        self.held: set[str] = set()  # operation keys written held by the removal guard
        self.released: set[str] = set()  # ... and those an approval or rejection released

    def take(self, action: str, subject: str, data: dict[str, Any]) -> None:
        if action.startswith("hold."):
            self._hold(action, subject, data)
        elif action == "account.marked":
            expires = data.get("expires")
            when = datetime.fromisoformat(expires) if expires else None
            self.marks[(data["target"], data["account"])] = (data["mark"], when)
        elif action == "account.unmarked":
            self.marks.pop((data["target"], data["account"]), None)
        elif action == "case.opened":
            self.cases[int(data["case"])] = ("open", None)
        elif action == "case.resolved":
            self.cases[int(data["case"])] = ("resolved", data.get("identity"))
        elif action == "case.dismissed":
            self.cases[int(data["case"])] = ("dismissed", None)
        elif action == "policy.changed":
            self.policies.add(str(data.get("digest")))
        elif action == "operation.planned":
            if data.get("held") or data.get("status") == "held":
                self.held.add(str(data.get("key")))
        elif action in FINISHED:
            key = data.get("operation" if action == "task.verified" else "key")
            if key:
                self.finished[str(key)] = FINISHED[action]

    def _hold(self, action: str, subject: str, data: dict[str, Any]) -> None:
        hold = _hold_id(subject)
        if action == "hold.created":
            self.holds[hold] = "open"
        elif action == "hold.superseded":
            self.holds[hold] = "superseded"
        elif action in ("hold.approved", "hold.rejected"):
            verdict = "approved" if action == "hold.approved" else "rejected"
            self.holds[hold] = "partial" if data.get("remaining") else verdict
            self.released.update(str(key) for key in data.get("operations") or [])
            if action == "hold.rejected":
                for key in data.get("operations") or []:
                    self.finished[str(key)] = "cancelled"


def _hold_id(subject: str) -> int:
    return int(subject.removeprefix("hold ").strip())


def _replayed(session: Session) -> _Replay:
    replay = _Replay()
    query = (
        select(AuditEvent.action, AuditEvent.subject, AuditEvent.data)
        .where(AuditEvent.action.in_(ACTIONS))
        .order_by(AuditEvent.seq)
    )
    for action, subject, data in session.execute(query).yield_per(5000):
        replay.take(action, subject, json.loads(data))
    # of the planned operations, only those written held matter here (their entry says so)
    planned = select(AuditEvent.action, AuditEvent.subject, AuditEvent.data).where(
        AuditEvent.action == "operation.planned", AuditEvent.data.contains('"held"')
    )
    for action, subject, data in session.execute(planned).yield_per(5000):
        replay.take(action, subject, json.loads(data))
    return replay


def problem(session: Session) -> str | None:
    """The first decision stored otherwise than the chain recorded it, or None."""
    replay = _replayed(session)
    return next(_problems(session, replay), None)


def _problems(session: Session, replay: _Replay) -> Iterator[str]:
    yield from _marks(session, replay)
    yield from _cases(session, replay)
    yield from _holds(session, replay)
    yield from _policies(session, replay)
    yield from _operations(session, replay)


def _marks(session: Session, replay: _Replay) -> Iterator[str]:
    stored = {(m.target, m.account): m for m in session.execute(select(AccountMark)).scalars()}
    for key, row in stored.items():
        expected = replay.marks.get(key)
        if expected is None:
            yield f"the mark on {key[0]}:{key[1]} has no audit entry: written outside Provisor"
        elif (row.mark, row.expires_at) != expected:
            yield (
                f"the mark on {key[0]}:{key[1]} is {row.mark!r} (expires {row.expires_at}) but "
                f"the audit log made it {expected[0]!r} (expires {expected[1]}): edited outside "
                "Provisor"
            )
    for key in replay.marks.keys() - stored.keys():
        yield f"the mark on {key[0]}:{key[1]} was removed outside Provisor"


def _cases(session: Session, replay: _Replay) -> Iterator[str]:
    for case in session.execute(select(CorrelationCase)).scalars():
        expected = replay.cases.get(case.id)
        if expected is None:
            yield f"correlation case {case.id} has no audit entry: written outside Provisor"
        elif (case.status, case.resolved_identity) != expected:
            yield (
                f"correlation case {case.id} is {case.status} ({case.resolved_identity}) but "
                f"the audit log made it {expected[0]} ({expected[1]}): edited outside Provisor"
            )


def _holds(session: Session, replay: _Replay) -> Iterator[str]:
    for hold in session.execute(select(Hold)).scalars():
        expected = replay.holds.get(hold.id)
        if expected is None:
            yield f"hold {hold.id} has no audit entry: written outside Provisor"
        elif hold.status != expected:
            yield (
                f"hold {hold.id} is {hold.status} but the audit log made it {expected}: "
                "edited outside Provisor"
            )


def _operations(session: Session, replay: _Replay) -> Iterator[str]:
    """A journal row is verified, unverifiable or cancelled exactly when the chain recorded it
    so: a failed removal made to look verified, a leaver's pending removal cancelled by hand, or
    a verified one made to run again, is named."""
    op = Operation
    query = select(op.key, op.status).where(op.status.in_(set(FINISHED.values())))
    stored = {key: status for key, status in session.execute(query)}
    for key, status in stored.items():
        said = replay.finished.get(key)
        if said != status:
            yield (
                f"operation {key} is {status} but the audit log "
                + (f"made it {said}" if said else "never recorded that")
                + ": edited outside Provisor"
            )
    yield from _left_hold(session, replay)
    for key, said in replay.finished.items():
        if key not in stored:
            yield (
                f"operation {key} was recorded {said} in the audit log but the journal no "
                "longer says so: edited or removed outside Provisor"
            )


def _left_hold(session: Session, replay: _Replay) -> Iterator[str]:
    """An operation written held leaves its hold only by a person's decision or by a plan
    cancelling it: one set going (or its hold cleared) by hand is named."""
    waiting = (
        replay.held
        - replay.released
        - {key for key, said in replay.finished.items() if said == "cancelled"}
    )
    op = Operation
    for part in chunks(sorted(waiting)):
        query = select(op.key, op.status, op.hold_id).where(op.key.in_(part))
        for key, status, hold_id in session.execute(query):
            if status != "held" or hold_id is None:
                yield (
                    f"operation {key} was written held but is {status} with no decision on "
                    "its hold in the audit log: released outside Provisor"
                )


def _policies(session: Session, replay: _Replay) -> Iterator[str]:
    for version in session.execute(select(PolicyVersion)).scalars():
        if version.digest not in replay.policies:
            yield f"policy version {version.digest[:12]} has no audit entry: written outside"
        elif hashlib.sha256(version.document.encode()).hexdigest() != version.digest:
            yield (
                f"policy version {version.digest[:12]} no longer hashes to its digest: its "
                "text was edited outside Provisor"
            )
