"""An exact rescind on plain data: what was held at the termination is recorded with until
when each item counts, given back in place of today's policy, and the differences said."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from provisor.domain.desired import desired_access, explain, held_then
from provisor.domain.held import held_from_json
from provisor.domain.lifecycle import EventKind, LifecycleEvent, Rescinded, fold
from tests.domain.test_desired_and_plan import POLICY
from tests.domain.test_desired_and_plan import compiled as compiled_with

HIRED = datetime(2026, 1, 10, tzinfo=UTC)
LEFT = datetime(2026, 5, 1, tzinfo=UTC)
BACK = datetime(2026, 5, 11, tzinfo=UTC)  # the rescind, ten days later
BASE = {"employment_type": "employee", "department": "Eng", "location": "London"}
# E2's exception allows holding erp:pay and erp:vendor together
ALLOWED = [dict(POLICY["exceptions"][0], allow_sod=["pay-vendor"])]


def compiled(**changes: Any) -> Any:
    return compiled_with(**{"exceptions": ALLOWED, **changes})


def history(*extra: LifecycleEvent, who: str = "E2") -> list[LifecycleEvent]:
    hire = LifecycleEvent(who, EventKind.HIRE, HIRED, HIRED, BASE)
    return [hire, LifecycleEvent(who, EventKind.TERMINATE, LEFT, LEFT), *extra]


def held_at_leaving(events: list[LifecycleEvent], policy: Any = None, who: str = "E2") -> Any:
    policy = policy or compiled()
    before = fold(who, events, as_of=LEFT - timedelta(microseconds=1))
    termination = next(e for e in events if e.kind is EventKind.TERMINATE)
    return held_then(policy, before, termination.key, termination.effective)


def test_the_fold_says_which_termination_was_rescinded_and_when_the_person_next_changed() -> None:
    events = history(LifecycleEvent("E2", EventKind.RESCIND, BACK, BACK))
    state = fold("E2", events, as_of=BACK + timedelta(days=1))
    termination = events[1]
    assert state.rescinded == Rescinded(termination.key, LEFT, BACK)
    move = LifecycleEvent("E2", EventKind.MOVE, BACK + timedelta(days=2), BACK, {"title": "Lead"})
    later = fold("E2", [*events, move], as_of=BACK + timedelta(days=3))
    assert later.rescinded == Rescinded(termination.key, LEFT, BACK, move.effective)
    # a change back-dated to before the rescind is part of what is given back against
    earlier = replace(move, effective=BACK - timedelta(days=2), key="")
    assert fold("E2", [*events, earlier], as_of=BACK).rescinded == Rescinded(
        termination.key, LEFT, BACK
    )
    assert fold("E2", history(), as_of=BACK).rescinded is None


def test_what_was_held_is_recorded_with_until_when_each_item_counts() -> None:
    held = held_at_leaving(history())
    erp = held.targets["erp"]
    assert erp["pay"].until is None  # an assignment without expiry
    assert erp["vendor"].until == datetime(2027, 1, 1, tzinfo=UTC)  # the day after 2026-12-31
    assert held.targets["dir"]["staff"].until is None  # a rule
    again = held_from_json(held.termination, held.terminated_at, held.as_json())
    assert again == held


def test_a_rescind_gives_back_what_was_held_not_what_todays_policy_derives() -> None:
    rome = {"location": "Rome"}
    move = LifecycleEvent("E2", EventKind.MOVE, LEFT + timedelta(days=3), BACK, rome)
    events = history(move, LifecycleEvent("E2", EventKind.RESCIND, BACK, BACK))
    held = replace(held_at_leaving(events), until=BACK + timedelta(days=30))
    state = fold("E2", events, as_of=BACK)
    today = desired_access(compiled(), state)
    assert "eng" not in today.targets["dir"].entitlements  # Rome: the eng rule does not match
    given = desired_access(compiled(), state, held=held)
    assert set(given.targets["dir"].entitlements) == {"staff", "vpn", "eng"}
    assert set(given.targets) == {"dir", "gh", "erp"}
    restored = given.restored
    assert restored is not None
    assert restored.beyond_policy == ("dir:eng", "gh", "gh:members")
    assert restored.not_given == () and restored.ended == ()
    assert given.review_at == BACK + timedelta(days=30)
    why = explain(compiled(), state, "dir", "eng", held)
    assert why.granted and why.reasons == (
        "given back by a rescind: held at the termination of 2026-05-01 (rule eng)",
    )
    assert "today's policy would not grant it" in why.why_not[0]


def test_a_grant_that_ended_since_is_not_given_back_and_one_made_since_is_not_either() -> None:
    events = history(LifecycleEvent("E2", EventKind.RESCIND, BACK, BACK))
    held = replace(held_at_leaving(events), until=BACK + timedelta(days=30))
    # the exception expired between the termination and the rescind; a new assignment of
    # the gh-admin role was approved while the person was gone
    policy = dict(POLICY)
    policy["exceptions"] = [dict(ALLOWED[0], expires="2026-05-05")]
    policy["assignments"] = [
        *POLICY["assignments"],
        {"identity": "E2", "role": "gh-admin", "approver": "cto", "granted": "2026-05-06"},
    ]
    held = replace(held, targets={**held.targets, "erp": _expiring(held, date(2026, 5, 5))})
    state = fold("E2", events, as_of=BACK)
    given = desired_access(compiled(**policy), state, held=held)
    assert set(given.targets["erp"].entitlements) == {"pay"}
    assert given.restored is not None
    assert given.restored.ended == ("erp:vendor: no assignment or exception gives it any more",)
    assert given.restored.not_given == ("gh:admins",)
    assert (
        "not given back: not held when the termination of 2026-05-01"
        in (given.targets["gh"].withheld["admins"])
    )


def _expiring(held: Any, expires: date) -> Any:
    erp = dict(held.targets["erp"])
    end = datetime(expires.year, expires.month, expires.day, tzinfo=UTC) + timedelta(days=1)
    erp["vendor"] = replace(erp["vendor"], until=end)
    return erp


def test_a_target_gone_from_the_policy_is_said_and_separation_of_duties_still_holds() -> None:
    events = history(LifecycleEvent("E2", EventKind.RESCIND, BACK, BACK))
    held = replace(held_at_leaving(events), until=BACK + timedelta(days=30))
    policy = dict(POLICY)
    policy["targets"] = [t for t in POLICY["targets"] if t["name"] != "gh"]
    policy["rules"] = [r for r in POLICY["rules"] if r["name"] != "bots"]
    policy["roles"] = [r for r in POLICY["roles"] if r["name"] != "dev" and r["name"] != "gh-admin"]
    policy["rules"] = [dict(r, roles=[]) for r in policy["rules"]]
    policy["assignments"] = [a for a in POLICY["assignments"] if a["role"] != "gh-admin"]
    policy["exceptions"] = [dict(POLICY["exceptions"][0], allow_sod=[])]
    given = desired_access(compiled(**policy), fold("E2", events, as_of=BACK), held=held)
    assert given.restored is not None
    assert "gh: no longer a target in the policy" in given.restored.ended
    assert [v.constraint for v in given.sod if v.blocked] == ["pay-vendor"]
    assert "pay" not in given.targets["erp"].entitlements


def test_without_a_record_or_once_terminated_again_todays_policy_decides() -> None:
    events = history(LifecycleEvent("E2", EventKind.RESCIND, BACK, BACK))
    held = replace(held_at_leaving(events), until=BACK + timedelta(days=30))
    state = fold("E2", events, as_of=BACK)
    assert desired_access(compiled(), state).restored is None
    again = LifecycleEvent("E2", EventKind.TERMINATE, BACK + timedelta(days=1), BACK)
    gone = fold("E2", [*events, again], as_of=BACK + timedelta(days=2))
    assert desired_access(compiled(), gone, held=held).targets == {}


def test_a_hire_in_effect_is_never_rescinded_however_the_rescind_is_dated() -> None:
    hire = LifecycleEvent("E2", EventKind.HIRE, HIRED, HIRED, BASE)
    # made on the day of the leave, dated back before the hire
    backdated = LifecycleEvent(
        "E2", EventKind.RESCIND, HIRED - timedelta(days=1), LEFT, ref=hire.key
    )
    state = fold("E2", [hire, backdated], as_of=LEFT)
    assert state.state is not None and state.state.value == "active"
    assert state.anomalies()[0].note == "the hire has taken effect; terminate instead"
    # one made before the start moves it: the rescinded hire is no next change
    moved = LifecycleEvent(
        "E2", EventKind.RESCIND, HIRED - timedelta(days=5), HIRED - timedelta(days=5), ref=hire.key
    )
    early = fold("E2", [hire, moved], as_of=HIRED - timedelta(days=2))
    assert early.state is None and early.next_change is None
