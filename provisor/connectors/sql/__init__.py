"""SQL database accounts: PostgreSQL roles, MariaDB/MySQL users, or an application's own table.

Does: open the connector a target's ``connection.mode`` names — ``postgres-roles`` and
``mysql-users`` (``roles``) or ``users-table`` (``table``), which share the database, quoting
and error mapping of ``database``.
Does not: decide what to change or retry; see each module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict

from provisor.connectors.base import Connector, ConnectorSettings, PermanentError
from provisor.connectors.sql.roles import MysqlUsers, PostgresRoles
from provisor.connectors.sql.settings import MODELS, SqlSettings
from provisor.connectors.sql.table import ChangeTrackedUsersTable, UsersTable

MODES = tuple(MODELS)


class _AnyMode(SqlSettings):
    """Settings naming no known mode: only the mode is reported, not every other setting."""

    model_config = ConfigDict(extra="allow")


def settings_model(settings: Mapping[str, Any]) -> type[ConnectorSettings]:
    """The settings model of the mode ``settings`` name."""
    return MODELS.get(str(settings.get("mode")), _AnyMode)


def open_sql_connector(name: str, settings: Mapping[str, Any]) -> Connector:
    """The connector for an SQL target, chosen by ``connection.mode``."""
    mode = settings.get("mode")
    if mode == "postgres-roles":
        return PostgresRoles(name, settings)
    if mode == "mysql-users":
        return MysqlUsers(name, settings)
    if mode == "users-table":
        if settings.get("changed_column"):
            return ChangeTrackedUsersTable(name, settings)
        return UsersTable(name, settings)
    raise PermanentError(
        f"target {name}: connection.mode must be one of {', '.join(MODES)}"
        + (f", not {mode!r}" if mode else "")
    )
