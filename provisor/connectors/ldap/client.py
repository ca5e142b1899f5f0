"""The LDAP client seam: what the connector needs from a client library, and ``ldap3`` behind it.

Does: read entries (``Entry``), search (also with RFC 2696 paged results), add, modify, rename
and delete over one bound connection per thread (opened on first use, opened again after a
transport failure), and map LDAP result codes to the connector error family (busy, unavailable,
time limit: retryable; ``entryAlreadyExists``: ``Conflict``; ``noSuchObject``: ``NotFound``).
Does not: know users, groups or settings; the connector decides what to ask.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from provisor.connectors.base import (
    Conflict,
    NotFound,
    PermanentError,
    RetryableError,
    Unavailable,
)

T = TypeVar("T")

# LDAP result codes (RFC 4511 §4.1.9) the connector treats specially
TIME_LIMIT_EXCEEDED = 3
NO_SUCH_ATTRIBUTE = 16
ATTRIBUTE_OR_VALUE_EXISTS = 20
NO_SUCH_OBJECT = 32
BUSY = 51
UNAVAILABLE = 52
OBJECT_CLASS_VIOLATION = 65
ENTRY_ALREADY_EXISTS = 68
RETRYABLE_CODES = frozenset({TIME_LIMIT_EXCEEDED, BUSY, UNAVAILABLE})

PAGED_RESULTS = "1.2.840.113556.1.4.319"


@dataclass(frozen=True)
class Entry:
    """A directory entry as read: its DN and raw values, attribute names in lower case."""

    dn: str
    raw: Mapping[str, Sequence[bytes]]

    def values(self, name: str) -> list[str]:
        return [v.decode("utf-8", errors="replace") for v in self.raw.get(name.lower(), ())]

    def first(self, name: str) -> str | None:
        values = self.raw.get(name.lower())
        return values[0].decode("utf-8", errors="replace") if values else None


class LdapError(PermanentError):
    """An LDAP result code other than success that trying again will not change."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def again(self, message: str) -> LdapError:
        return type(self)(self.code, message)


class LdapEntryExists(LdapError, Conflict):
    """entryAlreadyExists (68)."""


class LdapNoSuchObject(LdapError, NotFound):
    """noSuchObject (32)."""


def result_error(code: int, description: str, detail: str = "") -> LdapError:
    message = f"{description or 'LDAP error'} ({code})" + (f": {detail}" if detail else "")
    if code == ENTRY_ALREADY_EXISTS:
        return LdapEntryExists(code, message)
    if code == NO_SUCH_OBJECT:
        return LdapNoSuchObject(code, message)
    return LdapError(code, message)


class _TransportError(Unavailable):
    """The connection failed (refused, dropped, timed out); it has been closed."""


# one modification of an attribute: ("add" | "delete" | "replace", values)
Change = tuple[str, list[str]]


class LdapClient(Protocol):
    """What the connector needs from an LDAP client library. Failures raise ``RetryableError``
    (transport, timeouts, busy servers) or ``LdapError`` (any other result code)."""

    def search(
        self, base: str, filter_: str, attributes: Sequence[str], *, scope: str = "sub"
    ) -> list[Entry]: ...

    def paged_search(
        self, base: str, filter_: str, attributes: Sequence[str], page_size: int
    ) -> Iterator[Entry]: ...

    def add(self, dn: str, attributes: Mapping[str, list[str]]) -> None: ...

    def modify(self, dn: str, changes: Mapping[str, list[Change]]) -> None: ...

    def rename(self, dn: str, new_rdn: str, new_parent: str | None = None) -> None: ...

    def delete(self, dn: str) -> None: ...

    def close(self) -> None: ...


