"""The embedded runner: executing the operation journal against targets, verified by read-back.

Does: take the journal's pending operations account by account in step order (a later step waits
while an earlier one of the same account is not done), run each through its target's connector
and read the account back; an operation becomes ``verified`` only when the read-back shows its
intent, and the read-back updates the observed-state store. Before writing it reads: when the
account is already as intended nothing is written, so running again makes no writes. Retryable
failures are retried with exponential backoff and jitter (``Retry-After`` wins when given);
after the last attempt, or on a permanent failure, the operation is parked as ``failed`` with its
error — visible, never dropped. An operation left ``running`` by a crash is simply run again.
Every outcome is an audit event.
Does not: plan (``planner``), or decide policy; targets without a connector keep their
operations pending.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from provisor.config.secrets import SecretsFile, key_from_env, resolve_connection
from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    Capability,
    Conflict,
    Connector,
    ConnectorError,
    PermanentError,
    RetryableError,
)
from provisor.domain.plan import OpKind
from provisor.domain.policy import TargetClass, TargetDef
from provisor.engine.lifecycle import chunks
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import models

MAX_ATTEMPTS = 5
BACKOFF_BASE = 2.0  # seconds; attempt n waits about base * 2**(n-1), with jitter
BACKOFF_CAP = 3600.0


def open_connector(workspace: Workspace, target: TargetDef) -> Connector | None:
    """The connector for ``target``, or None when its class has none yet."""
    if target.target_class is not TargetClass.SCIM:
        return None
    from provisor.connectors.scim import ScimConnector

    secrets_path = workspace.path / workspace.config.secrets_file
    secrets = SecretsFile(secrets_path, key_from_env()) if secrets_path.exists() else None
    return ScimConnector(target.name, resolve_connection(target.connection, secrets))


def backoff(attempts: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before the next attempt: the server's ``Retry-After`` when it gave one."""
    if retry_after is not None:
        return min(retry_after, BACKOFF_CAP)
    delay = min(BACKOFF_BASE * 2.0 ** max(attempts - 1, 0), BACKOFF_CAP)
    return float(delay * (0.5 + rng.random()))  # full jitter around the exponential step


@dataclass
class ApplyReport:
    verified: int = 0
    unverifiable: int = 0
    retrying: int = 0
    failed: int = 0
    writes: int = 0
    waiting: int = 0  # not due yet, or behind an earlier step of the same account
    no_connector: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _user_name(target: TargetDef, identity: models.Identity) -> str:
    attribute = str(target.connection.get("user_name_attribute", "email"))
    value = (identity.attributes or {}).get(attribute)
    return str(value) if value else identity.external_id


def _clash(op: models.Operation, spec: AccountSpec, owner: str | None) -> str:
    return (
        f"{op.target}: an account named {spec.user_name} already exists and belongs to "
        f"{owner or 'someone unknown'}, not {op.identity}; resolve the clash in the target"
    )


class _Mismatch(PermanentError):
    """The write was accepted but the read-back does not show it."""


def _expect(op: models.Operation, record: AccountRecord | None) -> str | None:
    """Why ``record`` does not show ``op`` done, or None when it does."""
    kind = OpKind(op.kind)
    if kind is OpKind.DELETE:
        return None if record is None else "the account still exists"
    if record is None:
        return "the account does not exist"
    if kind is OpKind.CREATE:
        return None
    if kind is OpKind.ENABLE:
        return None if record.enabled else "the account is disabled"
    if kind is OpKind.DISABLE:
        return None if not record.enabled else "the account is enabled"
    if kind is OpKind.ADD_ENTITLEMENT:
        return None if op.entitlement in record.entitlements else f"{op.entitlement} is missing"
    if kind is OpKind.REMOVE_ENTITLEMENT:
        return None if op.entitlement not in record.entitlements else f"{op.entitlement} remains"
    return None if record.sessions == 0 else f"{record.sessions} sessions remain"


def _snapshot(record: AccountRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "account": record.account,
        "user_name": record.user_name,
        "enabled": record.enabled,
        "entitlements": sorted(record.entitlements),
        "sessions": record.sessions,
    }


