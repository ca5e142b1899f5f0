"""Large synthetic populations written straight into a workspace's store, for benchmarks.

Does: give the policy of ``targets`` SCIM targets (``app0`` …) with birthright rules by
department, and fill a workspace with ``identities`` identities (``E0`` …; one in 200
terminated ten days ago) with their lifecycle events, one observed account per identity in
every target holding its three granted entitlements (one account in a hundred holding a
fourth: drift) and 1,000 orphan accounts spread over the targets, in bulk inserts a batch at
a time.
Does not: go through the engine's import or reconciliation (the point is to reach a million
accounts in seconds), plan anything or start servers.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from provisor.engine.workspace import Workspace
from provisor.store import models
from provisor.store.db import bulk_insert

ENTITLEMENTS = 5  # entitlements per target; every identity is granted 3 of them


def policy(targets: int) -> str:
    """A policy of ``targets`` SCIM targets, each granting three entitlements by department."""
    lines = ["targets:"]
    for t in range(targets):
        lines += [
            f"  - name: app{t}",
            "    class: scim",
            "    owner: bench",
            '    connection: {url: "http://127.0.0.1:9/v2"}',
            "    entitlements: [" + ", ".join(f"{{name: g{e}}}" for e in range(ENTITLEMENTS)) + "]",
        ]
    lines.append("rules:")
    for t in range(targets):
        for d in range(3):
            ents = ", ".join(f"g{(d + k) % ENTITLEMENTS}" for k in range(3))
            lines += [
                f"  - name: r{t}-{d}",
                f"    when: {{attr: department, equals: d{d}}}",
                f"    grant: [{{target: app{t}, entitlements: [{ents}]}}]",
            ]
    return "\n".join(lines) + "\n"


def granted(identity: int) -> list[str]:
    """The entitlements ``policy`` grants identity ``E{identity}`` in every target."""
    d = identity % 3
    return [f"g{(d + k) % ENTITLEMENTS}" for k in range(3)]


def batches(
    rows: Iterator[tuple[Any, ...]], size: int = 100_000
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows in lists of ``size``: the store is filled a batch at a time, so that the peak
    memory a bench reports is that of the work it times, not of building its data."""
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _people(identities: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    past = now - timedelta(days=400)
    for i in range(identities):
        terminated = i % 200 == 0
        yield (
            f"E{i}",
            "human",
            "terminated" if terminated else "active",
            json.dumps(
                {"department": f"d{i % 3}", "email": f"p{i}@example.com", "name": f"Person {i}"}
            ),
            "[]",
            past,
            now - timedelta(days=10) if terminated else None,
            past,
            False,
            now,
            now,
        )


def _events(identities: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    """A hire for everyone (and a termination for the terminated), so each has a history."""
    past = now - timedelta(days=400)
    for i in range(identities):
        attributes = json.dumps(
            {"department": f"d{i % 3}", "email": f"p{i}@example.com", "name": f"Person {i}"}
        )
        yield (f"population-hire-E{i}", f"E{i}", "hire", past, past, attributes, *RECORDED)
        if i % 200 == 0:
            left = now - timedelta(days=10)
            yield (f"population-leave-E{i}", f"E{i}", "terminate", left, left, "{}", *RECORDED)


RECORDED = ("population", "accepted")
EVENT_COLUMNS = [
    "key",
    "identity",
    "kind",
    "effective_at",
    "recorded_at",
    "attributes",
    "source",
    "status",
]
ACCOUNT_COLUMNS = [
    "id",
    "target",
    "account",
    "identity",
    "enabled",
    "attributes",
    "observed_at",
    "source",
]


def _accounts(identities: int, targets: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    n = 0
    for t in range(targets):
        for i in range(identities):
            n += 1
            yield (n, f"app{t}", f"u{i}", f"E{i}", True, "{}", now, "bench")
        for o in range(1000 // targets):
            n += 1
            yield (n, f"app{t}", f"hand{o}", None, True, "{}", now, "bench")


def _grants(identities: int, targets: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    for account_id, _, _, identity, *_ in _accounts(identities, targets, now):
        if identity is None:
            continue
        held = granted(int(identity[1:]))
        if account_id % 100 == 0:
            held.append(f"g{(int(identity[1:]) % 3 + 3) % ENTITLEMENTS}")  # drift
        yield from ((account_id, e, now) for e in held)


def fill(workspace: Workspace, identities: int, targets: int, now: datetime) -> int:
    """Write the population into ``workspace``'s store (one transaction); the grants written."""
    count = 0
    with workspace.sessions() as session, session.begin():
        for batch in batches(_people(identities, now)):
            bulk_insert(
                session,
                models.Identity,
                (
                    "external_id",
                    "kind",
                    "state",
                    "attributes",
                    "flags",
                    "employment_start",
                    "terminated_at",
                    "state_since",
                    "needs_plan",
                    "materialized_at",
                    "updated_at",
                ),
                batch,
            )
        for batch in batches(_events(identities, now)):
            bulk_insert(
                session,
                models.IdentityEvent,
                EVENT_COLUMNS,
                batch,
            )
        for batch in batches(_accounts(identities, targets, now)):
            bulk_insert(
                session,
                models.ObservedAccount,
                ACCOUNT_COLUMNS,
                batch,
            )
        for batch in batches(_grants(identities, targets, now)):
            count += len(batch)
            bulk_insert(
                session,
                models.ObservedEntitlement,
                ("account_id", "entitlement", "observed_at"),
                batch,
            )
    return count
