"""The coverage map: what Provisor can do in each target, and where removal cannot be verified.

Does: for every target in the policy, name its category (SCIM-managed, directory, database,
API-managed, manual) and channel, open its connector without touching the network (connector
constructors only check settings; a credential that cannot be resolved on this machine is
replaced by a placeholder, and said so) and read its capabilities — what it can write (create,
update, disable, delete, entitlements), what it can read back (read, list, changes since) and
whether it sees sessions — then list the blind spots: the layers (account, entitlements,
sessions) whose removal cannot be verified there, with why. Where the connector probes its
read paths, the entitlements layer counts as read back only once a probe has shown a membership
read to work there (as recorded by the last probe; ``provisor targets check`` probes now).
Does not: connect to targets, or judge any identity's access (``debt`` and
``provisor.engine.leavers`` do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provisor.connectors import registry
from provisor.connectors.base import Capability, Connector, ReadPath
from provisor.domain.channels import CATEGORY, channel
from provisor.domain.policy import TargetClass, TargetDef
from provisor.engine import circuit, readpaths
from provisor.engine.connections import open_connector
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError, SecretError

WRITE = (
    Capability.CREATE,
    Capability.UPDATE,
    Capability.DISABLE,
    Capability.DELETE,
    Capability.ENTITLEMENTS,
)
LAYERS = ("account", "entitlements", "sessions")


@dataclass(frozen=True)
class BlindSpot:
    target: str
    layer: str  # account | entitlements | sessions
    why: str

    def as_dict(self) -> dict[str, str]:
        return {"target": self.target, "layer": self.layer, "why": self.why}


@dataclass
class TargetCoverage:
    target: str
    target_class: str
    category: str
    channel: str
    owner: str
    write: list[str] = field(default_factory=list)
    read_back: list[str] = field(default_factory=list)
    sessions: bool = False
    # per layer: "read back" (a live read shows removal), "attested" (people and exports),
    # "none defined" (the target grants no entitlements) or "blind"
    layers: dict[str, str] = field(default_factory=dict)
    blind_spots: list[BlindSpot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    # what probes last showed of each read path (targets whose connector probes them)
    read_paths: list[ReadPath] = field(default_factory=list)
    # its circuit is open: nothing can be written or read back there now
    unavailable: circuit.Outage | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "class": self.target_class,
            "category": self.category,
            "channel": self.channel,
            "owner": self.owner,
            "write": self.write,
            "read_back": self.read_back,
            "sessions": self.sessions,
            "layers": self.layers,
            "read_paths": [p.as_dict() for p in self.read_paths],
            "blind_spots": [b.as_dict() for b in self.blind_spots],
            "notes": self.notes,
            "error": self.error,
            "unavailable": self.unavailable.as_dict() if self.unavailable else None,
        }


def _open_offline(workspace: Workspace, target: TargetDef) -> tuple[Connector | None, list[str]]:
    """The target's connector, opened the way the runner opens it; when its credentials cannot
    be resolved here, opened with placeholders (capabilities never depend on them)."""
    try:
        return open_connector(workspace, target), []
    except SecretError as exc:
        connector = registry.open_connector(
            target.name, target.target_class, registry.placeholders(dict(target.connection))
        )
        if connector is not None:
            readpaths.attach(workspace, target.name, connector)  # as the runner opens it
        return connector, [f"credentials not resolvable here ({exc}); capabilities read without"]


def _blind(found: TargetCoverage, why: str) -> TargetCoverage:
    """``found`` with every layer a blind spot for ``why``."""
    found.error = found.error or why
    found.layers = dict.fromkeys(LAYERS, "blind")
    found.blind_spots = [BlindSpot(found.target, layer, why) for layer in LAYERS]
    return found


def target_coverage(workspace: Workspace, target: TargetDef) -> TargetCoverage:
    """What Provisor can do in ``target`` and where removal there cannot be verified."""
    found = TargetCoverage(
        target=target.name,
        target_class=target.target_class.value,
        category=CATEGORY[target.target_class],
        channel=channel(target),
        owner=target.owner,
    )
    name = target.name
    if target.target_class is TargetClass.MANUAL:
        found.layers = dict.fromkeys(LAYERS, "attested")
        why = (
            "manual target: people remove access; removal counts as verified only once a second "
            "person attests the task or an imported user export shows it"
        )
        found.blind_spots = [BlindSpot(name, layer, why) for layer in LAYERS]
        return found
    try:
        connector, notes = _open_offline(workspace, target)
    except (ProvisorError, ImportError, ValueError, TypeError) as exc:
        return _blind(found, f"the connector cannot be loaded: {exc}")
    found.notes.extend(notes)
    if connector is None:  # a non-manual class without a built-in connector
        return _blind(found, "no connector for this target class")
    try:
        capabilities = connector.capabilities()
        incremental = callable(getattr(connector, "list_changed", None))
        # connectors that show their membership reads work before they count (SCIM, LDAP)
        probes = bool(getattr(connector, "proves_membership", False))
    finally:
        connector.close()
    found.write = [c.value for c in WRITE if c in capabilities]
    found.read_back = [c.value for c in (Capability.READ, Capability.LIST) if c in capabilities]
    if incremental:
        with workspace.sessions() as session:
            shown = readpaths.change_filter_shown(session, name)
        found.read_back.append("changes-since" if shown else "changes-since (not shown yet)")
        if not shown:
            found.notes.append(
                "incremental reads are not relied on until a run has listed every account "
                "Provisor changed in its window; until then reconciliation reads in full"
            )
    found.sessions = Capability.SESSIONS in capabilities
    readable = Capability.READ in capabilities
    if readable:
        found.layers["account"] = "read back"
    else:
        found.layers["account"] = "blind"
        found.blind_spots.append(
            BlindSpot(name, "account", "the connector cannot read an account back")
        )
    found.read_paths = readpaths.load(workspace, name)
    entitlements = readable and Capability.ENTITLEMENTS in capabilities
    _entitlements_layer(found, target, entitlements, probes)
    _sessions_layer(found)
    return found


def _entitlements_layer(
    found: TargetCoverage, target: TargetDef, readable: bool, probes: bool
) -> None:
    """Entitlements are read back where the connector reads them and, when it shows its
    membership reads first, one has been shown to work."""
    trusted = [
        p.path
        for p in found.read_paths
        if p.status == "trusted" and p.path != "sessions" and not p.path.startswith("computed:")
    ]
    if not target.entitlements:
        found.layers["entitlements"] = "none defined"
    elif readable and not probes:
        found.layers["entitlements"] = "read back"
    elif readable and trusted:
        found.layers["entitlements"] = f"read back ({trusted[0]})"
    elif readable:
        found.layers["entitlements"] = "not shown"
        why = (
            "no membership read is shown to work: "
            + "; ".join(f"{p.path}: {p.detail}" for p in found.read_paths)
            if found.read_paths
            else "no membership read has been shown to work yet: run 'provisor targets check'"
        )
        found.blind_spots.append(BlindSpot(found.target, "entitlements", why))
    else:
        found.layers["entitlements"] = "blind"
        found.blind_spots.append(
            BlindSpot(
                found.target, "entitlements", "the connector cannot read or change entitlements"
            )
        )


def _sessions_layer(found: TargetCoverage) -> None:
    sessions_read = next((p for p in found.read_paths if p.path == "sessions"), None)
    if found.sessions and sessions_read is not None and sessions_read.status == "untrusted":
        found.layers["sessions"] = "not shown"
        found.blind_spots.append(BlindSpot(found.target, "sessions", sessions_read.detail))
    elif found.sessions:
        found.layers["sessions"] = "read back"
    else:
        found.layers["sessions"] = "blind"
        found.blind_spots.append(
            BlindSpot(
                found.target,
                "sessions",
                "no session interface: open sessions and tokens can be neither seen nor revoked "
                "from here; disabling or deleting the account is the only control",
            )
        )


def coverage(workspace: Workspace) -> list[TargetCoverage]:
    """The coverage of every target in the policy, by name."""
    targets = workspace.compiled.targets
    found = [target_coverage(workspace, targets[name]) for name in sorted(targets)]
    with workspace.sessions() as session:
        down = circuit.unavailable(session, targets)
    for each in found:
        each.unavailable = down.get(each.target)
    return found
