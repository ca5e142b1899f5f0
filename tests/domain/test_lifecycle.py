"""Lifecycle fold on plain data: transitions, bitemporal queries, order independence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from provisor.domain.lifecycle import EventKind, LifecycleEvent, LifecycleState, fold

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(kind: EventKind, day: int, recorded_day: int = 0, **attrs: str) -> LifecycleEvent:
    return LifecycleEvent(
        "E1", kind, T0 + timedelta(days=day), T0 + timedelta(days=recorded_day), attrs
    )


def state_at(events: list[LifecycleEvent], day: int, known: int | None = None) -> LifecycleState:
    known_at = T0 + timedelta(days=known) if known is not None else None
    result = fold("E1", events, as_of=T0 + timedelta(days=day), known_at=known_at).state
    assert result is not None
    return result


def test_joiner_leave_return_leaver() -> None:
    events = [
        ev(EventKind.HIRE, 0, name="Ann", department="Eng"),
        ev(EventKind.LEAVE, 10),
        ev(EventKind.RETURN, 20),
        ev(EventKind.TERMINATE, 30),
    ]
    assert state_at(events, 5) is LifecycleState.ACTIVE
    assert state_at(events, 15) is LifecycleState.LEAVE
    assert state_at(events, 25) is LifecycleState.ACTIVE
    final = fold("E1", events, as_of=T0 + timedelta(days=40))
    assert final.state is LifecycleState.TERMINATED
    assert final.terminated_at == T0 + timedelta(days=30)
    assert final.attributes == {"name": "Ann", "department": "Eng"}


def test_future_hire_is_pre_hire_with_attributes() -> None:
    events = [ev(EventKind.HIRE, 10, name="Ann")]
    early = fold("E1", events, as_of=T0)
    assert early.state is LifecycleState.PRE_HIRE
    assert early.attributes == {"name": "Ann"}
    assert early.next_change == T0 + timedelta(days=10)


def test_withdrawn_offer_before_start() -> None:
    events = [ev(EventKind.HIRE, 10, name="Ann"), ev(EventKind.TERMINATE, 5)]
    assert state_at(events, 3) is LifecycleState.PRE_HIRE
    assert state_at(events, 12) is LifecycleState.TERMINATED


def test_rehire_starts_a_new_period() -> None:
    events = [ev(EventKind.HIRE, 0), ev(EventKind.TERMINATE, 10), ev(EventKind.REHIRE, 50)]
    state = fold("E1", events, as_of=T0 + timedelta(days=60))
    assert state.state is LifecycleState.ACTIVE
    assert state.employment_start == T0 + timedelta(days=50)
    assert state.terminated_at is None


def test_rescind_within_window_voids_termination() -> None:
    events = [ev(EventKind.HIRE, 0), ev(EventKind.TERMINATE, 10), ev(EventKind.RESCIND, 12)]
    state = fold("E1", events, as_of=T0 + timedelta(days=20))
    assert state.state is LifecycleState.ACTIVE
    assert state.terminated_at is None


def test_rescind_after_window_is_refused() -> None:
    events = [ev(EventKind.HIRE, 0), ev(EventKind.TERMINATE, 10), ev(EventKind.RESCIND, 60)]
    state = fold("E1", events, as_of=T0 + timedelta(days=70), rescind_window=timedelta(days=30))
    assert state.state is LifecycleState.TERMINATED
    (bad,) = state.anomalies()
    assert "rescind window of 30 days" in bad.note


def test_impossible_transition_is_noted_not_applied() -> None:
    events = [ev(EventKind.HIRE, 0), ev(EventKind.RETURN, 5)]
    state = fold("E1", events, as_of=T0 + timedelta(days=10))
    assert state.state is LifecycleState.ACTIVE
    (bad,) = state.anomalies()
    assert bad.note == "return is not possible from state active"


def test_conversion_changes_employment_type_only() -> None:
    events = [
        ev(EventKind.HIRE, 0, employment_type="contractor", name="Ann"),
        ev(EventKind.CONVERT, 5, employment_type="employee"),
    ]
    state = fold("E1", events, as_of=T0 + timedelta(days=6))
    assert state.attributes == {"employment_type": "employee", "name": "Ann"}
    assert state.state is LifecycleState.ACTIVE


def test_bitemporal_as_known_at() -> None:
    # A termination effective on day 10 that HR only reported on day 20.
    events = [ev(EventKind.HIRE, 0), ev(EventKind.TERMINATE, 10, recorded_day=20)]
    assert state_at(events, 15, known=15) is LifecycleState.ACTIVE
    assert state_at(events, 15, known=25) is LifecycleState.TERMINATED
    assert state_at(events, 15) is LifecycleState.TERMINATED


def test_duplicate_keeps_first_recording() -> None:
    first = ev(EventKind.HIRE, 0, recorded_day=1, name="Ann")
    again = ev(EventKind.HIRE, 0, recorded_day=5, name="Ann")
    assert first.key == again.key
    state = fold("E1", [again, first], as_of=T0 + timedelta(days=3), known_at=T0 + timedelta(2))
    assert state.state is LifecycleState.ACTIVE


KINDS = [k for k in EventKind if k is not EventKind.RESCIND]

event_strategy = st.builds(
    lambda kind, day, recorded, dept: LifecycleEvent(
        "E1",
        kind,
        T0 + timedelta(days=day),
        T0 + timedelta(days=recorded),
        {"department": dept} if kind in (EventKind.HIRE, EventKind.MOVE) else {},
    ),
    st.sampled_from([*KINDS, EventKind.RESCIND]),
    st.integers(0, 60),
    st.integers(0, 3),
    st.sampled_from(["Eng", "Sales", "Ops"]),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(event_strategy, min_size=1, max_size=12),
    data=st.data(),
)
def test_any_interleaving_with_duplicates_gives_the_same_state(
    events: list[LifecycleEvent], data: st.DataObject
) -> None:
    """Out-of-order arrival and duplicates never change the outcome."""
    as_of = T0 + timedelta(days=70)
    in_order = fold("E1", sorted(events, key=LifecycleEvent.sort_key), as_of=as_of)
    duplicated = events + data.draw(st.lists(st.sampled_from(events), max_size=6))
    shuffled = data.draw(st.permutations(duplicated))
    other = fold("E1", shuffled, as_of=as_of)
    assert other.state == in_order.state
    assert other.attributes == in_order.attributes
    assert other.employment_start == in_order.employment_start
    assert other.terminated_at == in_order.terminated_at
    assert [t.event.key for t in other.timeline] == [t.event.key for t in in_order.timeline]
    # Applying a duplicate changes nothing.
    again = fold("E1", [*shuffled, data.draw(st.sampled_from(events))], as_of=as_of)
    assert again.state == other.state and again.attributes == other.attributes
