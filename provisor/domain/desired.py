"""Desired access: what each identity should hold in each target, and why.

Does: compile a policy once (rules indexed by the attribute values they require, roles expanded,
assignments and exceptions grouped by identity), then compute per identity and target whether an
account should exist, whether it should be enabled, and which entitlements it should carry — each
with the reasons (rule, role, assignment, exception) that produce it; apply lifecycle state
(nothing before hire — but a locked account made ``prestart_days`` ahead — or after
termination — but where a target keeps a leaver's access ``leaver_grace_days``; per-target
keep/disable on leave and suspension), separation-of-duties constraints, and a move's grace
(what it took away kept ``move_grace_days``, reason ``grace``); give back, after a rescind,
exactly what was held at the termination (``held_then``, ``_restored``: reason ``restored``,
and where today's policy differs); say when time alone will change the answer
(``review_at``); and explain a single grant or its absence.
Does not: read storage or observed access, or decide what operations to run (``plan`` does).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from provisor.domain.held import Held, HeldItem
from provisor.domain.lifecycle import EventKind, IdentityState, LifecycleState
from provisor.domain.policy import (
    AssignmentDef,
    ExceptionDef,
    Grant,
    Policy,
    RuleDef,
    TargetDef,
)

ReasonKind = Literal["rule", "role", "assignment", "exception", "grace", "restored"]
# how a grace's end is spelled in its reason (and read back from a record of what was held)
_GRACE_END = "%Y-%m-%d %H:%M UTC"


@dataclass(frozen=True)
class Reason:
    """Why an account or entitlement is granted: the policy item that grants it."""

    kind: ReasonKind
    name: str
    via: str = ""  # e.g. the rule or assignment a role came through

    def __str__(self) -> str:
        if self.kind == "grace":  # name: until when; via: the move that took it away
            return f"kept by grace until {self.name} (after {self.via})"
        if self.kind == "restored":  # name: the reason it was held for; via: the termination
            return f"given back by a rescind: held at the termination of {self.via} ({self.name})"
        return f"{self.kind} {self.name}" + (f" (via {self.via})" if self.via else "")


@dataclass(frozen=True)
class SoDViolation:
    constraint: str
    entitlements: tuple[str, ...]  # "target:entitlement"
    allowed_by: str | None  # the exception that allows it; None means the set is withheld

    @property
    def blocked(self) -> bool:
        return self.allowed_by is None


@dataclass
class TargetAccess:
    """Desired state of one identity's account in one target."""

    target: str
    enabled: bool
    account_reasons: list[Reason] = field(default_factory=list)
    entitlements: dict[str, list[Reason]] = field(default_factory=dict)
    withheld: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Restoration:
    """A rescinded termination's exact give-back, in force until ``until``, and where it
    differs from what today's policy would grant (items as ``target`` or ``target:entitlement``)."""

    termination: str  # the termination event's key
    terminated_at: datetime
    until: datetime | None
    not_given: tuple[str, ...]  # today's policy grants it; not held then, so not given back
    beyond_policy: tuple[str, ...]  # given back, though today's policy would not grant it
    ended: tuple[str, ...]  # held then, not given back: its grant ended or its target is gone

    def as_json(self) -> dict[str, Any]:
        return {
            "termination": self.termination,
            "terminated_at": self.terminated_at.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "not_given": list(self.not_given),
            "beyond_policy": list(self.beyond_policy),
            "ended": list(self.ended),
        }


@dataclass
class DesiredAccess:
    identity: str
    state: LifecycleState | None
    targets: dict[str, TargetAccess]
    sod: list[SoDViolation] = field(default_factory=list)
    note: str = ""
    # the earliest end of a grace that keeps access a move took away (then it is removed)
    grace_until: datetime | None = None
    # when time alone changes this (a grace ends, a pre-start window opens): plan again then
    review_at: datetime | None = None
    # a rescinded termination's exact give-back, when that is what this is
    restored: Restoration | None = None


_GrantList = tuple[tuple[str, tuple[str, ...], Reason], ...]