class Runner:
    """Runs due journal operations once (``apply``); ``run`` calls it in a loop."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        connectors: Mapping[str, Connector] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.workspace = workspace
        self.max_attempts = max_attempts
        self._connectors: dict[str, Connector | None] = dict(connectors or {})
        self._rng = rng or random.Random()

    def connector(self, target: str) -> Connector | None:
        if target not in self._connectors:
            definition = self.workspace.compiled.targets.get(target)
            self._connectors[target] = (
                open_connector(self.workspace, definition) if definition else None
            )
        return self._connectors[target]

    def close(self) -> None:
        for connector in self._connectors.values():
            if connector is not None:
                connector.close()

    def apply(
        self,
        *,
        now: Callable[[], datetime],
        target: str | None = None,
        identity: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ApplyReport:
        report = ApplyReport()
        groups = self._groups(target, identity)
        total = sum(len(ops) for ops in groups.values())
        done = 0
        for (_who, where), ops in groups.items():
            connector = self.connector(where)
            if connector is None:
                report.no_connector[where] = report.no_connector.get(where, 0) + len(ops)
                done += len(ops)
                continue
            for position, op_id in enumerate(ops):
                if not self._run_one(op_id, connector, now(), report):
                    report.waiting += len(ops) - position - 1
                    break
            done += len(ops)
            if progress is not None:
                progress(done, total)
        return report

    def _groups(self, target: str | None, identity: str | None) -> dict[tuple[str, str], list[int]]:
        """Open operations by account (identity, target), each list in step order."""
        query = (
            select(models.Operation.id, models.Operation.identity, models.Operation.target)
            .where(models.Operation.status.in_(["pending", "running"]))
            .order_by(
                models.Operation.identity,
                models.Operation.target,
                models.Operation.step,
                models.Operation.id,
            )
        )
        if target is not None:
            query = query.where(models.Operation.target == target)
        if identity is not None:
            query = query.where(models.Operation.identity == identity)
        groups: dict[tuple[str, str], list[int]] = {}
        with self.workspace.sessions() as session:
            for op_id, who, where in session.execute(query):
                groups.setdefault((who, where), []).append(op_id)
        return groups

    def _run_one(
        self, op_id: int, connector: Connector, now: datetime, report: ApplyReport
    ) -> bool:
        """Run one operation; True when its account may go on to the next step."""
        sessions = self.workspace.sessions
        with sessions() as session, session.begin():
            op = session.get(models.Operation, op_id)
            assert op is not None
            due = (op.not_before is None or op.not_before <= now) and (
                op.next_attempt_at is None or op.next_attempt_at <= now
            )
            if op.status not in ("pending", "running") or not due:
                report.waiting += 1
                return False
            # Marked before any side effect: a crash from here on leaves it "running", and the
            # next run reads the account first, so repeating it is harmless.
            op.status, op.attempts, op.updated_at = "running", op.attempts + 1, now
        try:
            record, status, note = self._execute(op, connector, report)
        except ConnectorError as exc:
            return self._failed(op_id, exc, now, report)
        with sessions() as session, session.begin():
            row = session.get(models.Operation, op_id)
            assert row is not None
            row.status, row.updated_at, row.next_attempt_at = status, now, None
            row.observed, row.last_error = _snapshot(record), note
            if record is not None and row.account is None:
                row.account = record.account
                # the account's later steps need not search for it again
                session.execute(
                    update(models.Operation)
                    .where(
                        models.Operation.identity == row.identity,
                        models.Operation.target == row.target,
                        models.Operation.status == "pending",
                        models.Operation.account.is_(None),
                    )
                    .values(account=record.account)
                )
            if status == "verified":
                row.verified_at = now
                report.verified += 1
            else:
                report.unverifiable += 1
            self._observe(session, row, record, now)
            audit.record(
                session,
                f"operation.{status}",
                row.identity,
                {
                    "key": row.key,
                    "target": row.target,
                    "kind": row.kind,
                    "entitlement": row.entitlement,
                    "account": row.account,
                    "observed": row.observed,
                    "note": note,
                },
            )
        return True

    def _execute(
        self, op: models.Operation, connector: Connector, report: ApplyReport
    ) -> tuple[AccountRecord | None, str, str | None]:
        """Do the operation if the account does not show it yet; read back; judge."""
        kind = OpKind(op.kind)
        target = self.workspace.compiled.targets[op.target]
        account = op.account
        if kind is OpKind.REVOKE_SESSIONS and Capability.SESSIONS not in connector.capabilities():
            record = connector.read(account) if account else None
            return (
                record,
                "unverifiable",
                (
                    f"{op.target} has no session interface: open sessions cannot be revoked or "
                    "seen from here"
                ),
            )
        if account is None:
            spec = self._spec(op, target)
            found = connector.find(spec)
            if found is not None and found.external_id not in (None, op.identity):
                raise PermanentError(_clash(op, spec, found.external_id))
            if found is None and kind is not OpKind.CREATE:
                if kind is OpKind.DELETE:
                    return None, "verified", "no such account: nothing to delete"
                raise PermanentError(f"{op.target}: no account for {op.identity} to {kind.value}")
            account = found.account if found else None
        before = connector.read(account) if account else None
        if _expect(op, before) is None and not (kind is OpKind.CREATE and before is None):
            return before, "verified", "already as intended; nothing written"
        report.writes += 1
        if kind is OpKind.CREATE:
            account = self._create(op, target, connector)
        elif account is None:
            raise PermanentError(f"{op.target}: no account for {op.identity}")
        elif kind in (OpKind.ENABLE, OpKind.DISABLE):
            connector.set_enabled(account, kind is OpKind.ENABLE)
        elif kind is OpKind.ADD_ENTITLEMENT:
            assert op.entitlement is not None
            connector.add_entitlement(account, op.entitlement)
        elif kind is OpKind.REMOVE_ENTITLEMENT:
            assert op.entitlement is not None
            connector.remove_entitlement(account, op.entitlement)
        elif kind is OpKind.REVOKE_SESSIONS:
            connector.revoke_sessions(account)
        elif kind is OpKind.DELETE:
            connector.delete(account)
        after = connector.read(account)
        problem = _expect(op, after)
        if problem is not None:
            raise _Mismatch(
                f"{op.target}: {kind.value} was accepted but the read-back disagrees: {problem}"
            )
        return after, "verified", None

    def _spec(self, op: models.Operation, target: TargetDef) -> AccountSpec:
        with self.workspace.sessions() as session:
            identity = session.execute(
                select(models.Identity).where(models.Identity.external_id == op.identity)
            ).scalar_one()
        return AccountSpec(op.identity, _user_name(target, identity), dict(identity.attributes))

    def _create(self, op: models.Operation, target: TargetDef, connector: Connector) -> str:
        spec = self._spec(op, target)
        try:
            return connector.create(spec)
        except Conflict:
            existing = connector.find(spec)
            if existing is not None and existing.external_id in (None, op.identity):
                return existing.account  # the same person's account: adopt it
            owner = existing.external_id if existing else None
            raise PermanentError(_clash(op, spec, owner)) from None

    def _failed(self, op_id: int, exc: ConnectorError, now: datetime, report: ApplyReport) -> bool:
        with self.workspace.sessions() as session, session.begin():
            row = session.get(models.Operation, op_id)
            assert row is not None
            row.last_error, row.updated_at = str(exc), now
            retry = isinstance(exc, RetryableError) and row.attempts < self.max_attempts
            if retry:
                assert isinstance(exc, RetryableError)
                wait = backoff(row.attempts, exc.retry_after, self._rng)
                row.status, row.next_attempt_at = "pending", now + timedelta(seconds=wait)
                report.retrying += 1
            else:
                row.status, row.next_attempt_at = "failed", None
                report.failed += 1
                report.errors.append(f"{row.identity} {row.target} {row.kind}: {exc}")
            audit.record(
                session,
                "operation.retry" if retry else "operation.failed",
                row.identity,
                {
                    "key": row.key,
                    "target": row.target,
                    "kind": row.kind,
                    "entitlement": row.entitlement,
                    "attempts": row.attempts,
                    "error": str(exc),
                    "next_attempt": row.next_attempt_at.isoformat()
                    if row.next_attempt_at
                    else None,
                },
            )
        return False

    def _observe(
        self,
        session: Session,
        op: models.Operation,
        record: AccountRecord | None,
        now: datetime,
    ) -> None:
        """Write the read-back into the observed-state store."""
        existing = (
            session.execute(
                select(models.ObservedAccount).where(
                    models.ObservedAccount.target == op.target,
                    models.ObservedAccount.identity == op.identity,
                )
            )
            .scalars()
            .all()
        )
        if record is None:
            for gone in existing:
                session.delete(gone)
            return
        kept = next((r for r in existing if r.account == record.account), None)
        for stale in existing:
            if stale is not kept and stale.source.startswith("export"):
                session.delete(stale)  # an export's row for the same person, now read live
        row = kept
        if row is None:
            row = models.ObservedAccount(
                target=op.target,
                account=record.account,
                identity=op.identity,
                enabled=record.enabled,
                observed_at=now,
                source="read-back",
            )
            session.add(row)
        row.enabled, row.sessions, row.observed_at = record.enabled, record.sessions, now
        row.attributes = {"user_name": record.user_name, "external_id": record.external_id}
        row.source = "read-back"
        session.flush()
        session.execute(
            delete(models.ObservedEntitlement).where(
                models.ObservedEntitlement.account_id == row.id
            )
        )
        for part in chunks(sorted(record.entitlements)):
            session.add_all(
                models.ObservedEntitlement(account_id=row.id, entitlement=e, observed_at=now)
                for e in part
            )
