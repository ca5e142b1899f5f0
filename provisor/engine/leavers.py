"""Proof of removal, gathered: read every target live for one leaver and keep the evidence.

Does: for a terminated identity, visit every target of the policy (none skipped): open the
target's live connector (``provisor.engine.connections``), find the identity's accounts (the ids
the observed store and the journal know, then a search by the account spec), read them now and
have each layer judged (``provisor.domain.proof``); a manual target is judged from the observed
store (an imported user export or a second person's attestation since the termination) and its
tasks. Each target carries its operation history from the journal. The bundle holds the
audit-chain head at that moment; it is written as JSON (its SHA-256 recorded in an
``evidence.leaver`` audit event, same transaction) and as an HTML page for people
(``provisor.evidence.html``), both new files readable by the owner only, named per identity
and time so that no bundle is ever overwritten. ``verify_sample`` runs the same test over
random leavers.
Does not: judge layers itself, change access or plan anything; a bundle only reports.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.connectors.base import AccountRecord, Connector
from provisor.domain.channels import CATEGORY, channel
from provisor.domain.lifecycle import LifecycleState
from provisor.domain.plan import account_spec
from provisor.domain.policy import TargetClass, TargetDef
from provisor.domain.proof import (
    FORMAT,
    RANK,
    Layer,
    Observation,
    combine,
    day,
    delete_due,
    failures,
    gone,
    judge_manual,
    judge_record,
    outcome,
    unreadable,
)
from provisor.engine import names
from provisor.engine.audit_log import verify_log
from provisor.engine.connections import Pool
from provisor.engine.workspace import Workspace
from provisor.errors import LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.evidence.html import render
from provisor.redaction import redact_data
from provisor.store import models


def _read_live(
    connector: Connector,
    target: TargetDef,
    identity: str,
    attributes: dict[str, Any],
    known: Sequence[str],
) -> tuple[list[tuple[AccountRecord, str]], list[str]]:
    """The identity's accounts in the target now, each with how it was found; and notes."""
    found: dict[str, tuple[AccountRecord, str]] = {}
    notes: list[str] = []
    for account in known:
        record = connector.read(account)
        if record is None:
            notes.append(f"account {account} (known to Provisor) does not exist")
        elif record.external_id not in (None, identity):
            notes.append(f"account {account} now belongs to {record.external_id}")
        else:
            found[record.account] = (record, f"read by id {account}")
    spec = account_spec(target, identity, attributes)
    match = connector.find(spec)
    if match is not None and match.account not in found:
        if match.external_id in (None, identity):
            how = "found by " + ("identity id" if match.external_id else "user name only")
            found[match.account] = (match, f"{how} ({spec.user_name})")
        else:
            notes.append(f"user name {spec.user_name} belongs to {match.external_id}")
    elif match is None:
        notes.append(f"no account found for user name {spec.user_name}")
    return list(found.values()), notes


def _task_dict(task: models.Task, kind: str, entitlement: str | None) -> dict[str, Any]:
    return {
        "task": task.id,
        "operation": kind,
        "entitlement": entitlement,
        "status": task.status,
        "owner": task.owner,
        "due": day(task.due_at),
        "done_by": task.done_by,
        "done_at": day(task.done_at),
        "evidence": task.evidence,
        "verified_by": task.verified_by,
        "verified_at": day(task.verified_at),
        "verification": task.verification,
    }


@dataclass
class TargetEvidence:
    target: TargetDef
    layers: list[Layer] = field(default_factory=list)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        t = self.target
        return {
            "target": t.name,
            "class": t.target_class.value,
            "category": CATEGORY[t.target_class],
            "channel": channel(t),
            "owner": t.owner,
            "leaver_action": t.leaver_action.value,
            "grace_days": t.grace_days,
            "layers": [layer.as_dict() for layer in self.layers],
            "accounts": self.accounts,
            "notes": self.notes,
            "error": self.error,
            "operations": self.operations,
            "tasks": self.tasks,
        }


@dataclass(frozen=True)
class Written:
    identity: str
    outcome: str
    json_path: Path
    html_path: Path
    sha256: str
    counts: dict[str, int]
    failures: list[str]
    bundle: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "outcome": self.outcome,
            "json": str(self.json_path),
            "html": str(self.html_path),
            "sha256": self.sha256,
            "counts": self.counts,
            "failures": self.failures,
        }


