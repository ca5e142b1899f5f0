"""The example Redis ACL connector (examples/redis_acl_connector.py) against a real Redis.

Redis comes from ``PROVISOR_TEST_REDIS_URL`` when set, else the server on 127.0.0.1:6379; if
it does not answer, these tests fail. Every test works under its own user-name prefix and
deletes every ACL user under it afterwards, whatever the outcome.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from sqlalchemy import select

from provisor.connectors.base import (
    AccountSpec,
    Capability,
    Conflict,
    NotFound,
    PermanentError,
    RetryableError,
    Unsupported,
)
from provisor.connectors.registry import open_connector
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.domain.policy import TargetClass
from provisor.engine import identities
from provisor.engine.planner import sync_journal
from provisor.engine.runner import Runner
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from provisor.testing import ConnectorContract

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REDIS_URL = os.environ.get("PROVISOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def load_example() -> ModuleType:
    """The example module, loaded by path: ``examples/`` is not a package."""
    spec = importlib.util.spec_from_file_location(
        "provisor_example_redis_acl", EXAMPLES / "redis_acl_connector.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()
RedisAclConnector = example.RedisAclConnector


@pytest.fixture(scope="session")
def redis_admin() -> Iterator[redis.Redis]:
    """An administrator's client for checking and arranging things behind the connector."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis does not answer at {REDIS_URL} ({exc}); start redis-server (Debian package "
            "redis-server) or set PROVISOR_TEST_REDIS_URL"
        )
    yield client
    client.close()


@pytest.fixture
def root(redis_admin: redis.Redis) -> Iterator[str]:
    """A user-name prefix of this test's own; every ACL user under it is deleted afterwards."""
    prefix = f"px{uuid.uuid4().hex[:10]}_"
    yield prefix
    mine = [u for u in redis_admin.acl_users() if u.startswith(prefix)]
    for start in range(0, len(mine), 500):
        redis_admin.acl_deluser(*mine[start : start + 500])


def user_sessions(admin: redis.Redis, account: str) -> int:
    return sum(1 for c in admin.client_list() if c.get("user") == account)


@pytest.fixture
def sign_in(redis_admin: redis.Redis) -> Iterator[Callable[[str], redis.Redis]]:
    """Open a real connection authenticated as an ACL user, after giving it a password the
    administrator way (``ACL SETUSER u >password``); closed afterwards."""
    opened: list[redis.Redis] = []

    def open_as(account: str) -> redis.Redis:
        password = secrets.token_urlsafe(16)
        redis_admin.execute_command("ACL", "SETUSER", account, f">{password}")
        client = redis.Redis.from_url(
            REDIS_URL,
            username=account,
            password=password,
            single_connection_client=True,  # connects (and authenticates) at once
            socket_timeout=5,
            retry=None,
        )
        opened.append(client)
        return client

    yield open_as
    for client in opened:
        client.close()


@pytest.fixture
def cache(root: str) -> Iterator[Any]:
    connector = RedisAclConnector("cache", {"url": REDIS_URL, "user_prefix": root})
    yield connector
    connector.close()


class TestContract(ConnectorContract):
    """The shared connector contract against the real Redis."""

    renames = False  # Redis cannot rename an ACL user; the connector declares no UPDATE

    @pytest.fixture
    def connector(self, root: str) -> Iterator[Any]:
        connector = RedisAclConnector("cache", {"url": REDIS_URL, "user_prefix": root})
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self) -> tuple[str, str]:
        return ("read", "write")

    @pytest.fixture
    def open_session(
        self, sign_in: Callable[[str], redis.Redis]
    ) -> Callable[[str, AccountSpec], Callable[[], None]]:
        def open_session(account: str, spec: AccountSpec) -> Callable[[], None]:
            return sign_in(account).close

        return open_session


# --- what the contract does not cover -------------------------------------------------------


def test_new_user_cannot_sign_in_and_has_only_its_keys(redis_admin: redis.Redis, root: str) -> None:
    connector = RedisAclConnector(
        "cache", {"url": REDIS_URL, "user_prefix": root, "keys": ["~app:*", "%R~shared:*"]}
    )
    try:
        account = connector.create(AccountSpec("E1", "ann"))
        assert account == f"{root}ann"
        user = redis_admin.acl_getuser(account)
        assert user["passwords"] == [] and "nopass" not in user["flags"]
        assert user["categories"] == ["-@all"]
        assert user["keys"] == ["~app:*", "%R~shared:*"]
        for password in ("", "nopass", "x"):
            with pytest.raises(redis.AuthenticationError):
                redis.Redis.from_url(REDIS_URL, username=account, password=password).ping()
    finally:
        connector.close()


