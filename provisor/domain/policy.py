"""Policy as data: targets, entitlements, birthright rules, roles, assignments, exceptions, SoD.

Does: define the validated shape of a policy (pydantic models), evaluate attribute matchers
against an identity's attributes with a reason for every verdict, and check that every name a
policy uses refers to something the policy defines.
Does not: read files (``provisor.config.policy_files`` does, and maps errors to file and line),
resolve secrets, or compute desired access (``provisor.domain.desired``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from provisor.domain import names

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
Scalar = str | int | float | bool

# Connection settings (and request headers) whose value is a credential. They must be
# references, never plain text.
SECRET_SETTING = re.compile(
    r"(password|passwd|passphrase|pwd|secret|token|api[_-]?key|private[_-]?key|credential"
    r"|bearer|authori[sz]ation|cookie)|^pass$",
    re.I,
)
# A password in a URL (also with no user name: ``https://:pw@host``), or a credential given
# as a query parameter (``?password=``, ``&token=``, ``?api_key=``).
_URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.\-]*://[^/@:\s]*:[^/@\s]+@", re.I)
_URL_WITH_CREDENTIAL = re.compile(
    r"[?&;](password|passwd|pwd|pass|token|access_token|api[_-]?key|apikey|secret"
    r"|client_secret|auth)=(?!\{[\w.\-]+\}(&|$))[^&#]+",
    re.I,
)


IDENTITY_KINDS = frozenset({"human", "service_account", "api_key", "bot"})


class TargetClass(StrEnum):
    SCIM = "scim"
    LDAP = "ldap"
    SQL = "sql"
    REST = "rest"
    MANUAL = "manual"


class LeaverAction(StrEnum):
    DISABLE = "disable"
    DELETE = "delete"
    REMOVE_ENTITLEMENTS = "remove-entitlements"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RemedyMode(StrEnum):
    """What reconciliation does about an account of one class."""

    AUTO = "auto"  # plan the fix in the operation journal
    REPORT = "report"  # only report it
    TICKET = "ticket"  # a work item for the target's owner


class Remediation(_Model):
    """Per class of reconciled account, what reconciliation does about it."""

    drift: RemedyMode = RemedyMode.AUTO
    orphan: RemedyMode = RemedyMode.REPORT
    terminated_active: RemedyMode = Field(default=RemedyMode.AUTO, alias="terminated-active")
    unlinked: Literal["report"] = Field(
        default="report",
        description="an unlinked account waits for a person to resolve its correlation case",
    )
    unverifiable: Literal["report"] = Field(
        default="report",
        description="nothing can be fixed where nothing can be read; coverage lists it",
    )

    def mode(self, classification: str) -> RemedyMode:
        """The mode for a classification (``ok`` and unknown ones: report)."""
        return {
            "drift": self.drift,
            "orphan": self.orphan,
            "terminated-active": self.terminated_active,
        }.get(classification, RemedyMode.REPORT)


class SecretRef(_Model):
    """A credential named, not written: an environment variable or an entry of the secrets file."""

    env: str | None = None
    secret: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.secret is None):
            raise ValueError("a secret reference names exactly one of 'env' or 'secret'")
        return self


# A value filled in when a request is made (e.g. ``password: "{password}"`` in a REST
# description's request body): a placeholder, not a credential.
_PLACEHOLDER = re.compile(r"\{[\w.\-]+\}")


def _inline_credential(at: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """The refusal of a credential written in policy; ``at`` (the setting's path under
    ``connection``) lets the policy reader name the exact file and line."""
    shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at).lstrip(".")
    return PydanticCustomError(
        "inline_credential",
        "connection setting '{setting}' " + message,
        {"setting": shown, "at": at},
    )


def _plain_value(item: Any, parent: str | int | None) -> bool:
    """A value written out (not a reference, a placeholder or empty), outside ``entitlements``
    (whose keys are entitlement names, not settings)."""
    return (
        not isinstance(item, Mapping | None | bool)
        and item != ""
        and not (isinstance(item, str) and _PLACEHOLDER.fullmatch(item))
        and parent != "entitlements"
    )


def _references_only(value: Any, at: tuple[str | int, ...] = ()) -> Any:
    """Turn ``{env: X}`` / ``{secret: X}`` into ``SecretRef`` at any depth; refuse a credential
    written in plain text: under a credential's name (``password``, ``pwd``, ``token``, a header
    such as ``Authorization`` or ``X-Api-Key``, ...), or inside a URL."""
    if isinstance(value, Mapping):
        if value and set(value) <= {"env", "secret"}:
            return SecretRef.model_validate(value)
        parent = at[-1] if at else None
        checked: dict[str, Any] = {}
        for key, item in value.items():
            if _plain_value(item, parent) and SECRET_SETTING.search(str(key)):
                raise _inline_credential(
                    (*at, key),
                    "is a credential written in plain text; use {env: VARIABLE} or "
                    "{secret: NAME} instead",
                )
            checked[key] = _references_only(item, (*at, key))
        return checked
    if isinstance(value, list):
        return [_references_only(item, (*at, i)) for i, item in enumerate(value)]
    if isinstance(value, str) and _URL_WITH_PASSWORD.match(value):
        raise _inline_credential(
            at,
            "carries a password in the URL; put the credential in its own setting as "
            "{env: VARIABLE} or {secret: NAME}",
        )
    if isinstance(value, str) and _URL_WITH_CREDENTIAL.search(value):
        raise _inline_credential(
            at,
            "carries a credential in the URL's query; put it in its own setting as "
            "{env: VARIABLE} or {secret: NAME}",
        )
    return value


class EntitlementDef(_Model):
    name: Name
    description: str = ""
    kind: Literal["group", "role", "permission"] = "group"
    move_grace_days: int | None = Field(
        default=None,
        ge=0,
        le=365,
        description="days this entitlement is kept after a move takes it away (default: the "
        "target's move_grace_days)",
    )


class TargetGuard(_Model):
    """This target's limits for the removal guard; unset ones come from provisor.yaml."""

    max_share: float | None = Field(default=None, gt=0, le=1)
    max_count: int | None = Field(default=None, ge=1)
    min_count: int | None = Field(default=None, ge=1)


