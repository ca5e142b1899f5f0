"""The plan: operations that move observed access to desired access, in a safe order.

Does: compare one identity's desired access with the accounts observed for it, target by target,
and list the operations needed — create, enable, add-entitlement for joiners and movers, update
when a live read shows the account's user name or mapped attributes out of date;
revoke-sessions, disable, remove-entitlement, then delete after the target's grace period for
leavers and for access no longer granted — each with the reason that caused it.
Does not: read storage, call targets, or decide when operations run; the journal and the workers
do that. Orphan accounts (no identity) are reconciliation's business, not the plan's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from provisor.domain.accounts import AccountSpec
from provisor.domain.desired import DesiredAccess, Reason, TargetAccess
from provisor.domain.lifecycle import IdentityState, LifecycleState
from provisor.domain.policy import LeaverAction, TargetDef


class OpKind(StrEnum):
    CREATE = "create"
    ENABLE = "enable"
    ADD_ENTITLEMENT = "add-entitlement"
    UPDATE = "update"
    REVOKE_SESSIONS = "revoke-sessions"
    DISABLE = "disable"
    REMOVE_ENTITLEMENT = "remove-entitlement"
    DELETE = "delete"


# Within one account, operations run in this order: sessions and credentials go first so a leaver
# cannot act while the rest is removed; delete is last.
# the kinds that take access away (a failed addition never holds them back)
REMOVALS = frozenset(
    {OpKind.REVOKE_SESSIONS, OpKind.DISABLE, OpKind.REMOVE_ENTITLEMENT, OpKind.DELETE}
)
REMOVAL_KINDS = tuple(sorted(k.value for k in REMOVALS))  # as the journal stores them
# journal statuses of work not finished or given up: matched by a new plan, never planned twice
OPEN_STATUSES = ("ticket", "pending", "held", "running", "succeeded", "failed", "unverifiable")

STEP = {
    OpKind.REVOKE_SESSIONS: 0,
    OpKind.CREATE: 1,
    OpKind.DISABLE: 2,
    OpKind.ENABLE: 2,
    OpKind.UPDATE: 2,
    OpKind.REMOVE_ENTITLEMENT: 3,
    OpKind.ADD_ENTITLEMENT: 3,
    OpKind.DELETE: 4,
}


@dataclass(frozen=True)
class ObservedAccount:
    """An account as last read from its target (or from an import of the target's export)."""

    target: str
    account: str
    identity: str | None
    enabled: bool
    entitlements: frozenset[str]
    observed_at: datetime
    sessions: int | None = None  # None: the target cannot tell
    attributes: Mapping[str, Any] = field(default_factory=dict)


def account_spec(target: TargetDef, identity: str, attributes: Mapping[str, Any]) -> AccountSpec:
    """The account an identity should have in ``target``: its user name comes from the
    attribute named by the target's ``connection.user_name_attribute`` (default ``email``)."""
    return AccountSpec(identity, str(attributes.get(target.user_name_from) or identity), attributes)


def attribute_drift(
    spec: AccountSpec, user_name: str | None, mapped: Mapping[str, Any]
) -> str | None:
    """How an account, as read, differs from ``spec`` in user name or mapped attributes;
    None when it does not. Only attributes both sides know are compared."""
    problems = []
    if user_name is not None and user_name != spec.user_name:
        problems.append(f"user name is {user_name!r}, not {spec.user_name!r}")
    for key in sorted(mapped):
        wanted = spec.attributes.get(key)
        if wanted is not None and str(mapped[key]) != str(wanted):
            problems.append(f"{key} is {mapped[key]!r}, not {wanted!r}")
    return "; ".join(problems) or None


@dataclass(frozen=True)
class PlannedOperation:
    identity: str
    target: str
    account: str | None  # None for a create: the connector names the new account
    kind: OpKind
    entitlement: str | None
    reason: str
    not_before: datetime | None = None
    # True when ``not_before`` counts from the planning time rather than a fixed date, so the
    # journal keeps the first one planned instead of moving it on every re-plan.
    grace_from_now: bool = False

    @property
    def step(self) -> int:
        return STEP[self.kind]

    @property
    def match_key(self) -> tuple[str, str, str, str]:
        """What makes two planned operations the same work."""
        return (self.identity, self.target, self.kind.value, self.entitlement or "")


def _kept_only(reasons: Sequence[Reason]) -> bool:
    """Whether only a move's grace grants it: it is kept if held, never added."""
    return bool(reasons) and all(r.kind == "grace" for r in reasons)


def _reasons(reasons: Iterable[Reason]) -> str:
    return "; ".join(str(r) for r in reasons)


def _removal(
    target: TargetDef,
    observed: ObservedAccount,
    identity: str,
    why: str,
    delete_from: datetime,
    from_now: bool,
) -> list[PlannedOperation]:
    """Everything to take an account away, in order, per the target's leaver action."""
    ops: list[PlannedOperation] = []
    action = target.leaver_action
    account = observed.account
    # Sessions of an enabled account are revoked first, whatever the last read counted: a
    # session opened since then must not outlive the account (with none open, the runner reads
    # that and writes nothing). Once the account is disabled, unknown sessions are a blind spot
    # to report, not work to plan again and again.
    if observed.enabled or (observed.sessions or 0) > 0:
        ops.append(
            PlannedOperation(identity, target.name, account, OpKind.REVOKE_SESSIONS, None, why)
        )
    if action is not LeaverAction.REMOVE_ENTITLEMENTS and observed.enabled:
        ops.append(PlannedOperation(identity, target.name, account, OpKind.DISABLE, None, why))
    for ent in sorted(observed.entitlements):
        ops.append(
            PlannedOperation(identity, target.name, account, OpKind.REMOVE_ENTITLEMENT, ent, why)
        )
    if action is LeaverAction.DELETE:
        not_before = delete_from + timedelta(days=target.grace_days)
        delete_why = f"{why}; delete after {target.grace_days} grace days"
        ops.append(
            PlannedOperation(
                identity,
                target.name,
                account,
                OpKind.DELETE,
                None,
                delete_why,
                not_before,
                from_now,
            )
        )
    return ops


def _take_away(
    state: IdentityState, desired: DesiredAccess, target: TargetDef, have: list[ObservedAccount]
) -> list[PlannedOperation]:
    """Removals for every account in a target where the identity is to have nothing: from the
    termination for a leaver, from now otherwise."""
    from_now = state.state is not LifecycleState.TERMINATED or state.terminated_at is None
    if not from_now and state.terminated_at is not None:
        when = state.terminated_at
        why = f"terminated {when.date().isoformat()} (leaver action: {target.leaver_action})"
    else:
        when = state.as_of
        why = f"no longer granted ({desired.note or 'no rule, role or exception'})"
    ops: list[PlannedOperation] = []
    for leftover in have:
        ops.extend(_removal(target, leftover, state.identity, why, when, from_now))
    return ops


def _bring_in_line(
    state: IdentityState,
    target: TargetDef,
    want: TargetAccess,
    primary: ObservedAccount,
    granted: str,
) -> list[PlannedOperation]:
    """The changes that make the account kept what it should be."""
    who, name, kept = state.identity, target.name, primary.account
    ops: list[PlannedOperation] = []
    # Only a live read tells which attributes the connector manages ("mapped").
    mapped = primary.attributes.get("mapped")
    if isinstance(mapped, Mapping):
        spec = account_spec(target, who, state.attributes)
        seen_name = primary.attributes.get("user_name")
        drift = attribute_drift(spec, str(seen_name) if seen_name else None, mapped)
        if drift is not None:
            ops.append(PlannedOperation(who, name, kept, OpKind.UPDATE, None, drift))
    if want.enabled and not primary.enabled and not _kept_only(want.account_reasons):
        ops.append(PlannedOperation(who, name, kept, OpKind.ENABLE, None, granted))
    elif not want.enabled and primary.enabled:
        ops.append(PlannedOperation(who, name, kept, OpKind.REVOKE_SESSIONS, None, want.note))
        ops.append(PlannedOperation(who, name, kept, OpKind.DISABLE, None, want.note))
    for ent, reasons in sorted(want.entitlements.items()):
        if ent not in primary.entitlements and not _kept_only(reasons):
            add = PlannedOperation(who, name, kept, OpKind.ADD_ENTITLEMENT, ent, _reasons(reasons))
            ops.append(add)
    for ent in sorted(primary.entitlements - want.entitlements.keys()):
        why = want.withheld.get(ent) or "not granted by any rule, role or exception"
        ops.append(PlannedOperation(who, name, kept, OpKind.REMOVE_ENTITLEMENT, ent, why))
    return ops


def plan_identity(
    state: IdentityState,
    desired: DesiredAccess,
    observed: Iterable[ObservedAccount],
    targets: Mapping[str, TargetDef],
) -> list[PlannedOperation]:
    """Operations for one identity across ``targets``, ordered by target then step."""
    by_target: dict[str, list[ObservedAccount]] = {}
    for seen in observed:
        by_target.setdefault(seen.target, []).append(seen)
    ops: list[PlannedOperation] = []
    who = state.identity
    for name in sorted(targets):
        target = targets[name]
        want = desired.targets.get(name)
        have = by_target.get(name, [])
        if want is None:
            ops.extend(_take_away(state, desired, target, have))
            continue
        granted = _reasons(want.account_reasons)
        if not have and _kept_only(want.account_reasons):
            continue  # a grace keeps what is held, and never makes anything
        if not have:
            ops.append(PlannedOperation(who, name, None, OpKind.CREATE, None, granted))
            for ent, reasons in sorted(want.entitlements.items()):
                add = PlannedOperation(
                    who, name, None, OpKind.ADD_ENTITLEMENT, ent, _reasons(reasons)
                )
                ops.append(add)
            if not want.enabled:
                ops.append(PlannedOperation(who, name, None, OpKind.DISABLE, None, want.note))
            continue
        # the account in use is kept: enabled first, then the one holding the most access
        primary, *extra = sorted(
            have, key=lambda a: (not a.enabled, -len(a.entitlements), a.account)
        )
        for duplicate in extra:
            why = f"second account for {who} in {name}; {primary.account} is kept"
            ops.extend(_removal(target, duplicate, who, why, state.as_of, True))
        ops.extend(_bring_in_line(state, target, want, primary, granted))
    ops.sort(key=lambda op: (op.target, op.step))
    return ops
