"""The request shapes identity providers really send, rewritten into the SCIM they mean.

Does: turn a PATCH body as Microsoft Entra ID and Okta send it into one RFC 7644 accepts —
``Operations`` however it is capitalised, ``op`` in any case, ``"True"``/``"False"`` strings
for booleans, a path-less operation whose value holds dotted (``name.givenName``) or
URN-qualified (``urn:...:enterprise:2.0:User:department``) keys split into one operation per
path, a manager given as a bare id (or a one-item list), and a removal of ``members`` that
names the members in its value (which RFC 7644 reads as "remove every member") made into one
removal per named member; drop from a created or replaced resource what a client echoes but
does not set (read-only ``groups``, ``meta``) and schema URNs the server does not know.
Does not: validate anything (``scim2-server`` does, after this), or touch a body in strict
mode (the caller decides).
Sources: Microsoft Learn, "Known issues and resolutions with SCIM 2.0 protocol compliance of
the Microsoft Entra user provisioning service" and "Tutorial: Develop and plan provisioning
for a SCIM endpoint"; Okta Developer, "SCIM 2.0 protocol reference".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
_BOOLEANS = {"true": True, "false": False}
_KEYS = frozenset({"op", "path", "value"})
# the enterprise extension's attributes: the core User schema has none of these names, so a
# client that leaves the URN out can only mean them
_ENTERPRISE_ATTRIBUTES = {
    n.lower(): n
    for n in ("employeeNumber", "costCenter", "organization", "division", "department", "manager")
}
_PATH = re.compile(r"^(?P<name>[A-Za-z][\w$-]*)(?P<filter>\[.*\])?(?P<rest>\..+)?$")
# a sub-attribute of the value of a given type, as in emails[type eq "work"].value
_TYPED = re.compile(
    r'^(?P<name>emails|phoneNumbers|addresses|ims|photos)\[type eq "(?P<type>[^"]+)"\]'
    r"\.(?P<sub>\w+)$",
    re.IGNORECASE,
)
# attributes holding a boolean, by their last path segment (lower case)
_BOOLEAN_ATTRIBUTES = frozenset({"active", "primary"})


def _boolean(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    return value


def _booleans(value: Any) -> Any:
    """``value`` with boolean attributes given as strings made booleans, at any depth."""
    if isinstance(value, dict):
        return {
            k: _boolean(v) if k.lower() in _BOOLEAN_ATTRIBUTES else _booleans(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_booleans(v) for v in value]
    return value


def _last(path: str) -> str:
    return path.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower()


def _manager(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str | int):
        return {"value": str(value)}
    return value


def _split_pathless(op: str, value: dict[str, Any]) -> list[dict[str, Any]]:
    """A path-less value with dotted or URN keys, as one operation per such key (the rest
    stays one path-less operation)."""
    plain: dict[str, Any] = {}
    found: list[dict[str, Any]] = []
    for key, item in value.items():
        enterprise = key.lower().startswith(ENTERPRISE.lower() + ":")
        if (
            enterprise
            or key.lower() in _ENTERPRISE_ATTRIBUTES
            or ("." in key and not key.startswith("urn:"))
        ):
            found.append(_one({"op": op, "path": key, "value": item}))
        else:
            plain[key] = item
    if plain:
        found.insert(0, {"op": op, "value": _booleans(plain)})
    return found


def qualified(path: str) -> str:
    """A path naming an enterprise attribute without its URN, with it; a filter on the
    manager (single-valued: Entra removes it so) dropped."""
    prefix = ENTERPRISE + ":"
    bare = path[len(prefix) :] if path.lower().startswith(prefix.lower()) else path
    found = _PATH.match(bare)
    if found is None:
        return path
    name = _ENTERPRISE_ATTRIBUTES.get(found["name"].lower())
    if name is None:
        return path
    if name == "manager" and found["filter"]:
        return prefix + name
    return prefix + name + (found["filter"] or "") + (found["rest"] or "")


def _one(operation: dict[str, Any]) -> dict[str, Any]:
    path = operation.get("path")
    if isinstance(path, str):
        operation["path"] = path = qualified(path)
    if isinstance(path, str) and "value" in operation:
        if _last(path) in _BOOLEAN_ATTRIBUTES:
            operation["value"] = _boolean(operation["value"])
        elif _last(path) == "manager":
            operation["value"] = _manager(operation["value"])
        else:
            operation["value"] = _booleans(operation["value"])
    return operation


def _member_removals(value: Any) -> list[dict[str, Any]] | None:
    """A removal of ``members`` naming them in its value, one removal per member."""
    items = value if isinstance(value, list) else [value]
    ids = [str(i["value"]) for i in items if isinstance(i, dict) and i.get("value")]
    if not ids or len(ids) != len(items):
        return None
    quoted = (i.replace("\\", "\\\\").replace('"', '\\"') for i in ids)
    return [{"op": "remove", "path": f'members[value eq "{i}"]'} for i in quoted]


def patch(body: Any) -> Any:
    """A PATCH body in the shape RFC 7644 reads (``body`` unchanged when it is no object)."""
    if not isinstance(body, dict):
        return body
    fixed = {k: v for k, v in body.items() if k.lower() not in ("operations", "schemas")}
    operations = next((v for k, v in body.items() if k.lower() == "operations"), None)
    fixed["schemas"] = [PATCH_SCHEMA]
    if not isinstance(operations, list):
        fixed["Operations"] = operations
        return fixed
    out: list[Any] = []
    for raw in operations:
        if not isinstance(raw, dict):
            out.append(raw)
            continue
        operation = {(k.lower() if k.lower() in _KEYS else k): v for k, v in raw.items()}
        op = str(operation.get("op", "")).lower()
        operation["op"] = op
        path = operation.get("path")
        value = operation.get("value")
        if op == "remove" and isinstance(path, str) and path.lower() == "members" and value:
            removals = _member_removals(value)
            if removals is not None:
                out.extend(removals)
                continue
        if not path and isinstance(value, dict):
            out.extend(_split_pathless(op, value))
            continue
        out.append(_one(operation))
    fixed["Operations"] = out
    return fixed


def resource(body: Any, known_schemas: Iterable[str]) -> Any:
    """A created or replaced resource without what the client echoes but does not set."""
    if not isinstance(body, dict):
        return body
    known = {s.lower() for s in known_schemas}
    fixed = {k: v for k, v in body.items() if k.lower() not in ("groups", "meta", "password")}
    schemas = fixed.get("schemas")
    if isinstance(schemas, list):
        unknown = {s for s in schemas if isinstance(s, str) and s.lower() not in known}
        fixed["schemas"] = [s for s in schemas if s not in unknown]
        for urn in unknown:
            fixed.pop(urn, None)
    return _booleans(fixed)


def typed_additions(
    current: Mapping[str, Any], operations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Operations on ``emails[type eq "work"].value`` (and the like) where the resource has no
    value of that type, made additions of one (Entra adds a work e-mail so; RFC 7644 would
    answer noTarget)."""
    out = []
    for operation in operations:
        path = operation.get("path")
        found = _TYPED.match(path) if isinstance(path, str) else None
        if found is None or str(operation.get("op")).lower() not in ("add", "replace"):
            out.append(operation)
            continue
        name = next((k for k in current if k.lower() == found["name"].lower()), found["name"])
        kind = found["type"]
        items = current.get(name) or []
        if any(
            isinstance(i, Mapping) and str(i.get("type")).lower() == kind.lower() for i in items
        ):
            out.append(operation)
            continue
        value = {"type": kind, found["sub"]: operation.get("value")}
        out.append({"op": "add", "path": name, "value": [value]})
    return out