class Circuit(_Model):
    """When a target counts as unavailable, and what happens to its leavers meanwhile."""

    failures: int = Field(
        default=5, ge=1, le=10000, description="failures in a row (target unreachable) that open it"
    )
    cool_down_seconds: int = Field(
        default=60, ge=1, le=86400, description="seconds between probes while it is open"
    )
    leavers_to_owner_minutes: int | None = Field(
        default=60,
        ge=0,
        le=525600,
        description=(
            "minutes a leaver's due removal waits on an open circuit before a work item goes "
            "to the target's owner; null: never"
        ),
    )


class TargetDef(_Model):
    name: Name
    target_class: TargetClass = Field(alias="class")
    owner: str = Field(min_length=1, description="the revocation owner, a person or team")
    description: str = ""
    leaver_action: LeaverAction = LeaverAction.DISABLE
    grace_days: int = Field(default=30, ge=0, le=3650)
    move_grace_days: int = Field(
        default=0,
        ge=0,
        le=365,
        description="days access a move (or conversion) takes away is kept for a handover "
        "before it is removed; never for a leaver",
    )
    leaver_grace_days: int = Field(
        default=0,
        ge=0,
        le=90,
        description="days a leaver keeps what they held here when the termination took "
        "effect (a mailbox kept for a handover, say); 0, the default: nothing is kept",
    )
    prestart_days: int = Field(
        default=0,
        ge=0,
        le=90,
        description="days before a hire's start its account is made, locked (disabled) "
        "until the start, then enabled",
    )
    correlation: list[str] = Field(default_factory=lambda: ["email"], min_length=1)
    on_leave: Literal["keep", "disable"] = "keep"
    on_suspend: Literal["keep", "disable"] = "disable"
    sla_days: int = Field(default=3, ge=0, le=365)
    concurrency: int = Field(default=4, ge=1, le=64, description="parallel accounts at once")
    rate_limit: float | None = Field(default=None, gt=0, description="operations per second")
    connection: dict[str, Any] = Field(default_factory=dict)
    entitlements: list[EntitlementDef] = Field(default_factory=list)
    remediation: Remediation = Field(default_factory=Remediation)
    reconcile_every: int | None = Field(
        default=None, ge=1, le=525600, description="minutes between scheduled reconciliations"
    )
    guard: TargetGuard = Field(default_factory=TargetGuard)
    circuit: Circuit = Field(default_factory=Circuit)
    full_every: int = Field(
        default=24,
        ge=1,
        le=8760,
        description="hours within which a scheduled reconciliation reads the target in full",
    )

    @field_validator("connection")
    @classmethod
    def _no_inline_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = _references_only(value)
        return checked

    @cached_property
    def entitlement_names(self) -> frozenset[str]:
        return frozenset(e.name for e in self.entitlements)

    @property
    def user_name_from(self) -> str:
        """The identity attribute account user names come from (``connection.
        user_name_attribute``; default ``email``)."""
        return str(self.connection.get("user_name_attribute", "email"))


