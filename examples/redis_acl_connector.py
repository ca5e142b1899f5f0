"""Redis ACL users as accounts: a complete connector written outside Provisor.

Does: manage the ACL users of a Redis 7 server whose names start with a prefix — create them
switched on or off, with no password anyone can use (``resetpass``: only a password an
administrator sets later works), no commands and the configured key patterns; grant and
withdraw ACL categories as entitlements (``+@category`` / ``-@category``); switch users on and
off (switching off also closes the user's open connections, which Redis would otherwise leave
working); count a user's live connections (``CLIENT LIST``) and close them (``CLIENT KILL
USER``); read one user, list every user under the prefix, delete (a user already gone is
fine); map refused connections and timeouts to retryable errors and refusals to permanent ones.
Does not: touch the ``default`` user, the administrator it connects as, or any user outside its
prefix; rename users (Redis cannot, so ``update`` only confirms the name); keep the identity id
(an ACL user has nowhere to hold it); set passwords, pub/sub channels, selectors or single
commands; untangle overlapping categories (``-@string`` also takes away the string commands
``+@write`` gave): the read-back reports the categories as Redis describes the user.

Plug it in with ``connection: {connector: "redis_acl_connector:RedisAclConnector", ...}``;
see docs/connectors/writing-a-connector.md.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    Capability,
    Conflict,
    NotFound,
    PermanentError,
    RetryableError,
    Unsupported,
)

T = TypeVar("T")
PAGE = 500  # users read per pipelined round trip when listing
KILL_WAIT = 2.0  # seconds revoke_sessions keeps closing connections that reappear
PROTECTED = frozenset({"default"})
SETTINGS = frozenset(
    {
        "url",
        "username",
        "password",
        "user_prefix",
        "categories",
        "keys",
        "timeout",
        "connector",  # read by the registry: which factory to call
        "user_name_attribute",  # read by the engine: which identity attribute is the name
    }
)


def _key_rules(target: str, value: Any) -> tuple[str, ...]:
    """The ``keys`` setting as ACL key rules (``~pattern``, ``%R~pattern``, ``allkeys``)."""
    rules = [value] if isinstance(value, str) else list(value or [])
    for rule in rules:
        if not isinstance(rule, str) or not (rule.startswith(("~", "%")) or rule == "allkeys"):
            raise PermanentError(
                f"target {target}: connection.keys: {rule!r} is not an ACL key rule "
                "(write ~pattern, %R~pattern, %W~pattern or allkeys)"
            )
    return tuple(rules)


def _category_map(target: str, value: Any) -> dict[str, str] | None:
    """The ``categories`` setting as entitlement -> ACL category; None: every category."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        pairs = {str(k): str(v).removeprefix("@") for k, v in value.items()}
    elif isinstance(value, Sequence) and not isinstance(value, str):
        pairs = {str(v).removeprefix("@"): str(v).removeprefix("@") for v in value}
    else:
        raise PermanentError(
            f"target {target}: connection.categories must be a list of ACL categories or a "
            "mapping of entitlement name to ACL category"
        )
    repeated = [c for c, n in Counter(pairs.values()).items() if n > 1]
    if repeated:
        raise PermanentError(
            f"target {target}: connection.categories names the category {repeated[0]!r} for "
            "two entitlements; the read-back could not tell them apart"
        )
    return pairs


