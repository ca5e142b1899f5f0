"""Assessment of stored accounts: every observed account of some targets classified.

Does: load the observed accounts of the chosen targets with their entitlements, the current
state and desired access of the identities they are linked to, and judge each account with
``provisor.domain.classify`` (the primary account of an identity holding several, open
correlation cases and unreadable targets taken into account); store each account's class and
why where it changed.
Does not: read targets or act on what it finds (reconciliation applies the remediation policy).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, bindparam, func, select, text
from sqlalchemy.orm import Session

from provisor.domain.classify import (
    AS_DESIRED,
    Verdict,
    as_desired,
    classify,
    primary_account,
)
from provisor.domain.desired import DesiredAccess, SharedAccess, desired_access
from provisor.domain.lifecycle import ORPHAN_PREFIX, IdentityState, LifecycleState
from provisor.domain.plan import ObservedAccount
from provisor.engine import names, rescinds
from provisor.engine.planner import current_states
from provisor.engine.workspace import Workspace
from provisor.redaction import redact
from provisor.store import models
from provisor.store.bulk import (
    accounts_query,
    chunks,
    collector_paused,
    driver_rows,
    identity_rows,
    json_reader,
    names_reader,
    time_reader,
)


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


@collector_paused()
def load_rows(session: Session, targets: Sequence[str]) -> list[AccountRow]:
    """The observed accounts of ``targets`` with the entitlements each holds, in id order.

    An account linked by the journal's orphan key (``orphan:…``) is linked to no identity."""
    oa = models.ObservedAccount
    dialect = session.get_bind().dialect
    seen_at = time_reader(oa.observed_at.type, dialect)
    attributes = json_reader(oa.attributes.type, dialect)
    columns = (
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
    )
    where: list[ColumnElement[bool]] = []
    if len(targets) == 1:
        where.append(oa.target == targets[0])
    wanted = set(targets)
    names = names_reader()
    rows: list[AccountRow] = []
    append = rows.append
    make = tuple.__new__  # AccountRow(...) without its Python-level __new__: a million calls
    for (
        account_id,
        target,
        account,
        who,
        enabled,
        sessions,
        attrs,
        when,
        cls,
        detail,
        held,
    ) in driver_rows(session, accounts_query(columns, *where)):
        if target not in wanted:
            continue
        if who is not None and who.startswith(ORPHAN_PREFIX):
            who = None
        append(
            make(
                AccountRow,
                (
                    account_id,
                    target,
                    account,
                    who,
                    bool(enabled),
                    sessions,
                    {} if attrs == "{}" else attributes(attrs),
                    seen_at[when],
                    cls,
                    detail,
                    names[held],
                ),
            )
        )
    return rows


@collector_paused()
def identity_states(
    workspace: Workspace, session: Session, ids: Iterable[str] | None, now: datetime
) -> dict[str, tuple[IdentityState, DesiredAccess]]:
    """The current state and desired access of identities (all when ``ids`` is None).

    Identities whose access comes out the same share its parts (see ``desired_access``)."""
    compiled = workspace.compiled
    rows = identity_rows(session) if ids is None else identity_rows(session, ids=ids)
    shared: SharedAccess = {}
    states = names.with_values(
        session, compiled.policy, current_states(workspace, session, rows, now)
    )
    held = rescinds.held_for(workspace, session, states)
    return {
        who: (state, desired_access(compiled, state, shared, held.get(who)))
        for who, state in states.items()
    }


@dataclass(slots=True)
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


def _kept_accounts(
    rows: Sequence[AccountRow], states: Mapping[str, object]
) -> dict[tuple[str, str], str]:
    """The primary account of each identity holding several in one target."""
    linked = [(r.identity, r.target) for r in rows if r.identity is not None]
    if len(set(linked)) == len(linked):
        return {}  # the common case, told without counting
    several = {key for key, count in Counter(linked).items() if count > 1 and key[0] in states}
    members: dict[tuple[str, str], list[ObservedAccount]] = {key: [] for key in several}
    for r in rows:
        if r.identity is not None and (r.identity, r.target) in several:
            members[(r.identity, r.target)].append(
                ObservedAccount(
                    r.target, r.account, r.identity, r.enabled, r.entitlements, r.observed_at
                )
            )
    return {key: primary_account(accounts) for key, accounts in members.items()}


