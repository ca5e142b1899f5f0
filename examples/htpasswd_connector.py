"""Accounts in an Apache ``htpasswd`` file, with groups from its ``AuthGroupFile``: read only.

Does: list and read the users of a web application protected by HTTP basic authentication
(one ``user:hash`` line each; ``#`` lines are comments) and the groups each is in
(``group: user user ...`` lines), so reconciliation and ``verify-leaver`` can show whether a
leaver still has a login there. Every write is ``Unsupported`` (the base class says so): the
engine reports the access as debt and never as removed.
Does not: change either file; people do that, and the next read shows it.
Plug it in with ``connection: {connector: "htpasswd_connector:HtpasswdConnector", path: ...}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from provisor.connectors.base import (
    AccountRecord,
    BaseConnector,
    Capability,
    ConnectorSettings,
    PermanentError,
    RetryableError,
)


class HtpasswdSettings(ConnectorSettings):
    path: str = Field(min_length=1, description="the htpasswd file")
    group_file: str | None = Field(default=None, description="the AuthGroupFile, if any")


def _lines(target: str, path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PermanentError(f"{target}: {path} does not exist") from None
    except OSError as exc:  # unreadable now (a share not mounted, a file being replaced)
        raise RetryableError(f"{target}: cannot read {path}: {exc.strerror}") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class HtpasswdConnector(BaseConnector):
    """One htpasswd file; see ``HtpasswdSettings``."""

    Settings = HtpasswdSettings
    settings: HtpasswdSettings
    reads_entitlements = True

    def unavailable(self) -> frozenset[Capability]:
        return frozenset() if self.settings.group_file else frozenset({Capability.ENTITLEMENTS})

    def _groups(self) -> dict[str, set[str]]:
        """User -> the groups that list them."""
        found: dict[str, set[str]] = {}
        group_file = self.settings.group_file
        for line in _lines(self.name, group_file) if group_file else []:
            group, _, members = line.partition(":")
            for user in members.split():
                found.setdefault(user, set()).add(group.strip())
        return found

    def list_accounts(self) -> Iterator[AccountRecord]:
        groups = self._groups()
        for line in _lines(self.name, self.settings.path):
            user, _, _hash = line.partition(":")
            yield AccountRecord(user, user, True, frozenset(groups.get(user, ())))
