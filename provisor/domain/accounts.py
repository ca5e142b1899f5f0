"""Accounts as Provisor sees them in any target: what one should look like, what a read showed,
and what a target can do with them.

Does: define ``AccountSpec`` (an account to create or update, from an identity's attributes),
``AccountRecord`` (an account as read from the target, with the layers the read could not show)
and ``Capability`` (what a connector offers), as plain immutable data.
Does not: read or write anything; connectors produce and consume these, and the domain's
judgements (plan, read-back verdicts, proof of removal) reason over them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Capability(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DISABLE = "disable"
    DELETE = "delete"
    ENTITLEMENTS = "entitlements"
    SESSIONS = "sessions"
    READ = "read"
    LIST = "list"
    EXTERNAL_ID = "external-id"  # the account can carry the identity id (read as external_id)


@dataclass(frozen=True)
class AccountSpec:
    """What a new account should look like, from the identity's attributes."""

    identity: str
    user_name: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True  # False: created locked (someone on leave, or not started yet)


@dataclass(frozen=True)
class AccountRecord:
    """An account as read from the target, now."""

    account: str  # the target's own id for the account
    user_name: str
    enabled: bool
    entitlements: frozenset[str]
    external_id: str | None = None
    sessions: int | None = None  # None: the target cannot tell
    # the attributes the connector maps, as read, keyed by the identity attribute they come from
    attributes: Mapping[str, Any] = field(default_factory=dict)
    # layers this read could not show, with why (``"entitlements"``: no membership read path
    # has been shown to work on the target). What such a layer holds lists only what was
    # seen; what it lacks proves nothing.
    unread: Mapping[str, str] = field(default_factory=dict)

    @property
    def entitlements_shown(self) -> bool:
        """Whether ``entitlements`` is the account's whole membership, not just what was seen."""
        return "entitlements" not in self.unread
