"""Desired access shared across identities: what one identity gets from the shared dict is what
it gets computed on its own, whatever its lifecycle state, kind, attributes (as the matchers
see them, as text), assignments and exceptions."""

from __future__ import annotations

from datetime import date
from typing import Any

from provisor.domain.desired import SharedAccess, desired_access
from provisor.domain.lifecycle import EventKind, IdentityState, LifecycleEvent, fold
from tests.domain.test_desired_and_plan import NOW, compiled


def someone(identity: str, *extra: EventKind, **attrs: Any) -> IdentityState:
    hire = LifecycleEvent(identity, EventKind.HIRE, date(2026, 1, 10), NOW, attrs)
    events = [hire] + [LifecycleEvent(identity, kind, date(2026, 5, 1), NOW) for kind in extra]
    return fold(identity, events, as_of=NOW)


PEOPLE = [
    someone("A1", employment_type="employee", department="Eng", location="London"),
    someone("A2", employment_type="employee", department="Eng", location="London", email="x"),
    someone("A3", employment_type="employee", department="Eng", location="Paris"),
    someone("A4", employment_type="contractor", department="Eng", location="Berlin"),
    someone("A5", EventKind.LEAVE, employment_type="employee", department="Eng", location="London"),
    someone("A6", EventKind.TERMINATE, employment_type="employee", department="Eng"),
    someone("S1", kind="service_account", department="Eng", location="London"),
    someone("S2", kind="service_account", department="Engineering"),
    someone(
        "S3",
        kind="service_account",
        employment_type="employee",
        department="Eng",
        location="London",
    ),
    someone("A7", employment_type="employee", department="Eng", location=["London"]),
    someone("A8", employment_type="employee", department="Eng", location=""),
    someone("A9", employment_type="employee", department="Eng"),
    # E1 holds an assignment, E2 and E3 exceptions: theirs are never shared
    someone("E1", employment_type="employee", department="Eng", location="London"),
    someone("E2", employment_type="employee", department="Eng", location="London"),
    someone("E3", employment_type="employee", department="Eng", location="London"),
    someone("A10", employment_type="employee", department="Eng", location="London"),
]


def test_shared_access_equals_access_computed_alone() -> None:
    policy = compiled()
    shared: SharedAccess = {}
    for state in PEOPLE + PEOPLE:
        assert desired_access(policy, state, shared) == desired_access(policy, state)


def test_equal_attributes_share_one_build_and_personal_grants_none() -> None:
    policy = compiled()
    shared: SharedAccess = {}
    people = {state.identity: state for state in PEOPLE}
    first = desired_access(policy, people["A1"], shared)
    same = desired_access(policy, people["A2"], shared)  # differs in an attribute no rule reads
    other = desired_access(policy, people["A3"], shared)
    assert same.targets is first.targets and same.identity == "A2"
    assert other.targets is not first.targets
    e1 = desired_access(policy, people["E1"], shared)
    assert e1.targets is not first.targets and "admins" in e1.targets["gh"].entitlements
    assert "admins" not in first.targets["gh"].entitlements


def test_rules_read_attributes_anywhere_in_their_matchers() -> None:
    rules = [
        {
            "name": "deep",
            "when": {
                "any": [
                    {
                        "all": [
                            {"attr": "department", "equals": "Eng"},
                            {"not": {"attr": "title", "prefix": "Intern"}},
                        ]
                    },
                    {"attr": "location", "regex": "^Mars"},
                ]
            },
            "grant": [{"target": "dir", "entitlements": ["eng"]}],
        }
    ]
    policy = compiled(rules=rules, assignments=[], exceptions=[], sod=[])
    assert policy.rule_attributes == ("department", "location", "title")
    shared: SharedAccess = {}
    lead = someone("B1", department="Eng", title="Lead")
    intern = someone("B2", department="Eng", title="Intern, summer")
    martian = someone("B3", department="Eng", title="Intern", location="Mars base")
    assert set(desired_access(policy, lead, shared).targets) == {"dir"}
    assert desired_access(policy, intern, shared).targets == {}
    assert set(desired_access(policy, martian, shared).targets) == {"dir"}
