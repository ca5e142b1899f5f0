"""YAML within bounds: the one way Provisor parses YAML it is given (policy, workspace settings,
REST descriptions, connector settings).

Does: refuse a text over ``MAX_BYTES``, and a document whose aliases would expand to more than
``MAX_VALUES`` values (an "alias bomb": a few lines that grow to gigabytes once expanded),
before anything is built from it; the refusal is a ``yaml.YAMLError`` with the line of the
offending alias, so every caller reports it as it reports bad YAML. Parse with the safe loader
only.
Does not: read files, or validate what the document means.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 10 * 1024 * 1024
MAX_VALUES = 1_000_000


class YamlTooLarge(yaml.MarkedYAMLError):
    """A YAML text or its expansion is over the limits."""


def compose(text: str) -> yaml.Node | None:
    """The node graph of ``text`` (aliases shared, not expanded), checked against the limits."""
    if len(text) > MAX_BYTES:
        raise YamlTooLarge(
            problem=f"the file is {len(text):,} characters; the limit is {MAX_BYTES:,}"
        )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _expanded(root)
    except RecursionError:
        raise YamlTooLarge(problem="the document is nested too deeply") from None
    return root


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` of ``text`` once it is known to stay within the limits."""
    compose(text)
    return yaml.safe_load(text)


def _expanded(root: yaml.Node) -> int:
    """How many values ``root`` holds once every alias is expanded; raises past the limit.

    Each node is counted once and shared nodes reuse their count, so the work is linear in the
    text even when the expansion is not. A node met again while being counted is a recursive
    alias; it counts as one (loaders refuse or handle it themselves)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            return 1
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                _check(total, item)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(key) + size(value)
                _check(total, value)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def _check(total: int, node: yaml.Node) -> None:
    if total > MAX_VALUES:
        raise YamlTooLarge(
            problem=(
                f"aliases expand this document past {MAX_VALUES:,} values (an alias bomb?); refused"
            ),
            problem_mark=node.start_mark,
        )
