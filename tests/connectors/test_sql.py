"""The SQL connectors against real databases: PostgreSQL (``postgres_url`` from conftest: the
server on 127.0.0.1:5432 or a throwaway cluster) and the MariaDB server on 127.0.0.1:3306
(``PROVISOR_TEST_MARIADB_URL`` to use another); SQLite files for the users-table mode.

Roles and users are cluster-wide, so every name made here starts with a prefix unique to this
test process (``pvt<random>``) and to the test; each test removes its own names, and the module
sweeps whatever is left with the process prefix when it ends, whatever the outcome. If MariaDB
does not answer, the MariaDB tests fail and say so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    text,
)
from sqlalchemy.engine import make_url

from provisor.connectors.base import (
    AccountSpec,
    Capability,
    Conflict,
    Connector,
    NotFound,
    PermanentError,
    RetryableError,
    Unsupported,
)
from provisor.connectors.sql import open_sql_connector
from provisor.connectors.sql.roles import MysqlUsers, PostgresRoles
from provisor.connectors.sql.table import UsersTable
from provisor.sandbox.sqlapp import ROLES, STATUS, app_schema, users_table_settings
from provisor.testing import ConnectorContract

RUN = f"pvt{uuid.uuid4().hex[:6]}"  # this test process's names all start with it
MARIADB_URL = os.environ.get("PROVISOR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")
ODD_NAMES = ["o'brien-x", 'say "hi"', "a:b c%d", "tick`tock", "MiXeD.case@example.com"]


def unique() -> str:
    return f"{RUN}{uuid.uuid4().hex[:6]}_"


def spec(user: str, identity: str = "E1", enabled: bool = True, **attributes: Any) -> AccountSpec:
    return AccountSpec(identity, user, {"name": "Ann Example", **attributes}, enabled)


def pg_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def my_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def run(connection: Any, statement: str) -> None:
    """Run a statement as written: both drivers read ``%`` as the start of a placeholder."""
    connection.exec_driver_sql(statement.replace("%", "%%"))


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_admin(postgres_server: str) -> Iterator[Engine]:
    """A superuser engine on the server; at the end, every role this process made is gone."""
    engine = create_engine(postgres_server, isolation_level="AUTOCOMMIT", pool_size=2)
    yield engine
    drop_pg_roles(engine, RUN)
    engine.dispose()


def drop_pg_roles(engine: Engine, prefix: str) -> None:
    """Drop every role whose name starts with ``prefix``, with what it owns in the engine's
    database (the test databases themselves are dropped by conftest)."""
    with engine.connect() as connection:
        roles = connection.execute(
            text("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, :p)"),
            {"p": prefix},
        ).scalars()
        roles = list(roles)
        if not roles:
            return
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE starts_with(usename, :p)"
            ),
            {"p": prefix},
        )
        for role in roles:
            with contextlib.suppress(Exception):
                run(connection, f"DROP OWNED BY {pg_quote(role)}")
        for role in roles:
            with contextlib.suppress(Exception):
                run(connection, f"DROP ROLE IF EXISTS {pg_quote(role)}")


@pytest.fixture
def pg_db(postgres_url: str, pg_admin: Engine) -> Iterator[Engine]:
    """A superuser engine on this test's own database."""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT", pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_prefix(pg_db: Engine) -> Iterator[str]:
    """A role prefix for this test; its roles are dropped afterwards."""
    prefix = unique()
    yield prefix
    drop_pg_roles(pg_db, prefix)


def pg_connector(url: str, prefix: str, **settings: Any) -> PostgresRoles:
    connector = open_sql_connector(
        "db", {"mode": "postgres-roles", "url": url, "role_prefix": prefix, **settings}
    )
    assert isinstance(connector, PostgresRoles)
    return connector


@pytest.fixture
def pg(postgres_url: str, pg_prefix: str) -> Iterator[PostgresRoles]:
    connector = pg_connector(postgres_url, pg_prefix)
    yield connector
    connector.close()


def pg_groups(engine: Engine, *names: str) -> None:
    with engine.connect() as connection:
        for name in names:
            run(connection, f"CREATE ROLE {pg_quote(name)}")


def pg_login(url: str, role: str, password: str) -> psycopg.Connection[Any]:
    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        dbname=parsed.database,
        user=role,
        password=password,
        connect_timeout=5,
    )


def pg_set_password(engine: Engine, role: str) -> str:
    password = secrets.token_urlsafe(12)
    with engine.connect() as connection:
        run(connection, f"ALTER ROLE {pg_quote(role)} PASSWORD '{password}'")
    return password


def test_pg_leaver_with_open_session_is_cut_off(
    pg: PostgresRoles, pg_db: Engine, postgres_url: str, pg_prefix: str
) -> None:
    account = pg.create(spec("leaver@example.com"))
    password = pg_set_password(pg_db, account)
    session = pg_login(postgres_url, account, password)
    try:
        assert session.execute("SELECT current_user").fetchone() == (account,)
        record = pg.read(account)
        assert record is not None and record.sessions == 1 and record.enabled
        pg.set_enabled(account, False)
        pg.revoke_sessions(account)
        record = pg.read(account)
        assert record is not None and not record.enabled and record.sessions == 0
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")  # the open session was ended
    finally:
        session.close()
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        pg_login(postgres_url, account, password).close()
    pg.set_enabled(account, True)  # and back: the same password works again
    pg_login(postgres_url, account, password).close()


