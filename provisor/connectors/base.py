"""The connector protocol: the one seam between Provisor and a target application.

Does: define what every connector offers — checking its connection and credentials, finding,
reading and listing accounts, creating them, enabling/disabling, adding and removing
entitlements, revoking sessions, deleting — and the one error family the engine understands:
retryable (try again later, maybe after ``retry_after`` seconds) or permanent. Give connector
authors a base class (``BaseConnector``) whose writes are ``Unsupported`` until implemented and
whose capabilities follow from the methods it implements, and typed settings
(``ConnectorSettings``: unknown keys refused, naming the nearest known one; credentials as
secret types).
Does not: know about policy, identities' lifecycle or the journal; a connector changes one
account at a time and reads it back when asked. Whether a read path is trusted on a target is
shown by probes (``ProbingConnector``), not declared.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, Self

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from provisor.domain.accounts import AccountRecord, AccountSpec, Capability
from provisor.errors import ProvisorError

__all__ = [
    "AccountRecord",
    "AccountSpec",
    "BaseConnector",
    "Capability",
    "Conflict",
    "Connector",
    "ConnectorError",
    "ConnectorSettings",
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


class Unavailable(RetryableError):
    """The target could not be reached or answered that it is down (refused or dropped
    connection, timeout, a server error): what a target's circuit breaker counts. A target
    that answers "slow down" (429) or refuses one request is available."""


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

    def check(self) -> None:
        """Reach the target with the configured credentials; raise when it cannot be done."""
        ...

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


Problem = tuple[tuple[str | int, ...], str]  # where under ``connection``, and what is wrong


class ConnectorSettings(BaseModel):
    """A connector's ``connection`` settings, typed: unknown keys are refused (naming the
    nearest known one), values are checked, credentials are secret types (never shown).

    ``connector`` (a connector of your own, ``package.module:Factory``) and
    ``user_name_attribute`` (the identity attribute account user names come from; default
    ``email``) are the engine's and every target may set them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connector: str | None = None
    user_name_attribute: str = "email"

    @field_validator("*")
    @classmethod
    def _no_empty_secret(cls, value: Any) -> Any:
        if isinstance(value, SecretStr) and not value.get_secret_value():
            raise ValueError("an empty credential is not a credential; leave the setting out")
        return value

    @classmethod
    def problems(cls, settings: Mapping[str, Any], *, complete: bool = True) -> list[Problem]:
        """What is wrong with ``settings`` (empty when nothing is), each with where. Not
        ``complete``: settings still to be filled in (a required one missing) pass."""
        try:
            cls.model_validate(dict(settings))
        except ValidationError as exc:
            return [
                _problem(cls, error["loc"], error["type"], error["msg"])
                for error in exc.errors()
                if complete or error["type"] != "missing"
            ]
        return []

    @classmethod
    def parse(cls, target: str, settings: Mapping[str, Any]) -> Self:
        """``settings`` validated; ``PermanentError`` naming the target and every problem."""
        try:
            return cls.model_validate(dict(settings))
        except ValidationError:
            listed = "; ".join(_said(where, why) for where, why in cls.problems(settings))
            raise PermanentError(f"target {target}: {listed}") from None


def _said(where: tuple[str | int, ...], why: str) -> str:
    setting = ".".join(str(part) for part in where)
    if why == "required":
        return f"connection.{setting} is required"
    if why.startswith("unknown setting"):
        return f"unknown connection setting {setting}{why.removeprefix('unknown setting')}"
    return f"connection.{setting}: {why}" if setting else why


def _problem(model: type[BaseModel], where: tuple[Any, ...], kind: str, message: str) -> Problem:
    if kind == "extra_forbidden" and len(where) == 1:
        known = sorted(field.alias or name for name, field in model.model_fields.items())
        near = difflib.get_close_matches(str(where[0]), known, n=1)
        hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(known)}"
        return where, f"unknown setting ({hint})"
    if kind == "missing":
        return where, "required"
    return where, message.removeprefix("Value error, ")


