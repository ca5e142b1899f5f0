"""Proof of removal, judged: what one read of a leaver's accounts shows, layer by layer.

Does: judge each layer of a leaver's access in one target — ``account``, ``entitlements``,
``sessions`` — as ``verified-removed``, ``still-present``, ``unverifiable`` (with why; a
``structural`` blind spot when the target itself cannot show the layer) or, for an account the
leaver action deliberately keeps enabled, ``kept-by-policy``: from an account read live
(``judge_record``), from what people and imported exports showed for a manual target
(``judge_manual``), or from what was last observed when the target cannot be read
(``unreadable``); combine several accounts (worst first) and give the bundle's outcome
(``pass``, ``incomplete``, ``fail``).
Does not: read targets, query the store or write files; ``provisor.engine.leavers`` gathers
the inputs and keeps the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from provisor.domain.accounts import AccountRecord, Capability
from provisor.domain.plan import OpKind
from provisor.domain.policy import LeaverAction, TargetDef

FORMAT = "provisor.leaver-evidence/1"
REMOVED, PRESENT, UNVERIFIABLE, KEPT = (
    "verified-removed",
    "still-present",
    "unverifiable",
    "kept-by-policy",
)
LAYERS = ("account", "entitlements", "sessions")
# worst first: the state a layer takes when several accounts disagree
RANK = {PRESENT: 0, UNVERIFIABLE: 1, KEPT: 2, REMOVED: 3}


class Observation(NamedTuple):
    """An account of a manual target as an export or an attestation showed it."""

    account: str
    enabled: bool
    entitlements: frozenset[str]
    sessions: int | None
    source: str
    observed_at: datetime


@dataclass
class Layer:
    layer: str
    state: str
    why: str
    # a blind spot of the target itself (no session interface), not something to chase
    structural: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def worst_of(layers: Sequence[Layer]) -> Layer:
    return min(layers, key=lambda item: RANK[item.state])


def day(when: datetime | None) -> str:
    return when.astimezone(UTC).isoformat() if when is not None else ""


def outcome(layers: Sequence[Layer]) -> str:
    """``fail`` when something is still present; ``incomplete`` when a layer could not be
    verified for a reason other than a blind spot of the target itself; else ``pass``."""
    if any(item.state == PRESENT for item in layers):
        return "fail"
    if any(item.state == UNVERIFIABLE and not item.structural for item in layers):
        return "incomplete"
    return "pass"


def judge_record(
    target: TargetDef,
    record: AccountRecord,
    capabilities: frozenset[Capability],
    delete_due: datetime | None,
    now: datetime,
) -> list[Layer]:
    """The layers of one account that still exists, as read now.

    The account layer: ``disable`` and ``delete`` want it disabled (``delete`` wants it gone
    once the grace period has ended); ``remove-entitlements`` keeps it enabled on purpose."""
    layers: list[Layer] = []
    action = target.leaver_action
    if record.enabled:
        if action is LeaverAction.REMOVE_ENTITLEMENTS:
            layers.append(
                Layer(
                    "account",
                    KEPT,
                    f"account {record.account} is enabled: the leaver action "
                    "remove-entitlements keeps it; access is judged by its entitlements",
                )
            )
        else:
            layers.append(Layer("account", PRESENT, f"account {record.account} is enabled"))
    elif action is LeaverAction.DELETE and delete_due is not None and delete_due <= now:
        layers.append(
            Layer(
                "account",
                PRESENT,
                f"account {record.account} is disabled but still exists; deletion was due "
                f"{delete_due.date().isoformat()}",
            )
        )
    else:
        due = (
            f"; deletion due {delete_due.date().isoformat()}"
            if action is LeaverAction.DELETE and delete_due is not None
            else ""
        )
        layers.append(Layer("account", REMOVED, f"account {record.account} is disabled{due}"))
    if record.entitlements:
        held = ", ".join(sorted(record.entitlements))
        layers.append(Layer("entitlements", PRESENT, f"still holds {held}"))
    elif not record.entitlements_shown:
        why = record.unread["entitlements"]
        layers.append(Layer("entitlements", UNVERIFIABLE, f"membership cannot be read: {why}"))
    elif Capability.ENTITLEMENTS in capabilities or not target.entitlements:
        layers.append(Layer("entitlements", REMOVED, "holds no entitlement"))
    else:
        layers.append(
            Layer(
                "entitlements",
                UNVERIFIABLE,
                "the connector cannot read entitlements in this target",
                structural=True,
            )
        )
    if record.sessions is None:
        why = (
            "the target has no session interface: open sessions and tokens cannot be seen"
            if Capability.SESSIONS not in capabilities
            else "the target did not report sessions for this account"
        )
        # only a target without a session interface is a blind spot of its own; one that has
        # sessions but did not report them leaves the proof incomplete
        structural = Capability.SESSIONS not in capabilities
        layers.append(Layer("sessions", UNVERIFIABLE, why, structural=structural))
    elif record.sessions > 0:
        layers.append(Layer("sessions", PRESENT, f"{record.sessions} open sessions"))
    else:
        layers.append(Layer("sessions", REMOVED, "no open session"))
    return layers


def gone(why: str) -> list[Layer]:
    return [Layer(layer, REMOVED, why) for layer in LAYERS]


def combine(per_account: Sequence[list[Layer]]) -> list[Layer]:
    """One layer list for several accounts: the worst state of each layer, every reason."""
    combined = []
    for index, layer in enumerate(LAYERS):
        found = [layers[index] for layers in per_account]
        worst = worst_of(found)
        whys = [f.why for f in found if f.state == worst.state]
        combined.append(Layer(layer, worst.state, "; ".join(whys), worst.structural))
    return combined


def attestations(tasks: Sequence[dict[str, Any]], *kinds: OpKind) -> str:
    """Who verified the removal tasks of these kinds, and how."""
    wanted = {k.value for k in kinds}
    done = [t for t in tasks if t["operation"] in wanted and t["status"] == "verified"]
    return "; ".join(
        f"task {t['task']} {t['operation']}{' ' + t['entitlement'] if t['entitlement'] else ''} "
        f"verified by {t['verified_by']} ({t['verification']}) at {t['verified_at']}"
        for t in done
    )


def judge_manual(
    target: TargetDef,
    rows: Sequence[Observation],
    tasks: Sequence[dict[str, Any]],
    last_export: datetime | None,
    ended: datetime,
    delete_due: datetime | None = None,
) -> list[Layer]:
    """A manual target's layers from what people and exports showed since the termination."""
    since = ended.date().isoformat()
    if not rows:
        if last_export is not None and last_export >= ended:
            return gone(f"absent from the user export imported {day(last_export)}")
        attested = attestations(tasks, OpKind.DELETE)
        if attested:
            return gone(f"deletion attested: {attested}")
        why = (
            f"no user export imported since the termination ({since}) and no verified "
            "deletion task; import the application's user export or verify the tasks"
        )
        return [Layer(layer, UNVERIFIABLE, why) for layer in LAYERS]
    per_account = []
    for row in rows:
        seen = f"{row.source} at {day(row.observed_at)}"
        if row.observed_at < ended:
            why = (
                f"account {row.account} last observed before the termination ({seen}); "
                "import the application's user export or verify the removal tasks"
            )
            per_account.append([Layer(layer, UNVERIFIABLE, why) for layer in LAYERS])
            continue
        record = AccountRecord(row.account, row.account, row.enabled, row.entitlements, None, None)
        # judged as of the observation: that is what it shows
        layers = judge_record(
            target, record, frozenset({Capability.ENTITLEMENTS}), delete_due, row.observed_at
        )
        for layer in layers:
            if layer.state == REMOVED:
                kinds = {
                    "account": (OpKind.DISABLE, OpKind.DELETE),
                    "entitlements": (OpKind.REMOVE_ENTITLEMENT,),
                    "sessions": (OpKind.REVOKE_SESSIONS,),
                }[layer.layer]
                layer.why += f" (observed: {seen})"
                attested = attestations(tasks, *kinds)
                if attested:
                    layer.why += f"; {attested}"
        sessions = layers[2]
        if row.sessions == 0:
            sessions.state, sessions.structural = REMOVED, False
            sessions.why = f"no open session (observed: {seen})"
            attested = attestations(tasks, OpKind.REVOKE_SESSIONS)
            if attested:
                sessions.why += f"; {attested}"
        elif row.sessions:
            sessions.state, sessions.structural = PRESENT, False
            sessions.why = f"{row.sessions} open sessions (observed: {seen})"
        else:
            sessions.structural = False
            sessions.why = (
                "no export or attestation shows the sessions: the revoke-sessions task is not "
                "verified"
            )
        per_account.append(layers)
    return combine(per_account)


