"""Assessment of stored accounts: every observed account of some targets classified.

Does: load the observed accounts of the chosen targets with their entitlements, the current
state and desired access of the identities they are linked to, and judge each account with
``provisor.engine.classify`` (the primary account of an identity holding several, open
correlation cases and unreadable targets taken into account); store each account's class and
why where it changed.
Does not: read targets or act on what it finds (reconciliation applies the remediation policy).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import aggregate_strings

from provisor.domain.desired import DesiredAccess, desired_access
from provisor.domain.lifecycle import IdentityState, fold
from provisor.domain.plan import ObservedAccount
from provisor.engine.classify import ORPHAN_PREFIX, Verdict, classify, primary_account
from provisor.engine.lifecycle import chunks, load_history, window
from provisor.engine.planner import state_from_row
from provisor.engine.workspace import Workspace
from provisor.store import models

SEP = "\x1f"  # joins entitlement names in one string; no name contains it


class AccountRow(NamedTuple):
    id: int
    target: str
    account: str
    identity: str | None
    enabled: bool
    sessions: int | None
    attributes: dict[str, Any]
    observed_at: datetime
    classification: str | None
    detail: str | None
    entitlements: frozenset[str]


def load_rows(session: Session, targets: Sequence[str]) -> list[AccountRow]:
    oa, oe = models.ObservedAccount, models.ObservedEntitlement
    query = (
        select(
            oa.id,
            oa.target,
            oa.account,
            oa.identity,
            oa.enabled,
            oa.sessions,
            oa.attributes,
            oa.observed_at,
            oa.classification,
            oa.classified_detail,
            aggregate_strings(oe.entitlement, SEP),
        )
        .select_from(oa)
        .outerjoin(oe, oe.account_id == oa.id)
        .group_by(oa.id)
    )
    if len(targets) == 1:
        query = query.where(oa.target == targets[0])
    wanted = set(targets)
    return [
        AccountRow(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6] or {},
            r[7],
            r[8],
            r[9],
            frozenset(r[10].split(SEP)) if r[10] else frozenset(),
        )
        for r in session.execute(query)
        if r[1] in wanted
    ]


def identity_states(
    workspace: Workspace, session: Session, ids: Iterable[str] | None, now: datetime
) -> dict[str, tuple[IdentityState, DesiredAccess]]:
    """The current state and desired access of identities (all when ``ids`` is None)."""
    compiled = workspace.compiled
    query = select(models.Identity)
    rows: list[models.Identity] = []
    if ids is None:
        rows = list(session.execute(query).scalars())
    else:
        for part in chunks(sorted(set(ids))):
            rows.extend(
                session.execute(query.where(models.Identity.external_id.in_(part))).scalars()
            )
    detailed = [
        r.external_id
        for r in rows
        if r.external_id in compiled.assignments or r.external_id in compiled.exceptions
    ]
    history = load_history(session, detailed) if detailed else {}
    found: dict[str, tuple[IdentityState, DesiredAccess]] = {}
    for row in rows:
        if row.external_id in history:
            state = fold(
                row.external_id,
                history[row.external_id],
                as_of=now,
                rescind_window=window(workspace.config),
            )
        else:
            state = state_from_row(row, now)
        found[row.external_id] = (state, desired_access(compiled, state))
    return found


@dataclass
class Finding:
    row: AccountRow
    verdict: Verdict

    @property
    def observed(self) -> ObservedAccount:
        r = self.row
        return ObservedAccount(
            r.target,
            r.account,
            r.identity,
            r.enabled,
            r.entitlements,
            r.observed_at,
            r.sessions,
            r.attributes,
        )


def classify_accounts(
    workspace: Workspace,
    session: Session,
    targets: Sequence[str],
    now: datetime,
    *,
    unreadable: dict[str, str] | None = None,
    states: dict[str, tuple[IdentityState, DesiredAccess]] | None = None,
) -> list[Finding]:
    """Classify every observed account of ``targets`` and store what changed (class, why)."""
    compiled = workspace.compiled
    rows = load_rows(session, targets)
    if states is None:
        states = identity_states(workspace, session, {r.identity for r in rows if r.identity}, now)
    waiting: dict[tuple[str, str], int] = {
        (c.target, c.account): c.id
        for c in session.execute(
            select(models.CorrelationCase).where(models.CorrelationCase.status == "open")
        ).scalars()
    }
    groups: dict[tuple[str, str], list[AccountRow]] = defaultdict(list)
    rows = [
        r._replace(identity=None) if r.identity and r.identity.startswith(ORPHAN_PREFIX) else r
        for r in rows
    ]
    for r in rows:
        if r.identity is not None and r.identity in states:
            groups[(r.identity, r.target)].append(r)
    kept: dict[tuple[str, str], str] = {}
    for key, members in groups.items():
        if len(members) > 1:
            kept[key] = primary_account(
                [
                    ObservedAccount(
                        m.target, m.account, m.identity, m.enabled, m.entitlements, m.observed_at
                    )
                    for m in members
                ]
            )
    findings: list[Finding] = []
    changed: list[dict[str, Any]] = []
    for r in rows:
        target = compiled.targets.get(r.target)
        if target is None:
            continue
        entry = states.get(r.identity) if r.identity else None
        observed = ObservedAccount(
            r.target,
            r.account,
            r.identity,
            r.enabled,
            r.entitlements,
            r.observed_at,
            r.sessions,
            r.attributes,
        )
        verdict = classify(
            target,
            observed,
            entry[0] if entry else None,
            entry[1] if entry else None,
            kept=kept.get((r.identity, r.target)) if r.identity else None,
            open_case=waiting.get((r.target, r.account)),
            unreadable=(unreadable or {}).get(r.target),
        )
        findings.append(Finding(r, verdict))
        if (r.classification, r.detail) != (verdict.classification, verdict.detail):
            changed.append(
                {
                    "id": r.id,
                    "classification": verdict.classification,
                    "classified_detail": verdict.detail,
                    "classified_at": now,
                }
            )
    _store_classes(session, changed)
    return findings


def _store_classes(session: Session, changed: list[dict[str, Any]]) -> None:
    """Write classifications with one plain executemany per chunk: the ORM's per-row work
    would dominate when a million accounts are classified for the first time."""
    if not changed:
        return
    connection = session.connection()
    dialect = connection.dialect
    naive = changed[0]["classified_at"].astimezone(UTC).replace(tzinfo=None)
    # a plain statement gets no type processing: the time as each dialect stores it
    when: Any = (
        naive.isoformat(sep=" ", timespec="microseconds") if dialect.name == "sqlite" else naive
    )
    quote = dialect.identifier_preparer.quote
    sql = (
        f"UPDATE {quote('observed_accounts')} SET {quote('classification')} = :c, "
        f"{quote('classified_detail')} = :d, {quote('classified_at')} = :w WHERE {quote('id')} = :i"
    )
    statement = text(sql)
    for part in chunks(changed, 20000):
        connection.execute(
            statement,
            [
                {"c": c["classification"], "d": c["classified_detail"], "w": when, "i": c["id"]}
                for c in part
            ],
        )
