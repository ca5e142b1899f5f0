"""What a person held when their termination took effect, kept for an exact rescind.

Does: the shape of that record — per target, the account and each entitlement with the
reasons that granted it then and until when the last of them still counts (an assignment or
exception until it expires, a move's grace until it ends, a rule or role without end) — its
JSON form, and which of it still counts at an instant.
Does not: work out access (``provisor.domain.desired`` makes and gives back a record), or read
or write storage (``provisor.engine.rescinds``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from provisor.domain.lifecycle import utc


@dataclass(frozen=True)
class HeldItem:
    """An account (``entitlement`` None) or entitlement held then, and why."""

    reasons: tuple[str, ...]
    until: datetime | None  # when the last grant that gave it ends; None: it has no end
    # the kinds of the reasons (rule, role, assignment, exception, grace): an item only
    # assignments and exceptions gave comes back only while one of them still gives it
    kinds: tuple[str, ...] = ()

    @property
    def own_grants_only(self) -> bool:
        return bool(self.kinds) and set(self.kinds) <= {"assignment", "exception"}

    def counts(self, at: datetime) -> bool:
        return self.until is None or at < self.until


@dataclass(frozen=True)
class Held:
    """Everything one person held when one termination took effect."""

    termination: str  # the termination event's key
    terminated_at: datetime
    targets: Mapping[str, Mapping[str | None, HeldItem]]  # None: the account itself
    # given back until then (the engine sets it: the rescind plus the restore days, or the
    # person's next change)
    until: datetime | None = None

    def items(self) -> set[tuple[str, str | None]]:
        return {(t, e) for t, items in self.targets.items() for e in items}

    def as_json(self) -> dict[str, Any]:
        return {
            target: {
                "account": _item_json(items[None]) if None in items else None,
                "entitlements": {
                    e: _item_json(items[e]) for e in sorted(e for e in items if e is not None)
                },
            }
            for target, items in sorted(self.targets.items())
        }


def _item_json(item: HeldItem) -> dict[str, Any]:
    return {
        "reasons": list(item.reasons),
        "until": item.until.isoformat() if item.until else None,
        "kinds": list(item.kinds),
    }


def _item(data: Mapping[str, Any]) -> HeldItem:
    until = data.get("until")
    return HeldItem(
        tuple(str(r) for r in data.get("reasons") or ()),
        utc(datetime.fromisoformat(until)) if until else None,
        tuple(str(k) for k in data.get("kinds") or ()),
    )


def held_from_json(termination: str, terminated_at: datetime, data: Mapping[str, Any]) -> Held:
    """The record ``Held.as_json`` wrote."""
    targets: dict[str, dict[str | None, HeldItem]] = {}
    for target, parts in data.items():
        items: dict[str | None, HeldItem] = {}
        if parts.get("account") is not None:
            items[None] = _item(parts["account"])
        for entitlement, item in (parts.get("entitlements") or {}).items():
            items[entitlement] = _item(item)
        targets[target] = items
    return Held(termination, utc(terminated_at), targets)