# which methods a capability needs implemented (read falls back on list_accounts)
_NEEDS: dict[Capability, tuple[str, ...]] = {
    Capability.CREATE: ("create",),
    Capability.UPDATE: ("update",),
    Capability.DISABLE: ("set_enabled",),
    Capability.DELETE: ("delete",),
    Capability.ENTITLEMENTS: ("add_entitlement", "remove_entitlement"),
    Capability.SESSIONS: ("revoke_sessions",),
    Capability.LIST: ("list_accounts",),
}


class BaseConnector:
    """A base for connectors: settings parsed into ``Settings`` (``self.settings``), every write
    ``Unsupported`` until the subclass implements it, ``read`` and ``find`` by walking
    ``list_accounts`` until it implements them, and capabilities that follow from what it
    implements — and, for memberships and sessions, from what its reads show: ENTITLEMENTS is
    claimed only with ``reads_entitlements`` (records hold the whole membership; with it a
    read-only connector claims ENTITLEMENTS too) and SESSIONS only with ``revoke_sessions``
    and ``reads_sessions`` (records count open sessions). One whose accounts carry the identity
    id sets ``carries_identity``; ``unavailable`` names what its settings switch off."""

    Settings: ClassVar[type[ConnectorSettings]] = ConnectorSettings
    reads_entitlements: bool = False  # records hold the account's whole membership
    reads_sessions: bool = False  # records count the account's open sessions
    carries_identity: bool = False

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.settings = self.Settings.parse(name, settings)

    def _implements(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(BaseConnector, method)

    def capabilities(self) -> frozenset[Capability]:
        found = {cap for cap, methods in _NEEDS.items() if all(map(self._implements, methods))}
        if found & {Capability.LIST} or self._implements("read"):
            found.add(Capability.READ)
        # writing is not reading: a layer counts only where the records show it whole
        if not self.reads_entitlements:
            found.discard(Capability.ENTITLEMENTS)
        elif self._implements("list_accounts") or self._implements("read"):
            found.add(Capability.ENTITLEMENTS)
        if not self.reads_sessions:
            found.discard(Capability.SESSIONS)
        if self.carries_identity:
            found.add(Capability.EXTERNAL_ID)
        return frozenset(found - self.unavailable())

    def unavailable(self) -> frozenset[Capability]:
        """Capabilities the methods offer that this target's settings switch off."""
        return frozenset()

    def check(self) -> None:
        """Reach the target and read one account (or learn there is none)."""
        next(iter(self.list_accounts()), None)

    def list_accounts(self) -> Iterator[AccountRecord]:
        raise Unsupported(f"{self.name}: accounts cannot be listed")

    def read(self, account: str) -> AccountRecord | None:
        return next((r for r in self.list_accounts() if r.account == account), None)

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """The account carrying the identity id, else the one with the spec's user name."""
        by_name = None
        for record in self.list_accounts():
            if record.external_id == spec.identity:
                return record
            if by_name is None and record.user_name == spec.user_name:
                by_name = record
        return by_name

    def create(self, spec: AccountSpec) -> str:
        raise Unsupported(f"{self.name}: accounts cannot be created here")

    def update(self, account: str, spec: AccountSpec) -> str:
        raise Unsupported(f"{self.name}: accounts cannot be changed here")

    def set_enabled(self, account: str, enabled: bool) -> None:
        raise Unsupported(f"{self.name}: accounts cannot be enabled or disabled here")

    def add_entitlement(self, account: str, entitlement: str) -> None:
        raise Unsupported(f"{self.name}: entitlements cannot be granted here")

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        raise Unsupported(f"{self.name}: entitlements cannot be removed here")

    def revoke_sessions(self, account: str) -> None:
        raise Unsupported(f"{self.name}: sessions cannot be revoked here")

    def delete(self, account: str) -> None:
        raise Unsupported(f"{self.name}: accounts cannot be deleted here")

    def close(self) -> None:
        """Release connections; nothing to release by default."""
