"""Correlation: which identity an account in a target belongs to, and the cases people decide.

Does: link an account read from a target to an identity — by the identity id the account
carries (``externalId``, the role comment, the external id column), else by the target's
``correlation`` attributes in order, compared without regard to case or runs of whitespace —
keeping an earlier link the attributes do not contradict; open a correlation case, instead of
guessing, when a value matches several identities or contradicts the link already known; and
let a person resolve a case (this identity) or dismiss it (linked to nobody), each audited.
A case about a feed's row (two people match it: ``provisor.engine.authorities``) is decided
the same way: the row's id is linked to the person chosen, or, dismissed, to a new one.
Does not: read targets or write observed accounts (reconciliation does), or classify.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisor.domain.policy import TargetDef
from provisor.errors import LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.store import models


def norm(value: object) -> str:
    """A value as compared for correlation: whitespace runs collapsed, case folded."""
    return " ".join(str(value).split()).casefold()


def account_value(
    target: TargetDef,
    attr: str,
    account: str,
    user_name: str | None,
    external_id: str | None,
    attributes: Mapping[str, Any],
) -> Any:
    """The account's value for correlation attribute ``attr``: ``id`` is the identity id the
    account carries, ``account`` its id in the target; otherwise the attribute of that name,
    or the user name when ``attr`` is the attribute user names come from."""
    if attr == "id":
        return external_id or attributes.get("id")
    if attr == "account":
        return account
    value = attributes.get(attr)
    if value in (None, "") and attr == target.user_name_from:
        return user_name
    return value


@dataclass(frozen=True)
class Match:
    """The outcome for one account: the identity linked (None: nobody), how, and a case to
    open when a person must decide."""

    identity: str | None
    how: str
    case_reason: str | None = None
    candidates: tuple[str, ...] = ()
    open_case: int | None = None


@dataclass
class Correlator:
    """Everything correlation needs for one target, loaded once per reconciliation."""

    target: TargetDef
    known: set[str]
    index: dict[str, dict[str, list[str]]]
    decided: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, target: TargetDef) -> Correlator:
        index: dict[str, dict[str, list[str]]] = {a: {} for a in target.correlation}
        known: set[str] = set()
        for external_id, attributes in session.execute(
            select(models.Identity.external_id, models.Identity.attributes)
        ):
            known.add(external_id)
            for attr in target.correlation:
                value = external_id if attr == "id" else (attributes or {}).get(attr)
                if value not in (None, ""):
                    index[attr].setdefault(norm(value), []).append(external_id)
        decided: dict[str, tuple[int, str | None]] = {}
        waiting: dict[str, int] = {}
        case = models.CorrelationCase
        for row in session.execute(
            select(case.id, case.account, case.status, case.resolved_identity)
            .where(case.target == target.name, case.status != "superseded")
            .order_by(case.id)
        ):
            if row.status == "open":
                waiting[row.account] = row.id
            else:  # the newest decision wins
                decided[row.account] = (row.id, row.resolved_identity)
                waiting.pop(row.account, None)
        return cls(target, known, index, decided, waiting)

    def correlate(
        self,
        account: str,
        user_name: str | None,
        external_id: str | None,
        attributes: Mapping[str, Any],
        linked: str | None,
    ) -> Match:
        """Link one account; ``linked`` is the identity the store links it to now."""
        # While a person decides, an account keeps the link it had: a leaver's account whose
        # email was given to a new hire stays the leaver's (in debt, in the leaver's plan)
        # until someone says otherwise. Nothing new is linked on a guess.
        previous = linked if linked in self.known else None
        if account in self.waiting:
            return Match(previous, "case open", open_case=self.waiting[account])
        if account in self.decided:
            case_id, identity = self.decided[account]
            if identity is None:
                return Match(None, f"case {case_id} dismissed: linked to nobody")
            return Match(identity, f"case {case_id} resolved by a person")
        if external_id and external_id in self.known:
            if previous is not None and previous != external_id:
                return Match(
                    previous,
                    "conflict",
                    f"the account carries identity id {external_id} but was linked to {previous}",
                    tuple(sorted({external_id, previous})),
                )
            return Match(external_id, "identity id carried by the account")
        for attr in self.target.correlation:
            value = account_value(self.target, attr, account, user_name, external_id, attributes)
            if value in (None, ""):
                continue
            matches = self.index.get(attr, {}).get(norm(value), [])
            if len(matches) > 1:
                return Match(
                    previous,
                    "ambiguous",
                    f"{attr} {str(value)!r} matches {len(matches)} identities",
                    tuple(sorted(matches)),
                )
            if len(matches) == 1:
                found = matches[0]
                if previous is not None and previous != found:
                    return Match(
                        previous,
                        "conflict",
                        f"{attr} {str(value)!r} matches {found} but the account was linked to "
                        f"{previous}",
                        tuple(sorted({found, previous})),
                    )
                return Match(found, f"{attr} matches")
        if previous is not None:
            return Match(previous, "link kept: nothing contradicts it")
        return Match(None, "no identity matches")


def open_case(
    session: Session,
    target: str,
    account: str,
    user_name: str | None,
    match: Match,
    now: datetime,
) -> models.CorrelationCase:
    """Open a correlation case for an account a person must link (audited)."""
    case = models.CorrelationCase(
        target=target,
        account=account,
        user_name=user_name,
        candidates=list(match.candidates),
        reason=match.case_reason or match.how,
        status="open",
        created_at=now,
    )
    session.add(case)
    session.flush()
    audit.append(
        session,
        [
            audit.Entry(
                "case.opened",
                f"{target}:{account}",
                {
                    "case": case.id,
                    "target": target,
                    "account": account,
                    "user_name": user_name,
                    "candidates": case.candidates,
                    "reason": case.reason,
                },
            )
        ],
        at=now,
    )
    return case


def _case(session: Session, case_id: int) -> models.CorrelationCase:
    case = session.get(models.CorrelationCase, case_id)
    if case is None:
        raise NotFoundError(f"no correlation case {case_id}; 'provisor cases list' shows them")
    if case.status != "open":
        raise LifecycleError(f"case {case_id} is {case.status}, not open")
    return case


def resolve_case(
    session: Session, case_id: int, identity: str, *, by: str, now: datetime, note: str = ""
) -> models.CorrelationCase:
    """A person links the account to ``identity``; the observed account follows at once."""
    case = _case(session, case_id)
    known = session.execute(
        select(models.Identity.external_id).where(models.Identity.external_id == identity)
    ).scalar_one_or_none()
    if known is None:
        raise NotFoundError(f"no identity {identity!r}; see 'provisor identities'")
    case.status, case.resolved_identity = "resolved", identity
    case.resolved_by, case.resolved_at, case.note = by, now, note or None
    _relink(session, case, identity)
    audit.record(
        session,
        "case.resolved",
        f"{case.target}:{case.account}",
        {"case": case.id, "identity": identity, "by": by, "note": note},
        actor=by,
    )
    return case


def dismiss_case(
    session: Session, case_id: int, *, by: str, now: datetime, note: str = ""
) -> models.CorrelationCase:
    """A person decides the account belongs to none of the candidates: it is an orphan."""
    case = _case(session, case_id)
    case.status, case.resolved_by, case.resolved_at, case.note = "dismissed", by, now, note or None
    _relink(session, case, None)
    audit.record(
        session,
        "case.dismissed",
        f"{case.target}:{case.account}",
        {"case": case.id, "by": by, "note": note},
        actor=by,
    )
    return case


# a case about a feed's row (several feeds for one population, ``authorities``): its target
# is "feed:<name>", its account the feed's id for the person
FEED_CASE = "feed:"


def _relink(session: Session, case: models.CorrelationCase, identity: str | None) -> None:
    if case.target.startswith(FEED_CASE):
        _relink_row(session, case, identity)
        return
    row = session.execute(
        select(models.ObservedAccount).where(
            models.ObservedAccount.target == case.target,
            models.ObservedAccount.account == case.account,
        )
    ).scalar_one_or_none()
    if row is not None:
        row.identity = identity
        row.classification = None  # judged again by the next reconciliation
    if identity is not None:
        session.execute(
            update(models.Identity)
            .where(models.Identity.external_id == identity)
            .values(needs_plan=True)
        )


def _relink_row(session: Session, case: models.CorrelationCase, identity: str | None) -> None:
    """A feed's row decided: its id is linked to ``identity`` (dismissed: to a new person of
    its own); the feed's next import applies it."""
    feed = case.target.removeprefix(FEED_CASE)
    s = models.SourceRecord
    row = session.execute(
        select(s).where(s.feed == feed, s.source_id == case.account)
    ).scalar_one_or_none()
    who = identity if identity is not None else f"{feed}:{case.account}"
    if row is None:
        at = case.resolved_at or case.created_at
        session.add(
            s(
                feed=feed,
                source_id=case.account,
                identity=who,
                attributes={},
                listed=False,
                seen_at=at,
            )
        )
    else:
        row.identity = who


def case_target(session: Session, case_id: int) -> str:
    """The target of a correlation case (who may decide it depends on it)."""
    return _case(session, case_id).target


def list_cases(
    session: Session, *, every: bool = False, target: str | None = None
) -> list[models.CorrelationCase]:
    """Open cases (all with ``every``), oldest first."""
    query = select(models.CorrelationCase).order_by(models.CorrelationCase.id)
    if not every:
        query = query.where(models.CorrelationCase.status == "open")
    if target is not None:
        query = query.where(models.CorrelationCase.target == target)
    return list(session.execute(query).scalars())


def case_dict(case: models.CorrelationCase) -> dict[str, Any]:
    return {
        "id": case.id,
        "target": case.target,
        "account": case.account,
        "user_name": case.user_name,
        "candidates": list(case.candidates or []),
        "reason": case.reason,
        "status": case.status,
        "created_at": case.created_at.isoformat(),
        "resolved_identity": case.resolved_identity,
        "resolved_by": case.resolved_by,
        "resolved_at": case.resolved_at.isoformat() if case.resolved_at else None,
        "note": case.note,
    }