def _history(session: Session, identity: str) -> dict[str, list[dict[str, Any]]]:
    op = models.Operation
    found: dict[str, list[dict[str, Any]]] = {}
    for row in session.execute(select(op).where(op.identity == identity).order_by(op.id)).scalars():
        found.setdefault(row.target, []).append(
            {
                "id": row.id,
                "kind": row.kind,
                "entitlement": row.entitlement,
                "account": row.account,
                "status": row.status,
                "reason": row.reason,
                "created_at": day(row.created_at),
                "updated_at": day(row.updated_at),
                "verified_at": day(row.verified_at),
                "not_before": day(row.not_before),
                "attempts": row.attempts,
                "last_error": row.last_error,
                "observed": row.observed,
            }
        )
    return found


class LeaverVerifier:
    """Verifies leavers one after another, each target's connector opened once."""

    def __init__(self, workspace: Workspace, out_dir: Path | None = None) -> None:
        self.workspace = workspace
        self.out_dir = out_dir or evidence_folder(workspace)
        self.connectors = Pool(workspace)
        self._chain: audit.Verification | None = None

    def close(self) -> None:
        self.connectors.close()

    def _chain_check(self) -> audit.Verification:
        if self._chain is None:
            self._chain = verify_log(self.workspace)  # held to the signed checkpoints
        return self._chain

    def _connector(self, target: TargetDef) -> tuple[Connector | None, str | None]:
        try:
            return self.connectors.get(target.name), None
        except Exception as exc:  # any failure to open is evidence, not a crash
            return None, f"cannot open the connector: {exc}"

    def verify(self, identity: str, now: Callable[[], datetime]) -> Written:
        workspace = self.workspace
        with workspace.sessions() as session:
            person = session.execute(
                select(models.Identity).where(models.Identity.external_id == identity)
            ).scalar_one_or_none()
            if person is None:
                raise NotFoundError(f"no identity {identity!r}; see 'provisor identities'")
            if person.state != LifecycleState.TERMINATED.value or person.terminated_at is None:
                raise LifecycleError(
                    f"{identity} is {person.state or 'not hired'}, not terminated: "
                    "verify-leaver proves the removal of a leaver's access"
                )
            ended = person.terminated_at
            attributes = dict(person.attributes or {})
            policy = self.workspace.compiled.policy
            attributes.update(names.values(session, policy, [identity]).get(identity, {}))
            who = {
                "id": identity,
                "name": person.name,
                "email": person.email,
                "kind": person.kind,
                "state": person.state,
                "terminated_at": day(ended),
            }
            history = _history(session, identity)
            manual = self._manual_inputs(session, identity)
        targets = workspace.compiled.targets
        found: list[TargetEvidence] = []
        for name in sorted(targets):
            target = targets[name]
            evidence = TargetEvidence(target, operations=history.get(name, []))
            if target.target_class is TargetClass.MANUAL:
                rows, tasks, last_export = manual.get(name, ([], [], None))
                evidence.tasks = tasks
                evidence.accounts = [
                    {
                        "account": row.account,
                        "enabled": row.enabled,
                        "entitlements": sorted(row.entitlements),
                        "sessions": row.sessions,
                        "source": row.source,
                        "observed_at": day(row.observed_at),
                    }
                    for row in rows
                ]
                due = delete_due(target, evidence.operations, ended)
                evidence.layers = judge_manual(target, rows, tasks, last_export, ended, due)
            else:
                self._live(evidence, identity, attributes, ended, now())
            found.append(evidence)
        return self._write(identity, who, found, now())

    def _manual_inputs(
        self, session: Session, identity: str
    ) -> dict[
        str,
        tuple[
            list[Observation],
            list[dict[str, Any]],
            datetime | None,
        ],
    ]:
        manual = [
            n
            for n, t in self.workspace.compiled.targets.items()
            if t.target_class is TargetClass.MANUAL
        ]
        found: dict[str, Any] = {}
        for name in manual:
            oa = models.ObservedAccount
            rows = []
            for row in session.execute(
                select(oa).where(oa.target == name, oa.identity == identity)
            ).scalars():
                ents = frozenset(
                    session.execute(
                        select(models.ObservedEntitlement.entitlement).where(
                            models.ObservedEntitlement.account_id == row.id
                        )
                    ).scalars()
                )
                rows.append(
                    Observation(
                        row.account, row.enabled, ents, row.sessions, row.source, row.observed_at
                    )
                )
            tasks = [
                _task_dict(task, op.kind, op.entitlement)
                for task, op in session.execute(
                    select(models.Task, models.Operation)
                    .join(models.Operation, models.Operation.id == models.Task.operation_id)
                    .where(models.Task.target == name, models.Task.identity == identity)
                    .order_by(models.Task.id)
                )
            ]
            last_export = session.execute(
                select(models.AuditEvent.at)
                .where(
                    models.AuditEvent.action == "observed.imported",
                    models.AuditEvent.subject == name,
                )
                .order_by(models.AuditEvent.seq.desc())
                .limit(1)
            ).scalar_one_or_none()
            found[name] = (rows, tasks, last_export)
        return found

    def _live(
        self,
        evidence: TargetEvidence,
        identity: str,
        attributes: dict[str, Any],
        ended: datetime,
        now: datetime,
    ) -> None:
        target = evidence.target
        connector, error = self._connector(target)
        if connector is None:
            evidence.error = error or "no connector for this target class"
            evidence.layers = self._unreadable(target, identity, evidence.error, now)
            return
        known: list[str] = []
        with self.workspace.sessions() as session:
            oa = models.ObservedAccount
            known.extend(
                session.execute(
                    select(oa.account).where(oa.target == target.name, oa.identity == identity)
                ).scalars()
            )
        for op in evidence.operations:
            if op["account"] and op["account"] not in known:
                known.append(op["account"])
        try:
            capabilities = connector.capabilities()
            records, notes = _read_live(connector, target, identity, attributes, known)
        except Exception as exc:  # the target failed to answer: unverifiable, with the error
            evidence.error = f"reading the target failed: {exc}"
            evidence.layers = self._unreadable(target, identity, evidence.error, now)
            return
        evidence.notes = notes
        evidence.accounts = [
            {
                "account": r.account,
                "user_name": r.user_name,
                "external_id": r.external_id,
                "enabled": r.enabled,
                "entitlements": sorted(r.entitlements),
                "sessions": r.sessions,
                "found": how,
                "read_at": day(now),
            }
            for r, how in records
        ]
        if not records:
            why = (
                f"no account: the ids known for the leaver ({', '.join(known)}) and a search "
                "by user name find nothing"
                if known
                else "no account: none is known for the leaver and a search by user name finds none"
            )
            evidence.layers = gone(why)
            return
        due = delete_due(target, evidence.operations, ended)
        evidence.layers = combine(
            [judge_record(target, r, capabilities, due, now) for r, _ in records]
        )

    def _unreadable(
        self, target: TargetDef, identity: str, error: str, now: datetime
    ) -> list[Layer]:
        """The layers of a target that cannot be read now: unverifiable, except what
        Provisor's own store last observed still there — that is present (a fail), not
        merely unknown."""
        with self.workspace.sessions() as session:
            oa, oe = models.ObservedAccount, models.ObservedEntitlement
            rows = session.execute(
                select(oa).where(oa.target == target.name, oa.identity == identity)
            ).scalars()
            stored = [
                (
                    AccountRecord(
                        account=row.account,
                        user_name=str((row.attributes or {}).get("user_name") or row.account),
                        enabled=row.enabled,
                        entitlements=frozenset(
                            session.execute(
                                select(oe.entitlement).where(oe.account_id == row.id)
                            ).scalars()
                        ),
                        sessions=row.sessions,
                    ),
                    row.observed_at,
                )
                for row in rows
            ]
        return unreadable(target, stored, error, now)

    def _write(
        self, identity: str, who: dict[str, Any], found: list[TargetEvidence], at: datetime
    ) -> Written:
        chain = self._chain_check()
        layers = [layer for t in found for layer in t.layers]
        counts = {state: sum(1 for x in layers if x.state == state) for state in RANK}
        result = outcome(layers)
        failed = failures([(t.target.name, t.layers) for t in found])
        json_path, html_path = _new_files(self.out_dir, _file_base(identity, at))
        with self.workspace.sessions() as session, session.begin():
            # the head locked (FOR UPDATE) until the evidence event below is appended after it
            head = audit.head_for_update(session)
            head_seq, head_hash = head.seq, head.hash
            bundle = {
                "format": FORMAT,
                "identity": who,
                "generated_at": day(at),
                "generated_by": audit.current_actor(),
                "policy_digest": self.workspace.policy.digest,
                "outcome": result,
                "counts": counts,
                "failures": failed,
                "targets": [t.as_dict() for t in found],
                "audit": {
                    "head_seq": head_seq,
                    "head_hash": head_hash,
                    "chain_verified": chain.ok,
                    "chain_verified_through": chain.head_seq,
                    "chain_problem": chain.problem or None,
                    "signed_checkpoints": chain.checkpoints,
                    "protected_through": chain.protected_through,
                },
            }
            bundle = redact_data(bundle)  # targets' errors may echo credentials
            data = (json.dumps(bundle, indent=2, ensure_ascii=False) + "\n").encode()
            digest = hashlib.sha256(data).hexdigest()
            try:
                json_path.write_bytes(data)
                html_path.write_text(render(bundle, digest, json_path.name), encoding="utf-8")
                audit.append(
                    session,
                    [
                        audit.Entry(
                            "evidence.leaver",
                            identity,
                            {
                                "outcome": result,
                                "counts": counts,
                                "json": json_path.name,
                                "html": html_path.name,
                                "sha256": digest,
                                "head_seq": head_seq,
                                "head_hash": head_hash,
                            },
                        )
                    ],
                    at=at,
                )
            except BaseException:
                json_path.unlink(missing_ok=True)
                html_path.unlink(missing_ok=True)
                raise
        return Written(identity, result, json_path, html_path, digest, counts, failed, bundle)