@dataclass(frozen=True)
class CompiledPolicy:
    policy: Policy
    index: Mapping[str, Mapping[str, tuple[int, ...]]]
    unanchored: tuple[int, ...]
    rule_grants: tuple[_GrantList, ...]
    rule_kinds: tuple[frozenset[str], ...]
    rule_tests: tuple[Callable[[Mapping[str, Any]], bool], ...]
    rule_attributes: tuple[str, ...]  # every attribute some rule's matcher reads
    # per lifecycle state with access, per target: (account enabled, note)
    account_status: Mapping[LifecycleState, Mapping[str, tuple[bool, str]]]
    assignments: Mapping[str, tuple[AssignmentDef, ...]]
    exceptions: Mapping[str, tuple[ExceptionDef, ...]]
    sod: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    # per target: days a move's lost account is kept, and each entitlement's days
    move_grace: Mapping[str, tuple[int, Mapping[str, int]]] = field(default_factory=dict)
    longest_move_grace: int = 0  # the most days of any of them (0: no grace anywhere)
    # per target: days before a hire's start its account is made (locked until the start)
    prestart: Mapping[str, int] = field(default_factory=dict)
    longest_prestart: int = 0
    # per target: days a leaver keeps what they held there (only where policy says so)
    leaver_grace: Mapping[str, int] = field(default_factory=dict)
    longest_leaver_grace: int = 0

    @property
    def targets(self) -> Mapping[str, TargetDef]:
        return self.policy.target_map

    def candidates(self, attributes: Mapping[str, object]) -> list[int]:
        """Rules that can possibly match: unanchored ones plus those indexed under a value
        the identity has. Policy order is kept so reasons list in a stable order."""
        found = set(self.unanchored)
        for attr, by_value in self.index.items():
            value = attributes.get(attr)
            if value is not None:
                found.update(by_value.get(str(value), ()))
        return sorted(found)


def _role_grants(policy: Policy, role: str, via: str) -> list[tuple[str, tuple[str, ...], Reason]]:
    reason = Reason("role", role, via)
    return [(g.target, tuple(g.entitlements), reason) for g in policy.role_map[role].grants]


def _rule_grants(policy: Policy, rule: RuleDef) -> _GrantList:
    reason = Reason("rule", rule.name)
    grants = [(g.target, tuple(g.entitlements), reason) for g in rule.grant]
    for role in rule.roles:
        grants.extend(_role_grants(policy, role, f"rule {rule.name}"))
    return tuple(grants)


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Prepare a validated policy for fast evaluation over many identities."""
    index: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    unanchored: list[int] = []
    for i, rule in enumerate(policy.rules):
        anchors = rule.when.anchors()
        if not anchors:
            unanchored.append(i)
            continue
        # Any one anchor is a necessary condition; the most selective one keeps candidates few.
        attr, values = min(anchors, key=lambda a: len(a[1]))
        for value in values:
            index[attr][value].append(i)
    assignments: dict[str, list[AssignmentDef]] = defaultdict(list)
    for assignment in policy.assignments:
        assignments[assignment.identity].append(assignment)
    exceptions: dict[str, list[ExceptionDef]] = defaultdict(list)
    for exc in policy.exceptions:
        exceptions[exc.identity].append(exc)
    sod = tuple(
        (s.name, tuple((c.partition(":")[0], c.partition(":")[2]) for c in s.conflicts))
        for s in policy.sod
    )
    grace = {
        t.name: (
            t.move_grace_days,
            {
                e.name: t.move_grace_days if e.move_grace_days is None else e.move_grace_days
                for e in t.entitlements
            },
        )
        for t in policy.targets
    }
    return CompiledPolicy(
        policy=policy,
        index={a: {v: tuple(ix) for v, ix in by.items()} for a, by in index.items()},
        unanchored=tuple(unanchored),
        rule_grants=tuple(_rule_grants(policy, r) for r in policy.rules),
        rule_kinds=tuple(frozenset(r.kinds) for r in policy.rules),
        rule_tests=tuple(r.when.compile() for r in policy.rules),
        rule_attributes=tuple(sorted(set().union(*(r.when.attributes() for r in policy.rules)))),
        account_status={
            state: {t.name: _account_enabled(t, state) for t in policy.targets}
            for state in (LifecycleState.ACTIVE, LifecycleState.LEAVE, LifecycleState.SUSPENDED)
        },
        assignments={k: tuple(v) for k, v in assignments.items()},
        exceptions={k: tuple(v) for k, v in exceptions.items()},
        sod=sod,
        prestart={t.name: t.prestart_days for t in policy.targets if t.prestart_days},
        leaver_grace={t.name: t.leaver_grace_days for t in policy.targets if t.leaver_grace_days},
        longest_leaver_grace=max((t.leaver_grace_days for t in policy.targets), default=0),
        longest_prestart=max((t.prestart_days for t in policy.targets), default=0),
        move_grace=grace,
        longest_move_grace=max(
            (max([days, *each.values()]) for days, each in grace.values()), default=0
        ),
    )


def previous_termination(state: IdentityState) -> datetime | None:
    """Effective date of the termination that ended the identity's previous employment period."""
    last: datetime | None = None
    for entry in state.timeline:
        if not entry.applied:
            continue
        if entry.event.kind is EventKind.TERMINATE:
            last = entry.event.effective
        elif entry.event.kind is EventKind.HIRE:
            last = None
    if state.state is LifecycleState.TERMINATED:
        return None  # still terminated: there is no current period to compare against
    return last


