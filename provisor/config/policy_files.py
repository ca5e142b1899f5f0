"""Policy files: read YAML policy files into one validated policy, every problem with file and line.

Does: expand the given files and directories into an ordered list of YAML files, parse each with
the safe YAML loader while remembering where every value was written, concatenate their
sections into one policy, validate it (shape, then cross-references), and report all problems
at once as ``file:line field: reason``. Keeps where each part of the policy came from, so
explanations can cite it, and a digest that changes exactly when the policy does; fingerprint
the files' bytes, so a caller can tell unchanged files without parsing them again.
Does not: resolve secrets (``provisor.config.secrets``), read workspace configuration, or decide
anything about identities or access.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import ConstructorError, SafeConstructor

from provisor.domain import yaml_limits
from provisor.domain.lifecycle import canonical_json
from provisor.domain.policy import Policy, TargetDef
from provisor.errors import PolicyError

Location = tuple[str | int, ...]
Source = tuple[str, int]  # (file as shown to the user, 1-based line)

SECTIONS = ("targets", "rules", "roles", "assignments", "exceptions", "sod", "generated")
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy, the files it was read from, its digest, and where each part is."""

    policy: Policy
    files: tuple[Path, ...]
    digest: str
    locations: Mapping[Location, Source] = field(default_factory=dict, repr=False, compare=False)
    # the ``fingerprint`` of the bytes parsed: equal to the files' now when they did not change
    source: str = field(default="", repr=False, compare=False)

    def source_of(self, path: Location) -> str:
        """``file:line`` where the value at ``path`` (or its nearest parent) is, else ``""``."""
        found = _nearest(self.locations, path)
        return f"{found[0]}:{found[1]}" if found else ""


TargetCheck = Callable[[TargetDef], list[tuple[Location, str]]]


def load_policy(paths: Sequence[Path], check_target: TargetCheck | None = None) -> LoadedPolicy:
    """Read, merge and validate policy files; raise ``PolicyError`` listing every problem.

    ``check_target`` finds what the policy model cannot (a target's connection settings, which
    depend on its connector): each problem is reported under the target, with file and line."""
    reader = _Reader()
    files = reader.expand(paths)
    for file in files:
        reader.read(file)
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(reader.merged)
    except ValidationError as exc:
        reader.report_validation(exc.errors())
    # Cross-references are only meaningful when every file was read in full.
    if policy is not None and not reader.incomplete:
        for location, message in policy.problems():
            reader.report(location, message)
        for index, target in enumerate(policy.targets):
            for location, message in check_target(target) if check_target else []:
                reader.report(("targets", index, *location), message)
    if reader.problems or policy is None:
        problems = [text for _, _, text in sorted(reader.problems, key=lambda p: p[:2])]
        raise PolicyError(f"policy is invalid: {len(problems)} problem(s)", problems=problems)
    dumped = policy.model_dump(mode="json", by_alias=True)
    digest = hashlib.sha256(canonical_json(dumped).encode("utf-8")).hexdigest()
    return LoadedPolicy(policy, tuple(files), digest, reader.locations, reader.source.hexdigest())


def fingerprint(paths: Sequence[Path]) -> str | None:
    """A digest of the policy files' names and bytes as they are now — equal to a loaded
    policy's ``source`` exactly when the files hold the bytes it was parsed from — or None
    when a path cannot be read (loading says why). Cheap next to a load: nothing is parsed."""
    reader = _Reader()
    try:
        for file in reader.expand(paths):
            _add_file(reader.source, file, file.read_bytes())
    except OSError:
        return None
    return None if reader.incomplete else reader.source.hexdigest()


def _add_file(digest: Any, file: Path, data: bytes) -> None:
    digest.update(f"{file}\0{len(data)}\0".encode())
    digest.update(data)


