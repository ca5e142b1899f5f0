"""Revocation debt, counted: the items one observed account owes and the totals of a ledger.

Does: turn the removals the plan wants for one observed account into debt items
(``account_debt``) — an ``account`` item for an account enabled while it must be disabled or
gone, or still there after its delete grace; an ``entitlement:<name>`` item for an entitlement
held but not granted; a ``sessions`` item for open sessions, or sessions unknown on an account
still enabled when it must not be — each with its age, SLA, overdue flag and what the journal
says about its removal (``Journal.work``); and group items by target class, target or owner
(``summarise``, ``totals``).
Does not: read the store, the journal or targets; ``provisor.engine.debt`` gathers the inputs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from provisor.domain.channels import channel
from provisor.domain.lifecycle import IdentityState, LifecycleState
from provisor.domain.plan import ObservedAccount, OpKind, PlannedOperation
from provisor.domain.policy import TargetDef

GroupBy = Literal["class", "target", "owner"]
GROUPINGS: tuple[GroupBy, ...] = ("class", "target", "owner")
DAY = 86400.0


@dataclass(frozen=True)
class DebtItem:
    """One piece of access that must not exist and is not yet verified gone."""

    identity: str
    target: str
    account: str
    item: str  # account | entitlement:<name> | sessions
    target_class: str
    channel: str
    owner: str
    since: datetime
    age_days: float
    sla_days: int
    overdue: bool
    state: str  # what the observation shows, e.g. "enabled", "held", "2 open sessions"
    observed_at: datetime
    source: str  # where the observation came from: read-back, export FILE, attestation, ...
    work: str  # what the journal says about its removal
    # False: nothing has read the target for this identity since its removal was due, so
    # whether the access is there is unknown (counted apart from debt that was seen)
    known: bool = True

    def key(self, by: GroupBy) -> str:
        return {"class": self.target_class, "target": self.target, "owner": self.owner}[by]

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "target": self.target,
            "account": self.account,
            "item": self.item,
            "class": self.target_class,
            "channel": self.channel,
            "owner": self.owner,
            "since": self.since.isoformat(),
            "age_days": self.age_days,
            "sla_days": self.sla_days,
            "overdue": self.overdue,
            "state": self.state,
            "observed_at": self.observed_at.isoformat(),
            "source": self.source,
            "work": self.work,
            "known": self.known,
        }


class Seen(NamedTuple):
    """An observed account with where and when it was seen."""

    account: ObservedAccount
    source: str


class JournalRow(NamedTuple):
    id: int
    account: str | None
    kind: str
    entitlement: str | None
    status: str
    created_at: datetime
    not_before: datetime | None
    last_error: str | None


class TaskRow(NamedTuple):
    id: int
    status: str
    done_by: str | None
    done_at: datetime | None


@dataclass
class Journal:
    """Open removal operations by (identity, target, kind, entitlement), with their tasks."""

    rows: Mapping[tuple[str, str, str, str], list[JournalRow]]
    tasks: Mapping[int, TaskRow]

    def find(
        self, identity: str, target: str, kind: OpKind, entitlement: str | None, account: str
    ) -> list[JournalRow]:
        found = self.rows.get((identity, target, kind.value, entitlement or ""), [])
        return [r for r in found if r.account in (account, None)]

    def work(self, rows: Sequence[JournalRow]) -> str:
        if not rows:
            return "no removal in the journal yet; 'provisor plan' adds it"
        row = rows[-1]
        task = self.tasks.get(row.id)
        if task is not None and task.status == "done":
            done = task.done_at.date().isoformat() if task.done_at else "?"
            return f"task {task.id} done by {task.done_by} on {done}; not verified"
        if task is not None:
            return f"task {task.id} open"
        if row.status == "pending":
            text = "pending"
            if row.not_before is not None:
                text += f", not before {row.not_before.date().isoformat()}"
            return text + (f"; last error: {row.last_error}" if row.last_error else "")
        if row.status == "failed":
            return f"failed: {row.last_error or 'no error recorded'}"
        if row.status == "unverifiable":
            return f"unverifiable: {row.last_error or 'the target cannot show it'}"
        if row.status == "succeeded":
            return "done; not verified"
        return row.status


def days_since(since: datetime, now: datetime) -> float:
    return round(max((now - since).total_seconds(), 0.0) / DAY, 2)


def account_debt(
    state: IdentityState,
    leave_started: datetime | None,
    target: TargetDef,
    seen: Seen,
    planned: Sequence[PlannedOperation],
    journal: Journal,
    now: datetime,
) -> list[DebtItem]:
    """The debt items of one observed account, from the removals the plan wants for it."""
    observed = seen.account
    who, account = state.identity, observed.account
    kinds = {op.kind for op in planned}
    terminated = state.state is LifecycleState.TERMINATED and state.terminated_at is not None

    def since(kind: OpKind, entitlement: str | None, rows: Sequence[JournalRow]) -> datetime:
        if terminated:  # owed from the termination, or the end of a leaver's grace here
            assert state.terminated_at is not None
            return state.terminated_at + timedelta(days=target.leaver_grace_days)
        if leave_started is not None and kind in (OpKind.DISABLE, OpKind.REVOKE_SESSIONS):
            return leave_started
        if rows:
            return min(r.created_at for r in rows)
        return observed.observed_at

    items: list[DebtItem] = []

    def add(item: str, when: datetime, shown: str, rows: Sequence[JournalRow]) -> None:
        age = days_since(when, now)
        items.append(
            DebtItem(
                identity=who,
                target=target.name,
                account=account,
                item=item,
                target_class=target.target_class.value,
                channel=channel(target),
                owner=target.owner,
                since=when,
                age_days=age,
                sla_days=target.sla_days,
                overdue=now > when + timedelta(days=target.sla_days),
                state=shown,
                observed_at=observed.observed_at,
                source=seen.source,
                work=journal.work(rows),
            )
        )

    delete_due: datetime | None = None
    delete_rows: list[JournalRow] = []
    for op in planned:
        if op.kind is OpKind.DELETE:
            delete_rows = journal.find(who, target.name, OpKind.DELETE, None, account)
            dates = [r.not_before for r in delete_rows if r.not_before is not None]
            delete_due = min(dates) if dates else op.not_before
    overdue_delete = delete_due is not None and delete_due <= now
    due_text = delete_due.date().isoformat() if delete_due is not None else ""
    if OpKind.DISABLE in kinds:
        rows = journal.find(who, target.name, OpKind.DISABLE, None, account)
        shown = "enabled" + (f"; deletion was due {due_text}" if overdue_delete else "")
        add("account", since(OpKind.DISABLE, None, rows), shown, rows)
    elif overdue_delete and delete_due is not None:
        add("account", delete_due, f"exists; deletion was due {due_text}", delete_rows)
    for op in planned:
        if op.kind is OpKind.REMOVE_ENTITLEMENT:
            rows = journal.find(who, target.name, op.kind, op.entitlement, account)
            add(f"entitlement:{op.entitlement}", since(op.kind, op.entitlement, rows), "held", rows)
    if OpKind.REVOKE_SESSIONS in kinds:
        rows = journal.find(who, target.name, OpKind.REVOKE_SESSIONS, None, account)
        when = since(OpKind.REVOKE_SESSIONS, None, rows)
        if observed.sessions:
            add("sessions", when, f"{observed.sessions} open sessions", rows)
        elif observed.sessions is None and OpKind.DISABLE in kinds:
            add("sessions", when, "unknown, on an enabled account", rows)
    return items


@dataclass(frozen=True)
class DebtGroup:
    key: str
    items: int
    overdue: int
    identities: int
    oldest_days: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarise(items: Iterable[DebtItem], by: GroupBy) -> list[DebtGroup]:
    """Totals per target class, target or owner: most items first."""
    groups: dict[str, list[DebtItem]] = defaultdict(list)
    for item in items:
        groups[item.key(by)].append(item)
    found = [
        DebtGroup(
            key,
            len(members),
            sum(1 for m in members if m.overdue),
            len({m.identity for m in members}),
            max(m.age_days for m in members),
        )
        for key, members in groups.items()
    ]
    found.sort(key=lambda g: (-g.items, g.key))
    return found


def totals(items: Sequence[DebtItem]) -> dict[str, Any]:
    """What a snapshot keeps: per grouping, per key, items and overdue."""
    return {
        by: {g.key: {"items": g.items, "overdue": g.overdue} for g in summarise(items, by)}
        for by in GROUPINGS
    } | {"unknown": sum(1 for i in items if not i.known)}
