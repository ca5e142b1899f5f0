"""Who a feed's rows name: owners of non-human identities and managers, checked against the
whole file and the store.

Does: gather, row by row as a feed is read (``References.add``), what the checks need of the
whole file — every id, each row's manager and owner, the kinds that are not human — in a few
bytes per row, so a file of any size is checked without holding its rows; then (``settle``)
read from the store the people named but not in the file, refuse the rows whose owner is not
a known human, and find the chains of managers that come back round (through the file's rows,
then the store's); then say of each row (``check``) whether it is refused (an error), and what
it is flagged for (an unknown manager, its own manager, a loop of managers: warnings).
Does not: parse rows (``provisor.sources.hr``) or record anything (``imports``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from provisor.sources.hr import FeedRecord, RowError

Lookup = Callable[[list[str]], dict[str, Any]]  # ids -> what the store knows (kind, attributes)


@dataclass
class References:
    """What a feed's rows name, gathered with ``add``, then ``settle``d against the store."""

    file: str
    ids: set[str] = field(default_factory=set)
    boss: dict[str, str] = field(default_factory=dict)  # id -> its manager's id
    owner_of: dict[str, str] = field(default_factory=dict)  # id -> its owner's id
    kinds: dict[str, str] = field(default_factory=dict)  # id -> kind, when not human
    stored: dict[str, str] = field(default_factory=dict)  # named, not in the file: id -> kind
    refused: dict[str, str] = field(default_factory=dict)  # id -> why its owner is refused
    loops: dict[str, list[str]] = field(default_factory=dict)

    def add(self, records: Iterable[FeedRecord]) -> None:
        ids, boss, owner_of, kinds = self.ids, self.boss, self.owner_of, self.kinds
        for r in records:
            identity, attributes = r.identity, r.attributes
            ids.add(identity)
            manager = attributes.get("manager")
            if manager:
                boss[identity] = str(manager)
            owner = attributes.get("owner")
            if owner:
                owner_of[identity] = str(owner)
            kind = attributes.get("kind")
            if kind and kind != "human":
                kinds[identity] = str(kind)

    def absorb(self, other: References) -> None:
        """What ``other`` gathered of the rows that come after this one's (a part of the same
        file read beside it)."""
        self.ids |= other.ids
        self.boss.update(other.boss)
        self.owner_of.update(other.owner_of)
        self.kinds.update(other.kinds)

    def leave_out(self, ids: Iterable[str]) -> None:
        """Rows that will not be recorded after all (an id on several rows)."""
        for identity in ids:
            self.ids.discard(identity)
            self.boss.pop(identity, None)
            self.owner_of.pop(identity, None)
            self.kinds.pop(identity, None)

    def settle(self, lookup: Lookup) -> None:
        """Read who the rows name from the store (``lookup``), refuse rows whose owner is no
        known human, and find the loops of managers among the rows kept."""
        named = set(self.owner_of.values()) | set(self.boss.values())
        referenced = lookup(sorted(n for n in named if n not in self.ids))
        self.stored = {k: str(getattr(v, "kind", "human")) for k, v in referenced.items()}
        for identity, owner in self.owner_of.items():
            kind = self.kinds.get(owner, "human") if owner in self.ids else self.stored.get(owner)
            if kind != "human":
                why = "is not a known identity" if kind is None else "is not a human"
                self.refused[identity] = (
                    f"owner {owner} {why}; a non-human identity needs an accountable human owner"
                )
        chain = {i: m for i, m in self.boss.items() if i not in self.refused}
        self.loops = _loops(chain, referenced, lookup)

    def check(
        self, records: list[FeedRecord]
    ) -> tuple[list[FeedRecord], list[RowError], list[RowError], dict[str, list[str]]]:
        """The rows kept, the rows refused (errors), what is flagged (warnings) and the flags
        of each flagged identity."""
        accepted: list[FeedRecord] = []
        errors: list[RowError] = []
        warnings: list[RowError] = []
        flags: dict[str, list[str]] = {}
        refused, ids, stored = self.refused, self.ids, self.stored
        for r in records:
            why = refused.get(r.identity)
            if why is not None:
                errors.append(RowError(self.file, r.line, "owner", why))
                continue
            manager = r.attributes.get("manager")
            if manager and manager not in ids and manager not in stored:
                reason = f"manager {manager} is unknown; accepted and flagged"
                warnings.append(RowError(self.file, r.line, "manager", reason))
                flags[r.identity] = [f"unknown manager {manager}"]
            accepted.append(r)
        for r in accepted:
            loop = self.loops.get(r.identity)
            if loop is None:
                continue
            said = (
                "is their own manager"
                if len(loop) == 1
                else "is in a loop of managers: " + " -> ".join([*loop, loop[0]])
            )
            warnings.append(RowError(self.file, r.line, "manager", f"{r.identity} {said}; flagged"))
            flags.setdefault(r.identity, []).append(
                "own manager" if len(loop) == 1 else "manager loop " + " -> ".join(loop)
            )
        return accepted, errors, warnings, flags


def _loops(
    boss: dict[str, str], referenced: dict[str, Any], lookup: Lookup
) -> dict[str, list[str]]:
    """Identities whose chain of managers comes back to them, each with its loop. The chain
    follows the file's rows (``boss``), then the store (one lookup per level of people only
    the store knows)."""
    boss = dict(boss)
    level, asked = referenced, set(referenced)
    while level:
        wanted: set[str] = set()
        for identity, known in level.items():
            manager = (getattr(known, "attributes", None) or {}).get("manager")
            if manager and identity not in boss:
                boss[identity] = str(manager)
                if manager not in boss and manager not in asked:
                    wanted.add(str(manager))
        asked |= wanted
        level = lookup(sorted(wanted)) if wanted else {}
    loops: dict[str, list[str]] = {}
    done: set[str] = set()
    for start in boss:
        path: list[str] = []
        on_path: set[str] = set()
        at: str | None = start
        while at is not None and at not in done and at not in on_path:
            path.append(at)
            on_path.add(at)
            at = boss.get(at)
        if at is not None and at in on_path:
            loop = path[path.index(at) :]
            for member in loop:
                loops[member] = loop[loop.index(member) :] + loop[: loop.index(member)]
        done |= on_path
    return loops
