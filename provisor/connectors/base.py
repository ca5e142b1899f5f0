"""The connector protocol: the one seam between Provisor and a target application.

Does: define what every connector offers — its capabilities, finding, reading and listing
accounts, creating them, enabling/disabling, adding and removing entitlements, revoking
sessions, deleting — and the one error family the engine
understands: retryable (try again later, maybe after ``retry_after`` seconds) or permanent.
Does not: know about policy, identities' lifecycle or the journal; a connector changes one
account at a time and reads it back when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from provisor.domain.accounts import AccountRecord, AccountSpec, Capability
from provisor.errors import ProvisorError

__all__ = [
    "AccountRecord",
    "AccountSpec",
    "Capability",
    "Conflict",
    "Connector",
    "ConnectorError",
    "IncrementalConnector",
    "NotFound",
    "PermanentError",
    "ProbingConnector",
    "ReadPath",
    "RetryableError",
    "Unsupported",
]


@dataclass(frozen=True)
class ReadPath:
    """Whether one way of reading a target has been shown to work there, and how we know.

    ``trusted``: it has shown what it must (an unfiltered read has shown a membership; a
    filter has returned an object known to match and left out one known not to);
    ``untrusted``: it has been caught answering wrongly or refusing; ``untested``: nothing
    has shown it either way yet. Only a trusted path's answers count as proof."""

    path: str
    status: str  # trusted | untrusted | untested
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "status": self.status, "detail": self.detail}


class ConnectorError(ProvisorError):
    """A target refused or failed an operation."""


class RetryableError(ConnectorError):
    """Worth trying again: server errors, rate limits, timeouts, refused connections."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Trying again will not help (validation errors, forbidden, conflicts not resolvable)."""


class NotFound(PermanentError):
    """The account or group does not exist in the target."""


class Conflict(PermanentError):
    """A uniqueness conflict: an account with that name already exists."""


class Unsupported(PermanentError):
    """The target cannot do this at all (e.g. no way to list or revoke sessions)."""


class Connector(Protocol):
    """What the engine needs from a target. Methods raise ``ConnectorError`` subclasses."""

    def capabilities(self) -> frozenset[Capability]: ...

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """The existing account that correlates with ``spec`` (by user name or external id)."""
        ...

    def read(self, account: str) -> AccountRecord | None:
        """The account as it is now, or None when it does not exist."""
        ...

    def list_accounts(self) -> Iterator[AccountRecord]:
        """Every account, walking all pages."""
        ...

    def create(self, spec: AccountSpec) -> str:
        """Create the account; returns the target's id for it."""
        ...

    def update(self, account: str, spec: AccountSpec) -> str:
        """Bring the account's user name and mapped attributes in line with ``spec``.

        Returns the account's id afterwards: the same one, unless the target names accounts
        by user name and the name changed (a rename)."""
        ...

    def set_enabled(self, account: str, enabled: bool) -> None: ...

    def add_entitlement(self, account: str, entitlement: str) -> None: ...

    def remove_entitlement(self, account: str, entitlement: str) -> None: ...

    def revoke_sessions(self, account: str) -> None: ...

    def delete(self, account: str) -> None:
        """Delete the account; an account already gone is not an error."""
        ...

    def close(self) -> None: ...


class ProbingConnector(Connector, Protocol):
    """A connector that probes its read paths (see ``ReadPath``). Optional: the engine gives
    it what earlier probes of the target showed, and is told whenever a probe changes that,
    so what one process learned holds for the next."""

    def read_paths(self) -> list[ReadPath]:
        """Probe every read path now."""
        ...

    def remember(
        self, earlier: list[ReadPath], record: Callable[[list[ReadPath]], None] | None
    ) -> None:
        """What earlier probes showed; ``record`` is called with the paths after each probe."""
        ...


class IncrementalConnector(Connector, Protocol):
    """A connector that can tell what changed since a moment, for incremental reconciliation.

    Optional: the engine checks for these methods and reads everything when they are absent."""

    def list_changed(self, since: datetime) -> Iterator[AccountRecord]:
        """Accounts whose own record changed at or after ``since``, as they are now."""
        ...

    def changed_memberships(self, since: datetime) -> Mapping[str, frozenset[str]]:
        """For each entitlement (group) changed at or after ``since``: every account holding
        it now. Removals show as accounts missing from the set."""
        ...
