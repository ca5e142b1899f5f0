"""How a target is reached: its category in the coverage map and the channel removal takes.

Does: name each target class's category (SCIM-managed, directory, database, API-managed,
manual) and a target's channel (its class, refined by the SQL mode, the REST profile, or a
connector of your own).
Does not: open connectors or read capabilities (``provisor.engine.coverage`` does).
"""

from __future__ import annotations

from provisor.domain.policy import TargetClass, TargetDef

CATEGORY = {
    TargetClass.SCIM: "SCIM-managed",
    TargetClass.LDAP: "directory",
    TargetClass.SQL: "database",
    TargetClass.REST: "API-managed",
    TargetClass.MANUAL: "manual",
}


def channel(target: TargetDef) -> str:
    """How removal reaches the target: its class, refined by the SQL mode, the REST profile,
    or a connector of your own."""
    settings = target.connection
    custom = settings.get("connector")
    if custom:
        return f"custom:{custom}"
    if target.target_class is TargetClass.SQL and settings.get("mode"):
        return f"sql:{settings['mode']}"
    if target.target_class is TargetClass.REST and settings.get("profile"):
        return f"rest:{settings['profile']}"
    return target.target_class.value