def _file_base(identity: str, at: datetime) -> str:
    """``leaver-ID-TIME-HASH``: readable, and distinct for ids that read alike once made safe
    for a file name (``X/1`` and ``X_1``), by a hash of the id itself."""
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"leaver-{re.sub(r'[^A-Za-z0-9._-]', '_', identity)}-{stamp}-{tag}"


def _new_files(folder: Path, base: str) -> tuple[Path, Path]:
    """Two files ``BASE.json`` and ``BASE.html`` (``BASE-2`` ... when taken), created here, empty,
    readable by the owner only: an earlier bundle is never overwritten."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n in itertools.count(1):
        stem = base if n == 1 else f"{base}-{n}"
        made: list[Path] = []
        try:
            for path in (folder / f"{stem}.json", folder / f"{stem}.html"):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                made.append(path)
        except FileExistsError:
            for path in made:
                path.unlink()
            continue
        return made[0], made[1]
    raise AssertionError("unreachable")  # pragma: no cover


def verify_leaver(
    workspace: Workspace, identity: str, *, now: Callable[[], datetime], out_dir: Path | None
) -> Written:
    """Read every target for ``identity`` now and write its evidence bundle."""
    verifier = LeaverVerifier(workspace, out_dir)
    try:
        return verifier.verify(identity, now)
    finally:
        verifier.close()


@dataclass
class SampleReport:
    since: datetime
    population: int
    seed: int | None
    results: list[Written] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(1 for r in self.results if r.outcome == result)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "population": self.population,
            "sampled": len(self.results),
            "seed": self.seed,
            "pass": self.count("pass"),
            "incomplete": self.count("incomplete"),
            "fail": self.count("fail"),
            "results": [r.as_dict() for r in self.results],
        }


def verify_sample(
    workspace: Workspace,
    size: int,
    since: datetime,
    *,
    now: Callable[[], datetime],
    out_dir: Path | None,
    seed: int | None = None,
) -> SampleReport:
    """Termination tests over ``size`` random leavers terminated on or after ``since``."""
    if size < 1:
        raise LifecycleError(f"--sample must be at least 1, not {size}")
    with workspace.sessions() as session:
        ident = models.Identity
        population = sorted(
            session.execute(
                select(ident.external_id).where(
                    ident.state == LifecycleState.TERMINATED.value,
                    ident.terminated_at >= since,
                )
            ).scalars()
        )
    report = SampleReport(since, len(population), seed)
    chosen = random.Random(seed).sample(population, min(size, len(population)))
    verifier = LeaverVerifier(workspace, out_dir)
    try:
        for identity in sorted(chosen):
            report.results.append(verifier.verify(identity, now))
    finally:
        verifier.close()
    with workspace.sessions() as session, session.begin():
        audit.append(
            session,
            [
                audit.Entry(
                    "evidence.sample",
                    "leavers",
                    {k: v for k, v in report.as_dict().items() if k != "results"}
                    | {"identities": {r.identity: r.outcome for r in report.results}},
                )
            ],
            at=now(),
        )
    return report


def evidence_folder(workspace: Workspace) -> Path:
    """Where leaver evidence bundles are written by default."""
    return workspace.path / "evidence"


def list_bundles(workspace: Workspace) -> list[dict[str, Any]]:
    """The evidence bundles in the workspace's evidence folder, newest first."""
    folder = evidence_folder(workspace)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".html")]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [{"name": p.name, "bytes": p.stat().st_size} for p in found]


def bundle_path(workspace: Workspace, name: str) -> Path:
    """The bundle file ``name`` in the evidence folder (never a path outside it)."""
    folder = evidence_folder(workspace)
    if name not in {b["name"] for b in list_bundles(workspace)}:
        raise NotFoundError(f"no evidence bundle {name!r}")
    return folder / name
