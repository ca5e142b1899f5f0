"""Accounts kept in an application's own table (``connection.mode: users-table``).

Does: reflect the application's tables once (accounts, memberships, optionally the table that
defines the entitlements and one of live sessions) and work on them with SQLAlchemy Core
statements, never with SQL built from strings: create a row (user name, identity id, mapped
attributes, active flag), update and rename it (moving its memberships and sessions along when
the user name is the key), set the active flag, add and remove membership rows, count and delete
session rows, delete an account with its memberships and sessions in one transaction, read one
and list all page by page in key order. Works the same on SQLite, PostgreSQL and MariaDB.
Does not: create or change tables, hash passwords, or know what the application does with the
rows beyond the columns it is told about; without a sessions table the application's sessions
are unknown (and cannot be revoked from here).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    MetaData,
    Row,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy import update as sql_update

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    BaseConnector,
    Capability,
    Conflict,
    NotFound,
    PermanentError,
    Unsupported,
)
from provisor.connectors.sql.database import Database
from provisor.connectors.sql.settings import UsersTableSettings

PAGE = 500


@dataclass(frozen=True)
class _Schema:
    """The reflected tables and the columns each setting names."""

    accounts: Table
    key: Column[Any]
    user_name: Column[Any]
    external_id: Column[Any] | None
    active: Column[Any] | None
    mapped: dict[str, Column[Any]]  # identity attribute -> column
    generate_key: bool  # the key has no default of its own: Provisor makes one up
    membership: Table | None
    member_account: Column[Any] | None
    member_entitlement: Column[Any] | None
    entitlements: Table | None  # the table defining entitlements, when there is one
    entitlement_key: Column[Any] | None  # what membership rows hold
    entitlement_name: Column[Any] | None  # the name the policy uses
    sessions: Table | None
    session_account: Column[Any] | None


def _python_type(column: Column[Any]) -> type | None:
    try:
        python_type: type = column.type.python_type
    except NotImplementedError:
        return None
    return python_type


def _coerce(column: Column[Any], value: Any) -> Any:
    """``value`` in the column's Python type where that is plain (text, whole numbers)."""
    if value is None:
        return None
    python_type = _python_type(column)
    if python_type is str and not isinstance(value, str):
        return str(value)
    if python_type is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal, counting ``1``/``True``/``"true"`` and ``0``/``False``/``"false"`` alike."""
    if a == b:
        return True
    return str(a).strip().lower() == str(b).strip().lower()


def _generated(table: Table, column: Column[Any]) -> bool:
    """Whether the database fills the column itself on insert."""
    if column.server_default is not None or column.identity is not None:
        return True
    if column.autoincrement is True:
        return True
    single_key = len(table.primary_key.columns) == 1 and column.primary_key
    return bool(column.autoincrement == "auto" and single_key and _python_type(column) is int)


class UsersTable(BaseConnector):
    """Accounts as rows of an application table. Settings besides those of
    :class:`~provisor.connectors.sql.database.Database`:

    ``table`` (required), ``schema``, ``key`` (the column that identifies a row; default the
    primary key), ``user_name_column`` (required), ``external_id_column``, ``columns``
    (``{column: identity attribute}``), ``defaults`` (``{column: value}`` for new rows),
    ``active_column`` with ``active_value`` (default true) and ``inactive_value`` (default
    false), ``membership_table`` with ``membership_account_column`` and
    ``membership_entitlement_column``, ``entitlement_table`` with ``entitlement_name_column``
    and ``entitlement_key_column`` (found from the membership column's foreign key when not
    given), ``sessions_table`` with ``sessions_account_column``; ``changed_column`` and
    ``membership_changed_column`` for incremental reads (:class:`ChangeTrackedUsersTable`)."""

    Settings = UsersTableSettings
    settings: UsersTableSettings
    reads_entitlements = True  # the membership table, when configured (see ``unavailable``)
    reads_sessions = True  # the sessions table, when configured

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        given = self.settings
        self.columns: dict[str, str] = dict(given.columns)
        self.defaults: dict[str, Any] = dict(given.defaults)
        self.active_value = given.active_value
        self.inactive_value = given.inactive_value
        self.carries_identity = given.external_id_column is not None
        self.db = Database(name, given, autocommit=False)
        self._schema_cache: _Schema | None = None
        self._setup = threading.Lock()
        # SQLite has one writer at a time and fails (rather than waits) when two transactions
        # that both read first try to write: let writes take turns instead.
        self._writer = threading.Lock() if self.db.kind == "sqlite" else None

    # --- the tables ----------------------------------------------------------------------------

    @property
    def schema(self) -> _Schema:
        if self._schema_cache is None:
            with self._setup:
                if self._schema_cache is None:
                    with self.db.failures("read the table definitions"):
                        self._schema_cache = self._reflect()
        return self._schema_cache

    def _table(self, metadata: MetaData, setting: str) -> Table:
        name = str(self.settings.value(setting))
        try:
            return Table(
                name,
                metadata,
                autoload_with=self.db.engine,
                schema=self.settings.schema_name,
            )
        except sa_exc.NoSuchTableError:
            raise PermanentError(
                f"{self.name}: connection.{setting}: table {name!r} does not exist"
            ) from None

    def _column(self, table: Table, setting: str, name: str | None = None) -> Column[Any]:
        column_name = str(name if name is not None else self.settings.value(setting))
        if column_name not in table.c:
            raise PermanentError(
                f"{self.name}: connection.{setting}: table {table.name} has no column "
                f"{column_name!r}"
            )
        column: Column[Any] = table.c[column_name]
        return column

    def _optional(self, table: Table, setting: str) -> Column[Any] | None:
        return self._column(table, setting) if self.settings.value(setting) else None

    def _reflect(self) -> _Schema:
        metadata = MetaData()
        accounts = self._table(metadata, "table")
        if self.settings.key:
            key = self._column(accounts, "key")
        elif len(accounts.primary_key.columns) == 1:
            key = next(iter(accounts.primary_key.columns))
        else:
            raise PermanentError(
                f"{self.name}: table {accounts.name} has no single-column primary key; "
                "set connection.key to the column that identifies an account"
            )
        user_name = self._column(accounts, "user_name_column")
        mapped = {
            attribute: self._column(accounts, "columns", column)
            for column, attribute in self.columns.items()
        }
        for column in self.defaults:
            self._column(accounts, "defaults", column)
        generate = key is not user_name and not _generated(accounts, key)
        if generate and _python_type(key) is not str:
            raise PermanentError(
                f"{self.name}: key column {key.name} has no default and is not text: give it "
                "a default (an identity or sequence) or use the user name column as the key"
            )
        membership = member_account = member_entitlement = None
        entitlements = entitlement_key = entitlement_name = None
        if self.settings.membership_table:
            membership = self._table(metadata, "membership_table")
            member_account = self._column(membership, "membership_account_column")
            member_entitlement = self._column(membership, "membership_entitlement_column")
            entitlements, entitlement_key, entitlement_name = self._entitlement_table(
                metadata, member_entitlement
            )
        sessions = session_account = None
        if self.settings.sessions_table:
            sessions = self._table(metadata, "sessions_table")
            session_account = self._column(sessions, "sessions_account_column")
        return _Schema(
            accounts=accounts,
            key=key,
            user_name=user_name,
            external_id=self._optional(accounts, "external_id_column"),
            active=self._optional(accounts, "active_column"),
            mapped=mapped,
            generate_key=generate,
            membership=membership,
            member_account=member_account,
            member_entitlement=member_entitlement,
            entitlements=entitlements,
            entitlement_key=entitlement_key,
            entitlement_name=entitlement_name,
            sessions=sessions,
            session_account=session_account,
        )

    def _entitlement_table(
        self, metadata: MetaData, member_entitlement: Column[Any]
    ) -> tuple[Table | None, Column[Any] | None, Column[Any] | None]:
        """The table that defines entitlements: named in the settings, or the one the
        membership column refers to; none when entitlements are free text."""
        if self.settings.entitlement_table:
            table = self._table(metadata, "entitlement_table")
            if not self.settings.entitlement_name_column:
                raise PermanentError(
                    f"{self.name}: connection.entitlement_table also needs entitlement_name_column"
                )
            name = self._column(table, "entitlement_name_column")
            key = self._optional(table, "entitlement_key_column")
            return table, key if key is not None else name, name
        foreign = list(member_entitlement.foreign_keys)
        if len(foreign) != 1:
            return None, None, None
        referred: Column[Any] = foreign[0].column
        table = referred.table
        assert isinstance(table, Table)
        name = (
            self._column(table, "entitlement_name_column")
            if self.settings.entitlement_name_column
            else referred
        )
        return table, referred, name

    # --- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _write(self, what: str) -> Iterator[Connection]:
        """A write transaction (taking turns with the others on SQLite)."""
        turn: AbstractContextManager[Any] = self._writer or nullcontext()
        with turn, self.db.begin(what) as connection:
            yield connection

    def _key(self, account: str) -> Any:
        """The key column's value for ``account``, or None when it cannot be one."""
        python_type = _python_type(self.schema.key)
        if python_type is int:
            try:
                return int(account)
            except ValueError:
                return None
        return account

    def _row(self, connection: Connection, key: Any) -> Row[Any] | None:
        s = self.schema
        return connection.execute(select(s.accounts).where(s.key == key)).first()

    def _records(self, connection: Connection, rows: Sequence[Row[Any]]) -> list[AccountRecord]:
        """Records for ``rows`` with their entitlements and sessions, two queries at most."""
        s = self.schema
        keys = [row._mapping[s.key] for row in rows]
        held: dict[str, set[str]] = {}
        if s.membership is not None and s.member_account is not None and keys:
            assert s.member_entitlement is not None
            if s.entitlements is not None and s.entitlement_name is not s.entitlement_key:
                assert s.entitlement_key is not None and s.entitlement_name is not None
                query = (
                    select(s.member_account, s.entitlement_name)
                    .select_from(
                        s.membership.join(s.entitlements, s.member_entitlement == s.entitlement_key)
                    )
                    .where(s.member_account.in_(keys))
                )
            else:
                query = select(s.member_account, s.member_entitlement).where(
                    s.member_account.in_(keys)
                )
            for account, entitlement in connection.execute(query):
                held.setdefault(str(account), set()).add(str(entitlement))
        counts: dict[str, int] | None = None
        if s.sessions is not None and s.session_account is not None:
            counts = {}
            if keys:
                query = (
                    select(s.session_account, func.count())
                    .where(s.session_account.in_(keys))
                    .group_by(s.session_account)
                )
                counts = {str(a): int(n) for a, n in connection.execute(query)}
        records = []
        for row in rows:
            values = row._mapping
            account = str(values[s.key])
            external = values[s.external_id] if s.external_id is not None else None
            records.append(
                AccountRecord(
                    account=account,
                    user_name=str(values[s.user_name]),
                    enabled=(
                        True if s.active is None else _same(values[s.active], self.active_value)
                    ),
                    entitlements=frozenset(held.get(account, ())),
                    external_id=None if external is None else str(external),
                    sessions=None if counts is None else counts.get(account, 0),
                    attributes={
                        attribute: values[column]
                        for attribute, column in s.mapped.items()
                        if values[column] is not None
                    },
                )
            )
        return records

    def _values(self, spec: AccountSpec, *, creating: bool) -> dict[str, Any]:
        """Column values for the account spec (by column name)."""
        s = self.schema
        values: dict[str, Any] = {s.user_name.name: _coerce(s.user_name, spec.user_name)}
        if s.external_id is not None:
            values[s.external_id.name] = _coerce(s.external_id, spec.identity)
        for attribute, column in s.mapped.items():
            value = spec.attributes.get(attribute)
            if value is not None and value != "":
                values[column.name] = _coerce(column, value)
            elif not creating and column.nullable:
                values[column.name] = None  # the identity lost it: so does the account
        return values

    def _entitlement(self, connection: Connection, entitlement: str) -> Any:
        """What membership rows hold for ``entitlement``; PermanentError when undefined."""
        s = self.schema
        if s.entitlements is None or s.entitlement_key is None or s.entitlement_name is None:
            assert s.member_entitlement is not None
            return _coerce(s.member_entitlement, entitlement)
        value = connection.execute(
            select(s.entitlement_key).where(s.entitlement_name == entitlement)
        ).scalar()
        if value is None:
            raise PermanentError(
                f"{self.name}: entitlement {entitlement!r} is not defined in table "
                f"{s.entitlements.name}; add it there or remove it from the policy"
            )
        return value

    def _existing(self, connection: Connection, account: str) -> Any:
        """The key of ``account``; NotFound when there is no such row."""
        key = self._key(account)
        if key is None or self._row(connection, key) is None:
            raise NotFound(f"{self.name}: account {account} does not exist")
        return key

    # --- reading -------------------------------------------------------------------------------

    def unavailable(self) -> frozenset[Capability]:
        """What the table's own definition leaves out (found on first use)."""
        s = self.schema
        off = {
            Capability.DISABLE: s.active is None,
            Capability.ENTITLEMENTS: s.membership is None,
            Capability.SESSIONS: s.sessions is None,
            Capability.EXTERNAL_ID: s.external_id is None,
        }
        return frozenset(capability for capability, missing in off.items() if missing)

    def read(self, account: str) -> AccountRecord | None:
        key = self._key(account)
        if key is None:
            return None
        with self.db.connect(f"read account {account}") as connection:
            row = self._row(connection, key)
            return self._records(connection, [row])[0] if row is not None else None

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """By the identity id (when the table keeps one), else by user name."""
        s = self.schema
        test = s.user_name == _coerce(s.user_name, spec.user_name)
        if s.external_id is not None:
            test = or_(test, s.external_id == _coerce(s.external_id, spec.identity))
        with self.db.connect(f"find account for {spec.user_name}") as connection:
            rows = connection.execute(select(s.accounts).where(test)).all()
            records = self._records(connection, rows)
        records.sort(key=lambda r: r.external_id != spec.identity)
        return records[0] if records else None

    def list_accounts(self) -> Iterator[AccountRecord]:
        return self._pages(None, "list accounts")

    def _pages(self, where: ColumnElement[bool] | None, what: str) -> Iterator[AccountRecord]:
        """Accounts (those matching ``where``) in keyset pages of ``PAGE``, in key order."""
        s = self.schema
        after: Any = None
        while True:
            query = select(s.accounts).order_by(s.key).limit(PAGE)
            if where is not None:
                query = query.where(where)
            if after is not None:
                query = query.where(s.key > after)
            with self.db.connect(what) as connection:
                rows = connection.execute(query).all()
                records = self._records(connection, rows)
            yield from records
            if len(rows) < PAGE:
                return
            after = rows[-1]._mapping[s.key]

    # --- writing -------------------------------------------------------------------------------

    def create(self, spec: AccountSpec) -> str:
        s = self.schema
        values = self._values(spec, creating=True)
        for column, value in self.defaults.items():
            values.setdefault(column, _coerce(s.accounts.c[column], value))
        if s.active is not None:
            wanted = self.active_value if spec.enabled else self.inactive_value
            values[s.active.name] = _coerce(s.active, wanted)
        if s.generate_key:
            values[s.key.name] = str(uuid.uuid4())
        with self._write(f"create account {spec.user_name}") as connection:
            user_name = values[s.user_name.name]
            taken = connection.execute(select(s.key).where(s.user_name == user_name)).first()
            if taken is not None:
                raise Conflict(f"{self.name}: an account named {spec.user_name} exists")
            statement = insert(s.accounts).values(values)
            if s.key.name in values:
                connection.execute(statement)
                return str(values[s.key.name])
            if connection.dialect.insert_returning:
                return str(connection.execute(statement.returning(s.key)).scalar_one())
            connection.execute(statement)
            key = connection.execute(select(s.key).where(s.user_name == user_name)).scalar_one()
            return str(key)

    def update(self, account: str, spec: AccountSpec) -> str:
        """Set the user name, identity id and mapped columns from ``spec``. When the user name
        is also the key, a rename moves the row to the new key with its memberships and
        sessions, in one transaction."""
        s = self.schema
        values = self._values(spec, creating=False)
        new_name = values[s.user_name.name]
        with self._write(f"update account {account}") as connection:
            key = self._existing(connection, account)
            taken = connection.execute(
                select(s.key).where(s.user_name == new_name, s.key != key)
            ).first()
            if taken is not None:
                raise Conflict(f"{self.name}: cannot rename {account}: {new_name} is taken")
            if s.key is not s.user_name or new_name == key:
                connection.execute(sql_update(s.accounts).where(s.key == key).values(values))
                return account
            row = self._row(connection, key)
            assert row is not None
            copy = {column.name: row._mapping[column] for column in s.accounts.c} | values
            connection.execute(insert(s.accounts).values(copy))
            for table, column in (
                (s.membership, s.member_account),
                (s.sessions, s.session_account),
            ):
                if table is not None and column is not None:
                    connection.execute(
                        sql_update(table).where(column == key).values({column.name: new_name})
                    )
            connection.execute(delete(s.accounts).where(s.key == key))
            return str(new_name)

    def set_enabled(self, account: str, enabled: bool) -> None:
        s = self.schema
        if s.active is None:
            raise Unsupported(f"{self.name}: no active_column is configured")
        value = _coerce(s.active, self.active_value if enabled else self.inactive_value)
        with self._write(f"set {s.active.name} on {account}") as connection:
            key = self._existing(connection, account)
            connection.execute(
                sql_update(s.accounts).where(s.key == key).values({s.active.name: value})
            )

    def _membership(self) -> tuple[Table, Column[Any], Column[Any]]:
        s = self.schema
        if s.membership is None or s.member_account is None or s.member_entitlement is None:
            raise Unsupported(f"{self.name}: no membership_table is configured")
        return s.membership, s.member_account, s.member_entitlement

    def add_entitlement(self, account: str, entitlement: str) -> None:
        table, member, held = self._membership()
        with self._write(f"add {entitlement} to {account}") as connection:
            key = self._existing(connection, account)
            value = self._entitlement(connection, entitlement)
            there = connection.execute(
                select(func.count()).select_from(table).where(member == key, held == value)
            ).scalar_one()
            if not there:
                connection.execute(insert(table).values({member.name: key, held.name: value}))

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        table, member, held = self._membership()
        with self._write(f"remove {entitlement} from {account}") as connection:
            key = self._existing(connection, account)
            value = self._entitlement(connection, entitlement)
            connection.execute(delete(table).where(member == key, held == value))

    def revoke_sessions(self, account: str) -> None:
        s = self.schema
        if s.sessions is None or s.session_account is None:
            raise Unsupported(
                f"{self.name}: the application's sessions are not in a table Provisor knows "
                "(set connection.sessions_table)"
            )
        with self._write(f"delete sessions of {account}") as connection:
            key = self._existing(connection, account)
            connection.execute(delete(s.sessions).where(s.session_account == key))

    def delete(self, account: str) -> None:
        s = self.schema
        key = self._key(account)
        if key is None:
            return
        with self._write(f"delete account {account}") as connection:
            for table, column in (
                (s.membership, s.member_account),
                (s.sessions, s.session_account),
            ):
                if table is not None and column is not None:
                    connection.execute(delete(table).where(column == key))
            connection.execute(delete(s.accounts).where(s.key == key))

    def close(self) -> None:
        self.db.close()