def test_disable_closes_open_connections(
    cache: Any, redis_admin: redis.Redis, sign_in: Callable[[str], redis.Redis]
) -> None:
    """Redis keeps connections of a user switched ``off`` working; the connector closes them."""
    account = cache.create(AccountSpec("E1", "ann"))
    cache.add_entitlement(account, "connection")
    session = sign_in(account)
    assert session.ping() is True
    assert cache.read(account).sessions == 1
    cache.set_enabled(account, False)
    record = cache.read(account)
    assert record is not None and not record.enabled and record.sessions == 0
    assert user_sessions(redis_admin, account) == 0
    with pytest.raises(redis.ConnectionError):
        session.ping()


def test_default_admin_and_other_users_are_never_touched(
    redis_admin: redis.Redis, root: str
) -> None:
    admin = f"{root}admin"
    outsider = f"{root}other"
    password = secrets.token_urlsafe(16)
    redis_admin.execute_command("ACL", "SETUSER", admin, "on", f">{password}", "+@all")
    redis_admin.execute_command("ACL", "SETUSER", outsider, "on")
    # the administrator's own name lies under the prefix: it is still never listed or changed
    connector = RedisAclConnector(
        "cache", {"url": REDIS_URL, "user_prefix": root, "username": admin, "password": password}
    )
    try:
        mine = connector.create(AccountSpec("E1", "ann"))
        assert [r.account for r in connector.list_accounts()] == sorted([mine, outsider])
        for account in (admin, "default"):
            for act in (connector.read, connector.delete, connector.revoke_sessions):
                with pytest.raises(PermanentError, match="not a user this target manages"):
                    act(account)
        assert redis_admin.acl_getuser(admin) is not None
    finally:
        connector.close()
    narrow = RedisAclConnector("cache", {"url": REDIS_URL, "user_prefix": f"{root}an"})
    try:
        assert [r.account for r in narrow.list_accounts()] == [mine]
        with pytest.raises(PermanentError, match="not a user this target manages"):
            narrow.delete(outsider)
        assert redis_admin.acl_getuser(outsider) is not None
    finally:
        narrow.close()


def test_update_confirms_the_name_and_refuses_a_rename(cache: Any) -> None:
    assert Capability.UPDATE not in cache.capabilities()
    spec = AccountSpec("E1", "ann", {"name": "Ann Example"})
    account = cache.create(spec)
    assert cache.update(account, spec) == account
    with pytest.raises(Unsupported, match="cannot rename"):
        cache.update(account, AccountSpec("E1", "ann.example"))
    cache.delete(account)
    with pytest.raises(NotFound):
        cache.update(account, spec)


def test_conflict_missing_user_and_unknown_category(cache: Any, redis_admin: redis.Redis) -> None:
    account = cache.create(AccountSpec("E1", "ann"))
    cache.add_entitlement(account, "read")
    with pytest.raises(Conflict):
        cache.create(AccountSpec("E2", "ann", enabled=False))
    record = cache.read(account)  # the refused create changed nothing
    assert record.enabled and record.entitlements == {"read"}
    with pytest.raises(PermanentError, match="'nosuch' is not an ACL category"):
        cache.add_entitlement(account, "nosuch")
    cache.delete(account)
    for change in (
        lambda: cache.set_enabled(account, True),
        lambda: cache.add_entitlement(account, "read"),
        lambda: cache.revoke_sessions(account),
    ):
        with pytest.raises(NotFound):
            change()
    assert redis_admin.acl_getuser(account) is None  # not created again by ACL SETUSER