def direct_grant_status(
    granted: date, expires: date | None, state: IdentityState, today: date
) -> str | None:
    """Why a direct assignment or exception does not count now, or ``None`` when it does.

    A grant approved before the identity's last termination belongs to an earlier employment
    period: a rehire starts clean and nothing is silently restored. A rescinded termination never
    took effect, so grants from before it still count.
    """
    if expires is not None and expires < today:
        return f"expired on {expires.isoformat()}"
    ended = previous_termination(state)
    if ended is not None and granted <= ended.date():
        return (
            f"approved on {granted.isoformat()}, before the termination of "
            f"{ended.date().isoformat()}; a rehire needs a new approval"
        )
    return None


def _account_enabled(target: TargetDef, state: LifecycleState) -> tuple[bool, str]:
    if state is LifecycleState.LEAVE and target.on_leave == "disable":
        return False, "disabled while on leave"
    if state is LifecycleState.SUSPENDED and target.on_suspend == "disable":
        return False, "disabled while suspended"
    return True, ""


_NO_ACCESS_NOTE = {
    None: "unknown identity: no hire recorded",
    LifecycleState.PRE_HIRE: "not started yet (pre-hire)",
    LifecycleState.TERMINATED: "terminated",
}


# Desired access shared by identities whose access comes out the same: keyed by lifecycle
# state, kind and the text of every attribute a rule reads (see ``desired_access``).
SharedAccess = dict[
    tuple[LifecycleState, str, tuple[str | None, ...]],
    tuple[dict[str, TargetAccess], list[SoDViolation]],
]


class _Grants:
    """Access being gathered: per target, the account and each entitlement with every reason."""

    def __init__(self, status: Mapping[str, tuple[bool, str]]) -> None:
        self.status = status
        self.targets: dict[str, TargetAccess] = {}

    def add(self, target_name: str, entitlements: Iterable[str], reason: Reason) -> None:
        access = self.targets.get(target_name)
        if access is None:
            enabled, note = self.status[target_name]
            access = self.targets[target_name] = TargetAccess(
                target_name, enabled, [reason], {}, {}, note
            )
        elif access.account_reasons[-1] is not reason:
            # One grant list never repeats a reason except back to back, so checking the last
            # reason is enough to keep reasons unique without comparing whole lists.
            access.account_reasons.append(reason)
        granted = access.entitlements
        for ent in entitlements:
            reasons = granted.get(ent)
            if reasons is None:
                granted[ent] = [reason]
            elif reasons[-1] is not reason:
                reasons.append(reason)


def _direct_grants(
    compiled: CompiledPolicy, state: IdentityState, grants: _Grants
) -> dict[str, str]:
    """Add the identity's own assignments and exceptions valid today; returns the SoD
    constraints its exceptions allow, with the exception that allows each."""
    for assignment in _assignments_now(compiled, state):
        via = f"assignment approved by {assignment.approver}"
        for target_name, ents, reason in _role_grants(compiled.policy, assignment.role, via):
            grants.add(target_name, ents, Reason("assignment", reason.name, reason.via))
    allowed_sod: dict[str, str] = {}
    for name, exc in _exceptions_now(compiled, state):
        for grant in exc.grant:
            grants.add(grant.target, grant.entitlements, Reason("exception", name))
        for constraint in exc.allow_sod:
            allowed_sod.setdefault(constraint, name)
    return allowed_sod


def _assignments_now(compiled: CompiledPolicy, state: IdentityState) -> Iterable[AssignmentDef]:
    """The identity's assignments valid today."""
    today = state.as_of.date()
    for assignment in compiled.assignments.get(state.identity, ()):
        if direct_grant_status(assignment.granted, assignment.expires, state, today) is None:
            yield assignment


