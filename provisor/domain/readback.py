"""Judging a read-back: does an account, as read, show an operation done?

Does: say why an account record does not show an operation of a given kind done, or that it
does — the one rule the runner (live read-back), manual tasks (a later user-list import) and
reconciliation share — and why a record cannot show it either way (a layer the read could not
see: an entitlement missing from a membership nobody has shown to be readable proves nothing),
which entitlements an observed account keeps after such a read, and whether an existing
account found by name alone may be taken over without a person deciding.
Does not: read anything itself.
"""

from __future__ import annotations

from provisor.domain.accounts import AccountRecord, AccountSpec
from provisor.domain.plan import OpKind, attribute_drift


def unmet(
    kind: OpKind,
    entitlement: str | None,
    record: AccountRecord | None,
    spec: AccountSpec | None = None,
) -> str | None:
    """Why ``record`` does not show an operation of ``kind`` done, or None when it does.

    An update is judged against ``spec``, the account as it should be."""
    if kind is OpKind.DELETE:
        return None if record is None else "the account still exists"
    if record is None:
        return "the account does not exist"
    if kind is OpKind.CREATE:
        return None
    if kind is OpKind.UPDATE:
        if spec is None:
            return "no account spec to compare with"
        return attribute_drift(spec, record.user_name, record.attributes)
    if kind is OpKind.ENABLE:
        return None if record.enabled else "the account is disabled"
    if kind is OpKind.DISABLE:
        return None if not record.enabled else "the account is enabled"
    if kind is OpKind.ADD_ENTITLEMENT:
        return None if entitlement in record.entitlements else f"{entitlement} is missing"
    if kind is OpKind.REMOVE_ENTITLEMENT:
        return None if entitlement not in record.entitlements else f"{entitlement} remains"
    return None if record.sessions == 0 else f"{record.sessions} sessions remain"


def unshowable(kind: OpKind, entitlement: str | None, record: AccountRecord | None) -> str | None:
    """Why ``record`` cannot show whether an operation of ``kind`` is done, or None when it can.

    An entitlement that *was* seen shows an addition done (and a removal not done); only its
    absence is unproven when the membership read is not trustworthy."""
    if record is None or kind not in (OpKind.ADD_ENTITLEMENT, OpKind.REMOVE_ENTITLEMENT):
        return None
    if record.entitlements_shown or entitlement in record.entitlements:
        return None
    return record.unread["entitlements"]


def kept_entitlements(record: AccountRecord, stored: frozenset[str]) -> frozenset[str]:
    """The entitlements to keep as observed after reading ``record``, given those stored.

    A membership read not shown to work adds what it saw; what it did not see stays as last
    observed, since its absence proves nothing."""
    return record.entitlements if record.entitlements_shown else record.entitlements | stored


def adoption_refusal(
    record: AccountRecord, due: frozenset[str], want_enabled: bool = True
) -> str | None:
    """Why an existing account that matched an identity by name alone (it carries no identity
    id) must not be taken over without a person deciding, or None when it may: it must be
    enabled (unless the identity's own account is to be created disabled, as one Provisor made
    before a crash would be), and hold nothing beyond ``due`` (what the identity is to have
    there), as read."""
    problems = []
    if want_enabled and not record.enabled:
        problems.append("it is disabled")
    extra = sorted(record.entitlements - due)
    if extra:
        problems.append(f"it holds {', '.join(extra)}, which the identity is not due")
    if not record.entitlements_shown:
        problems.append(f"its memberships cannot be read ({record.unread['entitlements']})")
    return "; ".join(problems) or None