def strict_problem(body: Any, *, patch_request: bool, known: Iterable[str]) -> str | None:
    """In strict mode, what the SCIM interoperability profile forbids in a request body: a
    PATCH operation without a path, an ``op`` not in lower case, a filter that targets the
    element itself, a boolean sent as text; in a created or replaced resource, an attribute
    or schema the server does not serve, or a password. None when there is nothing."""
    if not isinstance(body, dict):
        return None
    if patch_request:
        for number, operation in enumerate(body.get("Operations") or [], 1):
            if not isinstance(operation, dict):
                continue
            path = operation.get("path")
            if not path:
                return f"operation {number}: the profile requires a path"
            if operation.get("op") not in ("add", "remove", "replace"):
                return f"operation {number}: op is add, remove or replace, in lower case"
            if str(path).endswith("]"):
                return f"operation {number}: a filter must target a sub-attribute ({path})"
            if _last(str(path)) in _BOOLEAN_ATTRIBUTES and isinstance(operation.get("value"), str):
                return f"operation {number}: {path} is a boolean, not text"
        return None
    served = {k.lower() for k in known} - {"password"}
    for key in body:
        if key.lower() == "password":
            return "password: the profile forbids sending one (it would never be kept)"
        if key.lower() not in served:
            return f"{key}: not an attribute or schema this server serves"
    for urn in body.get("schemas") or []:
        if str(urn).lower() not in served:
            return f"schemas: {urn} is not served here"
    return None


_MANAGER_FILTER = re.compile(r'(?:^|:)manager\[value eq "(?P<value>(?:[^"\\]|\\.)*)"\]$', re.I)


def manager_filters(body: Any) -> list[str] | None:
    """The managers a PATCH removes by filter (``manager[value eq "…"]``, as Entra does), or
    None when it removes none so: the manager is removed only if it is one of them."""
    if not isinstance(body, dict):
        return None
    operations = next((v for k, v in body.items() if k.lower() == "operations"), None)
    found = [
        m["value"].replace('\\"', '"')
        for o in operations or []
        if isinstance(o, dict)
        and str(o.get("op", "")).lower() == "remove"
        and (m := _MANAGER_FILTER.search(str(o.get("path") or "")))
    ]
    return found or None


def without_manager_removal(
    current: Mapping[str, Any], operations: list[dict[str, Any]], named: list[str]
) -> list[dict[str, Any]]:
    """``operations`` without the removal of the manager when the current manager is none of
    ``named`` (removing "the manager if it is X" leaves manager Y alone)."""
    extension = current.get(ENTERPRISE)
    manager = extension.get("manager") if isinstance(extension, Mapping) else None
    value = manager.get("value") if isinstance(manager, Mapping) else None
    if value is not None and str(value) in named:
        return operations
    return [
        o
        for o in operations
        if not (
            str(o.get("op")).lower() == "remove"
            and str(o.get("path") or "").lower() == (ENTERPRISE + ":manager").lower()
        )
    ]
