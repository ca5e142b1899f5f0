"""Desired-state throughput: identities evaluated per second against a large policy.

Generates a policy with --rules birthright rules over --targets targets (each rule anchored on
an attribute value, as real birthright rules are, a few with extra conditions and roles) and
--identities identities, then computes desired access for every identity: once as it is, and
once in the same run with a generated user name (a template with transliteration) made for
each person as well, as a plan with ``generated:`` in the policy does.
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

DEPARTMENTS = [f"dept-{i}" for i in range(40)]
LOCATIONS = [f"site-{i}" for i in range(12)]
TITLES = [f"title-{i}" for i in range(60)]
FIRST = ["Zoë", "John", "Łukasz", "Søren", "Ana María", "Владимир", "Aoife", "José"]
LAST = ["O'Brien-Ñúñez", "Doe", "Żółć", "Æbelø", "van der Berg", "Ильич", "Nguyễn", "Smith"]
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
            "last_name": rng.choice(LAST),
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
    plain, grants = _evaluate(compiled, identities, expressions=False)
    made, _ = _evaluate(compiled, identities, expressions=True)
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


def _evaluate(
    compiled: Any, identities: list[IdentityState], expressions: bool
) -> tuple[float, int]:
    """Seconds to work out everyone's desired access (and, with ``expressions``, their
    generated user name's first candidate), and the entitlement grants found."""
    started = time.perf_counter()
    grants = 0
    for state in identities:
        desired = desired_access(compiled, state)
        grants += sum(len(t.entitlements) for t in desired.targets.values())
        if expressions and desired.targets:
            names.stem(USER_NAMES, state.attributes)
    return time.perf_counter() - started, grants


if __name__ == "__main__":
    main()
