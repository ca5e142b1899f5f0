"""Which connector serves a target: by its class, or a connector of your own by import path.

Does: turn a target's class (``scim``, ``ldap``, ``sql``, ``rest``) and its resolved connection
settings into a connector instance; ``connection.connector: "package.module:Factory"`` plugs in a
connector written outside Provisor (any callable taking the target name and settings).
Names the settings model each connector checks its ``connection`` against (``settings_model``)
and checks a target's settings against it (``settings_problems``: secret references stand for
themselves), for the policy loader to report with file and line.
Does not: resolve secrets (the caller passes settings with references already resolved) or
open connections itself; a manual target has no connector.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

from provisor.connectors.base import Connector, ConnectorSettings, PermanentError
from provisor.domain.policy import SecretRef, TargetClass, TargetDef

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


def settings_model(
    target: str, target_class: TargetClass, settings: Mapping[str, Any]
) -> type[ConnectorSettings] | None:
    """The model ``settings`` must satisfy: the connector's ``Settings`` (a connector of your own
    may declare none: then its settings are its own business), or None for a manual target."""
    custom = settings.get("connector")
    if target_class is TargetClass.SQL and not custom:
        from provisor.connectors.sql import settings_model as sql_model

        return sql_model(settings)
    path = str(custom) if custom else BUILT_IN.get(target_class)
    if path is None:
        return None
    model = getattr(load_factory(path, target), "Settings", None)
    return model if isinstance(model, type) and issubclass(model, ConnectorSettings) else None


def placeholders(value: Any) -> Any:
    """``value`` with every secret reference replaced by a stand-in text."""
    if isinstance(value, SecretRef):
        return "<unresolved secret>"
    if isinstance(value, dict):
        return {k: placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [placeholders(v) for v in value]
    return value


def settings_problems(target: TargetDef) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with ``target``'s connection settings, each with where under the target:
    unknown settings and wrong values (a required one still missing is said when the
    connector opens)."""
    try:
        model = settings_model(target.name, target.target_class, target.connection)
    except Exception:
        return []
    if model is None:
        return []
    settings = placeholders(target.connection)
    # a setting not filled in yet is said when the connector opens; a wrong one, now. A
    # reference (to a secret or the environment) is judged once resolved, when it opens.
    referenced = {key for key, value in target.connection.items() if isinstance(value, SecretRef)}
    found = model.problems(settings, complete=False)
    return [
        (("connection", *where), why)
        for where, why in found
        if not (where and where[0] in referenced) or why.startswith("unknown setting")
    ]