def _exceptions_now(
    compiled: CompiledPolicy, state: IdentityState
) -> Iterable[tuple[str, ExceptionDef]]:
    """The identity's exceptions valid today, each with the name its reasons give it."""
    today = state.as_of.date()
    for index, exc in enumerate(compiled.exceptions.get(state.identity, ())):
        if direct_grant_status(exc.granted, exc.expires, state, today) is None:
            yield f"{state.identity}#{index + 1} approved by {exc.approver}", exc


def _share_key(
    compiled: CompiledPolicy, state: IdentityState, lifecycle: LifecycleState
) -> tuple[LifecycleState, str, tuple[str | None, ...]] | None:
    """What an identity's access depends on when it has no assignment or exception of its
    own: its state, kind and the text of every attribute a rule reads; None when it has."""
    if state.identity in compiled.assignments or state.identity in compiled.exceptions:
        return None
    texts = tuple(
        None if (value := state.attributes.get(name)) is None else str(value)
        for name in compiled.rule_attributes
    )
    return (lifecycle, state.kind, texts)


def _separate_duties(
    compiled: CompiledPolicy, targets: dict[str, TargetAccess], allowed_sod: dict[str, str]
) -> list[SoDViolation]:
    """Every SoD constraint the access breaks; unless an exception allows it, the conflicting
    entitlements are withheld (and said so)."""
    violations: list[SoDViolation] = []
    for constraint, conflicts in compiled.sod:
        if all(t in targets and e in targets[t].entitlements for t, e in conflicts):
            allowed = allowed_sod.get(constraint)
            items = tuple(f"{t}:{e}" for t, e in conflicts)
            violations.append(SoDViolation(constraint, items, allowed))
            if allowed is None:
                for t, e in conflicts:
                    targets[t].entitlements.pop(e, None)
                    targets[t].withheld[e] = (
                        f"withheld: SoD constraint {constraint} forbids holding "
                        f"{' + '.join(items)} together unless an exception allows it"
                    )
    return violations


def desired_access(
    compiled: CompiledPolicy,
    state: IdentityState,
    shared: SharedAccess | None = None,
    held: Held | None = None,
) -> DesiredAccess:
    """The access ``state`` should have under ``compiled`` (``_desired_now``), with what a
    recent move took away kept for the grace its target or entitlement gives (``_kept``);
    with ``held`` (a rescinded termination's record, while its give-back is in force), what
    was held then instead (``_restored``)."""
    if held is not None:
        return _restored(compiled, state, held)
    if state.state is LifecycleState.TERMINATED and compiled.longest_leaver_grace:
        return _leaver_kept(compiled, state)
    if state.state is LifecycleState.PRE_HIRE and compiled.longest_prestart:
        return _before_start(compiled, state)
    desired = _desired_now(compiled, state, shared)
    if desired.note or not compiled.longest_move_grace:
        return desired
    return _kept(compiled, state, desired)


def _before_start(compiled: CompiledPolicy, state: IdentityState) -> DesiredAccess:
    """A hire's access before the start: in each target with ``prestart_days`` reaching
    today, what they will hold on day one, the account locked (disabled) until the start;
    nothing elsewhere. ``review_at``: when the next of those windows opens."""
    start = state.starts_at
    nothing = DesiredAccess(state.identity, state.state, {}, note=_NO_ACCESS_NOTE[state.state])
    if start is None or start <= state.as_of:
        return nothing
    day_one = _desired_now(compiled, replace(state, state=LifecycleState.ACTIVE), None)
    targets: dict[str, TargetAccess] = {}
    opens: list[datetime] = []
    locked = f"locked until the start, {start.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    for name, access in day_one.targets.items():
        days = compiled.prestart.get(name, 0)
        if not days:
            continue
        window = start - timedelta(days=days)
        if window > state.as_of:
            opens.append(window)
            continue
        targets[name] = replace(
            access,
            enabled=False,
            account_reasons=list(access.account_reasons),
            entitlements=dict(access.entitlements),
            note=locked,
        )
    return DesiredAccess(
        state.identity,
        state.state,
        targets,
        day_one.sod if targets else [],
        note="" if targets else nothing.note,
        review_at=min(opens, default=None),
    )