def delete_due(
    target: TargetDef, ops: Sequence[dict[str, Any]], ended: datetime
) -> datetime | None:
    if target.leaver_action is not LeaverAction.DELETE:
        return None
    planned = [o["not_before"] for o in ops if o["kind"] == "delete" and o["not_before"]]
    if planned:
        return min(datetime.fromisoformat(p) for p in planned)
    return ended + timedelta(days=target.grace_days)


def unreadable(
    target: TargetDef,
    stored: Sequence[tuple[AccountRecord, datetime]],
    error: str,
    now: datetime,
) -> list[Layer]:
    """The layers of a target that cannot be read now: unverifiable, except what Provisor's own
    store last observed still there (``stored``: records with when they were observed) — that
    is present (a fail), not merely unknown."""
    layers = []
    for index, name in enumerate(LAYERS):
        present = [
            f"{judged[index].why} (as last observed {day(at)}; {error})"
            for record, at in stored
            if (judged := judge_record(target, record, frozenset(), None, now))[index].state
            == PRESENT
        ]
        layers.append(
            Layer(name, PRESENT, "; ".join(present))
            if present
            else Layer(name, UNVERIFIABLE, error)
        )
    return layers


def failures(found: Sequence[tuple[str, Sequence[Layer]]]) -> list[str]:
    """``target layer: state: why`` for every layer that keeps a bundle from passing."""
    return [
        f"{target} {x.layer}: {x.state}: {x.why}"
        for target, layers in found
        for x in layers
        if x.state == PRESENT or (x.state == UNVERIFIABLE and not x.structural)
    ]