def test_pg_entitlements_grant_and_revoke(pg: PostgresRoles, pg_db: Engine, pg_prefix: str) -> None:
    readers, writers = f"{pg_prefix}readers", f"{pg_prefix}writers"
    pg_groups(pg_db, readers, writers)
    account = pg.create(spec("ent@example.com"))
    pg.add_entitlement(account, readers)
    pg.add_entitlement(account, writers)
    pg.add_entitlement(account, readers)
    record = pg.read(account)
    assert record is not None and record.entitlements == {readers, writers}
    with pg_db.connect() as connection:
        member = connection.execute(
            text("SELECT pg_has_role(:r, :g, 'MEMBER')"), {"r": account, "g": readers}
        ).scalar()
    assert member is True
    pg.remove_entitlement(account, readers)
    pg.remove_entitlement(account, readers)
    assert pg.read(account).entitlements == {writers}  # type: ignore[union-attr]
    with pytest.raises(PermanentError, match="no_such_group"):
        pg.add_entitlement(account, f"{pg_prefix}no_such_group")
    with pytest.raises(PermanentError, match="superuser"):
        pg.add_entitlement(account, "postgres")
    with pytest.raises(NotFound):
        pg.add_entitlement(f"{pg_prefix}nobody", writers)


def test_pg_delete_policies(
    pg_admin: Engine, pg_db: Engine, postgres_url: str, pg_prefix: str
) -> None:
    """``drop`` refuses a role that owns a table; ``reassign`` hands what it owns, in every
    listed database, to ``reassign_to`` and then drops it."""
    heir = f"{pg_prefix}heir"
    pg_groups(pg_db, heir)
    second = f"{pg_prefix}second"
    with pg_admin.connect() as connection:
        run(connection, f"CREATE DATABASE {pg_quote(second)}")
    second_url = make_url(postgres_url).set(database=second)
    other_db = create_engine(second_url, isolation_level="AUTOCOMMIT", pool_size=1)
    here = make_url(postgres_url).database
    dropper = pg_connector(postgres_url, pg_prefix)
    reassigner = pg_connector(
        postgres_url, pg_prefix, on_delete="reassign", reassign_to=heir, databases=[here, second]
    )
    try:
        account = dropper.create(spec("owner@example.com"))
        for engine in (pg_db, other_db):
            with engine.connect() as connection:
                run(connection, "CREATE TABLE ledger (id int)")
                run(connection, f"ALTER TABLE ledger OWNER TO {pg_quote(account)}")
        with pg_db.connect() as connection:
            run(connection, "CREATE TABLE notes (id int)")
            run(connection, f"GRANT SELECT ON notes TO {pg_quote(account)}")
        with pytest.raises(PermanentError, match="on_delete: reassign") as refused:
            dropper.delete(account)
        assert "ledger" in str(refused.value)
        record = dropper.read(account)
        assert record is not None and not record.enabled  # locked, though still there
        reassigner.delete(account)
        assert reassigner.read(account) is None
        for engine in (pg_db, other_db):
            with engine.connect() as connection:
                owner = connection.execute(
                    text("SELECT tableowner FROM pg_tables WHERE tablename = 'ledger'")
                ).scalar()
            assert owner == heir
        reassigner.delete(account)  # already gone
    finally:
        dropper.close()
        reassigner.close()
        other_db.dispose()
        with pg_admin.connect() as connection:
            run(connection, f"DROP DATABASE IF EXISTS {pg_quote(second)} WITH (FORCE)")
    with pytest.raises(PermanentError, match="reassign_to"):
        pg_connector(postgres_url, pg_prefix, on_delete="reassign")


def test_pg_least_privilege_login(
    pg_admin: Engine, pg_db: Engine, postgres_url: str, pg_prefix: str
) -> None:
    """The privileges the documentation asks for are enough: CREATEROLE, pg_signal_backend,
    and (for ``on_delete: reassign``) the privileges of the heir."""
    me, heir, group = f"{pg_prefix}provisor", f"{pg_prefix}heir", f"{pg_prefix}readers"
    with pg_admin.connect() as connection:
        run(connection, f"CREATE ROLE {pg_quote(me)} LOGIN CREATEROLE PASSWORD 'pw'")
        run(connection, f"GRANT pg_signal_backend TO {pg_quote(me)}")
    pg_groups(pg_db, heir, group)
    url = make_url(postgres_url).set(username=me).render_as_string(hide_password=False)
    connector = pg_connector(url, pg_prefix, password="pw", on_delete="reassign", reassign_to=heir)
    try:
        account = connector.create(spec("ann@example.com"))
        connector.add_entitlement(account, group)
        session = pg_login(postgres_url, account, pg_set_password(pg_db, account))
        connector.set_enabled(account, False)
        connector.revoke_sessions(account)
        session.close()
        renamed = connector.update(account, spec("ann.b@example.com"))
        with pg_db.connect() as connection:
            run(connection, "CREATE TABLE ledger (id int)")
            run(connection, f"ALTER TABLE ledger OWNER TO {pg_quote(renamed)}")
        with pytest.raises(PermanentError, match=f"GRANT {heir} TO {me}"):
            connector.delete(renamed)
        with pg_admin.connect() as connection:
            run(connection, f"GRANT {pg_quote(heir)} TO {pg_quote(me)}")
        connector.delete(renamed)
        assert connector.read(renamed) is None
        with pytest.raises(PermanentError, match="does not change it"):
            connector.set_enabled(me, False)  # never its own login
    finally:
        connector.close()


