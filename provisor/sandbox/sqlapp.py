"""An application's own users tables, for tests and benchmarks of the SQL users-table connector.

Does: create the tables an application keeps its accounts in (``accounts``, ``roles`` with two
roles, ``account_roles``, ``sessions``) in any SQLAlchemy database, and give the users-table
connector's settings for them (``users_table_settings``, ``users_table_connection``).
Does not: run a database server.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Column, Engine, ForeignKey, Integer, MetaData, String, Table


def app_schema(engine: Engine, *, name_is_key: bool = False) -> None:
    """An application's own tables: accounts, roles, account_roles, sessions."""
    metadata = MetaData()
    key_type: Any = String(200) if name_is_key else Integer
    Table(
        "accounts",
        metadata,
        Column("id", key_type, primary_key=True, autoincrement=not name_is_key),
        *([] if name_is_key else [Column("login", String(200), unique=True, nullable=False)]),
        Column("identity", String(100)),
        Column("full_name", String(200)),
        Column("mail", String(200)),
        Column("job_title", String(200)),
        Column("status", String(10), nullable=False),
        Column("tenant", Integer, nullable=False),
    )
    Table(
        "roles",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(100), unique=True, nullable=False),
    )
    Table(
        "account_roles",
        metadata,
        Column("account_id", key_type, ForeignKey("accounts.id"), primary_key=True),
        Column("role_id", Integer, ForeignKey("roles.id"), primary_key=True),
    )
    Table(
        "sessions",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("account_id", key_type, ForeignKey("accounts.id"), nullable=False),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            metadata.tables["roles"].insert(),
            [{"id": 1, "name": "viewer"}, {"id": 2, "name": "editor"}],
        )


# how the tables say an account is enabled, and which roles it holds
STATUS = {"active_column": "status", "active_value": "active", "inactive_value": "locked"}
ROLES = {
    "membership_table": "account_roles",
    "membership_account_column": "account_id",
    "membership_entitlement_column": "role_id",
    "entitlement_name_column": "name",
}


def users_table_settings(
    url: str, *, name_is_key: bool = False, sessions: bool = True
) -> dict[str, Any]:
    """The users-table connector's settings for the tables ``app_schema`` makes in the
    database at ``url``; ``sessions``: with the sessions table mapped."""
    settings: dict[str, Any] = {
        "mode": "users-table",
        "url": url,
        "table": "accounts",
        "key": "id",
        "user_name_column": "id" if name_is_key else "login",
        "external_id_column": "identity",
        "columns": {"full_name": "name", "mail": "email", "job_title": "title"},
        "defaults": {"tenant": 7},
    }
    settings |= STATUS | ROLES
    if sessions:
        settings |= {"sessions_table": "sessions", "sessions_account_column": "account_id"}
    return settings


def users_table_connection(url: str, **more: Any) -> str:
    """The same settings (no sessions table, ``more`` added) as a YAML flow mapping, for a
    policy's ``connection``."""
    return json.dumps(users_table_settings(url, sessions=False) | more)