def test_categories_setting_names_the_entitlements(redis_admin: redis.Redis, root: str) -> None:
    connector = RedisAclConnector(
        "cache",
        {"url": REDIS_URL, "user_prefix": root, "categories": {"readers": "read", "ops": "@admin"}},
    )
    try:
        account = connector.create(AccountSpec("E1", "ann"))
        connector.add_entitlement(account, "readers")
        assert redis_admin.acl_getuser(account)["categories"] == ["-@all", "+@read"]
        assert connector.read(account).entitlements == {"readers"}
        with pytest.raises(PermanentError, match="'read' is not an ACL category"):
            connector.add_entitlement(account, "read")  # the category, not the entitlement
        redis_admin.execute_command("ACL", "SETUSER", account, "+@all")
        assert connector.read(account).entitlements == {"readers", "ops"}
        connector.remove_entitlement(account, "ops")
        assert connector.read(account).entitlements == {"readers"}
    finally:
        connector.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "connection.url is required"),
        ({"url": REDIS_URL, "prefix": "app_"}, "unknown connection setting prefix"),
        ({"url": "http://127.0.0.1:6379"}, "connection.url"),
        ({"url": REDIS_URL, "keys": ["app:*"]}, "connection.keys: 'app:\\*'"),
        ({"url": REDIS_URL, "categories": "read"}, "connection.categories: must be a list"),
        ({"url": REDIS_URL, "categories": {"a": "read", "b": "@read"}}, "two entitlements"),
    ],
)
def test_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message) as caught:
        RedisAclConnector("cache", settings)
    assert "target cache" in str(caught.value)


def test_unreachable_server_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connector = RedisAclConnector("down", {"url": f"redis://127.0.0.1:{port}/0", "timeout": 1})
    try:
        with pytest.raises(RetryableError, match="down: read"):
            connector.read("ann")
    finally:
        connector.close()


def test_wrong_admin_password_is_permanent_and_not_echoed(
    redis_admin: redis.Redis, root: str
) -> None:
    admin = f"{root}admin"
    redis_admin.execute_command("ACL", "SETUSER", admin, "on", ">right-one", "+@all")
    connector = RedisAclConnector(
        "cache", {"url": REDIS_URL, "username": admin, "password": "wrong-one"}
    )
    try:
        with pytest.raises(PermanentError, match="refused the administrator") as caught:
            connector.read(f"{root}ann")
        assert not isinstance(caught.value, RetryableError)
        assert "wrong-one" not in str(caught.value) and "right-one" not in str(caught.value)
    finally:
        connector.close()


def test_loads_through_the_registry(monkeypatch: pytest.MonkeyPatch, root: str) -> None:
    """``connection.connector: "module:Factory"`` with the examples folder on the path."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "redis_acl_connector", raising=False)
    settings = {
        "connector": "redis_acl_connector:RedisAclConnector",
        "url": REDIS_URL,
        "user_prefix": root,
    }
    connector = open_connector("cache", TargetClass.REST, settings)
    assert connector is not None
    try:
        assert type(connector).__module__ == "redis_acl_connector"
        account = connector.create(AccountSpec("E1", "ann"))
        record = connector.read(account)
        assert record is not None and record.user_name == "ann" and record.sessions == 0
        connector.delete(account)
        assert connector.read(account) is None
    finally:
        connector.close()
        sys.modules.pop("redis_acl_connector", None)
    with pytest.raises(PermanentError, match="has no callable 'Nope'"):
        open_connector(
            "cache", TargetClass.REST, {**settings, "connector": "redis_acl_connector:Nope"}
        )
    sys.modules.pop("redis_acl_connector", None)


# --- through the engine ---------------------------------------------------------------------

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ADMIN_PASSWORD_VARIABLE = "PROVISOR_TEST_REDIS_ADMIN_PASSWORD"
# The least an administrator needs: the ACL and CLIENT subcommands the connector sends.
ADMIN_RULES = [
    "-@all",
    "+acl|getuser",
    "+acl|setuser",
    "+acl|deluser",
    "+acl|users",
    "+acl|cat",
    "+client|list",
    "+client|kill",
]

POLICY = """\
targets:
  - name: cache
    class: rest
    owner: platform-team
    leaver_action: disable
    concurrency: 4
    connection:
      connector: "redis_acl_connector:RedisAclConnector"
      url: "{url}"
      username: "{admin}"
      password: {{env: {variable}}}
      user_prefix: "{prefix}"
      categories: [read, write]
    entitlements: [{{name: read}}, {{name: write}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: cache, entitlements: [read]}}]
  - name: engineering
    when: {{attr: department, equals: Engineering}}
    grant: [{{target: cache, entitlements: [write]}}]