def test_pg_odd_names_are_quoted(pg: PostgresRoles, pg_db: Engine, pg_prefix: str) -> None:
    group = f"{pg_prefix}gr'ou\"p:x"
    pg_groups(pg_db, group)
    for n, name in enumerate(ODD_NAMES):
        identity = f"E'{n}\"%"
        account = pg.create(spec(name, identity, name="Ann 'Quote' \\ Back"))
        assert account == pg_prefix + name
        pg.add_entitlement(account, group)
        record = pg.find(spec(name, identity))
        assert record is not None and record.account == account
        assert record.external_id == identity and record.entitlements == {group}
        assert record.attributes == {"name": "Ann 'Quote' \\ Back"}
        renamed = pg.update(account, spec(f"{name}'2", identity))
        assert pg.read(renamed) is not None and pg.read(account) is None
        pg.delete(renamed)
        assert pg.read(renamed) is None
    with pytest.raises(PermanentError, match="63 bytes"):
        pg.create(spec("x" * 64))


def test_pg_correlation_adoption_and_rename(
    pg: PostgresRoles, pg_db: Engine, pg_prefix: str
) -> None:
    with pg_db.connect() as connection:
        run(connection, f"CREATE ROLE {pg_quote(pg_prefix + 'old@example.com')} LOGIN")
    found = pg.find(spec("old@example.com", "E7"))
    assert found is not None and found.external_id is None  # by name only
    account = pg.update(found.account, spec("old@example.com", "E7"))
    assert pg.read(account).external_id == "E7"  # type: ignore[union-attr]
    # after a rename the identity id still finds it
    renamed = pg.update(account, spec("new@example.com", "E7", name="Ann Renamed"))
    assert renamed == pg_prefix + "new@example.com"
    found = pg.find(spec("whatever@example.com", "E7"))
    assert found is not None and found.account == renamed
    assert found.attributes == {"name": "Ann Renamed"}
    other = pg.create(spec("other@example.com", "E8"))
    with pytest.raises(Conflict):
        pg.create(spec("other@example.com", "E9"))
    with pytest.raises(Conflict):
        pg.update(renamed, spec("other@example.com", "E7"))
    assert pg.find(spec("nobody@example.com", "E404")) is None
    pg.delete(other)


def test_pg_listing_scope(pg: PostgresRoles, pg_db: Engine, pg_prefix: str) -> None:
    """Login roles and Provisor's own (even locked) are listed; group roles are not; with no
    prefix, superusers and system roles never are."""
    pg.create(spec("on@example.com"))
    pg.create(spec("off@example.com", "E2", enabled=False))
    with pg_db.connect() as connection:
        run(connection, f"CREATE ROLE {pg_quote(pg_prefix + 'group')}")
        run(connection, f"CREATE ROLE {pg_quote(pg_prefix + 'other')} LOGIN")
        run(connection, f"CREATE ROLE {pg_quote(pg_prefix + 'boss')} SUPERUSER LOGIN")
    listed = {r.user_name: r for r in pg.list_accounts()}
    assert set(listed) == {"on@example.com", "off@example.com", "other"}
    assert not listed["off@example.com"].enabled and listed["other"].external_id is None
    with pytest.raises(PermanentError, match="superuser"):
        pg.set_enabled(pg_prefix + "boss", False)
    everyone = pg_connector(str(pg_db.url.render_as_string(hide_password=False)), "")
    try:
        names = {r.account for r in everyone.list_accounts()}
        assert pg_prefix + "other" in names
        assert not names & {"postgres", pg_prefix + "boss", pg_prefix + "group"}
        assert not any(n.startswith("pg_") for n in names)
        with pytest.raises(PermanentError, match="does not change it"):
            everyone.delete("postgres")
        assert everyone.find(spec("postgres", f"{pg_prefix}nobody")) is None
    finally:
        everyone.close()


def test_pg_settings_and_failures(postgres_url: str, pg_prefix: str) -> None:
    with pytest.raises(PermanentError, match=r"connection\.mode must be one of"):
        open_sql_connector("db", {"url": postgres_url})
    with pytest.raises(PermanentError, match=r"connection\.url is required"):
        open_sql_connector("db", {"mode": "postgres-roles"})
    with pytest.raises(PermanentError, match="not an SQLAlchemy") as bad:
        open_sql_connector("db", {"mode": "postgres-roles", "url": "nonsense:hunter2@x"})
    assert "hunter2" not in str(bad.value)
    with pytest.raises(PermanentError, match="postgresql"):
        open_sql_connector("db", {"mode": "postgres-roles", "url": MARIADB_URL})
    # nothing listens there: worth retrying, and the password is not in the message
    closed = make_url(postgres_url).set(port=1, password="hunter2")
    connector = pg_connector(closed.render_as_string(hide_password=False), pg_prefix, timeout=2)
    with pytest.raises(RetryableError) as down:
        connector.read("anyone")
    assert "hunter2" not in str(down.value)
    connector.close()
    # a password given as its own setting (a secret reference in the policy) is used
    connector = pg_connector(postgres_url, pg_prefix, password="unused-with-trust")
    assert connector.read(f"{pg_prefix}nobody") is None
    connector.close()