class RedisAclConnector:
    """One Redis server. Settings (``connection`` in the policy, secrets already resolved):
    ``url`` (``redis://host:port/db``, ``rediss://`` for TLS, without credentials),
    ``username`` and ``password`` (the administrator; the password by reference),
    ``user_prefix`` (only users whose name starts with it are listed and changed; the account
    of a person is the prefix followed by their user name; default none), ``categories``
    (the ACL categories the policy may grant: a list, or a mapping of entitlement name to
    category; default every category the server knows), ``keys`` (key rules given to new
    users, default ``["~*"]``), ``timeout`` (seconds per command, default 5)."""

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        unknown = sorted(set(settings) - SETTINGS)
        if unknown:  # a typo must not go unnoticed
            raise PermanentError(
                f"target {name}: unknown connection setting(s) {', '.join(unknown)} for a Redis "
                f"target; known: {', '.join(sorted(SETTINGS))}"
            )
        url = settings.get("url")
        if not url:
            raise PermanentError(f"target {name}: connection.url is required for a Redis target")
        self.name = name
        self._prefix = str(settings.get("user_prefix") or "")
        self._keys = _key_rules(name, settings.get("keys", ["~*"]))
        self._categories = _category_map(name, settings.get("categories"))
        admin = settings.get("username")
        self._protected = PROTECTED | ({str(admin)} if admin else set())
        timeout = float(settings.get("timeout", 5))
        try:
            # The pool hands each worker thread its own connection; one quick retry replaces
            # a pooled connection the server has closed. Everything else the engine retries.
            self._redis = redis.Redis.from_url(
                str(url),
                username=str(admin) if admin else None,
                password=str(settings["password"]) if settings.get("password") else None,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                decode_responses=True,
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise PermanentError(f"target {name}: connection.url: {exc}") from None
        # ACL SETUSER creates and changes alike; this lock makes "is the name free? then
        # create" one step for this connector's threads.
        self._creating = threading.Lock()
        self._discovering = threading.Lock()

    # --- plumbing -----------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run Redis commands, turning every failure into a connector error."""
        try:
            return action()
        except AuthenticationError as exc:  # a ConnectionError subclass, but not transient
            raise PermanentError(
                f"{self.name}: {what}: the server refused the administrator's credentials "
                "(connection.username / connection.password)"
            ) from exc
        except (redis.ConnectionError, redis.TimeoutError, ReadOnlyError) as exc:
            # refused, dropped, timed out, still loading, or a replica during a failover
            raise RetryableError(f"{self.name}: {what}: {type(exc).__name__}: {exc}") from exc
        except NoPermissionError as exc:
            raise PermanentError(
                f"{self.name}: {what}: the administrator lacks a permission: {exc}"
            ) from exc
        except ResponseError as exc:
            if str(exc).startswith("No such user"):
                raise NotFound(f"{self.name}: {what}: {exc}") from exc
            raise PermanentError(f"{self.name}: {what}: {exc}") from exc
        except RedisError as exc:
            raise PermanentError(f"{self.name}: {what}: {type(exc).__name__}: {exc}") from exc

    def _managed(self, account: str) -> str:
        """``account`` when this connector may touch it; refuses every other user."""
        if not account or not account.startswith(self._prefix) or account in self._protected:
            raise PermanentError(
                f"{self.name}: {account!r} is not a user this target manages "
                f"(connection.user_prefix is {self._prefix!r}; 'default' and the "
                "administrator are never touched)"
            )
        return account

    def _user(self, account: str) -> dict[str, Any] | None:
        found = self._call(f"read {account}", lambda: self._redis.acl_getuser(account))
        return cast("dict[str, Any] | None", found)

    def _sessions(self) -> Counter[str]:
        """Open connections per ACL user."""
        clients = cast("list[dict[str, Any]]", self._call("list clients", self._redis.client_list))
        return Counter(str(c.get("user", "")) for c in clients)

    def _setuser(self, what: str, account: str, rules: Sequence[str]) -> None:
        # acl_setuser() spells rules as keyword arguments; the raw command says what it sends
        send: Callable[..., Any] = self._redis.execute_command
        self._call(what, lambda: send("ACL", "SETUSER", account, *rules))

    def _change(self, what: str, account: str, rules: Sequence[str]) -> None:
        """Apply ``rules`` to an existing user (ACL SETUSER alone would create a missing one)."""
        if self._user(self._managed(account)) is None:
            raise NotFound(f"{self.name}: no ACL user {account} to {what}")
        self._setuser(f"{what} {account}", account, rules)

    def _entitlements(self) -> dict[str, str]:
        """Entitlement name -> ACL category, from the settings or asked of the server once."""
        if self._categories is None:
            with self._discovering:
                if self._categories is None:
                    known = cast("list[str]", self._call("list categories", self._redis.acl_cat))
                    self._categories = {str(c): str(c) for c in known}
        return self._categories

    def _category(self, entitlement: str) -> str:
        category = self._entitlements().get(entitlement)
        if category is None:
            raise PermanentError(
                f"{self.name}: entitlement {entitlement!r} is not an ACL category this target "
                f"grants (known: {', '.join(sorted(self._entitlements()))}); fix the policy or "
                "connection.categories"
            )
        return category

    def _held(self, rules: Sequence[str]) -> frozenset[str]:
        """The entitlements a user's category rules grant, the last rule for a category
        winning (``+@all`` grants every category, ``-@all`` takes every one away)."""
        entitlements = self._entitlements()
        held: set[str] = set()
        for rule in rules:
            sign, category = rule[:2], rule[2:]
            if sign not in ("+@", "-@"):
                continue
            if category == "all":
                held = set(entitlements.values()) if sign == "+@" else set()
            elif sign == "+@":
                held.add(category)
            else:
                held.discard(category)
        return frozenset(e for e, category in entitlements.items() if category in held)

    def _record(self, account: str, user: Mapping[str, Any], sessions: int) -> AccountRecord:
        return AccountRecord(
            account=account,
            user_name=account.removeprefix(self._prefix),
            enabled="on" in user["flags"],
            entitlements=self._held(user["categories"]),
            external_id=None,
            sessions=sessions,
        )

    def _close_connections(self, account: str) -> None:
        """Close the user's connections until ``CLIENT LIST`` shows none, so that the
        read-back straight after sees none; a client reconnecting faster than that is
        reported as retryable."""
        deadline = time.monotonic() + KILL_WAIT
        while True:
            self._call(
                f"close connections of {account}",
                lambda: self._redis.client_kill_filter(user=account),
            )
            left = self._sessions()[account]
            if left == 0:
                return
            if time.monotonic() >= deadline:
                raise RetryableError(
                    f"{self.name}: {left} connections of {account} reopened as fast as they "
                    "were closed"
                )
            time.sleep(0.05)

    # --- reading --------------------------------------------------------------------------

    def capabilities(self) -> frozenset[Capability]:
        # No UPDATE (Redis cannot rename a user and there are no attributes to keep in line)
        # and no EXTERNAL_ID (an ACL user cannot hold the identity id).
        return frozenset(
            {
                Capability.CREATE,
                Capability.DISABLE,
                Capability.DELETE,
                Capability.ENTITLEMENTS,
                Capability.SESSIONS,
                Capability.READ,
                Capability.LIST,
            }
        )

    def read(self, account: str) -> AccountRecord | None:
        self._managed(account)

        def user_and_clients() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.acl_getuser(account)
            pipe.client_list()
            return pipe.execute()

        user, clients = self._call(f"read {account}", user_and_clients)
        if user is None:
            return None
        sessions = sum(1 for c in clients if c.get("user") == account)
        return self._record(account, user, sessions)

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """By name: the prefix followed by the spec's user name."""
        return self.read(self._prefix + spec.user_name)

    def list_accounts(self) -> Iterator[AccountRecord]:
        """Every user under the prefix, in name order, read ``PAGE`` users per round trip."""
        everyone = cast("list[str]", self._call("list users", self._redis.acl_users))
        names = sorted(
            n for n in everyone if n.startswith(self._prefix) and n not in self._protected
        )
        sessions = self._sessions()
        for start in range(0, len(names), PAGE):
            page = names[start : start + PAGE]

            def read_page(page: list[str] = page) -> list[Any]:
                pipe = self._redis.pipeline(transaction=False)
                for account in page:
                    pipe.acl_getuser(account)
                return pipe.execute()

            users = self._call(f"read users {page[0]}…{page[-1]}", read_page)
            for account, user in zip(page, users, strict=True):
                if user is not None:  # deleted since the list was taken
                    yield self._record(account, user, sessions[account])

    # --- writing --------------------------------------------------------------------------

    def create(self, spec: AccountSpec) -> str:
        if not spec.user_name:
            raise PermanentError(f"{self.name}: {spec.identity} has an empty user name")
        account = self._managed(self._prefix + spec.user_name)
        rules = [
            "resetpass",  # no password at all, and not nopass: nobody can sign in yet
            "resetkeys",
            "resetchannels",
            "-@all",
            *self._keys,
            "on" if spec.enabled else "off",
        ]
        with self._creating:
            if self._user(account) is not None:
                raise Conflict(f"{self.name}: an ACL user named {account} already exists")
            self._setuser(f"create {account}", account, rules)
        return account

    def update(self, account: str, spec: AccountSpec) -> str:
        """Confirm the name: there is nothing else to update, and Redis cannot rename."""
        wanted = self._prefix + spec.user_name
        if wanted != account:
            raise Unsupported(
                f"{self.name}: Redis cannot rename the ACL user {account} to {wanted}; base "
                "user names on an attribute that does not change (user_name_attribute)"
            )
        if self._user(self._managed(account)) is None:
            raise NotFound(f"{self.name}: no ACL user {account}")
        return account

    def set_enabled(self, account: str, enabled: bool) -> None:
        flag = "on" if enabled else "off"
        self._change(f"switch {flag}", account, [flag])
        if not enabled:
            # "off" only stops new sign-ins: connections already open keep working.
            self._close_connections(account)

    def add_entitlement(self, account: str, entitlement: str) -> None:
        category = self._category(entitlement)
        self._change(f"grant @{category} to", account, [f"+@{category}"])

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        category = self._category(entitlement)
        self._change(f"withdraw @{category} from", account, [f"-@{category}"])

    def revoke_sessions(self, account: str) -> None:
        if self._user(self._managed(account)) is None:
            raise NotFound(f"{self.name}: no ACL user {account}")
        self._close_connections(account)

    def delete(self, account: str) -> None:
        """``ACL DELUSER``; Redis also closes the user's connections. Gone already is fine."""
        self._managed(account)
        self._call(f"delete {account}", lambda: self._redis.acl_deluser(account))

    def close(self) -> None:
        self._redis.close()