"""


def record(ws: Workspace, kind: EventKind, at: datetime, **attributes: str) -> None:
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [LifecycleEvent("E1", kind, at, at, attributes)],
            origin="test",
            now=at,
        )


def plan(ws: Workspace, at: datetime) -> list[str]:
    with ws.sessions() as session, session.begin():
        planned = sync_journal(ws, session, now=at)
    return [op.kind.value for op, _, _ in planned.operations if op.target == "cache"]


def apply(ws: Workspace, at: datetime) -> Any:
    runner = Runner(ws)
    try:
        return runner.apply(now=lambda: at)
    finally:
        runner.close()


def observed(ws: Workspace) -> models.ObservedAccount:
    with ws.sessions() as session:
        return session.execute(
            select(models.ObservedAccount).where(models.ObservedAccount.identity == "E1")
        ).scalar_one()


@pytest.fixture
def workspace(
    tmp_path: Path, root: str, redis_admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Workspace]:
    """A workspace whose ``cache`` target is the example connector, signed in as a
    least-privilege administrator whose password comes from an environment variable."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    admin, password = f"{root}admin", secrets.token_urlsafe(16)
    redis_admin.execute_command("ACL", "SETUSER", admin, "on", f">{password}", *ADMIN_RULES)
    monkeypatch.setenv(ADMIN_PASSWORD_VARIABLE, password)
    policy = POLICY.format(
        url=REDIS_URL, admin=admin, variable=ADMIN_PASSWORD_VARIABLE, prefix=f"{root}u_"
    )
    ws = scratch_workspace(tmp_path, policy)
    yield ws
    ws.close()
    sys.modules.pop("redis_acl_connector", None)


def test_leaver_session_is_killed_then_disabled_verified_by_read_back(
    workspace: Workspace,
    root: str,
    redis_admin: redis.Redis,
    sign_in: Callable[[str], redis.Redis],
) -> None:
    account = f"{root}u_ann@example.com"
    hired = NOW - timedelta(days=30)
    record(
        workspace,
        EventKind.HIRE,
        hired,
        name="Ann Example",
        email="ann@example.com",
        employment_type="employee",
        department="Sales",
    )
    assert plan(workspace, NOW) == ["create", "add-entitlement"]
    report = apply(workspace, NOW)
    assert (report.verified, report.failed, report.errors) == (2, 0, [])
    user = redis_admin.acl_getuser(account)
    assert user["enabled"] and user["categories"] == ["-@all", "+@read"]
    assert user["passwords"] == []

    # Ann signs in; later she moves to Engineering and gains write: that read-back sees her
    session = sign_in(account)  # connected and authenticated as Ann
    moved = NOW + timedelta(hours=1)
    record(workspace, EventKind.MOVE, moved, department="Engineering")
    assert plan(workspace, moved) == ["add-entitlement"]
    assert apply(workspace, moved).verified == 1
    assert observed(workspace).sessions == 1

    left = NOW + timedelta(hours=2)
    record(workspace, EventKind.TERMINATE, left)
    assert plan(workspace, left) == [
        "revoke-sessions",
        "disable",
        "remove-entitlement",
        "remove-entitlement",
    ]
    report = apply(workspace, left)
    assert (report.verified, report.failed, report.unverifiable) == (4, 0, 0), report.errors
    assert report.writes == 4
    with workspace.sessions() as s:
        rows = s.execute(select(models.Operation).where(models.Operation.target == "cache"))
        ops = {(o.kind, o.entitlement): o for o in rows.scalars()}
    revoked = ops[("revoke-sessions", None)]
    assert revoked.status == "verified" and revoked.observed["sessions"] == 0
    assert ops[("disable", None)].observed["enabled"] is False
    assert all(o.status == "verified" for o in ops.values())
    user = redis_admin.acl_getuser(account)
    assert not user["enabled"] and user["categories"] == ["-@all"]
    assert user_sessions(redis_admin, account) == 0
    with pytest.raises(redis.ConnectionError):
        session.ping()
    seen = observed(workspace)
    assert (seen.enabled, seen.sessions) == (False, 0)
    again = apply(workspace, left)
    assert again.writes == 0
    # the least-privilege administrator can also list (ACL USERS, ACL GETUSER, CLIENT LIST)
    lister = RedisAclConnector(
        "cache",
        {
            "url": REDIS_URL,
            "username": f"{root}admin",
            "password": os.environ[ADMIN_PASSWORD_VARIABLE],
            "user_prefix": f"{root}u_",
        },
    )
    try:
        assert [(r.account, r.enabled, r.sessions) for r in lister.list_accounts()] == [
            (account, False, 0)
        ]
    finally:
        lister.close()
