"""Mass-change guard: when one batch would deprovision too many identities, or remove too much
access in one target, at once.

Does: decide, from the number of identities a batch would move to terminated or suspended and
the size of the active population, whether the batch must be held for approval (``hold_reason``);
and from the removals a plan batch would write in one target against the accounts it manages
there (``removals_reason``, with per-target ``Limits``). Say why.
Does not: count anything itself or store holds; the engine does both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Hold above ``max_share`` of the managed accounts or above ``max_count`` removals, never
    for fewer than ``min_count``."""

    max_share: float = 0.10
    max_count: int = 50
    min_count: int = 5


def removals_reason(removals: int, managed: int, where: str, limits: Limits) -> str | None:
    """Why ``removals`` (disables, deletes, entitlement removals) planned at once in ``where``
    must wait for approval, or None. ``managed``: the accounts Provisor manages there."""
    if removals < limits.min_count:
        return None
    if removals > limits.max_count:
        return f"{where}: {removals} removals planned at once (limit {limits.max_count})"
    share = removals / managed if managed else 1.0
    if share > limits.max_share:
        return (
            f"{where}: {removals} removals planned at once against {managed} managed accounts "
            f"({share:.0%}; limit {limits.max_share:.0%})"
        )
    return None


def hold_reason(
    affected: int, active_population: int, *, max_share: float, max_count: int, min_count: int
) -> str | None:
    """Why ``affected`` deprovisioning transitions must wait for approval, or None if they may go.

    Holds when more than ``max_count`` identities, or more than ``max_share`` of the active
    population, would be terminated or suspended, but never for fewer than ``min_count``.
    """
    if affected < min_count:
        return None
    if affected > max_count:
        return f"{affected} identities would be terminated or suspended (limit {max_count})"
    share = affected / active_population if active_population else 1.0
    if share > max_share:
        return (
            f"{affected} of {active_population} active identities ({share:.0%}) would be "
            f"terminated or suspended (limit {max_share:.0%})"
        )
    return None
