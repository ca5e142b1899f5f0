"""SQLAlchemy models: the tables of a Provisor workspace.

Does: declare every table, with the indexes the engine's queries need, portable between SQLite
and PostgreSQL (times stored as naive UTC, JSON as the dialect's JSON type; audit payloads as
canonical JSON text so their hashes never depend on the database).
Does not: hold logic; repositories and services in ``provisor.engine`` and ``provisor.evidence``
read and write these tables. Schema changes go through an Alembic migration in
``provisor/store/migrations``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from provisor.redaction import redact


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class RedactedText(TypeDecorator[str]):
    """Text that may quote a target or a person (errors, reasons, notes): every known
    credential and credential-shaped value is masked before it is stored."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return redact(value) if value else value


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _where_set(column: str) -> dict[str, Any]:
    """A partial index's condition, on both databases: only rows where ``column`` is set."""
    condition = text(f"{column} IS NOT NULL")
    return {"sqlite_where": condition, "postgresql_where": condition}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Identity(Base):
    """Current (materialised) state of an identity; its events are the record of truth."""

    __tablename__ = "identities"
    __table_args__ = (
        # columns most identities leave empty: only the rows that have a value are indexed
        # (every query on them names a value, which implies it is not null)
        *(
            Index(f"ix_identities_{name}", name, **_where_set(name))
            for name in ("owner", "next_change_at", "review_at")
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32), default="human")
    state: Mapped[str | None] = mapped_column(String(16), index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    manager: Mapped[str | None] = mapped_column(String(128))
    owner: Mapped[str | None] = mapped_column(String(128))
    feed: Mapped[str | None] = mapped_column(String(128), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flags: Mapped[list[Any]] = mapped_column(default=list)
    employment_start: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    state_since: Mapped[datetime | None]
    next_change_at: Mapped[datetime | None]
    # when time alone changes the access it should have (a move's grace ends, a pre-start
    # window opens): ``tick`` marks it for planning then
    review_at: Mapped[datetime | None]
    needs_plan: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    # the valid time the row was computed for; events effective later are applied by ``tick``
    materialized_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IdentityEvent(Base):
    """A lifecycle event as reported: valid from ``effective_at``, known from ``recorded_at``."""

    __tablename__ = "identity_events"
    __table_args__ = (
        Index("ix_identity_events_kind_recorded", "kind", "recorded_at"),
        Index("ix_identity_events_hold_id", "hold_id", **_where_set("hold_id")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    identity: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    effective_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ref: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(512), default="")
    # accepted: part of the identity's history; held: waiting for approval (mass-change guard);
    # rejected: refused by an approver, kept for the record.
    status: Mapped[str] = mapped_column(String(16), default="accepted", index=True)
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"))
    import_id: Mapped[int | None] = mapped_column(ForeignKey("imports.id"))
    # the acting person who recorded it (the four-eyes rule on holds reads it)
    recorded_by: Mapped[str | None] = mapped_column(String(256))
    # the local time it was given as (``provisor.domain.days.Local``: 2026-12-31T24:00), when it
    # was: ``effective_at`` is that time in the person's zone, and moves when their zone does
    local_time: Mapped[str | None] = mapped_column(String(32))


class HeldAtTermination(Base):
    """What a person held when a termination took effect (``provisor.domain.held``): what a
    rescind of that termination gives back. Recorded when the termination is first planned."""

    __tablename__ = "held_at_termination"
    __table_args__ = (UniqueConstraint("identity", "termination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(String(128), index=True)
    termination: Mapped[str] = mapped_column(String(64))  # the termination event's key
    terminated_at: Mapped[datetime] = mapped_column(index=True)
    recorded_at: Mapped[datetime]
    grants: Mapped[dict[str, Any]] = mapped_column(default=dict)


class GeneratedValue(Base):
    """A value made for a generated attribute (``provisor.engine.names``): who holds it, since
    when, and when they gave it up; or, with no holder, a value an account that is nobody's
    here holds in a target, never given out. One row per value: the unique key is what keeps
    two writers from giving the same value to two people."""

    __tablename__ = "generated_values"
    __table_args__ = (
        UniqueConstraint("attribute", "value_key"),
        Index("ix_generated_values_holder", "attribute", "identity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    attribute: Mapped[str] = mapped_column(String(128))
    value: Mapped[str] = mapped_column(String(256))
    value_key: Mapped[str] = mapped_column(String(256))  # ``names.key``: case folded
    identity: Mapped[str | None] = mapped_column(String(128))
    stem: Mapped[str | None] = mapped_column(String(256))  # the first candidate, when made
    # what the templates read, when it was made (``names.basis``): a rename is considered
    # only once that changes
    basis: Mapped[str | None] = mapped_column(Text)
    assigned_at: Mapped[datetime]
    released_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)


class SourceRecord(Base):
    """What one feed last said of one person (``provisor.engine.authorities``), when several
    feeds speak for one population: the feed's id for them, linked to the identity they are,
    and the row's attributes, status and dates; ``listed`` while its latest snapshot lists
    them. A person is what the feeds listing them say, each attribute by precedence."""

    __tablename__ = "source_records"
    __table_args__ = (UniqueConstraint("feed", "source_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed: Mapped[str] = mapped_column(String(128))
    source_id: Mapped[str] = mapped_column(String(128))
    identity: Mapped[str] = mapped_column(String(128), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str | None] = mapped_column(String(32))
    start: Mapped[str | None] = mapped_column(String(40))  # a local time's text, or ISO
    ends: Mapped[str | None] = mapped_column(String(40))
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
    seen_at: Mapped[datetime]


class Hold(Base):
    """A change set stopped by the mass-change guard until someone approves it."""

    __tablename__ = "holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime]
    origin: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(RedactedText)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    decided_by: Mapped[str | None] = mapped_column(String(256))
    decided_at: Mapped[datetime | None]
    # events: lifecycle events held (terminations, suspensions); operations: a plan batch held
    # by the removal guard, with what it would do by target and by cause in ``details``
    kind: Mapped[str] = mapped_column(String(16), default="events", server_default="events")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # who caused it (the actor of the run that was stopped): they may not approve it through
    # the service
    created_by: Mapped[str | None] = mapped_column(String(256))


class Import(Base):
    """One run of ``provisor import``: which file, its checksum, and what it did."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    feed: Mapped[str] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)


class PolicyVersion(Base):
    """Every distinct policy the engine has run with, by digest."""

    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    loaded_at: Mapped[datetime]
    files: Mapped[list[Any]] = mapped_column(default=list)
    # checked for credentials before it is stored, and hashed: kept exactly as written
    document: Mapped[str] = mapped_column(Text)


class AuditEvent(Base):
    """Append-only, hash-chained audit log. ``data`` is canonical JSON text."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(512), default="")
    data: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The newest link of the audit chain, so a deleted tail is detected too."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed audit chain head (``provisor.evidence.checkpoints``). The same record is also
    written outside the database, which is the copy ``audit verify`` trusts."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class ObservedAccount(Base):
    """An account as last observed in a target: read back, or imported from its export."""

    __tablename__ = "observed_accounts"
    __table_args__ = (UniqueConstraint("target", "account", name="uq_observed_accounts_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(128))
    account: Mapped[str] = mapped_column(String(512))
    identity: Mapped[str | None] = mapped_column(String(128), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sessions: Mapped[int | None] = mapped_column(Integer)
    observed_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(512), default="")
    # the reconciliation run that last saw the account (a full run that did not see it: gone)
    reconcile_run: Mapped[int | None] = mapped_column(Integer, index=True)
    # ok | drift | orphan | terminated-active | unlinked | unverifiable, with why
    classification: Mapped[str | None] = mapped_column(String(32), index=True)
    classified_detail: Mapped[str | None] = mapped_column(RedactedText)
    classified_at: Mapped[datetime | None]


class ReconcileRun(Base):
    """One reconciliation of one target: full (every account) or incremental (changed since).

    ``checkpoint`` says how far a run got (accounts done, the last one); a run left ``running``
    by a process that died is resumed from there by the next reconciliation of the target."""

    __tablename__ = "reconcile_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(128), index=True)
    mode: Mapped[str] = mapped_column(String(16))  # full | incremental | export
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    since: Mapped[datetime | None]  # incremental: changes after this time
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    checkpoint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(RedactedText)


class CorrelationCase(Base):
    """An account that matched several identities, or one that conflicts with the account id
    already linked: a person decides (``provisor cases``); nothing is linked on a guess."""

    __tablename__ = "correlation_cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(128), index=True)
    account: Mapped[str] = mapped_column(String(512))
    user_name: Mapped[str | None] = mapped_column(String(512))
    candidates: Mapped[list[Any]] = mapped_column(default=list)
    reason: Mapped[str] = mapped_column(RedactedText)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime]
    resolved_identity: Mapped[str | None] = mapped_column(String(128))
    resolved_by: Mapped[str | None] = mapped_column(String(256))
    resolved_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(RedactedText)


class AccountMark(Base):
    """A person's mark on one account: ``protected`` (never touched), ``decommission-later``
    or ``ignore``, with a reason and an expiry."""

    __tablename__ = "account_marks"
    __table_args__ = (UniqueConstraint("target", "account", name="uq_account_marks_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(128))
    account: Mapped[str] = mapped_column(String(512))
    mark: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(RedactedText)
    marked_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]


class DebtSnapshot(Base):
    """Revocation debt totals at one moment (recorded at every reconciliation), for trends."""

    __tablename__ = "debt_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    reconcile_run: Mapped[int | None] = mapped_column(Integer)
    items: Mapped[int] = mapped_column(Integer)
    overdue: Mapped[int] = mapped_column(Integer)
    totals: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TargetReadPath(Base):
    """What probes last showed about one way of reading a target (membership by filter, the
    group listing, ...): trusted, untrusted or untested, with how it was shown. Kept so that
    a path shown to work once is not taken as unknown by the next process."""

    __tablename__ = "target_read_paths"

    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(RedactedText)
    checked_at: Mapped[datetime]


class ObservedEntitlement(Base):
    __tablename__ = "observed_entitlements"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("observed_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    entitlement: Mapped[str] = mapped_column(String(256), primary_key=True)
    observed_at: Mapped[datetime]


# the journal's work not done yet, and its removals: written out, so that a query naming the
# same condition in the same words is answered from the partial indexes below (a database
# cannot tell a bound parameter satisfies an index's condition)
# (the removal kinds are the domain's ``REMOVAL_KINDS``; a test holds the two together)
OPEN_WORK = "status IN ('pending', 'running')"
OPEN_REMOVALS = (
    OPEN_WORK + " AND kind IN ('delete', 'disable', 'remove-entitlement', 'revoke-sessions')"
)


class Operation(Base):
    """The operation journal: one durable change to one target. Never deleted."""

    __tablename__ = "operations"
    __table_args__ = (
        Index("ix_operations_work", "status", "target", "identity"),
        # a target's open work, oldest first: what workers take, however long the journal
        Index(
            "ix_operations_open",
            "target",
            "id",
            postgresql_where=text(OPEN_WORK),
            sqlite_where=text(OPEN_WORK),
        ),
        Index(
            "ix_operations_open_removals",
            "target",
            "id",
            postgresql_where=text(OPEN_REMOVALS),
            sqlite_where=text(OPEN_REMOVALS),
        ),
        Index("ix_operations_hold_id", "hold_id", **_where_set("hold_id")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    identity: Mapped[str] = mapped_column(String(128), index=True)
    target: Mapped[str] = mapped_column(String(128))
    account: Mapped[str | None] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(32))
    entitlement: Mapped[str | None] = mapped_column(String(256))
    step: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    # pending -> running -> verified (read back as intended); or failed (parked after the last
    # attempt, or refused), cancelled (superseded by a newer plan), unverifiable (the target
    # cannot show whether it happened, e.g. sessions on a target without a session API).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    not_before: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(RedactedText)
    # what the read-back found when the operation was checked
    observed: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    verified_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # set (and committed) by a run just before it writes, cleared with the outcome: a row still
    # ``running`` with an intent was being written by a run that died
    intent_run: Mapped[str | None] = mapped_column(String(32))
    intent_at: Mapped[datetime | None]
    # held: written by a plan batch the removal guard stopped; runs once its hold is approved
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"))


class Task(Base):
    """A work item for a manual target's revocation owner: one operation done by a person.

    open -> done (by whom, with evidence) -> verified (attested by a second person, or confirmed
    by a later import of the application's user list); cancelled when the plan no longer needs
    it. An unverified manual change is not done.
    """

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"), unique=True)
    target: Mapped[str] = mapped_column(String(128), index=True)
    identity: Mapped[str] = mapped_column(String(128), index=True)
    owner: Mapped[str] = mapped_column(String(256), index=True)
    instructions: Mapped[str] = mapped_column(RedactedText)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    due_at: Mapped[datetime]
    created_at: Mapped[datetime]
    done_by: Mapped[str | None] = mapped_column(String(256))
    done_at: Mapped[datetime | None]
    evidence: Mapped[str | None] = mapped_column(RedactedText)
    verified_by: Mapped[str | None] = mapped_column(String(256))
    verified_at: Mapped[datetime | None]
    verification: Mapped[str | None] = mapped_column(String(32))
    # a work item for an automated target (its circuit open): done by a person, it is
    # verified by Provisor's own read-back once the target answers, or by a second person
    read_back: Mapped[bool] = mapped_column(Boolean, default=False)


class Operator(Base):
    """A person (or a client such as an identity provider) who signs in to the service, with
    roles; a target owner names the targets they answer for. No password: tokens only."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    email: Mapped[str | None] = mapped_column(String(256))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    roles: Mapped[list[Any]] = mapped_column(default=list)
    targets: Mapped[list[Any]] = mapped_column(default=list)
    oidc_subject: Mapped[str | None] = mapped_column(String(256), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))


class ApiToken(Base):
    """A bearer token of an operator: only its SHA-256 is kept; shown once when made.

    kind ``api``: made on purpose, with scopes and an expiry; ``session``: made by a sign-in.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="api")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(256))


class Job(Base):
    """Long work asked for through the API (a feed import, a reconciliation), run in the
    background by the runner's cycle: queued -> running -> succeeded | failed."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    requested_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    # stamped every few seconds while it runs: a running job gone silent was left by a
    # stopped process
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(RedactedText)


class ScimResource(Base):
    """A User or Group an identity provider pushed to the inbound SCIM server, as it stands
    (the SCIM JSON, never a password); a User names the Provisor identity it feeds."""

    __tablename__ = "scim_resources"
    __table_args__ = (UniqueConstraint("kind", "name_key", name="uq_scim_resources_kind_name_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # User | Group
    # a User's userName, case-folded: unique among Users (Groups have none: display names may
    # repeat, as RFC 7643 allows)
    name_key: Mapped[str | None] = mapped_column(String(512))
    external_id: Mapped[str | None] = mapped_column(String(512), index=True)
    identity: Mapped[str | None] = mapped_column(String(128), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    modified_at: Mapped[datetime]


class ScimMember(Base):
    """One member of an inbound SCIM Group."""

    __tablename__ = "scim_members"

    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Notice(Base):
    """One notice in the outbox: a thing that waits (a task, a hold, a case, debt over SLA),
    for one person (``smtp``: their address) or one webhook (its URL); sent once."""

    __tablename__ = "notices"
    __table_args__ = (
        UniqueConstraint(
            "channel", "recipient", "kind", "key", name="uq_notices_channel_recipient_kind_key"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))  # smtp | webhook
    recipient: Mapped[str] = mapped_column(String(1024))
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(256))
    text: Mapped[str] = mapped_column(RedactedText)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # pending -> sent, or failed once its attempts are spent
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(RedactedText)


class TargetLimit(Base):
    """A target's rate limit shared by every runner on PostgreSQL: its token bucket
    (``tokens`` at ``stamp``, seconds since the epoch by the database's clock, the one clock
    every machine shares), drawn from once per request to the target."""

    __tablename__ = "target_limits"

    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    stamp: Mapped[float] = mapped_column(Float)


class TargetSlot(Base):
    """One of a target's ``concurrency`` slots, shared by every worker: an account's
    operations run only while their run holds a slot of the target, so no more accounts are
    worked on at once across all workers. A slot lasts until ``expires_at`` (renewed with the
    run's leases), so a worker that died gives its slots back when they expire."""

    __tablename__ = "target_slots"

    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    run: Mapped[str | None] = mapped_column(String(32))
    expires_at: Mapped[datetime | None]


class TargetCircuit(Base):
    """A target's circuit breaker, shared by every runner: ``failures`` in a row that said
    the target is unavailable, and while ``opened_at`` is set, since when it counts as
    unavailable (``reason``: the last failure) and when a probe may try it next
    (``probe_at``). No row: the target never failed."""

    __tablename__ = "target_circuits"

    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(RedactedText)
    probe_at: Mapped[datetime | None]
    probes: Mapped[int] = mapped_column(Integer, default=0)
    probe_error: Mapped[str | None] = mapped_column(RedactedText)
    closed_at: Mapped[datetime | None]


class AccountLease(Base):
    """Which run may work on one account (an identity in a target) until when. Taken with one
    atomic statement when free or expired, renewed while the work goes on, given back when it
    is recorded: two runners never work on one account at once, and a runner that died loses
    its accounts when its leases expire."""

    __tablename__ = "account_leases"

    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    run: Mapped[str] = mapped_column(String(32), index=True)
    # the process holding it (boot, pid namespace, pid, start time): a lease held by a process
    # of this machine that is gone is free at once, not only when it expires
    holder: Mapped[str] = mapped_column(String(160))
    expires_at: Mapped[datetime]
    taken_at: Mapped[datetime]
