"""Proof of removal: read every target live for one leaver and keep what was found as evidence.

Does: for a terminated identity, visit every target of the policy (none skipped): open the
target's live connector, find the identity's accounts (the ids the observed store and the
journal know, then a search by the account spec), read them now, and judge each layer —
``account``, ``entitlements``, ``sessions`` — as ``verified-removed``, ``still-present``,
``unverifiable`` (with why) or, for an account the leaver action deliberately keeps enabled,
``kept-by-policy``; a manual target is judged from the observed store (an imported user export
or a second person's attestation since the termination) and its tasks. Each target carries its
operation history from the journal. The bundle holds the audit-chain head at that moment; it is
written as JSON (its SHA-256 recorded in an ``evidence.leaver`` audit event, same transaction)
and as an HTML page for people. ``verify_sample`` runs the same test over random leavers.
Does not: change access or plan anything; a bundle only reports.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.connectors.base import AccountRecord, Capability, Connector
from provisor.domain.lifecycle import LifecycleState
from provisor.domain.plan import OpKind, account_spec
from provisor.domain.policy import LeaverAction, TargetClass, TargetDef
from provisor.engine.coverage import CATEGORY, channel
from provisor.engine.runner import Runner
from provisor.engine.workspace import Workspace
from provisor.errors import LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.evidence.html import render
from provisor.store import models

FORMAT = "provisor.leaver-evidence/1"
REMOVED, PRESENT, UNVERIFIABLE, KEPT = (
    "verified-removed",
    "still-present",
    "unverifiable",
    "kept-by-policy",
)
LAYERS = ("account", "entitlements", "sessions")
# worst first: the state a layer takes when several accounts disagree
_RANK = {PRESENT: 0, UNVERIFIABLE: 1, KEPT: 2, REMOVED: 3}


@dataclass
class Layer:
    layer: str
    state: str
    why: str
    # a blind spot of the target itself (no session interface), not something to chase
    structural: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _worst(layers: Sequence[Layer]) -> Layer:
    return min(layers, key=lambda item: _RANK[item.state])


def _day(when: datetime | None) -> str:
    return when.astimezone(UTC).isoformat() if when is not None else ""


def outcome(layers: Sequence[Layer]) -> str:
    """``fail`` when something is still present; ``incomplete`` when a layer could not be
    verified for a reason other than a blind spot of the target itself; else ``pass``."""
    if any(item.state == PRESENT for item in layers):
        return "fail"
    if any(item.state == UNVERIFIABLE and not item.structural for item in layers):
        return "incomplete"
    return "pass"


# --- live targets ---------------------------------------------------------------------------


def judge_record(
    target: TargetDef,
    record: AccountRecord,
    capabilities: frozenset[Capability],
    delete_due: datetime | None,
    now: datetime,
) -> list[Layer]:
    """The layers of one account that still exists, as read now.

    The account layer: ``disable`` and ``delete`` want it disabled (``delete`` wants it gone
    once the grace period has ended); ``remove-entitlements`` keeps it enabled on purpose."""
    layers: list[Layer] = []
    action = target.leaver_action
    if record.enabled:
        if action is LeaverAction.REMOVE_ENTITLEMENTS:
            layers.append(
                Layer(
                    "account",
                    KEPT,
                    f"account {record.account} is enabled: the leaver action "
                    "remove-entitlements keeps it; access is judged by its entitlements",
                )
            )
        else:
            layers.append(Layer("account", PRESENT, f"account {record.account} is enabled"))
    elif action is LeaverAction.DELETE and delete_due is not None and delete_due <= now:
        layers.append(
            Layer(
                "account",
                PRESENT,
                f"account {record.account} is disabled but still exists; deletion was due "
                f"{delete_due.date().isoformat()}",
            )
        )
    else:
        due = (
            f"; deletion due {delete_due.date().isoformat()}"
            if action is LeaverAction.DELETE and delete_due is not None
            else ""
        )
        layers.append(Layer("account", REMOVED, f"account {record.account} is disabled{due}"))
    if record.entitlements:
        held = ", ".join(sorted(record.entitlements))
        layers.append(Layer("entitlements", PRESENT, f"still holds {held}"))
    elif not record.entitlements_shown:
        why = record.unread["entitlements"]
        layers.append(Layer("entitlements", UNVERIFIABLE, f"membership cannot be read: {why}"))
    elif Capability.ENTITLEMENTS in capabilities or not target.entitlements:
        layers.append(Layer("entitlements", REMOVED, "holds no entitlement"))
    else:
        layers.append(
            Layer(
                "entitlements",
                UNVERIFIABLE,
                "the connector cannot read entitlements in this target",
                structural=True,
            )
        )
    if record.sessions is None:
        why = (
            "the target has no session interface: open sessions and tokens cannot be seen"
            if Capability.SESSIONS not in capabilities
            else "the target did not report sessions for this account"
        )
        # only a target without a session interface is a blind spot of its own; one that has
        # sessions but did not report them leaves the proof incomplete
        structural = Capability.SESSIONS not in capabilities
        layers.append(Layer("sessions", UNVERIFIABLE, why, structural=structural))
    elif record.sessions > 0:
        layers.append(Layer("sessions", PRESENT, f"{record.sessions} open sessions"))
    else:
        layers.append(Layer("sessions", REMOVED, "no open session"))
    return layers


def _gone(why: str) -> list[Layer]:
    return [Layer(layer, REMOVED, why) for layer in LAYERS]


def _combine(per_account: Sequence[list[Layer]]) -> list[Layer]:
    """One layer list for several accounts: the worst state of each layer, every reason."""
    combined = []
    for index, layer in enumerate(LAYERS):
        found = [layers[index] for layers in per_account]
        worst = _worst(found)
        whys = [f.why for f in found if f.state == worst.state]
        combined.append(Layer(layer, worst.state, "; ".join(whys), worst.structural))
    return combined


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


# --- manual targets -------------------------------------------------------------------------


def _task_dict(task: models.Task, kind: str, entitlement: str | None) -> dict[str, Any]:
    return {
        "task": task.id,
        "operation": kind,
        "entitlement": entitlement,
        "status": task.status,
        "owner": task.owner,
        "due": _day(task.due_at),
        "done_by": task.done_by,
        "done_at": _day(task.done_at),
        "evidence": task.evidence,
        "verified_by": task.verified_by,
        "verified_at": _day(task.verified_at),
        "verification": task.verification,
    }


def _attested(tasks: Sequence[dict[str, Any]], *kinds: OpKind) -> str:
    """Who verified the removal tasks of these kinds, and how."""
    wanted = {k.value for k in kinds}
    done = [t for t in tasks if t["operation"] in wanted and t["status"] == "verified"]
    return "; ".join(
        f"task {t['task']} {t['operation']}{' ' + t['entitlement'] if t['entitlement'] else ''} "
        f"verified by {t['verified_by']} ({t['verification']}) at {t['verified_at']}"
        for t in done
    )


def judge_manual(
    target: TargetDef,
    rows: Sequence[tuple[models.ObservedAccount, frozenset[str]]],
    tasks: Sequence[dict[str, Any]],
    last_export: datetime | None,
    ended: datetime,
    delete_due: datetime | None = None,
) -> list[Layer]:
    """A manual target's layers from what people and exports showed since the termination."""
    since = ended.date().isoformat()
    if not rows:
        if last_export is not None and last_export >= ended:
            return _gone(f"absent from the user export imported {_day(last_export)}")
        attested = _attested(tasks, OpKind.DELETE)
        if attested:
            return _gone(f"deletion attested: {attested}")
        why = (
            f"no user export imported since the termination ({since}) and no verified "
            "deletion task; import the application's user export or verify the tasks"
        )
        return [Layer(layer, UNVERIFIABLE, why) for layer in LAYERS]
    per_account = []
    for row, entitlements in rows:
        seen = f"{row.source} at {_day(row.observed_at)}"
        if row.observed_at < ended:
            why = (
                f"account {row.account} last observed before the termination ({seen}); "
                "import the application's user export or verify the removal tasks"
            )
            per_account.append([Layer(layer, UNVERIFIABLE, why) for layer in LAYERS])
            continue
        record = AccountRecord(row.account, row.account, row.enabled, entitlements, None, None)
        # judged as of the observation: that is what it shows
        layers = judge_record(
            target, record, frozenset({Capability.ENTITLEMENTS}), delete_due, row.observed_at
        )
        for layer in layers:
            if layer.state == REMOVED:
                kinds = {
                    "account": (OpKind.DISABLE, OpKind.DELETE),
                    "entitlements": (OpKind.REMOVE_ENTITLEMENT,),
                    "sessions": (OpKind.REVOKE_SESSIONS,),
                }[layer.layer]
                layer.why += f" (observed: {seen})"
                attested = _attested(tasks, *kinds)
                if attested:
                    layer.why += f"; {attested}"
        sessions = layers[2]
        if row.sessions == 0:
            sessions.state, sessions.structural = REMOVED, False
            sessions.why = f"no open session (observed: {seen})"
            attested = _attested(tasks, OpKind.REVOKE_SESSIONS)
            if attested:
                sessions.why += f"; {attested}"
        elif row.sessions:
            sessions.state, sessions.structural = PRESENT, False
            sessions.why = f"{row.sessions} open sessions (observed: {seen})"
        else:
            sessions.structural = False
            sessions.why = (
                "no export or attestation shows the sessions: the revoke-sessions task is not "
                "verified"
            )
        per_account.append(layers)
    return _combine(per_account)


