"""What the HTTP connectors (SCIM, REST) share about HTTP itself.

Does: read how long a server asks to be left alone (``Retry-After``: delta-seconds or an HTTP
date).
Does not: send requests or classify errors; each connector maps its protocol's answers.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC


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