class Matcher(_Model):
    """One test: ``{attr, equals|in|prefix|regex|exists}``, or ``all``/``any``/``not`` of tests."""

    attr: str | None = None
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    prefix: str | None = None
    regex: str | None = None
    exists: bool | None = None
    all: list[Matcher] | None = None
    any: list[Matcher] | None = None
    not_: Matcher | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _one_form(self) -> Matcher:
        tests = [
            n
            for n in ("equals", "in_", "prefix", "regex", "exists")
            if getattr(self, n) is not None
        ]
        groups = [n for n in ("all", "any", "not_") if getattr(self, n) is not None]
        if self.attr is not None:
            if groups or len(tests) != 1:
                raise ValueError(
                    "an attribute matcher has 'attr' and exactly one of "
                    "'equals', 'in', 'prefix', 'regex', 'exists'"
                )
        elif tests:
            raise ValueError(f"'{tests[0].rstrip('_')}' needs 'attr' beside it")
        elif len(groups) != 1:
            raise ValueError("a matcher is one of: {attr: ..., equals: ...}, all, any, not")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regex {self.regex!r}: {exc}") from exc
        return self

    @cached_property
    def _compiled(self) -> re.Pattern[str] | None:
        return re.compile(self.regex) if self.regex is not None else None

    def evaluate(self, attributes: Mapping[str, Any]) -> tuple[bool, str]:
        """Whether the attributes match, and a human sentence saying why (or why not)."""
        if self.all is not None:
            for sub in self.all:
                ok, why = sub.evaluate(attributes)
                if not ok:
                    return False, why
            return True, " and ".join(sub.describe() for sub in self.all)
        if self.any is not None:
            reasons = []
            for sub in self.any:
                ok, why = sub.evaluate(attributes)
                if ok:
                    return True, why
                reasons.append(why)
            return False, "none of: " + "; ".join(reasons)
        if self.not_ is not None:
            ok, why = self.not_.evaluate(attributes)
            return (not ok), (f"not ({why})" if not ok else f"excluded because {why}")
        assert self.attr is not None
        raw = attributes.get(self.attr)
        value = None if raw is None or raw == "" else str(raw)
        ok = self._test(value)
        shown = "missing" if value is None else repr(value)
        return ok, f"{self.attr} is {shown}" + ("" if ok else f", wanted {self._wanted()}")

    def compile(self) -> Callable[[Mapping[str, Any]], bool]:
        """The matcher as a plain function, for evaluating many identities fast."""
        if self.all is not None:
            subs = tuple(sub.compile() for sub in self.all)
            return lambda attrs: all(test(attrs) for test in subs)
        if self.any is not None:
            subs = tuple(sub.compile() for sub in self.any)
            return lambda attrs: any(test(attrs) for test in subs)
        if self.not_ is not None:
            inner = self.not_.compile()
            return lambda attrs: not inner(attrs)
        attr = self.attr
        assert attr is not None
        if self.equals is not None:
            wanted = _text(self.equals)
            return lambda attrs: (v := attrs.get(attr)) is not None and str(v) == wanted
        if self.in_ is not None:
            allowed = frozenset(_text(v) for v in self.in_)
            return lambda attrs: (v := attrs.get(attr)) is not None and str(v) in allowed
        test = self._test

        def general(attrs: Mapping[str, Any]) -> bool:
            raw = attrs.get(attr)
            return test(None if raw is None or raw == "" else str(raw))

        return general

    def _test(self, value: str | None) -> bool:
        if self.exists is not None:
            return (value is not None) == self.exists
        if value is None:
            return False
        if self.equals is not None:
            return value == _text(self.equals)
        if self.in_ is not None:
            return value in {_text(v) for v in self.in_}
        if self.prefix is not None:
            return value.startswith(self.prefix)
        assert self._compiled is not None
        return self._compiled.search(value) is not None

    def _wanted(self) -> str:
        if self.exists is not None:
            return "present" if self.exists else "absent"
        if self.equals is not None:
            return repr(_text(self.equals))
        if self.in_ is not None:
            return "one of " + ", ".join(repr(_text(v)) for v in self.in_)
        if self.prefix is not None:
            return f"prefix {self.prefix!r}"
        return f"match of /{self.regex}/"

    def describe(self) -> str:
        if self.all is not None:
            return "(" + " and ".join(s.describe() for s in self.all) + ")"
        if self.any is not None:
            return "(" + " or ".join(s.describe() for s in self.any) + ")"
        if self.not_ is not None:
            return f"not {self.not_.describe()}"
        return f"{self.attr} {self._wanted()}"

    def attributes(self) -> set[str]:
        """Every attribute this test reads."""
        found = {self.attr} if self.attr is not None else set()
        for sub in (self.all or []) + (self.any or []) + ([self.not_] if self.not_ else []):
            found |= sub.attributes()
        return found

    def anchors(self) -> list[tuple[str, frozenset[str]]]:
        """Equality tests every matching identity must pass: ``(attr, allowed values)``.

        Used to index rules by attribute, so an identity is only tested against rules that can
        possibly match it.
        """
        if self.attr is not None and self.equals is not None:
            return [(self.attr, frozenset({_text(self.equals)}))]
        if self.attr is not None and self.in_ is not None:
            return [(self.attr, frozenset(_text(v) for v in self.in_))]
        if self.all is not None:
            return [a for sub in self.all for a in sub.anchors()]
        return []


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Grant(_Model):
    """An account in a target, with entitlements in it."""

    target: Name
    entitlements: list[Name] = Field(default_factory=list)