class Ldap3Client:
    """``LdapClient`` over ``ldap3``: one bound SYNC connection per thread, opened on first use,
    closed once its thread has ended, and opened again after a transport failure (a request on
    a connection that had been idle is sent once more on a new one: servers and firewalls close
    idle connections). A paged search gets a connection of its own, since its cookie belongs to
    one connection and a generator may be resumed in any thread."""

    def __init__(
        self,
        url: str,
        bind_dn: str,
        password: str,
        *,
        timeout: float = 10.0,
        start_tls: bool = False,
        tls_verify: bool = True,
        ca_file: str | None = None,
    ) -> None:
        import ldap3  # type: ignore[import-untyped]  # only targets of class ldap need it

        self._ldap3 = ldap3
        self.url = url
        self.bind_dn = bind_dn
        self._password = password
        self.timeout = timeout
        self.start_tls = start_tls
        self._tls: Any = None
        if url.lower().startswith("ldaps://") or start_tls:
            import ssl

            self._tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED if tls_verify else ssl.CERT_NONE,
                ca_certs_file=ca_file,
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        # every connection open, with the thread it serves (None: a paged search's own)
        self._open: dict[Any, threading.Thread | None] = {}
        self._scopes = {"sub": ldap3.SUBTREE, "one": ldap3.LEVEL, "base": ldap3.BASE}
        self._ops = {
            "add": ldap3.MODIFY_ADD,
            "delete": ldap3.MODIFY_DELETE,
            "replace": ldap3.MODIFY_REPLACE,
        }

    # connections

    def _connect(self) -> Any:
        ldap3 = self._ldap3
        # a fresh Server object each time: one that saw a refused connection waits before
        # trying the address again
        server = ldap3.Server(
            self.url, get_info=ldap3.NONE, connect_timeout=self.timeout, tls=self._tls
        )
        connection = ldap3.Connection(
            server,
            user=self.bind_dn,
            password=self._password,
            client_strategy=ldap3.SYNC,
            raise_exceptions=True,
            receive_timeout=max(1, math.ceil(self.timeout)),  # whole seconds (SO_RCVTIMEO)
            auto_referrals=False,
            auto_escape=False,
            return_empty_attributes=False,
        )
        try:
            self._guard(connection, lambda: self._bind(connection))
        except BaseException:
            with contextlib.suppress(Exception):
                connection.unbind()
            raise
        with self._lock:
            self._open[connection] = None
        return connection

    def _bind(self, connection: Any) -> None:
        connection.open()
        if self.start_tls:
            connection.start_tls()
        connection.bind()

    def _connection(self) -> tuple[Any, bool]:
        """This thread's connection, and whether it was opened just now."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and not connection.closed:
            return connection, False
        with self._lock:  # the runner starts new worker threads for every pass
            ended = [c for c, t in self._open.items() if t is not None and not t.is_alive()]
            for stale in ended:
                del self._open[stale]
        for stale in ended:
            with contextlib.suppress(Exception):
                stale.unbind()
        connection = self._local.connection = self._connect()
        with self._lock:
            self._open[connection] = threading.current_thread()
        return connection, True

    def _drop(self, connection: Any) -> None:
        with self._lock:
            self._open.pop(connection, None)
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        with contextlib.suppress(Exception):
            connection.unbind()

    def _guard(self, connection: Any, action: Callable[[], T]) -> T:
        """Run ``action`` on ``connection``, turning ldap3's failures into ours."""
        exceptions = self._ldap3.core.exceptions
        try:
            return action()
        except exceptions.LDAPOperationResult as exc:
            code = int(exc.result or 0)
            if code in RETRYABLE_CODES:
                down = Unavailable if code == UNAVAILABLE else RetryableError
                raise down(f"{exc.description} ({code}): {exc.message or ''}") from exc
            raise result_error(code, str(exc.description or ""), str(exc.message or "")) from exc
        except (
            exceptions.LDAPCommunicationError,
            exceptions.LDAPResponseTimeoutError,
            exceptions.LDAPMaximumRetriesError,
            exceptions.LDAPStartTLSError,
            OSError,
        ) as exc:
            self._drop(connection)
            raise _TransportError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        except exceptions.LDAPBindError as exc:
            self._drop(connection)
            raise LdapError(49, f"bind as {self.bind_dn} refused: {exc}") from exc

    def _run(self, action: Callable[[Any], T]) -> T:
        connection, fresh = self._connection()
        try:
            return self._guard(connection, lambda: action(connection))
        except _TransportError:
            if fresh:
                raise
        # the connection had been idle and is gone: once more on a new one (every request
        # the connector sends is safe to repeat: a repeated add answers entryAlreadyExists)
        connection, _ = self._connection()
        return self._guard(connection, lambda: action(connection))

    # operations

    def _entries(self, response: Any) -> list[Entry]:
        return [
            Entry(item["dn"], {k.lower(): v for k, v in item["raw_attributes"].items()})
            for item in response
            if item.get("type") == "searchResEntry"
        ]

    def search(
        self, base: str, filter_: str, attributes: Sequence[str], *, scope: str = "sub"
    ) -> list[Entry]:
        def action(connection: Any) -> list[Entry]:
            connection.search(base, filter_, self._scopes[scope], attributes=list(attributes))
            return self._entries(connection.response)

        return self._run(action)

    def paged_search(
        self, base: str, filter_: str, attributes: Sequence[str], page_size: int
    ) -> Iterator[Entry]:
        connection = self._connect()
        try:
            cookie: bytes | None = None
            while True:

                def page(cookie: bytes | None = cookie) -> tuple[list[Entry], bytes | None]:
                    connection.search(
                        base,
                        filter_,
                        self._ldap3.SUBTREE,
                        attributes=list(attributes),
                        paged_size=page_size,
                        paged_cookie=cookie,
                    )
                    control = (connection.result.get("controls") or {}).get(PAGED_RESULTS)
                    next_cookie = control["value"]["cookie"] if control else None
                    return self._entries(connection.response), next_cookie or None

                entries, cookie = self._guard(connection, page)
                yield from entries
                if not cookie:
                    return
        finally:
            self._drop(connection)

    def add(self, dn: str, attributes: Mapping[str, list[str]]) -> None:
        self._run(lambda c: c.add(dn, attributes=dict(attributes)))

    def modify(self, dn: str, changes: Mapping[str, list[Change]]) -> None:
        ldap_changes = {
            name: [(self._ops[op], values) for op, values in ops] for name, ops in changes.items()
        }
        self._run(lambda c: c.modify(dn, ldap_changes))

    def rename(self, dn: str, new_rdn: str, new_parent: str | None = None) -> None:
        self._run(lambda c: c.modify_dn(dn, new_rdn, delete_old_dn=True, new_superior=new_parent))

    def delete(self, dn: str) -> None:
        self._run(lambda c: c.delete(dn))

    def close(self) -> None:
        with self._lock:
            connections, self._open = list(self._open), {}
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.unbind()
        self._local = threading.local()