# --- MariaDB ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_admin() -> Iterator[Engine]:
    """Root on the MariaDB server; every user, role and database this process made is dropped
    at the end."""
    engine = create_engine(MARIADB_URL, isolation_level="AUTOCOMMIT", pool_size=2)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SELECT VERSION()")).scalar()
    except Exception as exc:
        pytest.fail(
            f"MariaDB does not answer at {make_url(MARIADB_URL)!r} ({exc}); the SQL connector "
            "tests need it (set PROVISOR_TEST_MARIADB_URL to use another server)"
        )
    assert "MariaDB" in str(version), f"{version} is not MariaDB"
    yield engine
    drop_my_names(engine, RUN)
    engine.dispose()


def drop_my_names(engine: Engine, prefix: str) -> None:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT User, Host FROM mysql.global_priv WHERE LEFT(User, :n) = :p"),
            {"n": len(prefix), "p": prefix},
        ).all()
        for thread in connection.execute(
            text("SELECT ID FROM information_schema.PROCESSLIST WHERE LEFT(USER, :n) = :p"),
            {"n": len(prefix), "p": prefix},
        ).scalars():
            with contextlib.suppress(Exception):
                run(connection, f"KILL CONNECTION {int(thread)}")
        for user, host in rows:
            with contextlib.suppress(Exception):
                if host:
                    run(connection, f"DROP USER {my_quote(user)}@{my_quote(host)}")
                else:
                    run(connection, f"DROP ROLE {my_quote(user)}")
        for database in connection.execute(
            text(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                "WHERE LEFT(SCHEMA_NAME, :n) = :p"
            ),
            {"n": len(prefix), "p": prefix},
        ).scalars():
            run(connection, f"DROP DATABASE IF EXISTS {my_quote(database)}")


@pytest.fixture
def my_prefix(my_admin: Engine) -> Iterator[str]:
    prefix = unique()
    yield prefix
    drop_my_names(my_admin, prefix)


def my_connector(prefix: str, **settings: Any) -> MysqlUsers:
    connector = open_sql_connector(
        "db", {"mode": "mysql-users", "url": MARIADB_URL, "user_prefix": prefix, **settings}
    )
    assert isinstance(connector, MysqlUsers)
    return connector


@pytest.fixture
def my(my_prefix: str) -> Iterator[MysqlUsers]:
    connector = my_connector(my_prefix)
    yield connector
    connector.close()


def my_roles(engine: Engine, *names: str) -> None:
    with engine.connect() as connection:
        for name in names:
            run(connection, f"CREATE ROLE {my_quote(name)}")


def my_set_password(engine: Engine, user: str) -> str:
    password = secrets.token_urlsafe(12)
    with engine.connect() as connection:
        run(connection, f"SET PASSWORD FOR {my_quote(user)}@'%' = PASSWORD('{password}')")
    return password


def my_login(user: str, password: str) -> pymysql.Connection[Any]:
    parsed = make_url(MARIADB_URL)
    return pymysql.connect(
        host=parsed.host, port=parsed.port or 3306, user=user, password=password, connect_timeout=5
    )


def test_mariadb_leaver_with_open_session_is_cut_off(my: MysqlUsers, my_admin: Engine) -> None:
    account = my.create(spec("leaver@example.com"))
    password = my_set_password(my_admin, account)
    session = my_login(account, password)
    try:
        with session.cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER()")
            assert cursor.fetchone() == (f"{account}@%",)
        assert my.read(account).sessions == 1  # type: ignore[union-attr]
        my.set_enabled(account, False)
        my.revoke_sessions(account)
        record = my.read(account)
        assert record is not None and not record.enabled and record.sessions == 0
        with pytest.raises(pymysql.err.OperationalError), session.cursor() as cursor:
            cursor.execute("SELECT 1")  # the killed connection is gone
    finally:
        with contextlib.suppress(Exception):
            session.close()
    with pytest.raises(pymysql.err.OperationalError, match="locked"):
        my_login(account, password).close()
    my.set_enabled(account, True)
    my_login(account, password).close()


def test_mariadb_entitlements_and_delete_with_session(
    my: MysqlUsers, my_admin: Engine, my_prefix: str
) -> None:
    dev, ops = f"{my_prefix}dev", f"{my_prefix}ops"
    my_roles(my_admin, dev, ops)
    account = my.create(spec("ent@example.com"))
    my.add_entitlement(account, dev)
    my.add_entitlement(account, ops)
    my.add_entitlement(account, dev)
    assert my.read(account).entitlements == {dev, ops}  # type: ignore[union-attr]
    my.remove_entitlement(account, dev)
    my.remove_entitlement(account, dev)
    assert my.read(account).entitlements == {ops}  # type: ignore[union-attr]
    with pytest.raises(PermanentError, match="nope"):
        my.add_entitlement(account, f"{my_prefix}nope")
    with pytest.raises(NotFound):
        my.set_enabled(f"{my_prefix}nobody", False)
    # deleting ends the user's connections too: a dropped user's sessions would stay open
    session = my_login(account, my_set_password(my_admin, account))
    my.delete(account)
    assert my.read(account) is None
    with pytest.raises(pymysql.err.OperationalError), session.cursor() as cursor:
        cursor.execute("SELECT 1")
    my.delete(account)