def _leaver_kept(compiled: CompiledPolicy, state: IdentityState) -> DesiredAccess:
    """A leaver's access in the targets whose policy keeps it (``leaver_grace_days``): what
    they held when the termination took effect, kept by grace until it ends; nothing
    elsewhere. Leavers get no grace anywhere else."""
    nothing = DesiredAccess(state.identity, state.state, {}, note=_NO_ACCESS_NOTE[state.state])
    ended = state.terminated_at
    entry = next(
        (
            e
            for e in reversed(state.timeline)
            if e.applied and e.event.kind is EventKind.TERMINATE and e.event.effective == ended
        ),
        None,
    )
    if ended is None or entry is None or entry.state_before is None:
        return nothing
    attributes = dict(state.attributes)  # as they were before the termination
    for name, (old, _new) in entry.changes.items():
        if old is None:
            attributes.pop(name, None)
        else:
            attributes[name] = old
    before = replace(state, state=entry.state_before, attributes=attributes)
    then = _desired_now(compiled, before, None)
    targets: dict[str, TargetAccess] = {}
    ends: list[datetime] = []
    for name, access in then.targets.items():
        until = ended + timedelta(days=compiled.leaver_grace.get(name, 0))
        if until <= state.as_of:
            continue
        reason = Reason(
            "grace",
            until.astimezone(UTC).strftime(_GRACE_END),
            f"the termination of {ended.date()}",
        )
        kept = {e: [reason] for e in access.entitlements}
        targets[name] = TargetAccess(name, access.enabled, [reason], kept, {}, access.note)
        ends.append(until)
    if not targets:
        return nothing
    first = min(ends)
    return replace(nothing, targets=targets, grace_until=first, review_at=first)


def _kept(compiled: CompiledPolicy, state: IdentityState, desired: DesiredAccess) -> DesiredAccess:
    """``desired`` with what moves and conversions within the longest grace took away, each
    item kept until its grace ends (reason: ``grace``); ``desired`` itself when nothing is
    kept. Walks the timeline back from now, undoing one change at a time to see what the
    person would have held just before it."""
    since = state.as_of - timedelta(days=compiled.longest_move_grace)
    attributes = dict(state.attributes)
    kept: dict[tuple[str, str | None], tuple[Reason, datetime]] = {}
    for entry in reversed(state.timeline):
        event = entry.event
        if event.effective > state.as_of or not entry.applied:
            continue
        if event.effective <= since or event.kind in _PERIOD_STARTS:
            break  # no grace from before: too long ago, or another employment period
        before = dict(attributes)  # as they were before this event, whatever its kind
        for name, (old, _new) in entry.changes.items():
            if old is None:
                before.pop(name, None)
            else:
                before[name] = old
        if event.kind not in (EventKind.MOVE, EventKind.CONVERT) or not entry.changes:
            attributes = before
            continue
        then = _desired_now(compiled, replace(state, attributes=before), None)
        for target, access in then.targets.items():
            days, by_entitlement = compiled.move_grace.get(target, (0, {}))
            for item, item_days in [
                (None, days),
                *((e, by_entitlement.get(e, days)) for e in access.entitlements),
            ]:
                until = event.effective + timedelta(days=item_days)
                if until <= state.as_of or (target, item) in kept or _holds(desired, target, item):
                    continue
                if item is not None and item in _withheld(desired, target):
                    continue  # separation of duties withholds it now: no grace brings it back
                when = until.astimezone(UTC).strftime(_GRACE_END)
                why = f"the {event.kind.value} of {event.effective.date()}"
                kept[target, item] = (Reason("grace", when, why), until)
        attributes = before
    return _with_kept(compiled, state, desired, kept) if kept else desired


# events that begin (or end) an employment period: grace never reaches across them
_PERIOD_STARTS = frozenset({EventKind.HIRE, EventKind.REHIRE, EventKind.TERMINATE})


def _withheld(desired: DesiredAccess, target: str) -> Mapping[str, str]:
    access = desired.targets.get(target)
    return access.withheld if access is not None else {}


def _holds(desired: DesiredAccess, target: str, entitlement: str | None) -> bool:
    access = desired.targets.get(target)
    return access is not None and (entitlement is None or entitlement in access.entitlements)


