"""What the HTTP connectors (SCIM, REST) share about HTTP itself.

Does: read how long a server asks to be left alone (``Retry-After``: delta-seconds or an HTTP
date); say which failures mean the server is not there (``DOWN_STATUS``, ``transport_error``:
what a target's circuit breaker counts) and which are this request's or this side's own;
send an idempotent request once more when the kept-alive connection it went out on was closed
under it (``KeptAlive``, the connectors' client).
Does not: send requests of its own or classify the protocols' other errors; each connector
maps those.
"""

from __future__ import annotations

import email.utils
import time
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


class KeptAlive(httpx2.Client):
    """The connectors' HTTP client: a server may close a kept-alive connection at the moment a
    request goes out on it (its idle timeout, or after an error answer); an idempotent request
    whose body can be sent again is then sent once more, on another connection, through the
    client's request hooks again (a target's rate limit counts the second sending too), and
    may take its timeout twice. Any other request's failure stands: a ``POST`` the server may
    have carried out is never sent twice. The client's own settings, proxies from the
    environment among them, apply as to any ``httpx2.Client``."""

    def send(self, request: httpx2.Request, **options: Any) -> httpx2.Response:
        try:
            return super().send(request, **options)
        except _CLOSED_UNDER:
            again = isinstance(request.stream, httpx2.ByteStream)  # a body held whole
            if request.method not in IDEMPOTENT or not again:
                raise
        return super().send(request, **options)


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
