"""What the HTTP connectors (SCIM, REST) share about HTTP itself.

Does: read how long a server asks to be left alone (``Retry-After``: delta-seconds or an HTTP
date); say which failures mean the server is not there (``DOWN_STATUS``, ``transport_error``:
what a target's circuit breaker counts) and which are this request's or this side's own.
Does not: send requests or classify the protocols' other errors; each connector maps those.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC

import httpx2

from provisor.connectors.base import RetryableError, Unavailable

# answers that say the server (or the gateway in front of it) is down; any other answer, 429
# and 501 among them, shows a server that is there
DOWN_STATUS = frozenset({500, 502, 503, 504})


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
