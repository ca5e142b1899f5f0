"""Database logins as accounts: PostgreSQL roles (``postgres-roles``) and MariaDB users
(``mysql-users``).

Does: create a login (locked when the account starts disabled), rename it, lock and unlock it,
grant and revoke group roles as entitlements, count its live sessions and end them, delete it
(PostgreSQL: refusing a role that owns objects, or first reassigning what it owns in every
listed database), read one login and list all of them page by page in name order. PostgreSQL
roles carry the identity id (and a few chosen attributes) as JSON in their ``COMMENT``, which
also marks them as managed by Provisor; MariaDB has nowhere to keep it, so accounts there are
found by name alone. Superusers, system roles (``pg_*``, ``root``, ``mariadb.sys``) and the
connector's own login are never listed, adopted or changed.
Does not: set passwords or other credentials (people sign in however the database is set up:
SSO, LDAP, PAM, a password an administrator hands out), grant object privileges, or create
group roles: the entitlements the policy names must already exist.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, bindparam
from sqlalchemy import exc as sa_exc

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    BaseConnector,
    Conflict,
    NotFound,
    PermanentError,
    RetryableError,
)
from provisor.connectors.sql.database import Database, check_name, error_code
from provisor.connectors.sql.settings import MysqlUsersSettings, PostgresRolesSettings

PAGE = 500
COMMENT_KEY = "provisor"
COMMENT_START = '{"' + COMMENT_KEY + '": '  # how every comment Provisor writes begins
PG_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL cuts longer names short
MARIADB_NAME_CHARS = 128
MARIADB_RESERVED = ("root", "mariadb.sys", "mysql", "PUBLIC", "")


def _like_prefix(value: str) -> str:
    """A LIKE pattern (escape character ``!``) matching strings that start with ``value``."""
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def _wait(seconds: float, check: Callable[[], bool]) -> bool:
    """Call ``check`` until it answers True or ``seconds`` pass; its last answer."""
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# --- PostgreSQL ------------------------------------------------------------------------------

_PG_SELECT = """
SELECT r.rolname::text AS rolname, r.rolcanlogin, d.description,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid) AS groups,
       COALESCE(s.n, 0) AS sessions
FROM pg_roles r
LEFT JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass
LEFT JOIN (SELECT usesysid, count(*) AS n FROM pg_stat_activity
           WHERE backend_type = 'client backend' GROUP BY usesysid) s ON s.usesysid = r.oid
"""
# one role, before a change: whether Provisor may change it at all
_PG_TARGET = """
SELECT r.oid, r.rolname::text AS rolname, d.description,
       (r.rolsuper OR r.rolname ~ '^pg_' OR r.rolname = current_user
        OR NOT starts_with(r.rolname, :prefix)) AS untouchable
