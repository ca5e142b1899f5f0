"""Redis ACL users as accounts: a complete connector written outside Provisor.

Does: create, read, list, switch off (closing open connections, which Redis would leave
working) and delete the ACL users whose names start with a prefix; grant and withdraw ACL
categories as entitlements; count and close a user's connections.
Does not: touch ``default``, the administrator or users outside the prefix; rename users or
keep the identity id (an ACL user has nowhere to hold it); set passwords.
Plug it in with ``connection: {connector: "redis_acl_connector:RedisAclConnector", ...}``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis
from pydantic import Field, SecretStr, field_validator
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ReadOnlyError, RedisError
from redis.retry import Retry

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    BaseConnector,
    Capability,
    Conflict,
    ConnectorSettings,
    NotFound,
    PermanentError,
    RetryableError,
    Unsupported,
)

T = TypeVar("T")
KILL_WAIT = 2.0  # seconds revoke_sessions keeps closing connections that reappear


class RedisSettings(ConnectorSettings):
    url: str = Field(min_length=1, description="redis://host:port/db, without credentials")
    username: str | None = None  # the administrator
    password: SecretStr | None = None
    user_prefix: str = ""  # only users whose name starts with it are listed and changed
    # the categories the policy may grant: a list, or entitlement -> category; None: all
    categories: dict[str, str] | None = None
    keys: list[str] = Field(default_factory=lambda: ["~*"])  # key rules given to new users
    timeout: float = Field(default=5.0, gt=0)

    @field_validator("keys")
    @classmethod
    def _key_rules(cls, rules: list[str]) -> list[str]:
        for rule in rules:
            if not (rule.startswith(("~", "%")) or rule == "allkeys"):
                raise ValueError(f"{rule!r} is not an ACL key rule (~pattern, %R~pattern, allkeys)")
        return rules

    @field_validator("categories", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = {str(c).removeprefix("@"): c for c in value}
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be a list of ACL categories or entitlement -> category")
        named = {str(k): str(v).removeprefix("@") for k, v in (value or {}).items()}
        if len(set(named.values())) < len(named):  # the read-back could not tell them apart
            raise ValueError("names one category for two entitlements")
        return named or None


class RedisAclConnector(BaseConnector):
    """One Redis server; see ``RedisSettings``."""

    Settings = RedisSettings
    settings: RedisSettings
    reads_entitlements = True  # a user's categories, as Redis describes them
    reads_sessions = True  # CLIENT LIST

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        given = self.settings
        self._prefix = given.user_prefix
        self._protected = {"default", given.username or "default"}
        self._categories = dict(given.categories or {})  # entitlement -> category
        password = given.password.get_secret_value() if given.password else None
        try:  # a pooled connection per worker thread; one quick retry for a closed one
            self._redis = redis.Redis.from_url(
                given.url, username=given.username, password=password, decode_responses=True,
                socket_timeout=given.timeout, socket_connect_timeout=given.timeout,
                retry=Retry(NoBackoff(), 1),
            )  # fmt: skip
        except ValueError as exc:
            raise PermanentError(f"target {name}: connection.url: {exc}") from None
        self._creating = threading.Lock()  # "is the name free? then create" as one step

    def _call(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except AuthenticationError as exc:  # a ConnectionError, but not a transient one
            raise PermanentError(f"{self.name}: {what}: refused the administrator") from exc
        except (redis.ConnectionError, redis.TimeoutError, ReadOnlyError) as exc:
            raise RetryableError(f"{self.name}: {what}: {type(exc).__name__}: {exc}") from exc
        except NoPermissionError as exc:
            raise PermanentError(f"{self.name}: {what}: not permitted: {exc}") from exc
        except RedisError as exc:
            kind = NotFound if str(exc).startswith("No such user") else PermanentError
            raise kind(f"{self.name}: {what}: {exc}") from exc

    def _managed(self, account: str) -> str:
        if not account or not account.startswith(self._prefix) or account in self._protected:
            raise PermanentError(f"{self.name}: {account!r} is not a user this target manages")
        return account

    def _user(self, account: str) -> dict[str, Any] | None:
        found = self._call(f"read {account}", lambda: self._redis.acl_getuser(account))
        return cast("dict[str, Any] | None", found)

    def _sessions(self) -> Counter[str]:
        clients = cast("list[dict[str, Any]]", self._call("list clients", self._redis.client_list))
        return Counter(str(c.get("user", "")) for c in clients)

    def _change(self, what: str, account: str, rules: Sequence[str], *, new: bool = False) -> None:
        if not new and self._user(self._managed(account)) is None:
            raise NotFound(f"{self.name}: no ACL user {account} to {what}")
        send: Callable[..., Any] = self._redis.execute_command  # the rules, as sent
        self._call(f"{what} {account}", lambda: send("ACL", "SETUSER", account, *rules))

    def _known(self) -> dict[str, str]:
        """Entitlement -> category: from the settings, else every category the server knows."""
        if not self._categories:
            known = cast("list[str]", self._call("categories", self._redis.acl_cat))
            self._categories = {c: c for c in known}
        return self._categories

    def _category(self, entitlement: str) -> str:
        if entitlement not in self._known():
            raise PermanentError(f"{self.name}: {entitlement!r} is not an ACL category it grants")
        return self._known()[entitlement]

    def _held(self, rules: Sequence[str]) -> frozenset[str]:
        """The categories a user holds, the last rule for a category winning."""
        held: set[str] = set()
        for rule in rules:
            sign, category = rule[:2], rule[2:]
            if category == "all" and sign in ("+@", "-@"):
                held = set(self._known().values()) if sign == "+@" else set()
            elif sign in ("+@", "-@"):
                (held.add if sign == "+@" else held.discard)(category)
        return frozenset(e for e, category in self._known().items() if category in held)

    def _record(self, account: str, user: Mapping[str, Any], sessions: int) -> AccountRecord:
        name, enabled = account.removeprefix(self._prefix), "on" in user["flags"]
        return AccountRecord(account, name, enabled, self._held(user["categories"]), None, sessions)

    def read(self, account: str) -> AccountRecord | None:
        user = self._user(self._managed(account))
        return None if user is None else self._record(account, user, self._sessions()[account])

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        return self.read(self._prefix + spec.user_name)

    def list_accounts(self) -> Iterator[AccountRecord]:
        names = cast("list[str]", self._call("list users", self._redis.acl_users))
        sessions = self._sessions()
        for account in sorted(n for n in names if n.startswith(self._prefix)):
            user = None if account in self._protected else self._user(account)
            if user is not None:  # deleted since the list was taken
                yield self._record(account, user, sessions[account])

    def unavailable(self) -> frozenset[Capability]:
        return frozenset({Capability.UPDATE})  # ``update`` only confirms the name

    def update(self, account: str, spec: AccountSpec) -> str:
        """Confirm the name: there is nothing else to update, and Redis cannot rename."""
        if self._prefix + spec.user_name != account:
            raise Unsupported(f"{self.name}: Redis cannot rename the ACL user {account}")
        if self._user(self._managed(account)) is None:
            raise NotFound(f"{self.name}: no ACL user {account}")
        return account

    def create(self, spec: AccountSpec) -> str:
        account = self._managed(self._prefix + spec.user_name)
        rules = ["resetpass", "resetkeys", "resetchannels", "-@all", *self.settings.keys]
        with self._creating:
            if self._user(account) is not None:
                raise Conflict(f"{self.name}: an ACL user named {account} already exists")
            self._change("create", account, [*rules, "on" if spec.enabled else "off"], new=True)
        return account

    def set_enabled(self, account: str, enabled: bool) -> None:
        flag = "on" if enabled else "off"
        self._change(f"switch {flag}", account, [flag])
        if not enabled:  # "off" only stops new sign-ins: open connections keep working
            self.revoke_sessions(account)

    def add_entitlement(self, account: str, entitlement: str) -> None:
        self._change("grant", account, [f"+@{self._category(entitlement)}"])

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        self._change("withdraw", account, [f"-@{self._category(entitlement)}"])

    def revoke_sessions(self, account: str) -> None:
        """Close the user's connections until none is left, so a read-back sees none."""
        if self._user(self._managed(account)) is None:
            raise NotFound(f"{self.name}: no ACL user {account}")
        deadline = time.monotonic() + KILL_WAIT
        while (
            self._call("close", lambda: self._redis.client_kill_filter(user=account))
            or (self._sessions()[account])
        ):
            if time.monotonic() >= deadline:
                raise RetryableError(f"{self.name}: connections of {account} keep reopening")
            time.sleep(0.05)

    def delete(self, account: str) -> None:
        """``ACL DELUSER`` (Redis closes the user's connections); gone already is fine."""
        self._call(f"delete {account}", lambda: self._redis.acl_deluser(self._managed(account)))

    def close(self) -> None:
        self._redis.close()