class _Reader:
    """Accumulates the merged policy data, the source of each value, and the problems found."""

    def __init__(self) -> None:
        self.merged: dict[str, list[Any]] = {section: [] for section in SECTIONS}
        self.locations: dict[Location, Source] = {}
        self.problems: list[tuple[int, int, str]] = []  # (file order, line, text), for sorting
        self.incomplete = False  # a path or file could not be read in full
        self._order: dict[str, int] = {}
        self._file = ""
        self._constructor = SafeConstructor()
        self._open: set[int] = set()  # nodes being built, to refuse recursive aliases
        self.source = hashlib.sha256()  # the files' names and bytes, as read (``fingerprint``)

    def expand(self, paths: Sequence[Path]) -> list[Path]:
        files: list[Path] = []
        for path in paths:
            if path.is_dir():
                files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
            elif path.is_file():
                files.append(path)
            else:
                self.incomplete = True
                self._add((_shown(path), 0), "", "no such file or directory")
        return files

    def read(self, file: Path) -> None:
        self._file = _shown(file)
        self._order.setdefault(self._file, len(self._order))
        self._open.clear()
        try:
            data = file.read_bytes()
            _add_file(self.source, file, data)
            root = yaml_limits.compose(data.decode("utf-8"))
            if root is not None:
                self._sections(root)
        except yaml.MarkedYAMLError as exc:
            self.incomplete = True
            mark = exc.problem_mark or exc.context_mark
            reason = f"YAML error: {exc.problem or exc.context}"
            self._add((self._file, mark.line + 1 if mark else 0), "", reason)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            self.incomplete = True
            self._add((self._file, 0), "", f"cannot read: {exc}")

    def report(self, location: Location, reason: str) -> None:
        """Record a problem about the merged policy value at ``location``."""
        source = _nearest(self.locations, location) or ("<policy>", 0)
        self._add(source, _field_name(location), reason)

    def report_validation(self, errors: list[ErrorDetails]) -> None:
        # A value failing every member of a union gives one error per member, located under
        # the member's name; those become a single problem listing the members.
        unions: dict[Location, list[str]] = {}
        for error in errors:
            location, rest = _split_location(self.merged, error["loc"], error["type"] == "missing")
            if rest:
                unions.setdefault(location, []).append(str(rest[0]))
            elif error["type"] == "inline_credential":
                at = tuple(error.get("ctx", {}).get("at", ()))
                self.report((*location, *at), error["msg"])
            elif error["type"] == "value_error":
                self.report(location, str(error.get("ctx", {}).get("error", error["msg"])))
            elif error["type"] == "extra_forbidden":
                self.report(location, "unknown field")
            else:
                self.report(location, error["msg"])
        for location, members in unions.items():
            self.report(location, "expected one of: " + ", ".join(members))

    def _add(self, source: Source, field_name: str, reason: str) -> None:
        file, line = source
        where = f"{file}:{line}" if line else file
        text = f"{where} {field_name}: {reason}" if field_name else f"{where}: {reason}"
        self.problems.append((self._order.get(file, -1), line, text))

    def _sections(self, root: yaml.Node) -> None:
        if not isinstance(root, yaml.MappingNode):
            self._add((self._file, _line(root)), "", "a policy file is a mapping of sections")
            return
        for section, key_line, node in self._pairs(root, ()):
            if section not in SECTIONS:
                reason = "unknown section; use " + ", ".join(SECTIONS)
                self._add((self._file, key_line), str(section), reason)
            elif isinstance(node, yaml.SequenceNode):
                items = self.merged[section]
                for item in node.value:
                    items.append(self._build(item, (section, len(items)), _line(item)))
            elif node.tag != _NULL_TAG:
                self._add((self._file, key_line), section, "must be a list")

    def _pairs(self, node: yaml.MappingNode, path: Location) -> list[tuple[Any, int, yaml.Node]]:
        """The (key, key line, value node) of a mapping; duplicate keys are reported."""
        pairs: list[tuple[Any, int, yaml.Node]] = []
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                raise ConstructorError(
                    None,
                    None,
                    "keys must be plain values ('<<' merges are not supported)",
                    key_node.start_mark,
                )
            key = self._constructor.construct_object(key_node)
            line = _line(key_node)
            self.locations[(*path, key)] = (self._file, line)
            if key in first:
                reason = f"duplicate key (first at line {first[key]})"
                self._add((self._file, line), _field_name((*path, key)), reason)
            first[key] = line
            pairs.append((key, line, value_node))
        return pairs

    def _build(self, node: yaml.Node, path: Location, line: int) -> Any:
        """Plain Python value of ``node``, recording where it and everything in it are written."""
        self.locations[path] = (self._file, line)
        if isinstance(node, yaml.ScalarNode):
            return self._constructor.construct_object(node)
        if id(node) in self._open:
            raise ConstructorError(None, None, "recursive alias", node.start_mark)
        self._open.add(id(node))
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            value: Any = [
                self._build(item, (*path, i), _line(item)) for i, item in enumerate(node.value)
            ]
        elif isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            value = {
                key: self._build(child, (*path, key), key_line)
                for key, key_line, child in self._pairs(node, path)
            }
        else:
            raise ConstructorError(None, None, f"unsupported tag {node.tag}", node.start_mark)
        self._open.discard(id(node))
        return value


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _nearest(locations: Mapping[Location, Source], path: Location) -> Source | None:
    for end in range(len(path), 0, -1):
        if path[:end] in locations:
            return locations[path[:end]]
    return None


def _field_name(location: Location) -> str:
    """``("rules", 3, "when", "all", 0)`` -> ``rules[3].when.all[0]``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _split_location(
    data: Any, loc: tuple[str | int, ...], missing: bool
) -> tuple[Location, Location]:
    """Split a pydantic ``loc`` into the path of the input value at fault and what follows it.

    What follows is the name of a missing field (kept in the path) or union member names.
    """
    for i, part in enumerate(loc):
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            end = i + 1 if missing else i
            return loc[:end], loc[end:]
        data = data[part]
    return loc, ()
