"""Executing one operation: read, write only when the account does not show it yet, read back.

Does: find the account an operation is about (refusing one that belongs to someone else, one
matched by name alone that may not be taken over, or one holding a generated user name that
is not this person's by the target's correlation attributes), read it, make the change through the
connector, read it back and judge: ``verified`` only when the read shows the intent,
``unverifiable`` when the read cannot show it; record what a failure means (retry, or parked).
Does not: touch the journal or the store (the runner does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    Capability,
    Conflict,
    Connector,
    ConnectorError,
    PermanentError,
    RetryableError,
    Unavailable,
)
from provisor.domain.plan import REMOVALS, OpKind
from provisor.domain.policy import TargetDef
from provisor.domain.readback import adoption_refusal, unmet, unshowable
from provisor.engine.correlate import account_value, norm

NOTHING_WRITTEN = "already as intended; nothing written"  # an operation's note: no write made


@dataclass(frozen=True)
class Job:
    """One open operation, detached from the database session for a worker thread."""

    id: int
    key: str
    identity: str
    target: str
    account: str | None
    kind: OpKind
    entitlement: str | None
    not_before: datetime | None
    next_attempt_at: datetime | None
    attempts: int

    def due(self, now: datetime) -> bool:
        return (self.not_before is None or self.not_before <= now) and (
            self.next_attempt_at is None or self.next_attempt_at <= now
        )


@dataclass
class Outcome:
    job: Job
    status: str  # verified | unverifiable | retry | failed
    record: AccountRecord | None = None
    note: str | None = None
    wrote: bool = False
    retry_after: float | None = None
    at: datetime | None = None
    refused: AccountRecord | None = None  # an account not adopted: a case to open for it
    # a generated user name held by an account that is not this person's: (name, account)
    taken: tuple[str, str] | None = None
    down: bool = False  # the target was unavailable (what its circuit breaker counts)


class _Mismatch(PermanentError):
    """The write was accepted but the read-back does not show it."""


class NameTaken(RetryableError):
    """The user name made for this person (a generated value) is held in the target by an
    account that is not theirs by the target's correlation attributes: it is never taken
    over; the person is given the next name and the operation tried again with it."""

    def __init__(self, message: str, user_name: str, account: str) -> None:
        super().__init__(message, retry_after=0.0)
        self.user_name, self.account = user_name, account


def _not_theirs(job: Job, spec: AccountSpec, found: AccountRecord | None) -> NameTaken:
    account = found.account if found is not None else "unknown"
    holder = found.external_id if found is not None and found.external_id else "nobody here"
    return NameTaken(
        f"{job.target}: the user name {spec.user_name} made for {job.identity} is held by "
        f"account {account} (linked to {holder}), which is not theirs: it is not taken over, "
        f"and {job.identity} is given the next name",
        spec.user_name,
        account,
    )


def owned_by(target: TargetDef, spec: AccountSpec) -> Owns:
    """Whether an account found by ``spec``'s (generated) user name is this person's: by the
    first of the target's correlation attributes both sides have, other than the name; None
    when no such attribute can be compared (the adoption rule decides then)."""

    def owns(record: AccountRecord) -> bool | None:
        for attr in target.correlation:
            if attr in ("id", "account") or attr == target.user_name_from:
                continue
            mine = spec.attributes.get(attr)
            theirs = account_value(
                target,
                attr,
                record.account,
                record.user_name,
                record.external_id,
                record.attributes,
            )
            if mine not in (None, "") and theirs not in (None, ""):
                return norm(mine) == norm(theirs)
        return None

    return owns


Owns = Callable[[AccountRecord], bool | None]


class AdoptionRefused(PermanentError):
    """An existing account matched by name alone may not be taken over without a person: a
    correlation case is opened with what was found, and nothing is written to it."""

    def __init__(self, message: str, record: AccountRecord) -> None:
        super().__init__(message)
        self.record = record


def _clash(job: Job, spec: AccountSpec, owner: str | None) -> str:
    return (
        f"{job.target}: an account named {spec.user_name} already exists and belongs to "
        f"{owner or 'someone unknown'}, not {job.identity}; resolve the clash in the target"
    )


def execute(
    job: Job,
    connector: Connector,
    spec: AccountSpec,
    known: AccountRecord | None = None,
    due: frozenset[str] | None = None,
    owns: Owns | None = None,
) -> Outcome:
    """Do one operation if the account does not show it yet; read back; judge.

    ``known`` is the account as the previous step of the same run read it back, which saves
    reading it again before writing; ``due`` the entitlements the identity is to have in the
    target (an existing account matched by name alone holding more is not taken over; None:
    taken over as found, for callers outside a plan); ``owns``, when the user name was
    generated, whether an account found by it is this person's (``owned_by``): one that is
    not raises ``NameTaken``, never taken over.
    Raises ``ConnectorError`` on failure."""
    kind = job.kind
    account = job.account
    if kind is OpKind.REVOKE_SESSIONS and Capability.SESSIONS not in connector.capabilities():
        record = connector.read(account) if account else None
        note = (
            f"{job.target} has no session interface: open sessions cannot be revoked or seen "
            "from here"
        )
        return Outcome(job, "unverifiable", record, note)
    adopt = False  # an account found by name alone, not yet stamped with the identity id
    if account is None:
        located = _locate(job, connector, spec, due, owns)
        if isinstance(located, Outcome):
            return located
        account, adopt = located
    if known is not None and known.account == account:
        before: AccountRecord | None = known
    else:
        before = connector.read(account) if account else None
    if kind is OpKind.CREATE and adopt and account is not None:
        return _adopt(job, connector, spec, account)
    if unshowable(kind, job.entitlement, before) is None and (
        unmet(job.kind, job.entitlement, before, spec) is None
    ):
        return Outcome(job, "verified", before, NOTHING_WRITTEN)
    if before is None and kind in REMOVALS:
        return Outcome(job, "verified", None, "the account no longer exists")
    if kind is OpKind.CREATE:
        account, adopt = _create(job, connector, spec, due, owns)
        if adopt:
            return _adopt(job, connector, spec, account)
    elif account is None:
        raise PermanentError(f"{job.target}: no account for {job.identity}")
    else:
        account = _write(job, connector, spec, account)
    return _read_back(job, connector, spec, account)


def _locate(
    job: Job,
    connector: Connector,
    spec: AccountSpec,
    due: frozenset[str] | None,
    owns: Owns | None,
) -> tuple[str | None, bool] | Outcome:
    """The account a job without one is about, and whether it would be taken over (found by
    name alone); or the outcome when there is nothing to do."""
    found = connector.find(spec)
    if found is not None and _taken(job, found, owns):
        raise _not_theirs(job, spec, found)
    if found is not None and found.external_id not in (None, job.identity):
        raise PermanentError(_clash(job, spec, found.external_id))
    if found is None and job.kind is not OpKind.CREATE:
        if job.kind is OpKind.DELETE:
            return Outcome(job, "verified", None, "no such account: nothing to delete")
        raise PermanentError(f"{job.target}: no account for {job.identity} to {job.kind.value}")
    adopt = found is not None and found.external_id is None
    if adopt and found is not None:
        _may_adopt(job, spec, found, due)
    return (found.account if found else None), adopt


def _write(job: Job, connector: Connector, spec: AccountSpec, account: str) -> str:
    """Make the change on an existing account; returns its id afterwards (a rename may
    change it)."""
    kind = job.kind
    if kind is OpKind.UPDATE:
        return connector.update(account, spec)  # a new id when the target renamed it
    if kind in (OpKind.ENABLE, OpKind.DISABLE):
        connector.set_enabled(account, kind is OpKind.ENABLE)
    elif kind is OpKind.ADD_ENTITLEMENT:
        assert job.entitlement is not None
        connector.add_entitlement(account, job.entitlement)
    elif kind is OpKind.REMOVE_ENTITLEMENT:
        assert job.entitlement is not None
        connector.remove_entitlement(account, job.entitlement)
    elif kind is OpKind.REVOKE_SESSIONS:
        connector.revoke_sessions(account)
    elif kind is OpKind.DELETE:
        connector.delete(account)
    return account


def _read_back(job: Job, connector: Connector, spec: AccountSpec, account: str) -> Outcome:
    """Read the account after a write and judge it: verified only when the read shows it."""
    after = connector.read(account)
    blind = unshowable(job.kind, job.entitlement, after)
    if blind is not None:
        note = f"written, but the read-back cannot show it: {blind}"
        return Outcome(job, "unverifiable", after, note, wrote=True)
    problem = unmet(job.kind, job.entitlement, after, spec)
    if problem is not None:
        raise _Mismatch(
            f"{job.target}: {job.kind.value} was accepted but the read-back disagrees: {problem}"
        )
    return Outcome(job, "verified", after, None, wrote=True)


def failure_of(job: Job, exc: Exception) -> Outcome:
    """What a failed operation records: retried later when the target said so."""
    if isinstance(exc, AdoptionRefused):
        return Outcome(job, "failed", note=str(exc), refused=exc.record)
    if isinstance(exc, NameTaken):
        taken = (exc.user_name, exc.account)
        return Outcome(job, "retry", note=str(exc), retry_after=0.0, taken=taken)
    if isinstance(exc, RetryableError):
        down = isinstance(exc, Unavailable)
        return Outcome(job, "retry", note=str(exc), retry_after=exc.retry_after, down=down)
    if isinstance(exc, ConnectorError):
        return Outcome(job, "failed", note=str(exc))
    return Outcome(job, "failed", note=f"{type(exc).__name__}: {exc}")


def _may_adopt(
    job: Job, spec: AccountSpec, found: AccountRecord, due: frozenset[str] | None
) -> None:
    """Raise ``AdoptionRefused`` when an account matched by name alone may not be taken over."""
    if due is None:
        return
    refusal = adoption_refusal(found, due, spec.enabled)
    if refusal is not None:
        raise AdoptionRefused(
            f"{job.target}: an existing account {found.account} ({found.user_name}) matches "
            f"{job.identity} by name only and is not taken over: {refusal}; a correlation case "
            "is open for a person to decide ('provisor cases'), nothing is written to it",
            found,
        )


def _taken(job: Job, found: AccountRecord | None, owns: Owns | None) -> bool:
    """Whether a generated user name is held by an account that is not this person's
    (``found``: the account holding it; None: a conflict with one that cannot be found)."""
    if owns is None:
        return False
    if found is None:
        return True
    if found.external_id is not None:
        return found.external_id != job.identity
    return owns(found) is False  # None: it cannot be told; the adoption rule decides


def _create(
    job: Job,
    connector: Connector,
    spec: AccountSpec,
    due: frozenset[str] | None,
    owns: Owns | None,
) -> tuple[str, bool]:
    """Create the account; on a name already taken by the same person's account (or an
    unclaimed one that may be adopted) use that one. Returns the account and whether it was
    taken over."""
    try:
        return connector.create(spec), False
    except Conflict:
        existing = connector.find(spec)
        if _taken(job, existing, owns):
            raise _not_theirs(job, spec, existing) from None
        if existing is not None and existing.external_id == job.identity:
            return existing.account, False
        if existing is not None and existing.external_id is None:
            _may_adopt(job, spec, existing, due)
            return existing.account, True
        raise PermanentError(
            _clash(job, spec, existing.external_id if existing else None)
        ) from None


def _adopt(job: Job, connector: Connector, spec: AccountSpec, account: str) -> Outcome:
    """Take over an account that matched by name only: stamp it with the identity id (where
    the target can hold one) so later matches are certain, and read it back."""
    note = "adopted an existing account that matched by user name"
    wrote = False
    if {Capability.UPDATE, Capability.EXTERNAL_ID} <= connector.capabilities():
        account = connector.update(account, spec)
        wrote = True
        note += "; stamped it with the identity id"
    after = connector.read(account)
    if after is None:
        raise _Mismatch(f"{job.target}: the adopted account {account} is gone")
    return Outcome(job, "verified", after, note, wrote=wrote)