def test_mariadb_names_rename_and_scope(my: MysqlUsers, my_admin: Engine, my_prefix: str) -> None:
    role = f"{my_prefix}r'o`le:%"
    my_roles(my_admin, role)
    for name in ODD_NAMES:
        account = my.create(spec(name))
        assert account == my_prefix + name
        my.add_entitlement(account, role)
        found = my.find(spec(name))
        assert found is not None and found.account == account and found.external_id is None
        renamed = my.update(account, spec(f"{name}_2"))
        assert my.read(account) is None
        assert my.read(renamed).entitlements == {role}  # type: ignore[union-attr]
        my.delete(renamed)
    locked = my.create(spec("locked@example.com", enabled=False))
    assert not my.read(locked).enabled  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        my.create(spec("locked@example.com"))
    other = my.create(spec("other@example.com"))
    with pytest.raises(Conflict):
        my.update(locked, spec("other@example.com"))
    assert {r.account for r in my.list_accounts()} == {locked, other}
    boss = f"{my_prefix}boss"
    with my_admin.connect() as connection:
        run(connection, f"CREATE USER {my_quote(boss)}@'%'")
        run(connection, f"GRANT ALL PRIVILEGES ON *.* TO {my_quote(boss)}@'%'")
    assert {r.account for r in my.list_accounts()} == {locked, other}
    with pytest.raises(PermanentError, match="superuser"):
        my.delete(boss)
    local = my_connector("", host="127.0.0.1")  # where root is
    try:
        names = {r.account for r in local.list_accounts()}
        assert not names & {"root", "mariadb.sys", role}
        with pytest.raises(PermanentError, match="does not change it"):
            local.set_enabled("root", False)
    finally:
        local.close()
    with pytest.raises(PermanentError, match="128 characters"):
        my.create(spec("x" * 129))


def test_mariadb_least_privilege_login(my_admin: Engine, my_prefix: str) -> None:
    """The privileges the documentation asks for are enough."""
    me, role = f"{my_prefix}provisor", f"{my_prefix}dev"
    my_roles(my_admin, role)
    with my_admin.connect() as connection:
        run(connection, f"CREATE USER {my_quote(me)}@'%' IDENTIFIED BY 'pw'")
        run(
            connection, f"GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO {my_quote(me)}@'%'"
        )
        for table in ("global_priv", "user", "roles_mapping"):
            run(connection, f"GRANT SELECT ON mysql.{table} TO {my_quote(me)}@'%'")
        run(connection, f"GRANT {my_quote(role)} TO {my_quote(me)}@'%' WITH ADMIN OPTION")
    url = make_url(MARIADB_URL).set(username=me).render_as_string(hide_password=False)
    connector = my_connector(my_prefix, url=url, password="pw")
    try:
        account = connector.create(spec("ann@example.com"))
        connector.add_entitlement(account, role)
        session = my_login(account, my_set_password(my_admin, account))
        assert connector.read(account).sessions == 1  # type: ignore[union-attr]
        connector.set_enabled(account, False)
        connector.revoke_sessions(account)
        with contextlib.suppress(Exception):
            session.close()
        connector.remove_entitlement(account, role)
        renamed = connector.update(account, spec("ann.b@example.com"))
        assert {r.account for r in connector.list_accounts()} == {renamed}
        connector.delete(renamed)
        assert connector.read(renamed) is None
    finally:
        connector.close()


# --- users-table -----------------------------------------------------------------------------


def table_settings(url: str, *, name_is_key: bool = False) -> dict[str, Any]:
    return users_table_settings(url, name_is_key=name_is_key)


def open_table(url: str, *, name_is_key: bool = False) -> UsersTable:
    connector = open_sql_connector("app", table_settings(url, name_is_key=name_is_key))
    assert isinstance(connector, UsersTable)
    return connector


def session_rows(engine: Engine, account: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM sessions WHERE account_id = :a"), {"a": account}
            ).scalar_one()
        )


