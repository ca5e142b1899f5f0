"""Mass-change guard: when one batch would deprovision too many identities at once.

Does: decide, from the number of identities a batch would move to terminated or suspended and
the size of the active population, whether the batch must be held for approval, and say why.
Does not: count anything itself or store holds; the engine does both.
"""

from __future__ import annotations


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
