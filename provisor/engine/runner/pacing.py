"""Pacing: how long a retried operation waits, and how fast a target is written to.

Does: compute exponential backoff with jitter (a target's ``Retry-After`` wins), and pace
requests to a target with a token bucket shared by every worker thread.
Does not: run operations.
"""

from __future__ import annotations

import random
import threading
import time

BACKOFF_BASE = 2.0  # seconds; attempt n waits about base * 2**(n-1), with jitter
BACKOFF_CAP = 3600.0
# a bucket holds this many seconds' worth of requests (at least one): a burst that no target
# counting requests per second (or by a bucket of its own) sees as more than its limit
BURST_SECONDS = 0.05


def backoff(attempts: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before the next attempt: the server's ``Retry-After`` when it gave one."""
    if retry_after is not None:
        return min(retry_after, BACKOFF_CAP)
    delay = min(BACKOFF_BASE * 2.0 ** max(attempts - 1, 0), BACKOFF_CAP)
    return float(delay * (0.5 + rng.random()))  # jitter around the exponential step


class TokenBucket:
    """At most ``rate`` operations a second on average, bursts up to ``burst`` (by default
    ``BURST_SECONDS`` of them); thread-safe."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate * BURST_SECONDS)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                current = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (current - self.stamp) * self.rate)
                self.stamp = current
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)
