"""Classification of reconciled accounts: what each observed account is, and why.

Does: judge one observed account of a target against its identity's desired access — ``ok``,
``drift`` (an entitlement missing or extra, the wrong enabled state, the wrong user name or
mapped attributes, an account the identity no longer needs, a second account),
``terminated-active`` (the identity left and the account is enabled or holds entitlements),
``orphan`` (linked to no identity), ``unlinked`` (its correlation case is open) or
``unverifiable`` (the target could not be read) — with a sentence saying why; and list the
removals an orphan account needs under the target's leaver action.
Does not: read storage, talk to targets or decide what to do about a class (reconciliation
applies the target's remediation policy and the account marks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from provisor.domain.desired import DesiredAccess, TargetAccess
from provisor.domain.lifecycle import ORPHAN_PREFIX, IdentityState, LifecycleState
from provisor.domain.plan import (
    ObservedAccount,
    PlannedOperation,
    _removal,
    account_spec,
    attribute_drift,
)
from provisor.domain.policy import LeaverAction, TargetDef


def orphan_key(account: str) -> str:
    """The identity key under which the journal holds an orphan account's operations.

    The journal names every operation by an identity; an orphan has none, so its operations
    are named ``orphan:<account id>`` (with the target beside it, that is unique)."""
    key = ORPHAN_PREFIX + account
    if len(key) <= 128:
        return key
    return ORPHAN_PREFIX + "sha256:" + hashlib.sha256(account.encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    classification: str
    detail: str


AS_DESIRED = Verdict("ok", "as desired")


def as_desired(
    want: TargetAccess, enabled: bool, entitlements: frozenset[str], attributes: Mapping[str, Any]
) -> bool:
    """Whether an account plainly holds what ``want`` asks of it: the enabled state wanted,
    exactly the entitlements wanted and no managed attributes read to compare ("mapped").

    For the account kept for a live (not terminated) identity, that makes it ``ok``, "as
    desired"; checked before anything else, so most accounts are judged without building
    a sentence."""
    return (
        want.enabled == enabled
        and entitlements == want.entitlements.keys()
        and "mapped" not in attributes
    )


def _names(items: Sequence[str] | frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(items))


def primary_account(accounts: Sequence[ObservedAccount]) -> str:
    """The account the plan keeps when an identity has several in one target: enabled
    first, then the one holding the most access (the rule ``plan_identity`` applies)."""
    kept = min(accounts, key=lambda a: (not a.enabled, -len(a.entitlements), a.account))
    return kept.account


def classify(
    target: TargetDef,
    observed: ObservedAccount,
    state: IdentityState | None,
    desired: DesiredAccess | None,
    *,
    kept: str | None = None,
    open_case: int | None = None,
    unreadable: str | None = None,
) -> Verdict:
    """The class of one observed account.

    ``state``/``desired`` are those of the linked identity (None for an account linked to
    nobody, or to an id no identity has); ``kept`` is the identity's primary account in the
    target when it has several; ``open_case`` the correlation case waiting for a person;
    ``unreadable`` why the target could not be read this time."""
    if unreadable is not None:
        return Verdict(
            "unverifiable",
            f"the target could not be read ({unreadable}); last observed "
            f"{observed.observed_at:%Y-%m-%d %H:%M}",
        )
    if open_case is not None:
        return Verdict("unlinked", f"correlation case {open_case} waits for a person")
    if observed.identity is None or state is None or desired is None:
        why = "linked to no identity"
        if observed.identity is not None:
            why = f"linked to {observed.identity}, which is not a known identity"
        held = f"; holds {_names(observed.entitlements)}" if observed.entitlements else ""
        shown = "enabled" if observed.enabled else "disabled"
        return Verdict("orphan", f"{why}; {shown}{held}")
    who = state.identity
    ents = observed.entitlements
    if state.state is LifecycleState.TERMINATED:
        # under leaver_action remove-entitlements the enabled account is kept on purpose
        enabled = observed.enabled and target.leaver_action is not LeaverAction.REMOVE_ENTITLEMENTS
        if enabled or ents:
            when = state.terminated_at.date().isoformat() if state.terminated_at else "?"
            problems = []
            if enabled:
                problems.append("account enabled")
            if ents:
                problems.append(f"holds {_names(ents)}")
            return Verdict("terminated-active", f"{who} terminated {when}; {'; '.join(problems)}")
        return Verdict("ok", f"{who} terminated; nothing left to take away")
    want = desired.targets.get(target.name)
    if want is None:
        if observed.enabled or ents:
            problems = ["enabled"] if observed.enabled else []
            if ents:
                problems.append(f"holds {_names(ents)}")
            note = desired.note or "no rule, role or exception"
            return Verdict(
                "drift", f"{who} is granted nothing here ({note}); account {', '.join(problems)}"
            )
        return Verdict("ok", f"{who} is granted nothing here; account disabled, nothing held")
    if kept is not None and kept != observed.account:
        return Verdict("drift", f"second account for {who}; {kept} is kept")
    if as_desired(want, observed.enabled, ents, observed.attributes):
        return AS_DESIRED
    problems = _drift(target, observed, state, want)
    return Verdict("drift", "; ".join(problems)) if problems else AS_DESIRED


def _drift(
    target: TargetDef, observed: ObservedAccount, state: IdentityState, want: TargetAccess
) -> list[str]:
    """How an account of an identity that should have one differs from what it should be."""
    ents = observed.entitlements
    problems = []
    if want.enabled and not observed.enabled:
        problems.append("disabled, should be enabled")
    elif not want.enabled and observed.enabled:
        problems.append(f"enabled, should be disabled ({want.note or 'not active'})")
    missing = want.entitlements.keys() - ents
    extra = ents - want.entitlements.keys()
    if missing:
        problems.append(f"missing {_names(missing)}")
    if extra:
        problems.append(f"extra {_names(extra)}")
    mapped = observed.attributes.get("mapped")
    if isinstance(mapped, Mapping):
        spec = account_spec(target, state.identity, state.attributes)
        seen_name = observed.attributes.get("user_name")
        wrong = attribute_drift(spec, str(seen_name) if seen_name else None, mapped)
        if wrong:
            problems.append(wrong)
    return problems


def orphan_removal(
    target: TargetDef, observed: ObservedAccount, now: datetime
) -> list[PlannedOperation]:
    """What takes an orphan account away under the target's leaver action (``delete`` after
    the grace period counted from the first plan), named by ``orphan_key``."""
    key = orphan_key(observed.account)
    why = "orphan account: linked to no identity"
    return _removal(target, observed, key, why, now, True)
