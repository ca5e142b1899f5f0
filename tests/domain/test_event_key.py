"""Event content keys: the definition is fixed, so keys already stored stay valid."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from provisor.domain.lifecycle import EventKind, LifecycleEvent, canonical_json, event_key, utc


def defined_key(
    identity: str, kind: EventKind, effective: datetime, attributes: dict[str, Any], ref: str | None
) -> str:
    """The key as defined: SHA-256 of the canonical JSON of the event's content, 32 hex digits."""
    body = {
        "identity": identity,
        "kind": str(kind),
        "effective": utc(effective).isoformat(),
        "attributes": attributes,
        "ref": ref,
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:32]


def test_keys_of_earlier_releases_are_unchanged() -> None:
    attrs = {"name": 'Zoë "Q" \\ O\'Neil', "manager": "E2", "x": [1, {"b": None, "a": 2}]}
    plus_two = timezone(timedelta(hours=2))
    assert (
        event_key("E1", EventKind.HIRE, datetime(2024, 1, 31, 9, 30, tzinfo=plus_two), attrs)
        == "68ee125906fbf3086485df1bb46090a2"
    )
    rescind = LifecycleEvent(
        "E1", EventKind.RESCIND, datetime(2024, 1, 31, tzinfo=UTC), datetime.now(UTC), ref="abc"
    )
    assert rescind.key == "3b561295b41a168aedb3e1549f43753a"


text = st.text(st.characters(codec="utf-8"), max_size=12)
values = st.one_of(st.none(), text, st.integers(), st.lists(text, max_size=3))


@settings(max_examples=300, deadline=None)
@given(
    identity=text,
    kind=st.sampled_from(list(EventKind)),
    effective=st.datetimes(
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))])
    ),
    attributes=st.dictionaries(text, values, max_size=6),
    ref=st.one_of(st.none(), text),
)
def test_key_matches_its_definition(
    identity: str,
    kind: EventKind,
    effective: datetime,
    attributes: dict[str, Any],
    ref: str | None,
) -> None:
    expected = defined_key(identity, kind, effective, attributes, ref)
    assert event_key(identity, kind, effective, attributes, ref) == expected
    event = LifecycleEvent(identity, kind, effective, effective, attributes, ref)
    assert event.key == expected
    assert event.attributes_json == canonical_json(attributes)


def test_attributes_json_of_an_event_loaded_with_its_key() -> None:
    event = LifecycleEvent(
        "E1",
        EventKind.MOVE,
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
        {"title": "Lead", "department": "Eng"},
        key="stored",
    )
    assert event.key == "stored"
    assert event.attributes_json == '{"department":"Eng","title":"Lead"}'
    assert event == LifecycleEvent(
        "E1",
        EventKind.MOVE,
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
        {"title": "Lead", "department": "Eng"},
        key="stored",
    )
