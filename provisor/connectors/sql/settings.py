"""The ``connection`` settings of SQL targets, typed and checked, one model per mode.

Does: name every setting of the three modes with its default — what all share (``url``,
``password``, pool size, timeouts), PostgreSQL roles (prefix, comment attributes, connection
limit, what a delete does), MariaDB users (host, prefix, authentication plugin) and an
application's own users table (table and columns, activity flag, memberships, sessions,
change columns) — and refuse settings that cannot work together.
Does not: connect, or check that tables and columns exist (the connector does on first use).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from provisor.connectors.base import ConnectorSettings

Mode = Literal["postgres-roles", "mysql-users", "users-table"]


class SqlSettings(ConnectorSettings):
    """What every SQL mode reads: ``url`` (an SQLAlchemy URL such as
    ``postgresql+psycopg://host/db``, ``mysql+pymysql://host/``, ``sqlite:///path``),
    ``password`` (kept out of the URL, so the policy can reference it as a secret),
    ``pool_size`` (connections kept open, default 4), ``timeout`` (seconds to connect, default
    10) and ``statement_timeout`` (seconds one statement may run, default 60)."""

    mode: Mode
    url: str = Field(min_length=1)
    password: SecretStr | None = None
    pool_size: int = Field(default=4, ge=1)
    timeout: int = Field(default=10, ge=1)  # whole seconds, as the drivers take them
    statement_timeout: int = Field(default=60, ge=1)


class PostgresRolesSettings(SqlSettings):
    mode: Literal["postgres-roles"]
    role_prefix: str = ""
    comment_attributes: list[str] = Field(default_factory=lambda: ["name"])
    connection_limit: int | None = None
    on_delete: Literal["drop", "reassign"] = "drop"
    reassign_to: str = ""
    databases: list[str] | None = None
    session_wait: float = Field(default=5, ge=0)

    @model_validator(mode="after")
    def _reassign(self) -> PostgresRolesSettings:
        if self.on_delete == "reassign" and not self.reassign_to:
            raise ValueError(
                "connection.on_delete: reassign needs connection.reassign_to (the role that "
                "takes over what a deleted role owned)"
            )
        return self


class MysqlUsersSettings(SqlSettings):
    mode: Literal["mysql-users"]
    host: str = "%"
    user_prefix: str = ""
    auth_plugin: str | None = None
    session_wait: float = Field(default=5, ge=0)

    @field_validator("auth_plugin")
    @classmethod
    def _plugin(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "").isalnum():
            raise ValueError("must be a plugin name")
        return value or None


# settings that only work together: the first named needs the others
_TOGETHER = (
    ("membership_table", "membership_account_column", "membership_entitlement_column"),
    ("sessions_table", "sessions_account_column"),
)


class UsersTableSettings(SqlSettings):
    mode: Literal["users-table"]
    table: str = Field(min_length=1)
    schema_name: str | None = Field(default=None, alias="schema")
    key: str | None = None
    user_name_column: str = Field(min_length=1)
    external_id_column: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)
    active_column: str | None = None
    active_value: Any = True
    inactive_value: Any = False
    membership_table: str | None = None
    membership_account_column: str | None = None
    membership_entitlement_column: str | None = None
    entitlement_table: str | None = None
    entitlement_name_column: str | None = None
    entitlement_key_column: str | None = None
    sessions_table: str | None = None
    sessions_account_column: str | None = None
    changed_column: str | None = None
    membership_changed_column: str | None = None

    @model_validator(mode="after")
    def _together(self) -> UsersTableSettings:
        for group in _TOGETHER:
            given = [key for key in group if getattr(self, key)]
            if given and len(given) != len(group):
                missing = ", ".join(key for key in group if key not in given)
                raise ValueError(f"connection.{group[0]} also needs {missing}")
        if self.membership_changed_column and not self.changed_column:
            raise ValueError("connection.membership_changed_column also needs changed_column")
        return self

    def value(self, setting: str) -> Any:
        """A setting by its name in the policy."""
        return self.schema_name if setting == "schema" else getattr(self, setting)


MODELS: dict[str, type[SqlSettings]] = {
    "postgres-roles": PostgresRolesSettings,
    "mysql-users": MysqlUsersSettings,
    "users-table": UsersTableSettings,
}