FROM pg_roles r
LEFT JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass
WHERE r.rolname = :role
"""
# roles Provisor may see and change: no superusers, no system roles, not its own login
_PG_MANAGEABLE = (
    "NOT r.rolsuper AND r.rolname !~ '^pg_' AND r.rolname <> current_user "
    "AND starts_with(r.rolname, :prefix)"
)


class PostgresRoles(BaseConnector):
    """PostgreSQL roles as accounts (``connection.mode: postgres-roles``).

    Settings besides those of :class:`~provisor.connectors.sql.database.Database`: ``role_prefix``
    (put before every user name to make the role name; only roles with it are listed or
    touched), ``comment_attributes`` (identity attributes kept in the role's comment beside the
    identity id, default ``[name]``), ``connection_limit``, ``on_delete`` (``drop``, the
    default, or ``reassign``), ``reassign_to`` (the role that receives what a deleted role
    owned), ``databases`` (where to reassign; default the connected database), and
    ``session_wait`` (seconds to wait for ended sessions to vanish, default 5)."""

    Settings = PostgresRolesSettings
    settings: PostgresRolesSettings
    reads_entitlements = True  # role memberships / granted roles
    reads_sessions = True  # the server's own session list
    carries_identity = True  # in the role's comment

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        given = self.settings
        self.db = Database(name, given, autocommit=False)
        if self.db.kind != "postgresql":
            raise PermanentError(
                f"target {name}: mode postgres-roles needs a postgresql+psycopg:// URL"
            )
        self.prefix = given.role_prefix
        if self.prefix:
            check_name(name, "role_prefix", self.prefix, max_bytes=PG_NAME_BYTES - 1)
        self.comment_attributes = tuple(given.comment_attributes)
        self.connection_limit = given.connection_limit
        self.on_delete = given.on_delete
        self.reassign_to = given.reassign_to
        self.databases = given.databases or [str(self.db.url.database or "postgres")]
        self.session_wait = given.session_wait

    # --- names and records ------------------------------------------------------------------

    def role_name(self, user_name: str) -> str:
        return check_name(self.name, "role name", self.prefix + user_name, max_bytes=PG_NAME_BYTES)

    def _comment(self, spec: AccountSpec) -> str:
        data: dict[str, str] = {COMMENT_KEY: spec.identity}
        for key in self.comment_attributes:
            value = spec.attributes.get(key)
            if value is not None and value != "":
                data[key] = str(value)
        return json.dumps(data, ensure_ascii=False)

    def _record(self, row: Row[Any]) -> AccountRecord:
        role = str(row.rolname)
        external_id: str | None = None
        attributes: dict[str, Any] = {}
        comment = row.description
        if comment and comment.startswith(COMMENT_START):
            try:
                data = json.loads(comment)
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get(COMMENT_KEY) is not None:
                external_id = str(data[COMMENT_KEY])
                attributes = {k: data[k] for k in self.comment_attributes if k in data}
        return AccountRecord(
            account=role,
            user_name=role.removeprefix(self.prefix),
            enabled=bool(row.rolcanlogin),
            entitlements=frozenset(row.groups or ()),
            external_id=external_id,
            sessions=int(row.sessions),
            attributes=attributes,
        )

    def _row(self, connection: Connection, role: str) -> Row[Any] | None:
        query = self.db.sql(f"{_PG_SELECT} WHERE r.rolname = :role")
        return connection.execute(query, {"role": role}).first()

    def _target(self, connection: Connection, account: str) -> Row[Any]:
        """The role ``account`` (oid, name, comment) if it exists and Provisor may change it."""
        query = self.db.sql(_PG_TARGET)
        row = connection.execute(query, {"role": account, "prefix": self.prefix}).first()
        if row is None:
            raise NotFound(f"{self.name}: role {account} does not exist")
        if row.untouchable:
            raise PermanentError(
                f"{self.name}: role {account} is a superuser, a system role, the connector's "
                f"own login or outside role_prefix {self.prefix!r}: Provisor does not change it"
            )
        return row

    def _group(self, connection: Connection, entitlement: str) -> None:
        """Check that ``entitlement`` is a role that may be granted."""
        row = connection.execute(
            self.db.sql("SELECT rolsuper FROM pg_roles WHERE rolname = :role"),
            {"role": entitlement},
        ).first()
        if row is None:
            raise PermanentError(
                f"{self.name}: group role {entitlement!r} does not exist in the database; "
                "create it there or remove it from the policy"
            )
        if row.rolsuper:
            raise PermanentError(
                f"{self.name}: {entitlement!r} is a superuser role; Provisor does not grant "
                "membership in it (a member could SET ROLE to it)"
            )

    # --- reading -----------------------------------------------------------------------------

    def read(self, account: str) -> AccountRecord | None:
        with self.db.connect(f"read role {account}") as connection:
            row = self._row(connection, account)
        return self._record(row) if row is not None else None

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """The role carrying the identity id in its comment, else the role with the name."""
        role = self.role_name(spec.user_name)
        mine = json.dumps({COMMENT_KEY: spec.identity}, ensure_ascii=False)[:-1]
        query = self.db.sql(
            f"{_PG_SELECT} WHERE {_PG_MANAGEABLE} AND (r.rolname = :role "
            "OR d.description LIKE :more ESCAPE '!' OR d.description = :only)"
        )
        params = {
            "role": role,
            "prefix": self.prefix,
            "more": _like_prefix(mine + ", "),
            "only": mine + "}",
        }
        with self.db.connect(f"find role for {spec.user_name}") as connection:
            records = [self._record(row) for row in connection.execute(query, params)]
        records.sort(key=lambda r: (r.external_id != spec.identity, r.account != role))
        return records[0] if records else None

    def list_accounts(self) -> Iterator[AccountRecord]:
        """Login roles and roles Provisor created (even when disabled), in name order; with
        ``role_prefix`` only those whose name starts with it."""
        query = self.db.sql(
            f"{_PG_SELECT} WHERE {_PG_MANAGEABLE} AND r.rolname > CAST(:after AS name) "
            "AND (r.rolcanlogin OR d.description LIKE :marker ESCAPE '!') "
            "ORDER BY r.rolname LIMIT :page"
        )
        after = ""
        while True:
            params = {
                "after": after,
                "prefix": self.prefix,
                "marker": _like_prefix(COMMENT_START),
                "page": PAGE,
            }
            with self.db.connect("list roles") as connection:
                rows = connection.execute(query, params).all()
            for row in rows:
                yield self._record(row)
            if len(rows) < PAGE:
                return
            after = str(rows[-1].rolname)

    def _sessions(self, oid: int) -> int:
        # a new transaction each time: PostgreSQL keeps one view of the backends per transaction
        with self.db.connect("count sessions") as connection:
            count = connection.execute(
                self.db.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE usesysid = :oid "
                    "AND backend_type = 'client backend'"
                ),
                {"oid": oid},
            ).scalar_one()
        return int(count)

    # --- writing -----------------------------------------------------------------------------

    def create(self, spec: AccountSpec) -> str:
        role = self.role_name(spec.user_name)
        options = "LOGIN" if spec.enabled else "NOLOGIN"
        if self.connection_limit is not None:
            options += f" CONNECTION LIMIT {self.connection_limit:d}"
        with self.db.begin(f"create role {role}") as connection:
            quoted = self.db.ident(role)
            connection.execute(self.db.sql(f"CREATE ROLE {quoted} {options}"))
            comment = self.db.literal(self._comment(spec))
            connection.execute(self.db.sql(f"COMMENT ON ROLE {quoted} IS {comment}"))
        return role

    def update(self, account: str, spec: AccountSpec) -> str:
        """Rename the role when the user name changed; rewrite its comment."""
        role = self.role_name(spec.user_name)
        with self.db.begin(f"update role {account}") as connection:
            row = self._target(connection, account)
            if role != account:
                if self._row(connection, role) is not None:
                    raise Conflict(f"{self.name}: cannot rename {account}: role {role} exists")
                connection.execute(
                    self.db.sql(
                        f"ALTER ROLE {self.db.ident(account)} RENAME TO {self.db.ident(role)}"
                    )
                )
            comment = self._comment(spec)
            if comment != row.description or role != account:
                connection.execute(
                    self.db.sql(
                        f"COMMENT ON ROLE {self.db.ident(role)} IS {self.db.literal(comment)}"
                    )
                )
        return role

    def set_enabled(self, account: str, enabled: bool) -> None:
        verb = "LOGIN" if enabled else "NOLOGIN"
        with self.db.begin(f"set {verb} on {account}") as connection:
            self._target(connection, account)
            connection.execute(self.db.sql(f"ALTER ROLE {self.db.ident(account)} {verb}"))

    # GRANT of a membership the role has, and REVOKE of one it lacks, are notices, not errors

    def add_entitlement(self, account: str, entitlement: str) -> None:
        with self.db.begin(f"grant {entitlement} to {account}") as connection:
            self._target(connection, account)
            self._group(connection, entitlement)
            connection.execute(
                self.db.sql(f"GRANT {self.db.ident(entitlement)} TO {self.db.ident(account)}")
            )

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        with self.db.begin(f"revoke {entitlement} from {account}") as connection:
            self._target(connection, account)
            self._group(connection, entitlement)
            connection.execute(
                self.db.sql(f"REVOKE {self.db.ident(entitlement)} FROM {self.db.ident(account)}")
            )

    def revoke_sessions(self, account: str) -> None:
        with self.db.begin(f"end sessions of {account}") as connection:
            oid = int(self._target(connection, account).oid)
            ended = self._terminate(connection, oid)
        self._await_end(account, oid, ended)

    def _terminate(self, connection: Connection, oid: int) -> int:
        """Tell every backend of the role to end; how many there were."""
        waits = (self.db.engine.dialect.server_version_info or (0,)) >= (14,)
        # pg_terminate_backend(pid, timeout) waits for the backend to exit (PostgreSQL 14+)
        call = "pg_terminate_backend(pid, :ms)" if waits else "pg_terminate_backend(pid)"
        query = self.db.sql(
            f"SELECT pid, {call} AS ended FROM pg_stat_activity "
            "WHERE usesysid = :oid AND pid <> pg_backend_pid()"
        )
        params = {"oid": oid, "ms": int(self.session_wait * 1000)}
        return len(connection.execute(query, params).all())

    def _await_end(self, account: str, oid: int, ended: int) -> None:
        if ended and not _wait(self.session_wait, lambda: self._sessions(oid) == 0):
            raise RetryableError(
                f"{self.name}: sessions of {account} were told to end but are still open"
            )

    def delete(self, account: str) -> None:
        """Lock the role, end its sessions, then drop it (after reassigning what it owns in
        every listed database when ``on_delete`` is ``reassign``)."""
        with self.db.begin(f"delete role {account}") as connection:
            try:
                oid = int(self._target(connection, account).oid)
            except NotFound:
                return
            connection.execute(self.db.sql(f"ALTER ROLE {self.db.ident(account)} NOLOGIN"))
        role = self.db.ident(account)
        if self.on_delete == "reassign":
            self._act_as(account)
            heir = self.db.ident(self.reassign_to)
            for database in self.databases:
                engine = self.db.engine_for(database)
                with self.db.begin(f"reassign objects of {account} in {database}", engine) as c:
                    c.execute(self.db.sql(f"REASSIGN OWNED BY {role} TO {heir}"))
                    c.execute(self.db.sql(f"DROP OWNED BY {role}"))
        ended = 0
        try:
            with self.db.engine.begin() as connection:
                ended = self._terminate(connection, oid)
                connection.execute(self.db.sql(f"DROP ROLE IF EXISTS {role}"))
        except sa_exc.DBAPIError as exc:
            if error_code(exc) != "2BP01":  # dependent objects still exist
                raise self.db.error(f"drop role {account}", exc) from exc
            detail = getattr(getattr(exc.orig, "diag", None), "message_detail", None) or ""
            what = "; ".join(detail.splitlines()[:5])
            raise PermanentError(
                f"{self.name}: role {account} cannot be dropped: it owns objects or holds "
                f"privileges ({what or 'see the database log'}); move or drop them, or set "
                "connection.on_delete: reassign with reassign_to (and databases)"
            ) from None
        except sa_exc.SQLAlchemyError as exc:
            raise self.db.error(f"drop role {account}", exc) from exc
        self._await_end(account, oid, ended)

    def _act_as(self, account: str) -> None:
        """REASSIGN OWNED and DROP OWNED need the privileges of both the leaving role and the
        heir. Provisor's login takes membership in the leaving role (it is about to go, and the
        membership with it); the heir's privileges must have been given to it beforehand."""
        query = self.db.sql(
            "SELECT rolname::text AS rolname, pg_has_role(current_user, oid, 'USAGE') AS has, "
            "current_user::text AS me FROM pg_roles WHERE rolname IN (:role, :heir)"
        )
        with self.db.begin(f"take over {account} to reassign its objects") as connection:
            rows = {
                r.rolname: r
                for r in connection.execute(query, {"role": account, "heir": self.reassign_to})
            }
            heir = rows.get(self.reassign_to)
            if heir is None:
                raise PermanentError(
                    f"{self.name}: connection.reassign_to names role {self.reassign_to!r}, "
                    "which does not exist"
                )
            if not heir.has:
                raise PermanentError(
                    f"{self.name}: {heir.me} needs the privileges of {self.reassign_to} to hand "
                    f"it what {account} owns: GRANT {self.reassign_to} TO {heir.me}"
                )
            if account in rows and not rows[account].has:
                connection.execute(self.db.sql(f"GRANT {self.db.ident(account)} TO CURRENT_USER"))

    def close(self) -> None:
        self.db.close()


