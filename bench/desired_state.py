"""Desired-state throughput: identities evaluated per second against a large policy.

Generates a policy with --rules birthright rules over --targets targets (each rule anchored on
an attribute value, as real birthright rules are, a few with extra conditions and roles) and
--identities identities, then computes desired access for every identity: once as it is, and
once in the same run with what a plan does for a generated user name with ``rename: true``
(a template with transliteration): whether what it is made from changed, and for the one
person in a hundred whose last name did, the name made again.
Prints one JSON line: {"bench": "desired_state", ..., "identities_per_s": N,
"identities_per_s_expressions": N, "ratio": R, "peak_rss_mb": M}.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from datetime import UTC, datetime
from typing import Any

from provisor.domain import names
from provisor.domain.desired import compile_policy, desired_access
from provisor.domain.lifecycle import IdentityState, LifecycleState
from provisor.domain.policy import Policy
from provisor.store.bulk import collector_paused

DEPARTMENTS = [f"dept-{i}" for i in range(40)]
LOCATIONS = [f"site-{i}" for i in range(12)]
TITLES = [f"title-{i}" for i in range(60)]
# about 50 first names and 20,000 last names, written in several scripts, as a workforce has
FIRST = [
    f"{n}{end}"
    for n in ("Zoë", "John", "Łukasz", "Søren", "Ana María", "Владимир", "Aoife", "José")
    for end in ("", "a", "o", "ine", "ette", "y")
]
SYLLABLES = ["O'Bri", "en", "Ñú", "ñez", "Żół", "ć", "Æbe", "lø", "van ", "der ", "Berg", "Иль"]
SYLLABLES += ["ич", "Ngu", "yễn", "Smi", "th", "Do", "e", "Kar", "lsson", "Mül", "ler", "Ross"]
USER_NAMES = ["{first_name|name}.{last_name|name}", "{first_name|initial|name}{last_name|name}"]


def make_policy(rules: int, targets: int, rng: random.Random) -> Policy:
    target_defs = [
        {
            "name": f"app{t}",
            "class": "scim",
            "owner": "it",
            "entitlements": [{"name": f"g{e}"} for e in range(20)],
        }
        for t in range(targets)
    ]
    roles = [
        {
            "name": f"role{r}",
            "grants": [
                {
                    "target": f"app{rng.randrange(targets)}",
                    "entitlements": [f"g{rng.randrange(20)}"],
                }
                for _ in range(3)
            ],
        }
        for r in range(20)
    ]
    rule_defs: list[dict[str, Any]] = []
    for r in range(rules):
        anchor = rng.choice(["department", "location", "title"])
        values = {"department": DEPARTMENTS, "location": LOCATIONS, "title": TITLES}[anchor]
        when: dict[str, Any] = {"attr": anchor, "equals": rng.choice(values)}
        if r % 4 == 0:
            when = {"all": [when, {"attr": "employment_type", "in": ["employee", "contractor"]}]}
        if r % 10 == 0:
            when = {"all": [when, {"not": {"attr": "cost_centre", "prefix": "CC-9"}}]}
        rule_defs.append(
            {
                "name": f"rule{r}",
                "when": when,
                "grant": [
                    {
                        "target": f"app{rng.randrange(targets)}",
                        "entitlements": [f"g{rng.randrange(20)}", f"g{rng.randrange(20)}"],
                    }
                ],
                "roles": [f"role{rng.randrange(20)}"] if r % 5 == 0 else [],
            }
        )
    # Two rules everybody matches, as "all staff" rules do.
    rule_defs.append(
        {
            "name": "all-staff",
            "when": {"attr": "employment_type", "exists": True},
            "grant": [{"target": "app0", "entitlements": ["g0"]}],
        }
    )
    return Policy.model_validate({"targets": target_defs, "roles": roles, "rules": rule_defs})


def make_identities(count: int, rng: random.Random, now: datetime) -> list[IdentityState]:
    states = []
    for i in range(count):
        attributes = {
            "department": rng.choice(DEPARTMENTS),
            "location": rng.choice(LOCATIONS),
            "title": rng.choice(TITLES),
            "employment_type": "contractor" if rng.random() < 0.15 else "employee",
            "cost_centre": f"CC-{rng.randrange(10)}{rng.randrange(100):02d}",
            "first_name": rng.choice(FIRST),
            "last_name": "".join(rng.choice(SYLLABLES) for _ in range(3)).strip(),
        }
        states.append(
            IdentityState(
                f"E{i}", LifecycleState.ACTIVE, attributes, now, None, now, None, (), now, None
            )
        )
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--targets", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(42)
    now = datetime.now(UTC)
    policy = make_policy(args.rules, args.targets, rng)
    identities = make_identities(args.identities, rng, now)
    compiled = compile_policy(policy)
    # each way three times, in turn, the fastest of each kept: the first pass also warms what both
    # use; the name filter's cache is emptied before each pass with expressions
    stored = _made_from(identities, rng)
    plain, made, grants = float("inf"), float("inf"), 0
    for _ in range(3):
        seconds, grants = _evaluate(compiled, identities, None)
        plain = min(plain, seconds)
        names.FILTERS["name"].cache_clear()  # type: ignore[attr-defined]
        made = min(made, _evaluate(compiled, identities, stored)[0])
    print(
        json.dumps(
            {
                "bench": "desired_state",
                "identities": args.identities,
                "rules": len(policy.rules),
                "targets": args.targets,
                "entitlement_grants": grants,
                "seconds": round(plain, 3),
                "identities_per_s": round(args.identities / plain),
                "seconds_expressions": round(made, 3),
                "identities_per_s_expressions": round(args.identities / made),
                "ratio": round(plain / made, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def _made_from(identities: list[IdentityState], rng: random.Random) -> dict[str, str]:
    """What each person's user name was made from, as the store keeps it: the same as now,
    but for one person in a hundred, whose last name has changed since."""
    stored = {}
    for state in identities:
        attributes = dict(state.attributes)
        if rng.random() < 0.01:
            attributes["last_name"] = "Before"
        stored[state.identity] = names.basis(USER_NAMES, attributes)
    return stored


@collector_paused()  # as the planner works: Python's cyclic collector paused
def _evaluate(
    compiled: Any, identities: list[IdentityState], stored: dict[str, str] | None
) -> tuple[float, int]:
    """Seconds to work out everyone's desired access (and, with ``stored`` — what each
    person's user name was made from — whether their name is to be made again, as a plan with
    ``rename: true`` does), and the entitlement grants found."""
    started = time.perf_counter()
    grants = 0
    made_from = names.basis_of(tuple(USER_NAMES))
    for state in identities:
        desired = desired_access(compiled, state)
        grants += sum(len(t.entitlements) for t in desired.targets.values())
        # a plan with rename: true asks whether what the name reads has changed, and only
        # then whether it is another name
        if (
            stored is not None
            and desired.targets
            and made_from(state.attributes) != stored[state.identity]
        ):
            names.stem(USER_NAMES, state.attributes)
    return time.perf_counter() - started, grants


if __name__ == "__main__":
    main()
