"""Generated attributes: giving each person with access the first free candidate, and keeping it.

Does: for people whose desired access reaches a target, assign each generated attribute of the
policy (``policy.generated``) they lack: the user name an account already linked to them holds
in a target named by it, else the first candidate (``provisor.domain.names``) that nobody else
holds or gave up within ``reuse_after_days``, that no account in a target named by it holds
unless it is linked to this person, and that the store's unique key accepts (of two writers
at once, one gets it and the other takes the next) — each with an audit entry; keep a value
once assigned, making a new one only when what it is made from changed and the policy says
``rename`` (the plan then renames the accounts); merge people's values into their attributes
for the planner, the runner and reconciliation; and when a target turns out to hold a value
under an account that is not this person's, keep that value from everyone and give the person
the next one. A person's value is given up when they leave (counted from the termination).
Does not: decide who has access (``desired``), write to targets (the runner creates and
renames), or take over an account by its name (``runner.execution``: only the adoption rule
on correlation attributes does).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import chain, islice
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provisor.domain import names
from provisor.domain.desired import DesiredAccess
from provisor.domain.lifecycle import IdentityState, LifecycleState, utc
from provisor.domain.policy import GeneratedDef, Policy
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import chunks
from provisor.store.db import one_writer

TRIES = 1000  # candidates tried for one person before saying none is free
LONGEST = 256  # characters of a value the store keeps


@dataclass
class Naming:
    """What one round of naming did: its audit entries, and who was left without a value
    of an attribute (and why)."""

    entries: list[audit.Entry] = field(default_factory=list)
    unnamed: dict[str, dict[str, str]] = field(default_factory=dict)


def values(session: Session, policy: Policy, ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The generated values each of ``ids`` holds now, by attribute."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    if not policy.generated:
        return found
    g = models.GeneratedValue
    for part in chunks(sorted(set(ids))):
        query = select(g.identity, g.attribute, g.value).where(
            g.identity.in_(part), g.released_at.is_(None)
        )
        for who, attribute, value in session.execute(query):
            if attribute in policy.generated_map and who is not None:
                found[who][attribute] = value
    return found


def with_values(
    session: Session, policy: Policy, states: Mapping[str, IdentityState]
) -> dict[str, IdentityState]:
    """``states`` with each person's generated values among their attributes (a generated
    value stands in for a feed's attribute of the same name)."""
    made = values(session, policy, states)
    return {
        who: replace(s, attributes={**s.attributes, **made[who]}) if who in made else s
        for who, s in states.items()
    }


def assign(
    session: Session,
    policy: Policy,
    states: Mapping[str, IdentityState],
    desired: Mapping[str, DesiredAccess],
    now: datetime,
    leavers_keep: timedelta = timedelta(0),
) -> Naming:
    """Give each person with access in ``desired`` the generated values they lack (or a new
    one where ``rename`` applies), in ``session``'s transaction. A leaver's values are given
    to nobody else for ``leavers_keep`` either (a rescind may bring them back meanwhile)."""
    naming = Naming()
    wanting = sorted(who for who, access in desired.items() if access.targets)
    if not policy.generated or not wanting:
        return naming
    _writer(session)
    held = _held(session, wanting)
    for made in policy.generated:
        basis = names.basis_of(tuple(made.candidates))
        needing = [
            (who, row)
            for who in wanting
            if (row := held.get((who, made.name))) is None
            or _renamed(made, row, basis(states[who].attributes), states[who].attributes)
        ]
        if not needing:
            continue
        namer = _Namer(session, policy, made, now, leavers_keep)
        namer.accounts_of([who for who, row in needing if row is None])
        for who, row in needing:
            namer.give(who, states[who].attributes, row, naming)
    return naming


def _renamed(
    made: GeneratedDef, row: models.GeneratedValue, basis: str, attributes: Mapping[str, Any]
) -> bool:
    """Whether the value ``row`` holds is to be made again: ``rename`` is on and its first
    candidate is another now (a name change). What the templates read now (``basis``) is
    compared first: the candidate is made again only once that changed."""
    if not made.rename:
        return False
    if row.basis == basis:
        return False
    now = names.stem(made.candidates, attributes)
    if now is not None and row.stem is not None and names.key(now) != names.key(row.stem):
        return True
    row.basis = basis  # read otherwise (a change no template sees): not compared again
    return False