def _with_kept(
    compiled: CompiledPolicy,
    state: IdentityState,
    desired: DesiredAccess,
    kept: Mapping[tuple[str, str | None], tuple[Reason, datetime]],
) -> DesiredAccess:
    """A copy of ``desired`` (its targets may be shared with other people's) holding ``kept``
    too: an entitlement kept keeps its account."""
    targets = dict(desired.targets)
    lifecycle = state.state
    assert lifecycle is not None
    for (target, entitlement), (reason, _until) in kept.items():
        access = targets.get(target)
        if access is None or access is desired.targets.get(target):
            enabled, note = compiled.account_status[lifecycle][target]
            access = targets[target] = (
                TargetAccess(target, enabled, [], {}, {}, note)
                if access is None
                else replace(
                    access,
                    account_reasons=list(access.account_reasons),
                    entitlements=dict(access.entitlements),
                )
            )
        account_kept = entitlement is None or not access.account_reasons
        if account_kept and reason not in access.account_reasons:
            access.account_reasons.append(reason)
        if entitlement is not None:
            access.entitlements[entitlement] = [reason]
    _sod_before_grace(compiled, targets, kept)
    until = min(until for _reason, until in kept.values())
    return replace(desired, targets=targets, grace_until=until, review_at=until)


def _sod_before_grace(
    compiled: CompiledPolicy,
    targets: dict[str, TargetAccess],
    kept: Mapping[tuple[str, str | None], tuple[Reason, datetime]],
) -> None:
    """Kept entitlements that would complete a separation-of-duties constraint are not kept
    (whatever exception allows the constraint for what is granted now): withheld, and said
    so. ``targets`` holds copies made for the kept items, so they may be changed."""
    for constraint, conflicts in compiled.sod:
        if not all(t in targets and e in targets[t].entitlements for t, e in conflicts):
            continue
        for t, e in conflicts:
            if (t, e) in kept:
                targets[t].entitlements.pop(e, None)
                targets[t].withheld = {
                    **targets[t].withheld,
                    e: f"not kept by grace: SoD constraint {constraint} forbids holding it "
                    "with what is granted now",
                }


def _desired_now(
    compiled: CompiledPolicy, state: IdentityState, shared: SharedAccess | None = None
) -> DesiredAccess:
    """The access ``state`` should have under ``compiled`` now; reasons kept for every item.

    With ``shared`` (a dict kept across calls over one policy), an identity that has no
    assignment or exception of its own gets the same ``targets`` and ``sod`` objects as an
    earlier one in the same lifecycle state, of the same kind and with the same text in every
    attribute a rule reads (matchers see attributes as text): its access is a function of
    those alone, so it is built once. The result is then to be read, not changed."""
    lifecycle = state.state
    if lifecycle in _NO_ACCESS_NOTE:
        return DesiredAccess(state.identity, lifecycle, {}, note=_NO_ACCESS_NOTE[lifecycle])
    assert lifecycle is not None
    attributes = state.attributes
    kind = state.kind
    key = _share_key(compiled, state, lifecycle) if shared is not None else None
    if shared is not None and key is not None:
        known = shared.get(key)
        if known is not None:
            return DesiredAccess(state.identity, lifecycle, known[0], known[1])
    grants = _Grants(compiled.account_status[lifecycle])
    tests, kinds = compiled.rule_tests, compiled.rule_kinds
    for i in compiled.candidates(attributes):
        if kind in kinds[i] and tests[i](attributes):
            for target_name, ents, reason in compiled.rule_grants[i]:
                grants.add(target_name, ents, reason)
    allowed_sod = _direct_grants(compiled, state, grants)
    targets = grants.targets
    violations = _separate_duties(compiled, targets, allowed_sod)
    if shared is not None and key is not None:
        shared[key] = (targets, violations)
    return DesiredAccess(state.identity, lifecycle, targets, violations)


def held_then(
    compiled: CompiledPolicy,
    state: IdentityState,
    termination: str,
    terminated_at: datetime,
    held: Held | None = None,
) -> Held:
    """What ``state`` — the person just before ``termination`` took effect — holds, each
    item with its reasons and until when the last of them counts, for an exact rescind
    (``held``: what an earlier rescind gave back, when that was in force then)."""
    desired = desired_access(compiled, state, held=held)
    ends = _direct_ends(compiled, state)
    targets: dict[str, dict[str | None, HeldItem]] = {}
    for name, access in desired.targets.items():
        items = targets[name] = {}
        for entitlement, reasons in [
            (None, access.account_reasons),
            *access.entitlements.items(),
        ]:
            until = _held_until(reasons, ends.get((name, entitlement), []))
            kinds = tuple(sorted({r.kind for r in reasons}))
            items[entitlement] = HeldItem(tuple(str(r) for r in reasons), until, kinds)
    return Held(termination, terminated_at, targets)


