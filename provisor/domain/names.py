"""Generated attributes: templates that make values (user names) from a person's attributes.

Does: parse a template — literal text with ``{attribute|filter|...}`` placeholders, ``{#}``
where a number goes once the plain candidates are taken, ``{{`` and ``}}`` for braces —
refusing an unknown filter or an empty placeholder with what is wrong; render it for one
person (None when an attribute it reads is empty, or the result is); list a generated
attribute's candidates in the order they are tried (each template in turn, then the last one
numbered 2, 3, …); and the key under which two values are the same (case folded).
Does not: decide which candidate is free (``provisor.engine.names``), or run code: a template
reads attributes and applies the filters listed in ``FILTERS``, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from anyascii import anyascii

# what a name keeps of ASCII text: lower-case letters, digits and hyphens (anyascii gives ASCII)
_NOT_NAME = {c: None for c in range(128) if not (chr(c).isdigit() or "a" <= chr(c) <= "z")}
del _NOT_NAME[ord("-")]


@lru_cache(maxsize=65536)  # people share first and last names: each is worked out once
def _name(value: str) -> str:
    """Transliterated, lower case, only letters, digits and hyphens (Zoë O'Brien-Ñúñez:
    zoeobrien-nunez), no hyphen at either end."""
    return anyascii(value).lower().translate(_NOT_NAME).strip("-")


def _word(value: str, index: int) -> str:
    words = value.split()
    return words[index] if words else ""


FILTERS: dict[str, Callable[[str], str]] = {
    "ascii": anyascii,  # transliterated to ASCII: Zoë Ñúñez -> Zoe Nunez
    "name": _name,  # ascii, lower case, letters, digits and hyphens only
    "lower": str.lower,
    "upper": str.upper,
    "alnum": lambda v: "".join(c for c in v if c.isalnum()),
    "trim": str.strip,
    "first": lambda v: _word(v, 0),  # the first word
    "last": lambda v: _word(v, -1),  # the last word
    "initial": lambda v: v.strip()[:1],  # the first character
    "local": lambda v: v.partition("@")[0],  # of an e-mail address: the part before @
}
_MAX = re.compile(r"max:([1-9][0-9]{0,2})")  # max:N, the first N characters


class TemplateError(ValueError):
    """A template that cannot be used, and why."""


@dataclass(frozen=True)
class _Place:
    attribute: str
    filters: tuple[Callable[[str], str], ...]


class _Number:
    """Where the number goes (``{#}``)."""


Part = str | _Place | _Number


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[Part, ...]

    @property
    def attributes(self) -> frozenset[str]:
        return frozenset(p.attribute for p in self.parts if isinstance(p, _Place))

    @property
    def numbered(self) -> bool:
        return any(isinstance(p, _Number) for p in self.parts)

    def render(self, attributes: Mapping[str, Any], number: int | None = None) -> str | None:
        """The value for a person with ``attributes`` (``number`` in place of ``{#}``, or at
        the end when the template has none); None when an attribute it reads is empty or
        the result would be."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, _Number):
                out.append("" if number is None else str(number))
            else:
                value = attributes.get(part.attribute)
                if value is None or value == "":
                    return None
                text = str(value)
                for apply in part.filters:
                    text = apply(text)
                if not text:
                    return None
                out.append(text)
        if number is not None and not self.numbered:
            out.append(str(number))
        value = "".join(out).strip()
        return value or None


def _filter(name: str) -> Callable[[str], str]:
    found = FILTERS.get(name)
    if found is not None:
        return found
    limit = _MAX.fullmatch(name)
    if limit is not None:
        size = int(limit.group(1))
        return lambda v: v[:size]
    known = ", ".join([*FILTERS, "max:N"])
    raise TemplateError(f"unknown filter {name!r} (known: {known})")


_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@lru_cache(maxsize=256)
def parse(text: str) -> Template:
    """The template ``text`` spells; ``TemplateError`` naming what is wrong."""
    parts: list[Part] = []
    at = 0
    for match in _TOKEN.finditer(text):
        if match.start() > at:
            parts.append(text[at : match.start()])
        at = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif token in ("{", "}"):
            raise TemplateError(f"unmatched {token!r} at character {match.start() + 1}")
        elif match.group(1).strip() == "#":
            parts.append(_Number())
        else:
            attribute, *filters = (piece.strip() for piece in match.group(1).split("|"))
            if not attribute:
                raise TemplateError(f"{token}: names no attribute")
            parts.append(_Place(attribute, tuple(_filter(f) for f in filters)))
    if at < len(text):
        parts.append(text[at:])
    if not any(isinstance(p, _Place) for p in parts):
        raise TemplateError("reads no attribute: every person would get the same value")
    return Template(text, tuple(parts))


def candidates(templates: Sequence[str], attributes: Mapping[str, Any]) -> Iterator[str]:
    """The values to try for a person, in order: each template that renders, then the last
    template that renders numbered 2, 3, … (without end: the caller stops)."""
    parsed = [parse(t) for t in templates]
    last: Template | None = None
    seen: set[str] = set()
    for template in parsed:
        value = template.render(attributes)
        if value is not None:
            last = template
            if key(value) not in seen:
                seen.add(key(value))
                yield value
    if last is None:
        return
    number = 2
    while True:
        value = last.render(attributes, number)
        if value is not None and key(value) not in seen:
            yield value
        number += 1


def stem(templates: Sequence[str], attributes: Mapping[str, Any]) -> str | None:
    """What the first candidate is for these attributes: a value assigned is kept as long
    as this stays the same (and renamed, when policy says so, once it changes). The first
    of ``candidates``, without making the rest (a plan asks it of everyone)."""
    for text in templates:
        value = parse(text).render(attributes)
        if value is not None:
            return value
    return None


@lru_cache(maxsize=256)
def basis_of(templates: tuple[str, ...]) -> Callable[[Mapping[str, Any]], str]:
    """What gives ``basis`` for these templates (made once, for asking it of many people)."""
    read = sorted(set().union(*(parse(t).attributes for t in templates)))
    spelled = "\x1e".join(templates)  # other templates: another basis, whatever they read

    def basis(attributes: Mapping[str, Any]) -> str:
        return "\x1f".join([spelled, *(str(attributes.get(name, "")) for name in read)])

    return basis


def basis(templates: Sequence[str], attributes: Mapping[str, Any]) -> str:
    """The templates and what they read of these attributes, as one text: while it stays the
    same, so does every candidate (a plan compares it rather than making the first again)."""
    return basis_of(tuple(templates))(attributes)


def missing(templates: Sequence[str], attributes: Mapping[str, Any]) -> list[str]:
    """The attributes these templates read that are empty for this person (why none renders)."""
    wanted = sorted(set().union(*(parse(t).attributes for t in templates)))
    return [a for a in wanted if attributes.get(a) in (None, "")]


def key(value: str) -> str:
    """Two values with the same key are the same name (case folded)."""
    return value.casefold()