# --- MariaDB ---------------------------------------------------------------------------------

_MY_SELECT = """
SELECT u.User AS user, JSON_VALUE(g.Priv, '$.account_locked') AS locked
FROM mysql.user u JOIN mysql.global_priv g ON g.User = u.User AND g.Host = u.Host
"""
_MY_MANAGEABLE = (
    "u.Host = :host AND u.is_role = 'N' AND u.Super_priv = 'N' "
    "AND u.User NOT IN :reserved AND u.User <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) "
    "AND LEFT(u.User, :prefix_length) = :prefix"
)


class MysqlUsers(BaseConnector):
    """MariaDB users as accounts (``connection.mode: mysql-users``), each ``user@host`` with
    one ``host`` for the target (setting ``host``, default ``%``).

    Settings besides those of :class:`~provisor.connectors.sql.database.Database`: ``host``,
    ``user_prefix`` (put before every user name; only users with it are listed or touched),
    ``auth_plugin`` (create users ``IDENTIFIED VIA`` this plugin, e.g. ``pam``; by default a
    user gets a random password hash nobody knows), ``session_wait`` (seconds, default 5)."""

    Settings = MysqlUsersSettings
    settings: MysqlUsersSettings
    reads_entitlements = True  # role memberships / granted roles
    reads_sessions = True  # the server's own session list

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        given = self.settings
        self.db = Database(name, given, autocommit=True)
        if self.db.kind != "mysql":
            raise PermanentError(f"target {name}: mode mysql-users needs a mysql+pymysql:// URL")
        self.host = check_name(name, "host", given.host, max_chars=255)
        self.prefix = given.user_prefix
        self.auth_plugin = given.auth_plugin
        self.session_wait = given.session_wait
        self._checked = False

    def _check_server(self, connection: Connection) -> None:
        if not self._checked:
            if not getattr(connection.dialect, "is_mariadb", False):
                raise PermanentError(
                    f"{self.name}: mode mysql-users needs MariaDB 10.4 or later (roles and "
                    "account locks are read from MariaDB's own tables)"
                )
            self._checked = True

    def user_name(self, user_name: str) -> str:
        return check_name(
            self.name, "user name", self.prefix + user_name, max_chars=MARIADB_NAME_CHARS
        )

    def _account(self, user: str) -> str:
        return f"{self.db.ident(user)}@{self.db.ident(self.host)}"

    def _params(self, **more: Any) -> dict[str, Any]:
        return {
            "host": self.host,
            "reserved": MARIADB_RESERVED,
            "prefix": self.prefix,
            "prefix_length": len(self.prefix),
        } | more

    def _query(self, where: str, tail: str = "") -> Any:
        query = self.db.sql(f"{_MY_SELECT} WHERE {where} {tail}")
        if ":reserved" in where:
            query = query.bindparams(bindparam("reserved", expanding=True))
        return query

    def _records(self, connection: Connection, rows: Sequence[Row[Any]]) -> list[AccountRecord]:
        """Records for ``rows``, with their roles and sessions in two more queries."""
        users = [str(row.user) for row in rows]
        if not users:
            return []
        roles: dict[str, set[str]] = {}
        mapping = self.db.sql(
            "SELECT User AS user, Role AS role FROM mysql.roles_mapping "
            "WHERE Host = :host AND User IN :users"
        ).bindparams(bindparam("users", expanding=True))
        for user, role in connection.execute(mapping, {"host": self.host, "users": users}):
            roles.setdefault(str(user), set()).add(str(role))
        counts = self.db.sql(
            "SELECT USER AS user, COUNT(*) AS n FROM information_schema.PROCESSLIST "
            "WHERE USER IN :users GROUP BY USER"
        ).bindparams(bindparam("users", expanding=True))
        sessions = {str(u): int(n) for u, n in connection.execute(counts, {"users": users})}
        return [
            AccountRecord(
                account=user,
                user_name=user.removeprefix(self.prefix),
                enabled=str(row.locked).lower() not in ("1", "true"),
                entitlements=frozenset(roles.get(user, ())),
                external_id=None,
                sessions=sessions.get(user, 0),
            )
            for user, row in zip(users, rows, strict=True)
        ]

    def _row(self, connection: Connection, user: str, manageable: bool) -> Row[Any] | None:
        self._check_server(connection)
        where = "u.User = :user AND u.Host = :host AND u.is_role = 'N'"
        if manageable:
            where += f" AND {_MY_MANAGEABLE}"
        return connection.execute(self._query(where), self._params(user=user)).first()

    def _target(self, connection: Connection, account: str) -> None:
        """Check that the user exists and Provisor may change it."""
        self._check_server(connection)
        query = self.db.sql(
            f"SELECT NOT ({_MY_MANAGEABLE}) AS untouchable FROM mysql.user u "
            "WHERE u.User = :user AND u.Host = :host AND u.is_role = 'N'"
        ).bindparams(bindparam("reserved", expanding=True))
        row = connection.execute(query, self._params(user=account)).first()
        if row is None:
            raise NotFound(f"{self.name}: user {account}@{self.host} does not exist")
        if row.untouchable:
            raise PermanentError(
                f"{self.name}: user {account}@{self.host} is a superuser, a system user, the "
                f"connector's own login or outside user_prefix {self.prefix!r}: Provisor does "
                "not change it"
            )

    def _role(self, connection: Connection, entitlement: str) -> None:
        row = connection.execute(
            self.db.sql("SELECT Super_priv FROM mysql.user WHERE User = :role AND is_role = 'Y'"),
            {"role": entitlement},
        ).first()
        if row is None:
            raise PermanentError(
                f"{self.name}: role {entitlement!r} does not exist in the database; create it "
                "there or remove it from the policy"
            )
        if row.Super_priv == "Y":
            raise PermanentError(
                f"{self.name}: role {entitlement!r} holds SUPER; Provisor does not grant it"
            )

    def _granted(self, connection: Connection, account: str, entitlement: str) -> bool:
        row = connection.execute(
            self.db.sql(
                "SELECT 1 FROM mysql.roles_mapping WHERE User = :user AND Host = :host "
                "AND Role = :role"
            ),
            {"user": account, "host": self.host, "role": entitlement},
        ).first()
        return row is not None

    # --- reading -----------------------------------------------------------------------------

    def read(self, account: str) -> AccountRecord | None:
        with self.db.connect(f"read user {account}") as connection:
            row = self._row(connection, account, manageable=False)
            return self._records(connection, [row])[0] if row is not None else None

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """By user name: MariaDB users have nowhere to keep the identity id."""
        user = self.user_name(spec.user_name)
        with self.db.connect(f"find user {user}") as connection:
            row = self._row(connection, user, manageable=True)
            return self._records(connection, [row])[0] if row is not None else None

    def list_accounts(self) -> Iterator[AccountRecord]:
        """Every user at ``host`` (with ``user_prefix``, only those with it), in name order;
        never roles, superusers, system users or the connector's own login."""
        query = self._query(f"{_MY_MANAGEABLE} AND u.User > :after", "ORDER BY u.User LIMIT :n")
        after = ""
        while True:
            with self.db.connect("list users") as connection:
                self._check_server(connection)
                rows = connection.execute(query, self._params(after=after, n=PAGE)).all()
                records = self._records(connection, rows)
            yield from records
            if len(rows) < PAGE:
                return
            after = str(rows[-1].user)

    def _thread_ids(self, connection: Connection, account: str) -> list[int]:
        ids = connection.execute(
            self.db.sql(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = :user "
                "AND ID <> CONNECTION_ID()"
            ),
            {"user": account},
        ).scalars()
        return [int(i) for i in ids]

    # --- writing -----------------------------------------------------------------------------

    def create(self, spec: AccountSpec) -> str:
        user = self.user_name(spec.user_name)
        if self.auth_plugin:
            auth = f"IDENTIFIED VIA {self.auth_plugin}"
        else:
            # a valid hash of a password nobody knows: no one signs in until someone sets one
            auth = f"IDENTIFIED BY PASSWORD '*{secrets.token_hex(20).upper()}'"
        lock = "" if spec.enabled else " ACCOUNT LOCK"
        with self.db.connect(f"create user {user}") as connection:
            self._check_server(connection)
            connection.execute(self.db.sql(f"CREATE USER {self._account(user)} {auth}{lock}"))
        return user

    def update(self, account: str, spec: AccountSpec) -> str:
        """Rename the user when the user name changed (MariaDB users carry no attributes)."""
        user = self.user_name(spec.user_name)
        with self.db.connect(f"rename user {account}") as connection:
            self._target(connection, account)
            if user == account:
                return account
            if self._row(connection, user, manageable=False) is not None:
                raise Conflict(f"{self.name}: cannot rename {account}: user {user} exists")
            connection.execute(
                self.db.sql(f"RENAME USER {self._account(account)} TO {self._account(user)}")
            )
        return user

    def set_enabled(self, account: str, enabled: bool) -> None:
        verb = "UNLOCK" if enabled else "LOCK"
        with self.db.connect(f"{verb.lower()} user {account}") as connection:
            self._target(connection, account)
            connection.execute(self.db.sql(f"ALTER USER {self._account(account)} ACCOUNT {verb}"))

    def add_entitlement(self, account: str, entitlement: str) -> None:
        with self.db.connect(f"grant {entitlement} to {account}") as connection:
            self._target(connection, account)
            self._role(connection, entitlement)
            if not self._granted(connection, account, entitlement):
                connection.execute(
                    self.db.sql(f"GRANT {self.db.ident(entitlement)} TO {self._account(account)}")
                )

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        with self.db.connect(f"revoke {entitlement} from {account}") as connection:
            self._target(connection, account)
            self._role(connection, entitlement)
            if not self._granted(connection, account, entitlement):
                return
            try:
                connection.execute(
                    self.db.sql(
                        f"REVOKE {self.db.ident(entitlement)} FROM {self._account(account)}"
                    )
                )
            except sa_exc.DBAPIError as exc:
                if error_code(exc) != 1962:  # revoked meanwhile: not granted any more
                    raise

    def revoke_sessions(self, account: str) -> None:
        with self.db.connect(f"end sessions of {account}") as connection:
            self._target(connection, account)
            self._kill(connection, account)

    def _kill(self, connection: Connection, account: str) -> None:
        """Kill every connection of the user and wait until none is listed."""
        threads = self._thread_ids(connection, account)
        for thread in threads:
            try:
                connection.execute(self.db.sql(f"KILL CONNECTION {thread:d}"))
            except sa_exc.DBAPIError as exc:
                if error_code(exc) != 1094:  # unknown thread: it ended by itself
                    raise
        if threads and not _wait(
            self.session_wait, lambda: not self._thread_ids(connection, account)
        ):
            raise RetryableError(
                f"{self.name}: sessions of {account} were killed but are still listed"
            )

    def delete(self, account: str) -> None:
        """Drop the user, then end its sessions: once dropped nobody can sign in as it, but
        connections already open would stay open."""
        with self.db.connect(f"delete user {account}") as connection:
            try:
                self._target(connection, account)
            except NotFound:
                return
            connection.execute(self.db.sql(f"DROP USER IF EXISTS {self._account(account)}"))
            self._kill(connection, account)

    def close(self) -> None:
        self.db.close()


__all__ = ["MysqlUsers", "PostgresRoles"]