@collector_paused()
def classify_accounts(
    workspace: Workspace,
    session: Session,
    targets: Sequence[str],
    now: datetime,
    *,
    unreadable: dict[str, str] | None = None,
    states: dict[str, tuple[IdentityState, DesiredAccess]] | None = None,
    rows: list[AccountRow] | None = None,
) -> list[Finding]:
    """Classify every observed account of ``targets`` and store what changed (class, why).

    ``states`` and ``rows`` (the accounts as ``load_rows`` reads them) are read here unless
    the caller has them already. An account that plainly holds what its identity should
    have is judged ``ok`` without building its detail (``as_desired``); any other goes
    through ``classify``."""
    compiled = workspace.compiled
    if rows is None:
        rows = load_rows(session, targets)
    if states is None:
        states = _linked_states(workspace, session, rows, now)
    waiting = _open_cases(session)
    kept = _kept_accounts(rows, states)
    unread = unreadable or {}
    defined = compiled.targets
    findings: list[Finding] = []
    # accounts whose class or why changed, by the new (class, why); most are "as desired"
    now_as_desired: list[int] = []
    changed: dict[tuple[str, str], list[int]] = {
        (AS_DESIRED.classification, AS_DESIRED.detail): now_as_desired
    }
    # what each live identity should hold, per target: its accounts that plainly hold just
    # that are "as desired" without further ado (``as_desired``); the rest go to ``classify``
    granted = {
        who: desired.targets
        for who, (state, desired) in states.items()
        if state.state is not LifecycleState.TERMINATED
    }
    for r in rows:
        account_id, name, account, who, enabled, sessions, attributes, seen, was, why, ents = r
        target = defined.get(name)
        if target is None:
            continue
        verdict: Verdict
        if (
            who is not None
            and (wants := granted.get(who)) is not None
            and (want := wants.get(name)) is not None
            and name not in unread
            and (not waiting or (name, account) not in waiting)
            and (not kept or kept.get((who, name), account) == account)
            and as_desired(want, enabled, ents, attributes)
        ):
            verdict = AS_DESIRED
        else:
            entry = states.get(who) if who is not None else None
            verdict = classify(
                target,
                ObservedAccount(name, account, who, enabled, ents, seen, sessions, attributes),
                entry[0] if entry else None,
                entry[1] if entry else None,
                kept=kept.get((who, name)) if who else None,
                open_case=waiting.get((name, account)),
                unreadable=unread.get(name),
            )
        findings.append(Finding(r, verdict))
        if was != verdict.classification or why != verdict.detail:
            if verdict is AS_DESIRED:
                now_as_desired.append(account_id)
            else:
                changed.setdefault((verdict.classification, verdict.detail), []).append(account_id)
    _store_classes(session, changed, now)
    return findings


def _linked_states(
    workspace: Workspace, session: Session, rows: list[AccountRow], now: datetime
) -> dict[str, tuple[IdentityState, DesiredAccess]]:
    everyone = session.execute(select(func.count()).select_from(models.Identity)).scalar_one()
    # with an account per identity or more, reading them all costs less than sorting out
    # which are linked
    linked = None if len(rows) >= everyone else {r.identity for r in rows if r.identity}
    return identity_states(workspace, session, linked, now)


def _open_cases(session: Session) -> dict[tuple[str, str], int]:
    """(target, account) -> the correlation case waiting for a person."""
    case = models.CorrelationCase
    return {
        (c.target, c.account): c.id
        for c in session.execute(select(case).where(case.status == "open")).scalars()
    }


def _store_classes(
    session: Session, changed: dict[tuple[str, str], list[int]], now: datetime
) -> None:
    """Write classifications, given the accounts of each new (class, why): a million of them
    the first time all accounts are classified. One plain UPDATE per chunk of accounts sharing
    a class and why (most are "ok, as desired"), the rest with one plain executemany; the
    ORM's, or even Core's, per-row and per-value work would cost more than the database's."""
    if not any(changed.values()):
        return
    connection = session.connection()
    dialect = connection.dialect
    naive = now.astimezone(UTC).replace(tzinfo=None)
    # a plain statement gets no type processing: the time as each dialect stores it
    when: Any = (
        naive.isoformat(sep=" ", timespec="microseconds") if dialect.name == "sqlite" else naive
    )
    quote = dialect.identifier_preparer.quote
    mark = _MARKS.get(dialect.paramstyle)
    names = ("c", "d", "w")
    marks = [mark or f":{n}" for n in names]
    sets = (
        f"UPDATE {quote('observed_accounts')} SET {quote('classification')} = {marks[0]}, "
        f"{quote('classified_detail')} = {marks[1]}, {quote('classified_at')} = {marks[2]} "
        f"WHERE {quote('id')}"
    )
    single: list[tuple[str, str, int]] = []
    for (classification, told), ids in changed.items():
        # written past the column type: its redaction done here (errors were masked when made)
        detail = redact(told, shapes=False) if told else told
        if len(ids) < 16:
            single.extend((classification, detail, i) for i in ids)
            continue
        for part in chunks(ids):
            if mark is not None:
                listed = ", ".join([mark] * len(part))
                connection.exec_driver_sql(
                    f"{sets} IN ({listed})", (classification, detail, when, *part)
                )
            else:
                connection.execute(
                    text(f"{sets} IN :i").bindparams(bindparam("i", expanding=True)),
                    {"c": classification, "d": detail, "w": when, "i": list(part)},
                )
    for batch in chunks(single, 20000):
        if mark is not None:
            connection.exec_driver_sql(f"{sets} = {mark}", [(c, d, when, i) for c, d, i in batch])
        else:
            connection.execute(
                text(f"{sets} = :i"),
                [{"c": c, "d": d, "w": when, "i": i} for c, d, i in batch],
            )


# placeholders of the drivers' positional parameter styles
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