# --- the bundle -----------------------------------------------------------------------------


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
                "created_at": _day(row.created_at),
                "updated_at": _day(row.updated_at),
                "verified_at": _day(row.verified_at),
                "not_before": _day(row.not_before),
                "attempts": row.attempts,
                "last_error": row.last_error,
                "observed": row.observed,
            }
        )
    return found


def _delete_due(
    target: TargetDef, ops: Sequence[dict[str, Any]], ended: datetime
) -> datetime | None:
    if target.leaver_action is not LeaverAction.DELETE:
        return None
    planned = [o["not_before"] for o in ops if o["kind"] == "delete" and o["not_before"]]
    if planned:
        return min(datetime.fromisoformat(p) for p in planned)
    return ended + timedelta(days=target.grace_days)


class LeaverVerifier:
    """Verifies leavers one after another, each target's connector opened once."""

    def __init__(self, workspace: Workspace, out_dir: Path | None = None) -> None:
        self.workspace = workspace
        self.out_dir = out_dir or workspace.path / "evidence"
        self.runner = Runner(workspace)
        self._chain: audit.Verification | None = None

    def close(self) -> None:
        self.runner.close()

    def _chain_check(self) -> audit.Verification:
        if self._chain is None:
            with self.workspace.sessions() as session:
                self._chain = audit.verify(session)
        return self._chain

    def _connector(self, target: TargetDef) -> tuple[Connector | None, str | None]:
        try:
            return self.runner.connector(target.name), None
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
            who = {
                "id": identity,
                "name": person.name,
                "email": person.email,
                "kind": person.kind,
                "state": person.state,
                "terminated_at": _day(ended),
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
                        "entitlements": sorted(ents),
                        "sessions": row.sessions,
                        "source": row.source,
                        "observed_at": _day(row.observed_at),
                    }
                    for row, ents in rows
                ]
                due = _delete_due(target, evidence.operations, ended)
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
            list[tuple[models.ObservedAccount, frozenset[str]]],
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
                rows.append((row, ents))
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
                "read_at": _day(now),
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
            evidence.layers = _gone(why)
            return
        due = _delete_due(target, evidence.operations, ended)
        evidence.layers = _combine(
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
        layers = []
        for index, name in enumerate(LAYERS):
            present = [
                f"{judged[index].why} (as last observed {_day(at)}; {error})"
                for record, at in stored
                if (judged := judge_record(target, record, frozenset(), None, now))[index].state
                == PRESENT
            ]
            layers.append(
                Layer(name, PRESENT, "; ".join(present))
                if present
                else Layer(name, UNVERIFIABLE, error)
            )
        return layers

    def _write(
        self, identity: str, who: dict[str, Any], found: list[TargetEvidence], at: datetime
    ) -> Written:
        chain = self._chain_check()
        layers = [layer for t in found for layer in t.layers]
        counts = {state: sum(1 for x in layers if x.state == state) for state in _RANK}
        result = outcome(layers)
        failures = [
            f"{t.target.name} {x.layer}: {x.state}: {x.why}"
            for t in found
            for x in t.layers
            if x.state == PRESENT or (x.state == UNVERIFIABLE and not x.structural)
        ]
        stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = f"leaver-{re.sub(r'[^A-Za-z0-9._-]', '_', identity)}-{stamp}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        json_path, html_path = self.out_dir / f"{base}.json", self.out_dir / f"{base}.html"
        with self.workspace.sessions() as session, session.begin():
            # the head locked (FOR UPDATE) until the evidence event below is appended after it
            head = audit.head_for_update(session)
            head_seq, head_hash = head.seq, head.hash
            bundle = {
                "format": FORMAT,
                "identity": who,
                "generated_at": _day(at),
                "generated_by": audit.current_actor(),
                "policy_digest": self.workspace.policy.digest,
                "outcome": result,
                "counts": counts,
                "failures": failures,
                "targets": [t.as_dict() for t in found],
                "audit": {
                    "head_seq": head_seq,
                    "head_hash": head_hash,
                    "chain_verified": chain.ok,
                    "chain_verified_through": chain.head_seq,
                    "chain_problem": chain.problem or None,
                },
            }
            data = (json.dumps(bundle, indent=2, ensure_ascii=False) + "\n").encode()
            digest = hashlib.sha256(data).hexdigest()
            json_path.write_bytes(data)
            try:
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
        return Written(identity, result, json_path, html_path, digest, counts, failures, bundle)


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