def _direct_ends(
    compiled: CompiledPolicy, state: IdentityState
) -> dict[tuple[str, str | None], list[datetime | None]]:
    """For each account and entitlement the identity's own grants valid now give, when each
    of those grants ends (the day after it expires; None: it does not)."""
    ends: dict[tuple[str, str | None], list[datetime | None]] = defaultdict(list)

    def add(grants: Sequence[Grant], expires: date | None) -> None:
        end = None if expires is None else _day_after(expires)
        for grant in grants:
            for item in (None, *grant.entitlements):
                ends[grant.target, item].append(end)

    for assignment in _assignments_now(compiled, state):
        add(compiled.policy.role_map[assignment.role].grants, assignment.expires)
    for _name, exc in _exceptions_now(compiled, state):
        add(exc.grant, exc.expires)
    return ends


def _day_after(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def _held_until(reasons: Sequence[Reason], direct: Sequence[datetime | None]) -> datetime | None:
    """When the last of ``reasons`` stops counting: never for a rule or role, an own grant
    when it expires (``direct``: the ends of those granting the item), a grace when it ends."""
    ends: list[datetime] = []
    for reason in reasons:
        if reason.kind in ("rule", "role"):
            return None
        if reason.kind == "grace":
            ends.append(datetime.strptime(reason.name, _GRACE_END).replace(tzinfo=UTC))
        elif reason.kind == "restored":
            return None  # a give-back held again: as long as the rest of it
    if reasons and any(r.kind in ("assignment", "exception") for r in reasons):
        if not direct or None in direct:
            return None
        ends.extend(end for end in direct if end is not None)
    return max(ends, default=None)


def _granted(
    state: IdentityState,
    access: TargetAccess,
    entitlement: str | None,
    restored: Restoration | None,
) -> Explanation:
    """The explanation of an account or entitlement ``access`` grants."""
    found = access.account_reasons if entitlement is None else access.entitlements[entitlement]
    reasons = tuple(str(r) for r in found)
    notes = [access.note] if access.note else []
    if restored is not None and _label(access.target, entitlement) in restored.beyond_policy:
        notes.append(f"today's policy would not grant it{_given_back(restored)}")
    return Explanation(
        state.identity, access.target, entitlement, True, access.enabled, reasons, tuple(notes)
    )


def _given_back(restored: Restoration) -> str:
    until = f" until {restored.until:%Y-%m-%d %H:%M} UTC" if restored.until else ""
    return (
        f": a rescind gives back exactly what was held when the termination of "
        f"{restored.terminated_at.date().isoformat()} took effect{until}"
    )


def _label(target: str, entitlement: str | None) -> str:
    return target if entitlement is None else f"{target}:{entitlement}"


def _items(targets: Mapping[str, TargetAccess]) -> set[tuple[str, str | None]]:
    return {(t, e) for t, access in targets.items() for e in (None, *access.entitlements)}


def _restored(compiled: CompiledPolicy, state: IdentityState, held: Held) -> DesiredAccess:
    """``held`` given back — what still counts of it, in targets still in the policy — in
    place of what today's policy would grant, and where the two differ: what today's policy
    grants that is not given back is withheld (and said so), what is given back that it does
    not grant is listed. Separation of duties is checked as it is today."""
    today = _desired_now(compiled, state, None)
    if today.note:  # no access in this state (terminated again, not started): nothing to give
        return today
    lifecycle = state.state
    assert lifecycle is not None
    when = held.terminated_at.date().isoformat()
    targets: dict[str, TargetAccess] = {}
    ended: list[str] = []
    reviews = [held.until] if held.until else []
    granting = _direct_ends(compiled, state)  # what the person's own grants give today
    for name, items in sorted(held.targets.items()):
        if name not in compiled.targets:
            ended.append(f"{name}: no longer a target in the policy")
            continue
        enabled, note = compiled.account_status[lifecycle][name]
        access = TargetAccess(name, enabled, [], {}, {}, note)
        for entitlement, item in items.items():
            until = item.until
            if item.own_grants_only:  # as long as an assignment or exception gives it today
                ends = granting.get((name, entitlement))
                if not ends:
                    label = _label(name, entitlement)
                    ended.append(f"{label}: no assignment or exception gives it any more")
                    continue
                until = None if None in ends else max(e for e in ends if e is not None)
            elif not item.counts(state.as_of):
                end = until.isoformat() if until else ""
                ended.append(f"{_label(name, entitlement)}: its grant ended at {end}")
                continue
            if until is not None:
                reviews.append(until)
            reasons = [Reason("restored", text, when) for text in item.reasons]
            if entitlement is None:
                access.account_reasons = reasons
            else:
                access.entitlements[entitlement] = reasons
        if access.entitlements or access.account_reasons:
            if not access.account_reasons:
                access.account_reasons = [r for rs in access.entitlements.values() for r in rs]
            targets[name] = access
    given, granted = _items(targets), _items(today.targets)
    for target, entitlement in granted - given:
        if entitlement is not None and target in targets:
            targets[target].withheld[entitlement] = (
                "today's policy grants it; not given back: not held when the termination of "
                f"{when} took effect (a rescind gives back exactly what was held then)"
            )
    allowed = {c: name for name, exc in _exceptions_now(compiled, state) for c in exc.allow_sod}
    violations = _separate_duties(compiled, targets, allowed)
    restoration = Restoration(
        held.termination,
        held.terminated_at,
        held.until,
        tuple(sorted(_label(*item) for item in granted - given)),
        tuple(sorted(_label(*item) for item in given - granted)),
        tuple(ended),
    )
    return DesiredAccess(
        state.identity,
        lifecycle,
        targets,
        violations,
        review_at=min(reviews, default=None),
        restored=restoration,
    )


@dataclass(frozen=True)
class Explanation:
    """The answer to "why does (or doesn't) this identity have this?"."""

    identity: str
    target: str
    entitlement: str | None
    granted: bool
    enabled: bool | None
    reasons: tuple[str, ...]
    why_not: tuple[str, ...]


def _grants_item(grants: Sequence[Grant], target: str, entitlement: str | None) -> bool:
    return any(
        g.target == target and (entitlement is None or entitlement in g.entitlements)
        for g in grants
    )


def _rules_not_matching(
    policy: Policy, state: IdentityState, target: str, entitlement: str | None
) -> Iterable[str]:
    """Why each rule that would grant the item does not, for this identity."""
    for rule in policy.rules:
        grants = _grants_item(rule.grant, target, entitlement) or any(
            _grants_item(policy.role_map[r].grants, target, entitlement) for r in rule.roles
        )
        if not grants:
            continue
        if state.kind not in rule.kinds:
            yield f"rule {rule.name} applies to {', '.join(rule.kinds)}, not {state.kind}"
            continue
        ok, detail = rule.when.evaluate(state.attributes)
        if not ok:
            yield f"rule {rule.name} does not match: {detail}"


def explain(
    compiled: CompiledPolicy,
    state: IdentityState,
    target: str,
    entitlement: str | None = None,
    held: Held | None = None,
) -> Explanation:
    """Explain one target account (``entitlement`` None) or one entitlement in it (``held``:
    a rescinded termination's record, while its give-back is in force)."""
    desired = desired_access(compiled, state, held=held)
    access = desired.targets.get(target)
    policy = compiled.policy
    restored = desired.restored
    label = _label(target, entitlement)
    if access is not None and (entitlement is None or entitlement in access.entitlements):
        return _granted(state, access, entitlement, restored)

    why: list[str] = []
    if desired.note:
        why.append(f"lifecycle state: {desired.note}")
    if access is not None and entitlement is not None and entitlement in access.withheld:
        why.append(access.withheld[entitlement])
    elif restored is not None and label in restored.not_given:
        why.append(f"today's policy grants it; not held at the termination{_given_back(restored)}")
    today = state.as_of.date()
    why.extend(_rules_not_matching(policy, state, target, entitlement))
    for assignment in compiled.assignments.get(state.identity, ()):
        if _grants_item(policy.role_map[assignment.role].grants, target, entitlement):
            status = direct_grant_status(assignment.granted, assignment.expires, state, today)
            if status:
                why.append(f"assignment of role {assignment.role}: {status}")
    for exc in compiled.exceptions.get(state.identity, ()):
        if _grants_item(exc.grant, target, entitlement):
            status = direct_grant_status(exc.granted, exc.expires, state, today)
            if status:
                why.append(f"exception approved by {exc.approver}: {status}")
    if not why:
        why.append(f"no rule, role, assignment or exception grants {label}")
    return Explanation(state.identity, target, entitlement, False, None, (), tuple(why))
