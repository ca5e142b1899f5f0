"""The embedded runner: executing the operation journal against targets, verified by read-back.

Does: take the journal's open operations account by account in step order (a later step waits
while an earlier one of the same account is not done, except that a removal never waits on an
addition that failed or is not due) and run them through the target's
connector — accounts in parallel up to the target's ``concurrency``, paced by its
``rate_limit`` (a token bucket) — reading each account before and after writing. An operation
becomes ``verified`` only when the read-back shows its intent, and the read-back updates the
observed-state store; when the account already shows the intent nothing is written, so running
again makes no writes. Retryable failures are retried with exponential backoff and jitter
(``Retry-After`` wins when given); after the last attempt, or on a permanent failure, the
operation is parked as ``failed`` with its error — visible, never dropped. Connector calls run
in worker threads; the journal, the observed store and the audit log are written by one thread
in batches, so the database is never the bottleneck. A crash loses at most the unwritten batch:
those operations are still open and run again, harmlessly, because every run reads first.
Does not: plan (``planner``), or decide policy; targets without a connector keep their
operations pending.
"""

from __future__ import annotations

from provisor.engine.runner.execution import (
    NOTHING_WRITTEN,
    AdoptionRefused,
    Job,
    Outcome,
    execute,
)
from provisor.engine.runner.pacing import TokenBucket, backoff
from provisor.engine.runner.runner import MAX_ATTEMPTS, ApplyReport, Runner

__all__ = [
    "MAX_ATTEMPTS",
    "NOTHING_WRITTEN",
    "AdoptionRefused",
    "ApplyReport",
    "Job",
    "Outcome",
    "Runner",
    "TokenBucket",
    "backoff",
    "execute",
]
