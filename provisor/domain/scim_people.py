"""What an inbound SCIM User says about a person: the identity it feeds and its attributes.

Does: pick the identity a new SCIM User feeds (the first present of the configured attributes:
the enterprise employeeNumber, externalId, userName), and turn a User (SCIM JSON, plain data)
into the record an HR feed row would be — name, e-mail, department, title, cost centre,
manager, status, with userName, externalId, employeeNumber, organisation, division, the name
parts, the user type and the groups kept as attributes.
Does not: validate values (the HR feed's rules do, on the record), store anything, or know
SCIM's protocol (``scim2-server`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
# where the identity of a new User comes from, in this order, unless configured otherwise
IdentitySource = Literal["employeeNumber", "externalId", "userName"]
IDENTITY_FROM: tuple[IdentitySource, ...] = ("employeeNumber", "externalId", "userName")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def enterprise(user: Mapping[str, Any]) -> Mapping[str, Any]:
    found = user.get(ENTERPRISE)
    return found if isinstance(found, Mapping) else {}


def identity_key(user: Mapping[str, Any], order: Sequence[str] = IDENTITY_FROM) -> str | None:
    """The identity a new User feeds: the first of ``order`` it has a value for."""
    extension = enterprise(user)
    for name in order:
        value = extension.get(name) if name == "employeeNumber" else user.get(name)
        found = _text(value)
        if found is not None:
            return found
    return None


def _email(user: Mapping[str, Any]) -> str | None:
    emails = [e for e in user.get("emails") or [] if isinstance(e, Mapping)]
    for chosen in (
        [e for e in emails if e.get("primary")],
        [e for e in emails if str(e.get("type") or "").lower() == "work"],
        emails,
    ):
        for entry in chosen:
            value = _text(entry.get("value"))
            if value is not None:
                return value
    return None


def _name(user: Mapping[str, Any]) -> str | None:
    name = user.get("name") if isinstance(user.get("name"), Mapping) else {}
    assert isinstance(name, Mapping)
    parts = " ".join(p for p in (_text(name.get("givenName")), _text(name.get("familyName"))) if p)
    return (
        _text(user.get("displayName")) or _text(name.get("formatted")) or parts or None
    ) or _text(user.get("userName"))


def manager_reference(user: Mapping[str, Any]) -> str | None:
    """The SCIM id the User names as its manager (a bare string as some clients send, too)."""
    manager = enterprise(user).get("manager")
    if isinstance(manager, Mapping):
        return _text(manager.get("value"))
    return _text(manager)


def person_record(
    user: Mapping[str, Any],
    identity: str,
    *,
    manager: str | None,
    groups: Sequence[str],
    present: bool = True,
    left: bool | None = None,
) -> dict[str, Any]:
    """The HR-feed record of a User: ``manager`` is the manager's identity (resolved by the
    caller), ``groups`` the names of the groups it is in; a User that is not ``active`` (or
    no longer ``present``: deleted) is terminated. A User without ``active`` stays as it was:
    ``left`` says whether its identity had left (None: it had not)."""
    extension = enterprise(user)
    active = user.get("active")
    leaving = not present or active is False or (active is None and bool(left))
    name = user.get("name") if isinstance(user.get("name"), Mapping) else {}
    assert isinstance(name, Mapping)
    record: dict[str, Any] = {
        "id": identity,
        "name": _name(user),
        "email": _email(user),
        "department": _text(extension.get("department")),
        "title": _text(user.get("title")),
        "cost_centre": _text(extension.get("costCenter")),
        "manager": manager,
        "status": "terminated" if leaving else "active",
        "user_name": _text(user.get("userName")),
        "external_id": _text(user.get("externalId")),
        "employee_number": _text(extension.get("employeeNumber")),
        "organization": _text(extension.get("organization")),
        "division": _text(extension.get("division")),
        "given_name": _text(name.get("givenName")),
        "family_name": _text(name.get("familyName")),
        "user_type": _text(user.get("userType")),
        "groups": sorted(set(groups)) or None,
    }
    return {k: v for k, v in record.items() if v is not None}
