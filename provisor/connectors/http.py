"""What the HTTP connectors (SCIM, REST) share about HTTP itself.

Does: read how long a server asks to be left alone (``Retry-After``: delta-seconds or an HTTP
date); say which failures mean the server is not there (``DOWN_STATUS``, ``transport_error``:
what a target's circuit breaker counts) and which are this request's or this side's own;
send an idempotent request once more when the kept-alive connection it went out on was closed
under it (``KeptAlive``, the connectors' transport).
Does not: send requests of its own or classify the protocols' other errors; each connector
maps those.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

import httpx2

from provisor.connectors.base import RetryableError, Unavailable

# answers that say the server (or the gateway in front of it) is down; any other answer, 429
# and 501 among them, shows a server that is there
DOWN_STATUS = frozenset({500, 502, 503, 504})

# methods whose effect is the same when a server gets the request twice (RFC 9110, 9.2.2)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# what a connection the server closed while the request went out looks like: nothing came
# back (the server's FIN), the write or the read was reset
_CLOSED_UNDER = (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError)


class KeptAlive(httpx2.HTTPTransport):
    """The connectors' transport: a server may close a kept-alive connection at the moment a
    request goes out on it (its idle timeout, or after an error answer); an idempotent request
    is then sent once more, on another connection, after ``pace`` (a target's rate limit
    counts the second sending too). Any other request's failure stands: a ``POST`` the server
    may have carried out is never sent twice."""

    def __init__(
        self, pace: Callable[[httpx2.Request], None] | None = None, **options: Any
    ) -> None:
        super().__init__(**options)
        self._pace = pace

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return super().handle_request(request)
        except _CLOSED_UNDER:
            if request.method not in IDEMPOTENT:
                raise
        if self._pace is not None:
            self._pace(request)
        return super().handle_request(request)


def transport_error(message: str, exc: httpx2.TransportError) -> RetryableError:
    """A request that got no answer: ``Unavailable`` when the server could not be reached or
    dropped the connection or went silent; a plain retryable error when the cause is on this
    side (every pooled connection busy, a request this client cannot send)."""
    local = (httpx2.PoolTimeout, httpx2.LocalProtocolError, httpx2.UnsupportedProtocol)
    if isinstance(exc, local):
        return RetryableError(message)
    return Unavailable(message)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)
