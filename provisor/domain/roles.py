"""Who may do what through the service: roles, the permissions they grant, token scopes.

Does: name the permissions the API and the inbound SCIM server check, the roles an operator can
hold and what each grants, and decide for a set of roles and a token's scopes whether a
permission is granted for everything (``ALL``), only for the targets the operator owns
(``OWN``), or not at all; check scope names given by a person; say whether a person may decide
a four-eyes step (``second_person``).
Does not: authenticate anyone, read tokens, or know routes (``provisor.api`` maps each route to
one permission).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum, StrEnum


class Permission(StrEnum):
    READ = "read"  # identities, plans, operations, holds, tasks, cases, marks, debt, jobs
    EVENTS = "events"  # record lifecycle events, upload HR feeds
    OPERATE = "operate"  # retry and cancel operations, start reconciliations
    APPROVE = "approve"  # approve or reject held changes
    TASKS = "tasks"  # mark manual tasks done, verify them
    CASES = "cases"  # decide correlation cases
    MARKS = "marks"  # mark accounts (keep, exception, ignore) and clear marks
    EVIDENCE = "evidence"  # leaver evidence bundles, audit export and verification
    SCIM = "scim"  # the inbound SCIM server: be an identity source
    METRICS = "metrics"  # the Prometheus metrics (counts, never names)
    ADMIN = "admin"  # operators, their roles, and other operators' tokens


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    APPROVER = "approver"
    OWNER = "owner"  # a target owner: their targets' tasks, cases and debt
    REVIEWER = "reviewer"
    AUDITOR = "auditor"
    MONITOR = "monitor"  # a metrics scraper: the metrics and nothing else


class Reach(IntEnum):
    """How far a permission goes: nowhere, the operator's own targets, or everything."""

    NONE = 0
    OWN = 1
    ALL = 2


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {
            Permission.READ,
            Permission.EVENTS,
            Permission.OPERATE,
            Permission.TASKS,
            Permission.CASES,
            Permission.MARKS,
            Permission.EVIDENCE,
            Permission.SCIM,
            Permission.METRICS,
        }
    ),
    Role.APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    Role.REVIEWER: frozenset({Permission.READ, Permission.MARKS}),
    Role.AUDITOR: frozenset({Permission.READ, Permission.EVIDENCE, Permission.METRICS}),
    Role.MONITOR: frozenset({Permission.METRICS}),
}
# a target owner reaches only their own targets' tasks, cases and debt (read through ``READ``)
OWNER_GRANTS = frozenset({Permission.READ, Permission.TASKS, Permission.CASES})
# what a sign-in (password or OIDC) may do: all the roles allow except being an identity source
SESSION_SCOPES = frozenset(Permission) - {Permission.SCIM}


def roles_from(names: Iterable[str], where: str) -> list[Role]:
    """Role names given by a person, checked; an unknown one names ``where`` it came from."""
    roles = []
    for name in names:
        try:
            roles.append(Role(name))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ValueError(f"{where}: unknown role {name!r}; roles are {known}") from None
    return sorted(set(roles))


def scopes_from(names: Iterable[str], where: str) -> list[Permission]:
    """Scope names given by a person (``*`` for every permission the roles grant), checked."""
    scopes: set[Permission] = set()
    for name in names:
        if name == "*":
            scopes.update(Permission)
            continue
        try:
            scopes.add(Permission(name))
        except ValueError:
            known = ", ".join(p.value for p in Permission)
            raise ValueError(f"{where}: unknown scope {name!r}; scopes are {known}, or *") from None
    return sorted(scopes)


def reach(roles: Iterable[str], scopes: Iterable[str], permission: Permission) -> Reach:
    """How far ``permission`` goes for an operator with ``roles`` using a token with ``scopes``."""
    if permission not in set(scopes):
        return Reach.NONE
    best = Reach.NONE
    for name in roles:
        try:
            role = Role(name)
        except ValueError:
            continue  # a role a newer version wrote: grants nothing here
        if role is Role.OWNER:
            if permission in OWNER_GRANTS:
                best = max(best, Reach.OWN)
        elif permission in GRANTS[role]:
            return Reach.ALL
    return best


def granted(roles: Iterable[str]) -> frozenset[Permission]:
    """Every permission ``roles`` grant (for their own targets at least)."""
    found: set[Permission] = set()
    for name in roles:
        if name in Role.__members__.values():
            role = Role(name)
            found |= OWNER_GRANTS if role is Role.OWNER else GRANTS[role]
    return frozenset(found)


def second_person(first: str | None, second: str) -> bool:
    """A four-eyes step: ``second`` may decide only if they are not ``first`` (who did the work
    or caused the change being decided); names compared without regard to case or surrounding
    space, so that "Alice" and "alice" never count as two people."""
    return first is None or first.strip().casefold() != second.strip().casefold()
