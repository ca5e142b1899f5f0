"""Templates for generated attributes: transliteration, candidates in order, numbering, and
the refusals a policy author sees; properties over arbitrary names."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisor.domain.names import TemplateError, candidates, key, missing, parse, stem
from provisor.domain.policy import Policy

ZOE = {"first_name": "Zoë", "last_name": "O'Brien-Ñúñez", "name": "Zoë O'Brien-Ñúñez"}
DOTTED = "{first_name|name}.{last_name|name}"
SHORT = "{first_name|initial|name}{last_name|name}"


def first(templates: list[str], attributes: dict[str, str], count: int) -> list[str]:
    return list(itertools.islice(candidates(templates, attributes), count))


@pytest.mark.parametrize(
    ("template", "attributes", "expected"),
    [
        (DOTTED, ZOE, "zoe.obrien-nunez"),
        ("{name|first|name}.{name|last|name}", ZOE, "zoe.obrien-nunez"),
        (SHORT, {"first_name": "John", "last_name": "Doe"}, "jdoe"),
        (DOTTED, {"first_name": "Łukasz", "last_name": "Żółć"}, "lukasz.zolc"),
        (DOTTED, {"first_name": "Søren", "last_name": "Æbelø"}, "soren.aebelo"),
        (DOTTED, {"first_name": "Владимир", "last_name": "Ильич"}, "vladimir.ilich"),
        (DOTTED, {"first_name": "Mary Ann", "last_name": "van der Berg"}, "maryann.vanderberg"),
        ("{email|local|lower}", {"email": "J.Doe@Example.com"}, "j.doe"),
        ("{last_name|name|max:5}{first_name|initial|lower}", ZOE, "obriez"),
        ("{{{first_name|upper}}}", {"first_name": "ab"}, "{AB}"),
    ],
)
def test_templates_render_names_as_people_expect(
    template: str, attributes: dict[str, str], expected: str
) -> None:
    assert parse(template).render(attributes) == expected


def test_candidates_try_each_template_then_number_the_last() -> None:
    doe = {"first_name": "John", "last_name": "Doe"}
    assert first([SHORT], doe, 3) == ["jdoe", "jdoe2", "jdoe3"]
    assert first([SHORT, DOTTED], doe, 4) == ["jdoe", "john.doe", "john.doe2", "john.doe3"]
    assert first(["{first_name|name}{#}.{last_name|name}"], doe, 3) == [
        "john.doe",
        "john2.doe",
        "john3.doe",
    ]
    # a template whose attributes are empty is skipped; the number goes on the last that renders
    assert first([DOTTED, "{middle|name}"], doe, 2) == ["john.doe", "john.doe2"]
    assert first([DOTTED], {"first_name": "John"}, 2) == []
    assert missing([DOTTED], {"first_name": "John"}) == ["last_name"]
    assert stem([DOTTED], ZOE) == "zoe.obrien-nunez"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{first_name|shout}", "unknown filter 'shout'"),
        ("{first_name", "unmatched '{'"),
        ("{}", "names no attribute"),
        ("jdoe{#}", "reads no attribute"),
    ],
)
def test_a_template_that_cannot_be_used_is_refused_with_why(template: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(problem)):
        parse(template)


def test_the_policy_names_the_candidate_that_is_wrong_and_rules_may_not_read_one() -> None:
    with pytest.raises(ValueError, match=r"candidate 2 \('\{x\|nope\}'\): unknown filter"):
        Policy.model_validate(
            {"generated": [{"name": "username", "candidates": [SHORT, "{x|nope}"]}]}
        )
    policy = Policy.model_validate(
        {
            "generated": [{"name": "username", "candidates": [SHORT]}],
            "rules": [{"name": "r", "when": {"attr": "username", "exists": True}, "grant": []}],
        }
    )
    assert policy.problems() == [
        (
            ("rules", 0, "when"),
            "reads the generated attribute 'username': access may not depend on it",
        )
    ]


names_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30
)


@given(first_name=names_text, last_name=names_text)
def test_names_hold_only_plain_characters_and_never_repeat(first_name: str, last_name: str) -> None:
    attributes = {"first_name": first_name, "last_name": last_name}
    made = first([DOTTED, SHORT], attributes, 6)
    for value in made:
        assert re.fullmatch(r"[a-z0-9-]*\.?[a-z0-9-]*[0-9]*", value), value
    assert len({key(v) for v in made}) == len(made)  # every candidate is another name
    assert made == first([DOTTED, SHORT], dict(attributes), 6)  # and the same each time
