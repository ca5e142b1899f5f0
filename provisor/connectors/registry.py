"""Which connector serves a target: by its class, or a connector of your own by import path.

Does: turn a target's class (``scim``, ``ldap``, ``sql``, ``rest``) and its resolved connection
settings into a connector instance; ``connection.connector: "package.module:Factory"`` plugs in a
connector written outside Provisor (any callable taking the target name and settings).
Does not: resolve secrets (the caller passes settings with references already resolved) or
open connections itself; a manual target has no connector.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

from provisor.connectors.base import Connector, PermanentError
from provisor.domain.policy import TargetClass

Factory = Callable[[str, Mapping[str, Any]], Connector]

BUILT_IN: dict[TargetClass, str] = {
    TargetClass.SCIM: "provisor.connectors.scim:ScimConnector",
    TargetClass.LDAP: "provisor.connectors.ldap:LdapConnector",
    TargetClass.SQL: "provisor.connectors.sql:open_sql_connector",
    TargetClass.REST: "provisor.connectors.rest:RestConnector",
}


def load_factory(path: str, target: str) -> Factory:
    """The callable named by ``module:attribute``, with an error naming the target."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise PermanentError(
            f"target {target}: connection.connector must look like 'package.module:Factory', "
            f"not {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermanentError(f"target {target}: cannot import {module_name}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise PermanentError(f"target {target}: {module_name} has no callable {attribute!r}")
    return cast(Factory, factory)


def open_connector(
    name: str, target_class: TargetClass, settings: Mapping[str, Any]
) -> Connector | None:
    """A connector for the target, or None for a manual one (people do that work)."""
    custom = settings.get("connector")
    if custom:
        return load_factory(str(custom), name)(name, settings)
    path = BUILT_IN.get(target_class)
    if path is None:
        return None
    return load_factory(path, name)(name, settings)