def table_lifecycle(url: str, *, name_is_key: bool = False) -> None:
    engine = create_engine(url)
    app_schema(engine, name_is_key=name_is_key)
    connector = open_table(url, name_is_key=name_is_key)
    try:
        assert connector.capabilities() == frozenset(Capability)
        ann = spec("ann@example.com", "E1", email="ann@example.com", title="Engineer")
        account = connector.create(ann)
        record = connector.read(account)
        assert record is not None and record.enabled and record.external_id == "E1"
        assert record.user_name == "ann@example.com" and record.sessions == 0
        assert record.attributes == {
            "name": "Ann Example",
            "email": "ann@example.com",
            "title": "Engineer",
        }
        with engine.connect() as connection:
            tenant = connection.execute(text("SELECT tenant FROM accounts")).scalar()
        assert tenant == 7
        with pytest.raises(Conflict):
            connector.create(spec("ann@example.com", "E2"))
        connector.add_entitlement(account, "viewer")
        connector.add_entitlement(account, "editor")
        connector.add_entitlement(account, "viewer")
        connector.remove_entitlement(account, "editor")
        connector.remove_entitlement(account, "editor")
        assert connector.read(account).entitlements == {"viewer"}  # type: ignore[union-attr]
        with pytest.raises(PermanentError, match="admin"):
            connector.add_entitlement(account, "admin")
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO sessions (account_id) VALUES (:a), (:a)"),
                {"a": int(account) if not name_is_key else account},
            )
        assert connector.read(account).sessions == 2  # type: ignore[union-attr]
        connector.set_enabled(account, False)
        connector.revoke_sessions(account)
        record = connector.read(account)
        assert record is not None and not record.enabled and record.sessions == 0
        assert session_rows(engine, account) == 0
        # a new user name and title; the identity lost its email
        moved = spec("ann.b@example.com", "E1", title="Manager")
        renamed = connector.update(account, moved)
        assert renamed == ("ann.b@example.com" if name_is_key else account)
        record = connector.read(renamed)
        assert record is not None and record.user_name == "ann.b@example.com"
        assert record.attributes == {"name": "Ann Example", "title": "Manager"}
        assert record.entitlements == {"viewer"} and not record.enabled
        found = connector.find(spec("someone.else@example.com", "E1"))
        assert found is not None and found.account == renamed
        locked = connector.create(spec("bob@example.com", "E2", enabled=False))
        assert not connector.read(locked).enabled  # type: ignore[union-attr]
        listed = [r.user_name for r in connector.list_accounts()]
        assert listed == ["ann.b@example.com", "bob@example.com"]  # in key order
        connector.delete(renamed)
        connector.delete(renamed)
        assert connector.read(renamed) is None
        with pytest.raises(NotFound):
            connector.set_enabled(renamed, True)
        with engine.connect() as connection:
            left = connection.execute(text("SELECT count(*) FROM account_roles")).scalar()
        assert left == 0
    finally:
        connector.close()
        engine.dispose()


def test_users_table_on_sqlite(tmp_path: Path) -> None:
    table_lifecycle(f"sqlite:///{tmp_path / 'app.db'}")


def test_users_table_on_sqlite_with_the_name_as_key(tmp_path: Path) -> None:
    table_lifecycle(f"sqlite:///{tmp_path / 'app.db'}", name_is_key=True)


def test_users_table_on_postgres(postgres_url: str) -> None:
    table_lifecycle(postgres_url)


def test_users_table_on_postgres_with_the_name_as_key(postgres_url: str) -> None:
    """The rename moves the row: memberships follow despite the foreign key."""
    table_lifecycle(postgres_url, name_is_key=True)


@pytest.fixture
def my_database(my_admin: Engine, my_prefix: str) -> str:
    name = f"{my_prefix}app"
    with my_admin.connect() as connection:
        run(connection, f"CREATE DATABASE {my_quote(name)}")
    return make_url(MARIADB_URL).set(database=name).render_as_string(hide_password=False)


def test_users_table_on_mariadb(my_database: str) -> None:
    table_lifecycle(my_database)


def test_users_table_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    app_schema(engine)
    engine.dispose()
    with pytest.raises(PermanentError, match="user_name_column"):
        open_sql_connector("app", {"mode": "users-table", "url": url, "table": "accounts"})
    with pytest.raises(PermanentError, match="membership_account_column"):
        open_sql_connector("app", {**table_settings(url), "membership_account_column": None})
    bad_table = open_sql_connector("app", {**table_settings(url), "table": "people"})
    with pytest.raises(PermanentError, match="table 'people' does not exist"):
        bad_table.read("1")
    bad_column = open_sql_connector("app", {**table_settings(url), "columns": {"dept": "x"}})
    with pytest.raises(PermanentError, match="no column 'dept'"):
        bad_column.capabilities()
    # the least: a table with a key and a user name; no sessions, no flag, free-text roles
    minimal = open_sql_connector(
        "app",
        {
            "mode": "users-table",
            "url": url,
            "table": "accounts",
            "user_name_column": "login",
            "defaults": {"status": "active", "tenant": 1},
        },
    )
    assert minimal.capabilities() == {
        Capability.READ,
        Capability.LIST,
        Capability.CREATE,
        Capability.UPDATE,
        Capability.DELETE,
    }
    account = minimal.create(spec("min@example.com"))
    record = minimal.read(account)
    assert record is not None and record.sessions is None and record.external_id is None
    with pytest.raises(Unsupported):
        minimal.revoke_sessions(account)
    with pytest.raises(Unsupported):
        minimal.set_enabled(account, False)
    assert minimal.read("not-a-number") is None
    minimal.close()