class RuleDef(_Model):
    """Birthright rule: identities whose attributes match ``when`` get the grants and roles."""

    name: Name
    description: str = ""
    when: Matcher
    grant: list[Grant] = Field(default_factory=list)
    roles: list[Name] = Field(default_factory=list)
    kinds: list[str] = Field(
        default_factory=lambda: ["human"],
        description="identity kinds the rule applies to (human, service_account, api_key, bot)",
    )


class RoleDef(_Model):
    """Business role: a named bundle of entitlements across targets."""

    name: Name
    description: str = ""
    owner: str = ""
    grants: list[Grant] = Field(min_length=1)


class AssignmentDef(_Model):
    """A role assigned directly to one identity by a person who approved it."""

    identity: str = Field(min_length=1)
    role: Name
    approver: str = Field(min_length=1)
    granted: date
    expires: date | None = None
    justification: str = ""


class ExceptionDef(_Model):
    """Time-bound approved access outside rules and roles; may also allow an SoD conflict."""

    identity: str = Field(min_length=1)
    grant: list[Grant] = Field(default_factory=list)
    allow_sod: list[Name] = Field(default_factory=list)
    approver: str = Field(min_length=1)
    justification: str = Field(min_length=1)
    granted: date
    expires: date

    @model_validator(mode="after")
    def _something_and_ordered(self) -> ExceptionDef:
        if not self.grant and not self.allow_sod:
            raise ValueError(
                "an exception grants access ('grant') or allows a conflict ('allow_sod')"
            )
        if self.expires < self.granted:
            raise ValueError("'expires' is before 'granted'")
        return self


