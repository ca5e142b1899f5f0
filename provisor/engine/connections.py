"""Opening a target's connector the one way every part of the engine does.

Does: resolve the target's connection settings (secrets from the workspace's encrypted file or
the environment), warn of credentials that would cross the network unencrypted (refuse them
when the workspace sets ``require_tls``), size a SQL pool to the target's concurrency, open
the connector through the registry, and give a probing connector what earlier probes of the
target showed (``readpaths``); ``check`` has a target probe every read path now (``provisor
targets check``). ``Pool`` keeps one open connector per target for a caller that visits
targets again and again (the runner, the leaver verifier).
Does not: share connectors between callers or retry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provisor.config.secrets import SecretsFile, key_from_env, resolve_connection
from provisor.connectors import registry
from provisor.connectors.base import Connector, ReadPath
from provisor.domain.policy import TargetClass, TargetDef
from provisor.domain.transport import cleartext_credentials
from provisor.engine import readpaths
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError, PolicyError, ProvisorError

log = logging.getLogger(__name__)
_warned: set[str] = set()  # targets whose credentials in clear were warned of, once a process


def open_connector(workspace: Workspace, target: TargetDef) -> Connector | None:
    """The connector for ``target`` with its secrets resolved, or None for a manual target."""
    if target.target_class is TargetClass.MANUAL:
        return None
    secrets_path = workspace.path / workspace.config.secrets_file
    secrets = SecretsFile(secrets_path, key_from_env()) if secrets_path.exists() else None
    settings = dict(resolve_connection(target.connection, secrets))
    cleartext = cleartext_credentials(settings)
    if cleartext and workspace.config.require_tls:
        raise PolicyError(f"target {target.name}: {cleartext} (require_tls is set)")
    if cleartext and target.name not in _warned:
        _warned.add(target.name)
        log.warning("target %s: %s", target.name, cleartext)
    if target.target_class is TargetClass.SQL and not settings.get("connector"):
        settings.setdefault("pool_size", target.concurrency)  # one connection per worker
    connector = registry.open_connector(target.name, target.target_class, settings)
    if connector is not None:
        readpaths.attach(workspace, target.name, connector)
    return connector


class Pool:
    """Connectors opened on first use, one per target, closed together. ``given`` connectors
    (by target name) are used as they are and closed with the others. A target whose
    definition changed since its connector was opened (the workspace loaded a new policy) gets
    a new one; the old one is closed with the others, since a thread may still be using it.
    Safe to share between threads (a worker's jobs share one)."""

    def __init__(
        self, workspace: Workspace, given: Mapping[str, Connector | None] | None = None
    ) -> None:
        self.workspace = workspace
        self._open: dict[str, Connector | None] = dict(given or {})
        self._given = set(self._open)
        self._opened_with: dict[str, TargetDef | None] = {}
        self._retired: list[Connector] = []
        self._lock = threading.Lock()

    def get(self, target: str) -> Connector | None:
        """The target's connector (None: a manual target, or a name the policy lacks)."""
        with self._lock:
            definition = self.workspace.compiled.targets.get(target)
            stale = target not in self._given and self._opened_with.get(target) != definition
            if target not in self._open or stale:
                old = self._open.get(target)
                if old is not None:
                    self._retired.append(old)
                opened = open_connector(self.workspace, definition) if definition else None
                self._open[target], self._opened_with[target] = opened, definition
            return self._open[target]

    def close(self) -> None:
        with self._lock:
            for connector in [*self._open.values(), *self._retired]:
                if connector is not None:
                    connector.close()
            self._open.clear()
            self._opened_with.clear()
            self._retired.clear()


@dataclass
class TargetCheck:
    """What probing one target showed: its read paths, or why it could not be probed."""

    target: str
    paths: list[ReadPath] = field(default_factory=list)
    error: str | None = None
    probes: bool = True  # False: the connector has no probes; its reads are as declared

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "paths": [p.as_dict() for p in self.paths],
            "error": self.error,
            "probes": self.probes,
        }

    @property
    def proven(self) -> bool:
        """False when the target could not be probed, or none of its membership reads works."""
        if self.error and self.probes:
            return False
        return not self.paths or any(p.status == "trusted" for p in self.paths)


def check(workspace: Workspace, target: TargetDef) -> TargetCheck:
    """Open ``target``'s connector, reach the target with its credentials (the connector's
    ``check``), then probe every read path now (recorded as it goes)."""
    found = TargetCheck(target.name)
    try:
        connector = open_connector(workspace, target)
    except ProvisorError as exc:
        found.error = f"the connector cannot be opened: {exc}"
        return found
    if connector is None:
        found.probes = False
        found.error = "manual target: people remove access and attest it"
        return found
    try:
        reach = getattr(connector, "check", None)  # connectors written before it may lack it
        if reach is not None:
            try:
                reach()
            except Exception as exc:  # a connector of one's own may raise anything
                found.error = f"the target cannot be reached with these settings: {exc}"
                return found
        probe = getattr(connector, "read_paths", None)
        if probe is None:
            found.probes = False
            return found
        found.paths = list(probe())
    except ProvisorError as exc:
        found.error = f"probing failed: {exc}"
    finally:
        connector.close()
    return found


def check_targets(workspace: Workspace, target: str | None = None) -> list[TargetCheck]:
    """``check`` every target of the policy by name, or only ``target``."""
    targets = workspace.compiled.targets
    if target is not None and target not in targets:
        names = ", ".join(sorted(targets)) or "none"
        raise NotFoundError(f"no target {target!r}; targets: {names}")
    return [check(workspace, targets[n]) for n in sorted(targets) if target in (None, n)]