def test_users_table_entitlement_sources(tmp_path: Path) -> None:
    """Membership rows holding names (any name goes), or ids of a table named in the settings
    without a foreign key to follow."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    app_schema(engine)
    with engine.begin() as connection:
        run(connection, "CREATE TABLE tags (account_id INTEGER, tag TEXT)")
        run(connection, "CREATE TABLE teams (code INTEGER PRIMARY KEY, label TEXT)")
        run(connection, "CREATE TABLE account_teams (account_id INTEGER, team INTEGER)")
        run(connection, "INSERT INTO teams VALUES (10, 'red'), (20, 'blue')")
    engine.dispose()
    base = {**table_settings(url), "sessions_table": None, "sessions_account_column": None}
    free = open_sql_connector(
        "app",
        {
            **base,
            "membership_table": "tags",
            "membership_entitlement_column": "tag",
            "entitlement_name_column": None,
        },
    )
    teams = open_sql_connector(
        "app",
        {
            **base,
            "membership_table": "account_teams",
            "membership_entitlement_column": "team",
            "entitlement_table": "teams",
            "entitlement_name_column": "label",
            "entitlement_key_column": "code",
        },
    )
    try:
        account = free.create(spec("ann@example.com"))
        free.add_entitlement(account, "anything-at-all")
        assert free.read(account).entitlements == {"anything-at-all"}  # type: ignore[union-attr]
        teams.add_entitlement(account, "blue")
        assert teams.read(account).entitlements == {"blue"}  # type: ignore[union-attr]
        with pytest.raises(PermanentError, match="'green' is not defined in table teams"):
            teams.add_entitlement(account, "green")
        teams.remove_entitlement(account, "blue")
        assert teams.read(account).entitlements == frozenset()  # type: ignore[union-attr]
        assert teams.read(account).sessions is None  # type: ignore[union-attr]
    finally:
        free.close()
        teams.close()


# --- the connector contract ------------------------------------------------------------------


class TestContractPostgresRoles(ConnectorContract):
    """The shared contract with PostgreSQL roles."""

    @pytest.fixture
    def connector(self, postgres_url: str, pg_prefix: str) -> Iterator[Connector]:
        connector = pg_connector(postgres_url, pg_prefix)
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self, pg_db: Engine, pg_prefix: str) -> tuple[str, str]:
        names = (f"{pg_prefix}dev", f"{pg_prefix}ops")
        pg_groups(pg_db, *names)
        return names

    @pytest.fixture
    def open_session(
        self, pg_db: Engine, postgres_url: str
    ) -> Iterator[Callable[[str, AccountSpec], Callable[[], None]]]:
        opened: list[psycopg.Connection[Any]] = []

        def open_one(account: str, spec: AccountSpec) -> Callable[[], None]:
            session = pg_login(postgres_url, account, pg_set_password(pg_db, account))
            opened.append(session)
            return session.close

        yield open_one
        for session in opened:
            session.close()

    @pytest.fixture
    def seed_accounts(self) -> Callable[[Connector, list[AccountSpec]], None]:
        def seed(connector: Connector, specs: list[AccountSpec]) -> None:
            assert isinstance(connector, PostgresRoles)
            with connector.db.engine.begin() as connection:  # one transaction for them all
                for one in specs:
                    role = pg_quote(connector.role_name(one.user_name))
                    run(connection, f"CREATE ROLE {role} LOGIN")
                    comment = connector._comment(one).replace("'", "''")
                    run(connection, f"COMMENT ON ROLE {role} IS '{comment}'")

        return seed


class TestContractMysqlUsers(ConnectorContract):
    """The shared contract with MariaDB users. They carry no attributes (MariaDB 10.11 has no
    user comment), so ``update`` is a rename only."""

    maps_attributes = False

    @pytest.fixture
    def connector(self, my_prefix: str) -> Iterator[Connector]:
        connector = my_connector(my_prefix)
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self, my_admin: Engine, my_prefix: str) -> tuple[str, str]:
        names = (f"{my_prefix}dev", f"{my_prefix}ops")
        my_roles(my_admin, *names)
        return names

    @pytest.fixture
    def open_session(
        self, my_admin: Engine
    ) -> Iterator[Callable[[str, AccountSpec], Callable[[], None]]]:
        opened: list[pymysql.Connection[Any]] = []

        def open_one(account: str, spec: AccountSpec) -> Callable[[], None]:
            session = my_login(account, my_set_password(my_admin, account))
            opened.append(session)

            def close() -> None:
                with contextlib.suppress(Exception):  # killed already
                    session.close()

            return close

        yield open_one
        for session in opened:
            with contextlib.suppress(Exception):
                session.close()

    @pytest.fixture
    def seed_accounts(self) -> Callable[[Connector, list[AccountSpec]], None]:
        def seed(connector: Connector, specs: list[AccountSpec]) -> None:
            assert isinstance(connector, MysqlUsers)
            users = ", ".join(
                f"{my_quote(connector.user_name(one.user_name))}@'%'" for one in specs
            )
            with connector.db.engine.connect() as connection:
                run(connection, f"CREATE USER {users}")

        return seed


class TestContractUsersTable(ConnectorContract):
    """The shared contract with an application's tables in SQLite."""

    @pytest.fixture
    def database(self, tmp_path: Path) -> Iterator[Engine]:
        # in memory-backed storage where there is some: thousands of one-row transactions,
        # each synced to disk, would make the paged-list test slow for nothing it checks
        shm = Path("/dev/shm")
        folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
        engine = create_engine(f"sqlite:///{folder / 'app.db'}")
        app_schema(engine)
        yield engine
        engine.dispose()
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)

    @pytest.fixture
    def connector(self, database: Engine) -> Iterator[Connector]:
        connector = open_table(database.url.render_as_string(hide_password=False))
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self) -> tuple[str, str]:
        return ("viewer", "editor")

    @pytest.fixture
    def open_session(self, database: Engine) -> Callable[[str, AccountSpec], Callable[[], None]]:
        def open_one(account: str, spec: AccountSpec) -> Callable[[], None]:
            with database.begin() as connection:
                connection.execute(
                    text("INSERT INTO sessions (account_id) VALUES (:a)"), {"a": int(account)}
                )

            def close() -> None:
                with database.begin() as connection:
                    connection.execute(
                        text("DELETE FROM sessions WHERE account_id = :a"), {"a": int(account)}
                    )

            return close

        return open_one

    @pytest.fixture
    def seed_accounts(self) -> Callable[[Connector, list[AccountSpec]], None]:
        def seed(connector: Connector, specs: list[AccountSpec]) -> None:
            assert isinstance(connector, UsersTable)
            rows = [
                {
                    "login": one.user_name,
                    "identity": one.identity,
                    "full_name": one.attributes.get("name"),
                    "status": "active",
                    "tenant": 7,
                }
                for one in specs
            ]
            with connector.db.engine.begin() as connection:
                connection.execute(connector.schema.accounts.insert(), rows)

        return seed