__all__ = ["UsersTable"]


class ChangeTrackedUsersTable(UsersTable):
    """A users table whose rows carry the time the application last changed them
    (``changed_column``), read incrementally by reconciliation: ``list_changed`` returns the
    accounts changed since a moment with everything they hold now. With
    ``membership_changed_column`` (the time a membership row was written), groups that gained
    members since then are reported whole by ``changed_memberships``; a membership row deleted
    leaves no trace, so removals show only when the application also stamps the account, or at
    the next full reconciliation. Times are compared in UTC: a column without a time zone is
    taken to hold UTC, a number to hold seconds since the epoch."""

    def _stamp(self, table: Table, setting: str) -> Column[Any]:
        column = self._column(table, setting)
        if _python_type(column) not in (datetime, int, float):
            raise PermanentError(
                f"{self.name}: connection.{setting}: column {table.name}.{column.name} holds "
                "neither a timestamp nor seconds since the epoch"
            )
        return column

    def _since(self, column: Column[Any], since: datetime) -> Any:
        moment = since.astimezone(UTC)
        if _python_type(column) in (int, float):
            return moment.timestamp()
        if getattr(column.type, "timezone", False):
            return moment
        return moment.replace(tzinfo=None)

    def list_changed(self, since: datetime) -> Iterator[AccountRecord]:
        changed = self._stamp(self.schema.accounts, "changed_column")
        return self._pages(changed >= self._since(changed, since), "list changed accounts")

    def changed_memberships(self, since: datetime) -> dict[str, frozenset[str]]:
        s = self.schema
        if not self.settings.membership_changed_column or s.membership is None:
            return {}
        assert s.member_account is not None and s.member_entitlement is not None
        stamp = self._stamp(s.membership, "membership_changed_column")
        joined: Any = s.membership
        name: Column[Any] = s.member_entitlement
        if s.entitlements is not None and s.entitlement_name is not s.entitlement_key:
            assert s.entitlement_key is not None and s.entitlement_name is not None
            joined = s.membership.join(s.entitlements, s.member_entitlement == s.entitlement_key)
            name = s.entitlement_name
        with self.db.connect("list changed memberships") as connection:
            groups = {
                str(g)
                for g in connection.execute(
                    select(name).select_from(joined).where(stamp >= self._since(stamp, since))
                ).scalars()
            }
            if not groups:
                return {}
            found: dict[str, set[str]] = {group: set() for group in groups}
            for account, group in connection.execute(
                select(s.member_account, name).select_from(joined).where(name.in_(groups))
            ):
                found[str(group)].add(str(account))
        return {group: frozenset(members) for group, members in found.items()}