def _writer(session: Session) -> None:
    """On SQLite, the database's write lock now: a transaction that read and then writes
    would otherwise fail rather than wait when another writes at once. PostgreSQL needs
    nothing: of two writers giving the same value, the unique key lets one through."""
    if session.get_bind().dialect.name == "sqlite":
        one_writer(session, "provisor.names")


def _held(session: Session, ids: list[str]) -> dict[tuple[str, str], models.GeneratedValue]:
    g = models.GeneratedValue
    found: dict[tuple[str, str], models.GeneratedValue] = {}
    for part in chunks(ids):
        query = select(g).where(g.identity.in_(part), g.released_at.is_(None))
        for row in session.execute(query).scalars():
            assert row.identity is not None
            found[row.identity, row.attribute] = row
    return found


def blocked(
    session: Session,
    policy: Policy,
    who: str,
    target: str,
    user_name: str,
    account: str,
    now: datetime,
    leavers_keep: timedelta = timedelta(0),
) -> list[audit.Entry]:
    """A target holds ``user_name`` (``who``'s generated value) under ``account``, which is
    not theirs: keep the value from everyone from now on and give ``who`` the next one."""
    definition = policy.target_map.get(target)
    made = policy.generated_map.get(definition.user_name_from) if definition else None
    if made is None:
        return []
    _writer(session)
    g = models.GeneratedValue
    note = f"held in {target} by account {account}, which is not linked to {who}"
    row = session.execute(
        select(g).where(g.attribute == made.name, g.value_key == names.key(user_name))
    ).scalar_one_or_none()
    if row is None:
        session.add(
            g(
                attribute=made.name,
                value=user_name,
                value_key=names.key(user_name),
                identity=None,
                assigned_at=now,
                released_at=now,
                note=note,
            )
        )
    else:
        row.identity, row.released_at, row.note = None, now, note
    i = models.Identity
    attributes = session.execute(
        select(i.attributes).where(i.external_id == who)
    ).scalar_one_or_none()
    naming = Naming()
    data = {"attribute": made.name, "value": user_name, "target": target, "account": account}
    naming.entries.append(audit.Entry("identity.name_held_by_another", who, data))
    namer = _Namer(session, policy, made, now, leavers_keep)
    namer.accounts_of([who])
    namer.give(who, attributes or {}, None, naming)
    return naming.entries


