"""The audit log held to its signed checkpoints, and evidence bundles checked against both.

Does: verify the hash chain against every trusted checkpoint (read from the file outside the
database, each signature checked with the workspace's key) and report the unprotected tail
(``verify_log``); check an evidence bundle offline (``verify_bundle``): its SHA-256 recorded by
an ``evidence.leaver`` event of an intact chain, the chain head the bundle names present in
the log, and that event covered by a signed checkpoint.
Does not: make checkpoints (``Workspace.checkpoint`` does), read targets, or print.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError
from provisor.evidence import audit, checkpoints
from provisor.store.models import AuditEvent


def _trusted(workspace: Workspace, session: Session) -> checkpoints.Trusted:
    """The checkpoints to hold the chain to. With no key anywhere and no checkpoint ever made
    there is nothing to hold it to; a key gone while checkpoints exist is a problem."""
    key_file = workspace.path / workspace.config.audit.signing_key
    has_key = key_file.exists() or bool(os.environ.get(checkpoints.KEY_VARIABLE))
    if not has_key:
        if workspace.signed_before(session):
            return checkpoints.Trusted(
                [],
                [
                    f"the audit signing key ({key_file} or {checkpoints.KEY_VARIABLE}) is "
                    "missing: the signed checkpoints cannot be checked"
                ],
                unkeyed=True,
            )
        return checkpoints.Trusted([], [])
    return checkpoints.trusted(session, workspace.signer(create=False), workspace.checkpoint_file)


def _one_moment(session: Session) -> None:
    """Make every read of ``session`` see the database at one moment, so that a plan or a run
    committing meanwhile (``provisor run`` beside the check) cannot pass for tampering: a
    repeatable-read transaction on PostgreSQL, one read transaction on SQLite."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    elif dialect == "sqlite":
        session.connection().exec_driver_sql("BEGIN")


def verify_log(workspace: Workspace) -> audit.Verification:
    """The whole chain, held to every trusted signed checkpoint. Without the key to check them
    the result is not ok and not checkable: neither intact nor tampered is shown."""
    with workspace.sessions() as session:
        _one_moment(session)
        trust = _trusted(workspace, session)
        result = audit.verify(session, trust.signed)
    if trust.unkeyed and result.ok:
        return dataclasses.replace(
            result, ok=False, checkable=False, problem="; ".join(trust.problems)
        )
    if trust.problems and result.ok:
        return dataclasses.replace(result, ok=False, problem="; ".join(trust.problems))
    return result


@dataclass
class BundleCheck:
    """What checking one evidence bundle against the log showed."""

    file: str
    sha256: str
    ok: bool = False
    identity: str | None = None
    event_seq: int | None = None  # the evidence.leaver event that recorded the hash
    checkpoint_seq: int | None = None  # the newest signed checkpoint, covering that event
    problems: list[str] = field(default_factory=list)
    chain: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify_bundle(workspace: Workspace, path: Path) -> BundleCheck:
    """Check the bundle at ``path`` against the audit log and the signed checkpoints."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotFoundError(f"cannot read the evidence bundle {path}: {exc.strerror}") from None
    check = BundleCheck(str(path), hashlib.sha256(data).hexdigest())
    try:
        bundle = json.loads(data)
        named = bundle["audit"]
        check.identity = str(bundle["identity"]["id"])
    except (ValueError, KeyError, TypeError):
        check.problems.append(f"{path.name} is not an evidence bundle (no identity or audit part)")
        return check
    chain = verify_log(workspace)
    check.chain = chain.as_dict()
    if not chain.ok:
        check.problems.append(f"the audit log fails verification: {chain.problem}")
    with workspace.sessions() as session:
        event = _recording_event(session, check.sha256)
        if event is None:
            check.problems.append(
                "no evidence.leaver event records this file's SHA-256: the file was changed "
                "after it was written, or its event was removed from the log"
            )
        else:
            _check_event(session, check, event, named, chain)
    check.ok = not check.problems
    return check


def _recording_event(session: Session, digest: str) -> AuditEvent | None:
    query = select(AuditEvent).where(
        AuditEvent.action == "evidence.leaver", AuditEvent.data.contains(digest)
    )
    for event in session.execute(query).scalars():
        if json.loads(event.data).get("sha256") == digest:
            return event
    return None


def _check_event(
    session: Session,
    check: BundleCheck,
    event: AuditEvent,
    named: dict[str, Any],
    chain: audit.Verification,
) -> None:
    """The event matches the bundle, the head the bundle names is in the log, and a signed
    checkpoint covers the event."""
    check.event_seq = event.seq
    recorded = json.loads(event.data)
    if event.subject != check.identity:
        check.problems.append(
            f"the log recorded this bundle for {event.subject}, not {check.identity}"
        )
    head_seq, head_hash = named.get("head_seq"), named.get("head_hash")
    if (recorded.get("head_seq"), recorded.get("head_hash")) != (head_seq, head_hash):
        check.problems.append("the bundle names another chain head than its event recorded")
    if head_seq:
        at_head = session.get(AuditEvent, head_seq)
        if at_head is None or at_head.hash != head_hash:
            check.problems.append(
                f"the chain head the bundle names (event {head_seq}) is not in the log as it "
                "was: the log was rewritten"
            )
    if chain.ok and chain.protected_through >= event.seq:
        check.checkpoint_seq = chain.protected_through
    else:
        check.problems.append(
            f"no signed checkpoint covers event {event.seq} that recorded the bundle: "
            "nothing proves the log held it"
        )