class SoDDef(_Model):
    """Separation of duties: holding all of ``conflicts`` at once is a violation."""

    name: Name
    description: str = ""
    conflicts: list[str] = Field(min_length=2)

    @field_validator("conflicts")
    @classmethod
    def _target_colon_entitlement(cls, value: list[str]) -> list[str]:
        for item in value:
            target, sep, ent = item.partition(":")
            if not sep or not target or not ent:
                raise ValueError(f"conflict {item!r} is not written as 'target:entitlement'")
        return value


class GeneratedDef(_Model):
    """An attribute Provisor makes for each person who has access, e.g. a user name: the
    first free candidate, kept once assigned (``provisor.domain.names``)."""

    name: Name  # the attribute: a target reads it with connection.user_name_attribute
    candidates: list[str] = Field(
        min_length=1,
        description="templates tried in order, e.g. '{first_name|name}.{last_name|name}'; "
        "the last is then numbered 2, 3, ... ({#} marks where)",
    )
    reuse_after_days: int = Field(
        default=365,
        ge=0,
        le=36500,
        description="a value its holder gave up (they left, or were renamed) is not given "
        "to anyone else for this long",
    )
    rename: bool = Field(
        default=False,
        description="when what the first candidate reads changes (a name change), make a "
        "new value and rename; by default a value once assigned stays",
    )

    @field_validator("candidates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        for index, text in enumerate(value):
            try:
                names.parse(text)
            except names.TemplateError as exc:
                raise ValueError(f"candidate {index + 1} ({text!r}): {exc}") from None
        return value


class Policy(_Model):
    targets: list[TargetDef] = Field(default_factory=list)
    rules: list[RuleDef] = Field(default_factory=list)
    roles: list[RoleDef] = Field(default_factory=list)
    assignments: list[AssignmentDef] = Field(default_factory=list)
    exceptions: list[ExceptionDef] = Field(default_factory=list)
    sod: list[SoDDef] = Field(default_factory=list)
    generated: list[GeneratedDef] = Field(default_factory=list)

    @cached_property
    def generated_map(self) -> dict[str, GeneratedDef]:
        return {g.name: g for g in self.generated}

    def named_by(self, attribute: str) -> list[TargetDef]:
        """The targets whose account user names come from ``attribute``."""
        return [t for t in self.targets if t.user_name_from == attribute]

    @cached_property
    def target_map(self) -> dict[str, TargetDef]:
        return {t.name: t for t in self.targets}

    def short_of_rescind(self, days: int) -> list[TargetDef]:
        """Targets that delete a leaver's account before ``days`` (the rescind window) pass."""
        return [
            t
            for t in self.targets
            if t.leaver_action is LeaverAction.DELETE and t.grace_days < days
        ]

    def kept_for_rescind(self, days: int) -> Policy:
        """This policy with every target that deletes a leaver's account keeping it (disabled)
        at least ``days``, the rescind window: a termination rescinded within it finds the
        same account, not a deleted one. Itself when no target is shorter."""
        short = {id(t) for t in self.short_of_rescind(days)}
        if not short:
            return self
        targets = [
            t.model_copy(update={"grace_days": days}) if id(t) in short else t for t in self.targets
        ]
        kept = self.model_copy(update={"targets": targets})
        kept.__dict__.pop("target_map", None)  # a copy keeps the original's cached map
        return kept

    @cached_property
    def role_map(self) -> dict[str, RoleDef]:
        return {r.name: r for r in self.roles}

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Every dangling or duplicated name, as ``(location path, message)``."""
        found = self._duplicates()
        for ri, rule in enumerate(self.rules):
            found += self._grant_problems(("rules", ri, "grant"), rule.grant)
            for pi, role in enumerate(rule.roles):
                if role not in self.role_map:
                    found.append((("rules", ri, "roles", pi), f"unknown role {role!r}"))
            for ki, kind in enumerate(rule.kinds):
                if kind not in IDENTITY_KINDS:
                    found.append((("rules", ri, "kinds", ki), f"unknown identity kind {kind!r}"))
        for ri, role_def in enumerate(self.roles):
            found += self._grant_problems(("roles", ri, "grants"), role_def.grants)
        for ai, assignment in enumerate(self.assignments):
            if assignment.role not in self.role_map:
                found.append((("assignments", ai, "role"), f"unknown role {assignment.role!r}"))
        sod_names = {s.name for s in self.sod}
        for xi, exc in enumerate(self.exceptions):
            found += self._grant_problems(("exceptions", xi, "grant"), exc.grant)
            for si, name in enumerate(exc.allow_sod):
                if name not in sod_names:
                    found.append(
                        (("exceptions", xi, "allow_sod", si), f"unknown SoD constraint {name!r}")
                    )
        return found + self._conflict_problems() + self._generated_problems()

    def _generated_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """A generated attribute a rule reads (access would change once it is made), or one
        that reads another generated attribute."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        generated = set(self.generated_map)
        for ri, rule in enumerate(self.rules):
            for attr in sorted(rule.when.attributes() & generated):
                why = f"reads the generated attribute {attr!r}: access may not depend on it"
                found.append((("rules", ri, "when"), why))
        for gi, made in enumerate(self.generated):
            for ci, text in enumerate(made.candidates):
                for attr in sorted(names.parse(text).attributes & generated):
                    why = f"reads the generated attribute {attr!r}: read its sources instead"
                    found.append((("generated", gi, "candidates", ci), why))
        return found

    def _conflict_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """SoD conflicts naming a target or entitlement the policy lacks."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        for si, sod in enumerate(self.sod):
            for ci, item in enumerate(sod.conflicts):
                target_name, _, ent_name = item.partition(":")
                target_def = self.target_map.get(target_name)
                if target_def is None:
                    found.append((("sod", si, "conflicts", ci), f"unknown target {target_name!r}"))
                elif ent_name not in target_def.entitlement_names:
                    why = f"target {target_name!r} has no entitlement {ent_name!r}"
                    found.append((("sod", si, "conflicts", ci), why))
        return found

    def _duplicates(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Names used twice: targets, rules, roles, SoD constraints, a target's entitlements."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        sections = {
            "targets": [t.name for t in self.targets],
            "rules": [r.name for r in self.rules],
            "roles": [r.name for r in self.roles],
            "sod": [s.name for s in self.sod],
            "generated": [g.name for g in self.generated],
        }
        for section, listed in sections.items():
            seen: set[str] = set()
            for i, name in enumerate(listed):
                if name in seen:
                    found.append(((section, i, "name"), f"duplicate name {name!r}"))
                seen.add(name)
        for ti, target in enumerate(self.targets):
            unique_ents: set[str] = set()
            for ei, ent in enumerate(target.entitlements):
                if ent.name in unique_ents:
                    where: tuple[str | int, ...] = ("targets", ti, "entitlements", ei, "name")
                    found.append((where, f"duplicate {ent.name!r}"))
                unique_ents.add(ent.name)
        return found

    def _grant_problems(
        self, path: tuple[str | int, ...], items: list[Grant]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """Grants naming a target the policy lacks, or an entitlement the target lacks."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        for gi, grant in enumerate(items):
            target = self.target_map.get(grant.target)
            if target is None:
                found.append(((*path, gi, "target"), f"unknown target {grant.target!r}"))
                continue
            for ei, ent in enumerate(grant.entitlements):
                if ent not in target.entitlement_names:
                    why = f"target {target.name!r} has no entitlement {ent!r}"
                    found.append(((*path, gi, "entitlements", ei), why))
        return found