class _Namer:
    """Gives values of one generated attribute, knowing which names the targets it names
    already hold (read once, when first needed)."""

    def __init__(
        self,
        session: Session,
        policy: Policy,
        made: GeneratedDef,
        now: datetime,
        leavers_keep: timedelta = timedelta(0),
    ):
        self.session, self.made, self.now = session, made, now
        self.reuse = timedelta(days=made.reuse_after_days)
        self.leavers_keep = max(self.reuse, leavers_keep)
        self.targets = [t.name for t in policy.named_by(made.name)]
        self._in_targets: dict[str, set[str | None]] | None = None
        self._accounts: dict[str, set[str]] = defaultdict(set)
        self._left: dict[str, datetime | None] = {}

    def give(
        self,
        who: str,
        attributes: Mapping[str, Any],
        previous: models.GeneratedValue | None,
        naming: Naming,
    ) -> None:
        """Give ``who`` the first free candidate (their previous value, if any, given up)."""
        stem = names.stem(self.made.candidates, attributes)
        basis = names.basis(self.made.candidates, attributes)
        skipped: list[str] = []
        made = islice(names.candidates(self.made.candidates, attributes), TRIES)
        for value in chain(self._own_accounts(who, previous), made):
            key = names.key(value)
            holders = self.in_targets().get(key, set())
            if len(value) > LONGEST:
                skipped.append(f"{value[:40]}...: longer than {LONGEST} characters")
            elif holders - {who}:
                skipped.append(f"{value}: held in a target by an account not linked to {who}")
            elif previous is not None and previous.value_key == key:
                previous.stem, previous.basis = stem, basis
                return  # what they hold already is still the first free one
            elif self._take(who, value, key, (stem, basis)):
                if previous is not None:
                    previous.released_at = self.now
                data = {
                    "attribute": self.made.name,
                    "value": value,
                    "previous": previous.value if previous is not None else None,
                    "skipped": skipped,
                }
                naming.entries.append(audit.Entry("identity.name_generated", who, data))
                return
            else:
                skipped.append(f"{value}: held or given up lately by someone else")
        lacking = names.missing(self.made.candidates, attributes)
        why = (
            f"no candidate can be made: {', '.join(lacking)} empty"
            if lacking and not skipped
            else f"none of the {len(skipped)} candidates tried is free"
        )
        naming.unnamed.setdefault(who, {})[self.made.name] = why

    def accounts_of(self, ids: list[str]) -> None:
        """Read, for ``ids`` at once, the user names accounts linked to them hold in the
        targets named by this attribute (``_own_accounts``)."""
        oa = models.ObservedAccount
        for part in chunks(sorted(set(ids))) if self.targets else ():
            query = select(oa.identity, oa.account, oa.attributes).where(
                oa.identity.in_(part), oa.target.in_(self.targets)
            )
            for who, account, attrs in self.session.execute(query):
                self._accounts[who].add(str((attrs or {}).get("user_name") or account))

    def _own_accounts(self, who: str, previous: models.GeneratedValue | None) -> list[str]:
        """The user names accounts linked to ``who`` hold in the targets named by this
        attribute (read by ``accounts_of``): a person who has an account keeps its name (not
        when being renamed)."""
        if previous is not None:
            return []
        return sorted(self._accounts.get(who, ()))[:1]

    def in_targets(self) -> dict[str, set[str | None]]:
        """The user names accounts in the targets named by this attribute hold (by key), and
        whom each such account is linked to (None: nobody)."""
        if self._in_targets is None:
            found: dict[str, set[str | None]] = defaultdict(set)
            oa = models.ObservedAccount
            query = select(oa.account, oa.identity, oa.attributes).where(
                oa.target.in_(self.targets)
            )
            for account, linked, attrs in self.session.execute(query) if self.targets else ():
                for value in {account, (attrs or {}).get("user_name")} - {None}:
                    found[names.key(str(value))].add(linked)
            self._in_targets = found
        return self._in_targets

    def _take(self, who: str, value: str, key: str, made: tuple[str | None, str]) -> bool:
        """Make ``value`` ``who``'s if it is free (``made``: the first candidate and what the
        templates read, kept with it); False when it is not (or another writer took it first)."""
        g = models.GeneratedValue
        row = self.session.execute(
            select(g).where(g.attribute == self.made.name, g.value_key == key)
        ).scalar_one_or_none()
        if row is None:
            try:
                with self.session.begin_nested():
                    self.session.add(
                        g(
                            attribute=self.made.name,
                            value=value,
                            value_key=key,
                            identity=who,
                            stem=made[0],
                            basis=made[1],
                            assigned_at=self.now,
                        )
                    )
            except IntegrityError:
                return False  # another writer made it theirs a moment ago
            return True
        if row.identity != who and not self._free(row):
            return False
        before = "" if row.identity in (None, who) else f"given up by {row.identity}"
        changed = self.session.execute(
            update(g)
            .where(g.id == row.id, g.assigned_at == row.assigned_at)
            .values(
                identity=who,
                value=value,
                stem=made[0],
                basis=made[1],
                assigned_at=self.now,
                released_at=None,
                note=before or None,
            )
            .execution_options(synchronize_session=False)
        )
        self.session.expire(row)
        return bool(getattr(changed, "rowcount", 0))

    def _free(self, row: models.GeneratedValue) -> bool:
        """Whether someone else's value may be given out again: its holder gave it up (a
        rename, or they left) at least ``reuse_after_days`` ago — a leaver, also at least
        ``leavers_keep`` ago. One a target holds, never."""
        if row.identity is None:
            return False
        if row.released_at is not None:
            return utc(row.released_at) <= self.now - self.reuse
        left = self._left_at(row.identity)
        return left is not None and utc(left) <= self.now - self.leavers_keep

    def _left_at(self, who: str) -> datetime | None:
        if who not in self._left:
            i = models.Identity
            found = self.session.execute(
                select(i.state, i.terminated_at).where(i.external_id == who)
            ).first()
            gone = found is not None and found[0] == LifecycleState.TERMINATED.value
            self._left[who] = found[1] if gone and found is not None else None
        return self._left[who]