def tracked_lifecycle(url: str) -> None:
    """Incremental reads of a users table that stamps its rows: changed accounts with all they
    hold now, and groups that gained members reported whole."""
    engine = create_engine(url)
    metadata = MetaData()
    old, new = datetime(2026, 5, 1, 8, 0), datetime(2026, 5, 2, 8, 0)
    accounts = Table(
        "accounts",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("login", String(200), unique=True, nullable=False),
        Column("status", String(10), nullable=False),
        Column("updated_at", DateTime, nullable=False),
    )
    roles = Table(
        "roles",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(100), unique=True, nullable=False),
    )
    grants = Table(
        "account_roles",
        metadata,
        Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
        Column("role_id", Integer, ForeignKey("roles.id"), primary_key=True),
        Column("granted_at", DateTime, nullable=False),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            roles.insert(), [{"id": 1, "name": "viewer"}, {"id": 2, "name": "editor"}]
        )
        connection.execute(
            accounts.insert(),
            [
                {"id": 1, "login": "ann", "status": "active", "updated_at": old},
                {"id": 2, "login": "bob", "status": "locked", "updated_at": new},
                {"id": 3, "login": "cy", "status": "active", "updated_at": old},
            ],
        )
        connection.execute(
            grants.insert(),
            [
                {"account_id": 1, "role_id": 1, "granted_at": old},
                {"account_id": 2, "role_id": 1, "granted_at": old},
                {"account_id": 3, "role_id": 2, "granted_at": new},
            ],
        )
    engine.dispose()
    settings = (
        {"mode": "users-table", "url": url, "table": "accounts", "user_name_column": "login"}
        | STATUS
        | ROLES
        | {"changed_column": "updated_at", "membership_changed_column": "granted_at"}
    )
    connector = open_sql_connector("app", settings)
    try:
        since = datetime(2026, 5, 2, 7, 0, tzinfo=UTC)
        changed = list(connector.list_changed(since))  # type: ignore[attr-defined]
        assert [(r.user_name, r.enabled, r.entitlements) for r in changed] == [
            ("bob", False, frozenset({"viewer"}))
        ]
        assert connector.changed_memberships(since) == {  # type: ignore[attr-defined]
            "editor": frozenset({"3"})
        }
        earlier = datetime(2026, 4, 1, tzinfo=UTC)
        assert len(list(connector.list_changed(earlier))) == 3  # type: ignore[attr-defined]
        assert connector.changed_memberships(earlier) == {  # type: ignore[attr-defined]
            "viewer": frozenset({"1", "2"}),
            "editor": frozenset({"3"}),
        }
    finally:
        connector.close()
        with create_engine(url).begin() as connection:
            metadata.drop_all(connection)


def test_users_table_incremental_reads_on_sqlite(tmp_path: Path) -> None:
    tracked_lifecycle(f"sqlite:///{tmp_path / 'app.db'}")


def test_users_table_incremental_reads_on_postgres(postgres_url: str) -> None:
    tracked_lifecycle(postgres_url)


def test_users_table_change_columns_are_checked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    app_schema(engine)
    engine.dispose()
    settings = table_settings(url) | {"membership_changed_column": "granted_at"}
    with pytest.raises(PermanentError, match="also needs changed_column"):
        open_sql_connector("app", settings)
    connector = open_sql_connector("app", table_settings(url) | {"changed_column": "full_name"})
    try:
        with pytest.raises(PermanentError, match=r"changed_column: column accounts\.full_name"):
            list(connector.list_changed(datetime(2026, 1, 1, tzinfo=UTC)))  # type: ignore[attr-defined]
    finally:
        connector.close()
