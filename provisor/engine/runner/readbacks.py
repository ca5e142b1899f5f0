"""A batch of a run's read-backs written into the observed-state store and the journal.

Does: for the operations one outcome batch verified (or found unverifiable), store what each
read-back showed (``observe``): the account, linked to its identity (an orphan account's
removal, ``orphan:<account>``, links it to nobody), its state, attributes and entitlements —
a membership read not shown to work keeps what it did not see (``kept_entitlements``); an
account read back as gone is dropped, only that one; an export's row for the same person, or
the row of an account's old name, gives way to the live read. Applied in outcome order,
exactly as one read-back after another would be, but with the batch's rows read in one
query, its entitlements replaced in one statement and written in one insert. Point the
identity's later steps in the same target at the account an operation found or made
(``adopt``), one statement for the batch.
Does not: decide what a read-back proves (``execution``), or write anything but the observed
store and the accounts of pending operations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, or_, select, tuple_, update
from sqlalchemy import inspect as inspect_state
from sqlalchemy.orm import Session

from provisor.connectors.base import AccountRecord
from provisor.domain.lifecycle import ORPHAN_PREFIX
from provisor.domain.readback import kept_entitlements
from provisor.store import models
from provisor.store.bulk import chunks
from provisor.store.db import bulk_insert

Key = tuple[str, str]  # (target, account)


@dataclass(frozen=True)
class Seen:
    """One operation's read-back: what it found (None: the account is gone), when; the
    account's old name when the operation found it renamed, and whether it found or made the
    account its journal row did not name yet (``adopt``)."""

    op: models.Operation
    record: AccountRecord | None
    at: datetime
    renamed_from: str | None = None
    adopted: bool = False

    @property
    def link(self) -> str | None:
        return None if self.op.identity.startswith(ORPHAN_PREFIX) else self.op.identity


class _Store:
    """The batch's observed rows, found by account and by identity, kept in step with what
    the batch does to them."""

    def __init__(self, session: Session, seen: Sequence[Seen]) -> None:
        self.session = session
        self.by_key: dict[Key, models.ObservedAccount] = {}
        self.by_identity: dict[Key, list[models.ObservedAccount]] = defaultdict(list)
        self.dropped: set[Key] = set()  # deleted in this batch: not yet written
        oa = models.ObservedAccount
        people = {(s.op.target, s.op.identity) for s in seen if s.link is not None}
        named = {(s.op.target, s.op.account) for s in seen if s.op.account is not None}
        named |= {(s.op.target, s.record.account) for s in seen if s.record is not None}
        named |= {(s.op.target, s.renamed_from) for s in seen if s.renamed_from is not None}
        wanted = [(tuple_(oa.target, oa.identity), p) for p in chunks(sorted(people))]
        wanted += [(tuple_(oa.target, oa.account), n) for n in chunks(sorted(named))]
        for column, part in wanted:
            for row in session.execute(select(oa).where(column.in_(part))).scalars():
                if (row.target, row.account) not in self.by_key:
                    self._index(row)
        # the memberships stored before the batch, wanted where a read could not show them
        self.stored: dict[int, set[str]] = defaultdict(set)
        if any(s.record is not None and not s.record.entitlements_shown for s in seen):
            held = models.ObservedEntitlement
            for ids in chunks(sorted(row.id for row in self.by_key.values())):
                query = select(held.account_id, held.entitlement).where(held.account_id.in_(ids))
                for account_id, name in session.execute(query):
                    self.stored[account_id].add(name)

    def stored_of(self, row: models.ObservedAccount) -> frozenset[str]:
        """The memberships ``row`` held before the batch (none for a row made in it)."""
        return frozenset(self.stored.get(row.id, ())) if row.id is not None else frozenset()

    def _index(self, row: models.ObservedAccount) -> None:
        self.by_key[row.target, row.account] = row
        if row.identity is not None:
            self.by_identity[row.target, row.identity].append(row)

    def _unindex(self, row: models.ObservedAccount) -> None:
        self.by_key.pop((row.target, row.account), None)
        if row.identity is not None:
            mine = self.by_identity[row.target, row.identity]
            if row in mine:
                mine.remove(row)

    def existing(self, seen: Seen) -> list[models.ObservedAccount]:
        """The rows the read-back may replace: its identity's in the target (an orphan's:
        the account it addressed)."""
        op = seen.op
        if seen.link is not None:
            return list(self.by_identity.get((op.target, op.identity), []))
        row = self.by_key.get((op.target, op.account or ""))
        return [row] if row is not None else []

    def drop(self, row: models.ObservedAccount) -> None:
        self._unindex(row)
        if inspect_state(row).pending:  # made earlier in this batch, never written
            self.session.expunge(row)
        else:
            self.session.delete(row)
            self.dropped.add((row.target, row.account))

    def relink(self, row: models.ObservedAccount, link: str | None) -> None:
        self._unindex(row)
        row.identity = link
        self._index(row)

    def add(self, row: models.ObservedAccount) -> None:
        if (row.target, row.account) in self.dropped:
            # the old row's delete goes first: one flush writes new rows before deletes
            self.session.flush()
            self.dropped.discard((row.target, row.account))
        self.session.add(row)
        self._index(row)


def observe(session: Session, seen: Sequence[Seen]) -> None:
    """Store the batch's read-backs, in order (see the module's description)."""
    if not seen:
        return
    store = _Store(session, seen)
    held: dict[models.ObservedAccount, frozenset[str]] = {}  # entitlements to store
    for item in seen:
        row = _account(store, item)
        if row is None:
            continue
        assert item.record is not None
        before = held[row] if row in held else store.stored_of(row)
        held[row] = kept_entitlements(item.record, before)
    session.flush()  # new rows get their ids, dropped ones go
    for row in [r for r in held if not inspect_state(r).persistent]:
        del held[row]  # dropped later in the batch (deleted, or made and let go unwritten)
    ids = sorted(row.id for row in held)
    entitlement = models.ObservedEntitlement
    for part in chunks(ids):
        session.execute(
            delete(entitlement)
            .where(entitlement.account_id.in_(part))
            .execution_options(synchronize_session=False)
        )
    rows = [
        (row.id, name, row.observed_at)
        for row, names in sorted(held.items(), key=lambda item: item[0].id)
        for name in sorted(names)
    ]
    bulk_insert(session, entitlement, ("account_id", "entitlement", "observed_at"), rows)


def _account(store: _Store, item: Seen) -> models.ObservedAccount | None:
    """The observed row ``item``'s read-back leaves (None: the account is gone)."""
    op, record = item.op, item.record
    existing = store.existing(item)
    if record is None:
        # only the account this operation addressed is gone; the identity's other accounts
        # in the target stay as last observed
        for gone in existing:
            if gone.account in (op.account, item.renamed_from):
                store.drop(gone)
        return None
    kept = store.by_key.get((op.target, record.account))
    if kept is not None:
        store.relink(kept, item.link)  # read back for this identity: linked to it now
    for stale in existing:
        renamed = item.renamed_from is not None and stale.account == item.renamed_from
        if stale is not kept and (renamed or stale.source.startswith("export")):
            # an export's row for the same person, now read live; or the old name
            store.drop(stale)
    row = kept
    if row is None:
        row = models.ObservedAccount(
            target=op.target, account=record.account, identity=item.link, source="read-back"
        )
        store.add(row)
    row.enabled, row.sessions, row.observed_at = record.enabled, record.sessions, item.at
    row.attributes = {
        "user_name": record.user_name,
        "external_id": record.external_id,
        "mapped": dict(record.attributes),
    }
    row.source = "read-back"
    return row


def adopt(session: Session, found: Sequence[tuple[models.Operation, str | None]]) -> None:
    """The identity's pending operations in the target whose account is not known yet (or
    is the old name, after a rename) take the account each (operation, old name) found: its
    later steps need not search for it again. Rows this session holds are not refreshed
    (they are this batch's own, recorded already)."""
    if not found:
        return
    op = models.Operation
    statement = (
        update(op)
        .where(
            op.identity == bindparam("who"),
            op.target == bindparam("where"),
            op.status == "pending",
            or_(op.account.is_(None), op.account == bindparam("old")),
        )
        .values(account=bindparam("new"))
    )
    params = [
        {"who": row.identity, "where": row.target, "old": old, "new": row.account}
        for row, old in found
    ]
    session.connection().execute(statement, params)  # Core: one statement, many rows
