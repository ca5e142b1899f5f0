"""The description of a REST API that the REST connector follows, and its small template language.

Does: define the description as pydantic models (base URL, authentication, field mappings,
endpoints with method, path, query and body templates, list paging, entitlement kinds and their
names, error mapping), load it from a shipped profile, a file or an inline mapping (an inline
mapping given with a profile is laid over the profile), and report every invalid field by its
path; substitute ``{name}`` placeholders from a context of plain values — percent-encoding each
value in a path, keeping a lone placeholder's value as it is (list, number, boolean) in a body —
and read and write dotted paths in JSON records.
Does not: make requests, evaluate expressions or call anything named in a description: a
template only copies values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from provisor.connectors.base import PermanentError
from provisor.domain import yaml_limits

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
Outcome = Literal["retryable", "permanent", "not_found", "conflict"]

# ``{name}`` or ``{name.sub.path}``; ``{{`` and ``}}`` are literal braces. Anything else in
# braces (a regular expression's ``{2,3}``) is left as written.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)\}")
PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")

# Variables every request may use; ``record`` is the account as read just before the request
# (reading it is implied by using it), ``attributes`` the identity attributes of the spec.
CORE_VARIABLES = frozenset(
    {"account", "user_name", "identity", "enabled", "password", "attributes", "record"}
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- template language ----------------------------------------------------------------------


def variables(template: Any) -> set[str]:
    """Every placeholder name used anywhere in ``template`` (strings, lists, mappings)."""
    found: set[str] = set()
    if isinstance(template, str):
        found.update(m.group(1) for m in PLACEHOLDER.finditer(template) if m.group(1))
    elif isinstance(template, Mapping):
        for key, value in template.items():
            found |= variables(key) | variables(value)
    elif isinstance(template, list):
        for item in template:
            found |= variables(item)
    return found


def lookup(data: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``data`` (mappings by key, lists by index), or None.

    An empty path or ``.`` is ``data`` itself. A key that itself contains dots is found when
    it matches whole (``limits.max-connections`` in ``{"limits": {"max-connections": 0}}``
    walks; ``{"a.b": 1}`` also answers ``a.b``)."""
    if path in ("", "."):
        return data
    if isinstance(data, Mapping) and path in data:
        return data[path]
    head, _, rest = path.partition(".")
    if isinstance(data, Mapping):
        value = data.get(head)
    elif isinstance(data, list) and head.isdigit() and int(head) < len(data):
        value = data[int(head)]
    else:
        return None
    return value if not rest else lookup(value, rest)


def assign(data: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in ``data`` to ``value``, creating mappings on the way."""
    head, _, rest = path.partition(".")
    if not rest:
        data[head] = value
        return
    child = data.get(head)
    if not isinstance(child, dict):
        child = {}
        data[head] = child
    assign(child, rest, value)


class TemplateError(PermanentError):
    """A template names a value the request does not have."""


def _segment(value: Any) -> str:
    text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    encoded = quote(text, safe="")
    # "." and ".." would be read as the path's own navigation
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def render_text(template: str, context: Mapping[str, Any], *, path: bool = False) -> str:
    """``template`` with every placeholder replaced by its value as text.

    In a path, each value is percent-encoded as one segment (``/`` becomes ``%2F``) and a
    missing or empty value is an error, so a request never goes to a shorter path than meant."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = match.group(1)
        value = lookup(context, name)
        if path:
            if value is None or value == "":
                raise TemplateError(f"the path {template!r} needs a value for {{{name}}}")
            return _segment(value)
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        return str(value)

    return PLACEHOLDER.sub(replace, template)


def render(template: Any, context: Mapping[str, Any]) -> Any:
    """A JSON body or query from ``template``: a string that is one placeholder alone takes the
    value itself (a list stays a list, ``true`` a boolean); other strings are text."""
    if isinstance(template, str):
        match = PLACEHOLDER.fullmatch(template)
        if match and match.group(1):
            return lookup(context, match.group(1))
        return render_text(template, context)
    if isinstance(template, Mapping):
        return {render_text(str(k), context): render(v, context) for k, v in template.items()}
    if isinstance(template, list):
        return [render(item, context) for item in template]
    return template


# --- the description ------------------------------------------------------------------------


class Request(_Model):
    """One HTTP request: method, path template (relative to ``url``), query and JSON body."""

    method: Method = "GET"
    path: str = Field(min_length=1)
    query: dict[str, Any] = Field(default_factory=dict)
    body: Any = None

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if "://" in value:
            raise ValueError("a path is relative to the API's url; do not repeat the host")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def uses(self) -> set[str]:
        return variables(self.path) | variables(self.query) | variables(self.body)

    def roots(self) -> set[str]:
        return {name.split(".", 1)[0] for name in self.uses()}


class Paging(_Model):
    """How a list is split into pages.

    ``none``: one request returns everything. ``page``: ``page_param`` counts pages from
    ``first_page``. ``offset``: ``offset_param`` counts items from 0. ``cursor``: the response
    field ``next_cursor`` holds the value to send as ``cursor_param`` (empty: last page).
    ``link``: follow the ``Link: <...>; rel="next"`` header (RFC 8288, formerly RFC 5988).
    ``size`` items are asked per page with ``size_param`` (default ``per_page`` for page,
    ``limit`` for offset and cursor; none for link unless given)."""

    style: Literal["none", "page", "offset", "cursor", "link"] = "none"
    size: int = Field(default=100, ge=1, le=10_000)
    size_param: str | None = None
    page_param: str = "page"
    first_page: int = Field(default=1, ge=0)
    offset_param: str = "offset"
    cursor_param: str = "cursor"
    next_cursor: str = "next_cursor"
    total: str | None = None  # response field with the number of items in all pages
    max_pages: int = Field(default=100_000, ge=1)

    @property
    def size_name(self) -> str | None:
        if self.size_param is not None:
            return self.size_param or None
        return {"page": "per_page", "offset": "limit", "cursor": "limit"}.get(self.style)


class ListRequest(Request):
    """A request answering a list: ``items`` is where the list sits in the JSON response
    (empty: the response is the list), ``paging`` how to walk every page."""

    items: str = ""
    paging: Paging = Field(default_factory=Paging)


class GroupedList(ListRequest):
    """A list of entries for every account at once; ``account`` is the entry's field naming
    the account (its id)."""

    account: str = Field(min_length=1)


class CreateRequest(Request):
    """``check_exists``: look the name up first and answer Conflict when it is taken (for APIs
    whose create overwrites, like a PUT). ``id``: template for the new account's id when the
    response does not carry one (e.g. ``{user_name}``)."""

    check_exists: bool = False
    id: str | None = None


Steps = list[Request]


def _as_steps(value: Any) -> Any:
    if value is None or isinstance(value, list):
        return value
    return [value]


class Endpoints(_Model):
    list: ListRequest
    get: Request
    find: ListRequest | None = None
    create: CreateRequest | None = None
    update: Request | None = None
    disable: Steps | None = None
    enable: Steps | None = None
    delete: Request | None = None
    list_sessions: ListRequest | None = None
    list_all_sessions: GroupedList | None = None
    revoke_sessions: Steps | None = None
    revoke_wait: float = Field(default=5.0, ge=0, le=120)

    _steps = field_validator("disable", "enable", "revoke_sessions", mode="before")(_as_steps)

    @model_validator(mode="after")
    def _pairs(self) -> Endpoints:
        if (self.disable is None) != (self.enable is None):
            raise ValueError("disable and enable come together: give both or neither")
        for name in ("disable", "enable", "revoke_sessions"):
            if getattr(self, name) == []:
                raise ValueError(f"{name} needs at least one request")
        return self


class Enabled(_Model):
    """Whether an account is enabled, from one field: ``enabled_when`` lists the values that
    mean enabled, or ``disabled_when`` those that mean disabled (a missing field is None)."""

    field: str = Field(min_length=1)
    enabled_when: list[Any] | None = None
    disabled_when: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Enabled:
        if (self.enabled_when is None) == (self.disabled_when is None):
            raise ValueError("give exactly one of enabled_when or disabled_when")
        return self

    def judge(self, record: Any) -> bool:
        value = lookup(record, self.field)
        if self.enabled_when is not None:
            return value in self.enabled_when
        return value not in (self.disabled_when or [])


class AccountMap(_Model):
    """Where the account's parts are in a record: ``id`` (the account id the endpoints use as
    ``{account}``), ``user_name``, ``external_id`` (where the identity id is kept, if anywhere),
    ``enabled``, and ``attributes`` (identity attribute -> record field). ``rename``: whether
    ``update`` may change the user name."""

    id: str = "id"
    user_name: str = "user_name"
    external_id: str | None = None
    enabled: Enabled | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    rename: bool = True


class Auth(_Model):
    """``basic`` (settings ``username``/``password``), ``bearer`` (setting ``token``, sent as
    ``header: scheme token``), ``oauth2`` client credentials (settings ``client_id``/
    ``client_secret``; ``endpoint`` is the token URL, absolute or relative to ``url``; the
    client authenticates there with HTTP basic or, with ``client_auth: body``, in the form), or
    ``none``."""

    type: Literal["none", "basic", "bearer", "oauth2"] = "none"
    header: str = "Authorization"
    scheme: str = "Bearer"
    endpoint: str | None = None
    scope: str | None = None
    client_auth: Literal["basic", "body"] = "basic"

    @model_validator(mode="after")
    def _endpoint(self) -> Auth:
        if self.type == "oauth2" and not self.endpoint:
            raise ValueError("oauth2 needs the token endpoint: auth.endpoint")
        return self


class EntitlementKind(_Model):
    """One kind of entitlement. ``pattern`` names its entitlements (``vhost:{vhost}``: the part
    after ``vhost:`` becomes ``{vhost}``); ``defaults`` adds more parts (``{configure}``).

    Either the kind is a list ``field`` of the account record (tags, roles), changed by writing
    the record back through ``write`` (default: the ``update`` endpoint) and limited to
    ``values`` when given; or it has requests of its own: ``add``, ``remove``, ``read`` (the
    account's entries; each entry's fields fill the pattern), optionally ``read_all`` (every
    account's entries at once, for listing) and ``exists`` (answers 404 for an entitlement the
    target lacks)."""

    pattern: str = Field(min_length=1)
    defaults: dict[str, Any] = Field(default_factory=dict)
    field: str | None = None
    values: list[str] | None = None
    write: Request | None = None
    add: Steps | None = None
    remove: Steps | None = None
    read: ListRequest | None = None
    read_all: GroupedList | None = None
    exists: Request | None = None

    _steps = field_validator("add", "remove", mode="before")(_as_steps)

    @field_validator("pattern")
    @classmethod
    def _has_parts(cls, value: str) -> str:
        names = [m.group(1) for m in PLACEHOLDER.finditer(value) if m.group(1)]
        if not names:
            raise ValueError("a pattern needs at least one {part}, e.g. 'vhost:{vhost}'")
        if len(set(names)) != len(names):
            raise ValueError("each {part} may appear once in a pattern")
        return value

    @model_validator(mode="after")
    def _style(self) -> EntitlementKind:
        if self.field is not None:
            extra = [n for n in ("add", "remove", "read", "read_all") if getattr(self, n)]
            if extra:
                raise ValueError(f"a field kind is written through the record; drop {extra}")
            if len(self.parts) != 1:
                raise ValueError("a field kind's pattern has exactly one {part}")
        elif not (self.add and self.remove and self.read):
            raise ValueError("give either field, or add, remove and read requests")
        return self

    @property
    def parts(self) -> list[str]:
        return [m.group(1) for m in PLACEHOLDER.finditer(self.pattern) if m.group(1)]

    def regex(self) -> re.Pattern[str]:
        pieces: list[str] = []
        last = 0
        parts = self.parts
        for match in PLACEHOLDER.finditer(self.pattern):
            literal = self.pattern[last : match.start()]
            pieces.append(re.escape(literal))
            if match.group(1):
                greedy = match.group(1) == parts[-1]
                pieces.append(f"(?P<{_group(match.group(1))}>.+{'' if greedy else '?'})")
            else:
                pieces.append(re.escape(match.group(0)[0]))
            last = match.end()
        pieces.append(re.escape(self.pattern[last:]))
        return re.compile("^" + "".join(pieces) + "$", re.S)

    def parse(self, name: str) -> dict[str, str] | None:
        match = self.regex().match(name)
        if match is None:
            return None
        return {part: match.group(_group(part)) for part in self.parts}

    def name_of(self, parts: Mapping[str, Any]) -> str:
        return render_text(self.pattern, parts)


def _group(part: str) -> str:
    return "p_" + re.sub(r"[^A-Za-z0-9_]", "_", part)


class Entitlements(_Model):
    """``kinds`` by name; ``names`` maps an entitlement name the policy uses to its value: a
    string in a kind's pattern (``vhost:/``) or a mapping with ``kind`` and parts
    (``{kind: vhost, vhost: /, write: ""}``). A name not in ``names`` is read as a pattern."""

    kinds: dict[str, EntitlementKind] = Field(default_factory=dict)
    names: dict[str, str | dict[str, Any]] = Field(default_factory=dict)


class ErrorRule(_Model):
    status: list[int]
    contains: str | None = None  # a text the response body must contain
    outcome: Outcome = Field(alias="as")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("status", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return value if isinstance(value, list) else [value]


class Errors(_Model):
    """Status codes to outcomes. ``rules`` are tried first (status plus a text in the body);
    then the lists; any other 5xx is retryable and any other 4xx permanent."""

    retryable: list[int] = Field(default_factory=lambda: [408, 425, 429, 500, 502, 503, 504])
    not_found: list[int] = Field(default_factory=lambda: [404])
    conflict: list[int] = Field(default_factory=lambda: [409])
    permanent: list[int] = Field(default_factory=list)
    rules: list[ErrorRule] = Field(default_factory=list)

    def outcome(self, status: int, body: str) -> Outcome:
        for rule in self.rules:
            if status in rule.status and (rule.contains is None or rule.contains in body):
                return rule.outcome
        for outcome, codes in (
            ("permanent", self.permanent),
            ("retryable", self.retryable),
            ("not_found", self.not_found),
            ("conflict", self.conflict),
        ):
            if status in codes:
                return outcome  # type: ignore[return-value]
        return "retryable" if status >= 500 else "permanent"


class ApiDescription(_Model):
    """A whole REST API as the connector sees it."""

    name: str = ""
    url: str | None = None
    timeout: float = Field(default=10.0, gt=0, le=600)
    headers: dict[str, str] = Field(default_factory=dict)
    auth: Auth = Field(default_factory=Auth)
    account: AccountMap = Field(default_factory=AccountMap)
    endpoints: Endpoints
    entitlements: Entitlements = Field(default_factory=Entitlements)
    errors: Errors = Field(default_factory=Errors)

    @model_validator(mode="after")
    def _consistent(self) -> ApiDescription:
        problems = list(self._template_problems())
        for kind_name, kind in self.entitlements.kinds.items():
            if kind.field is not None and kind.write is None and self.endpoints.update is None:
                problems.append(
                    f"entitlements.kinds.{kind_name}: a field kind is written with the update "
                    "endpoint; describe endpoints.update or give write"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def requests(self) -> Iterator[tuple[str, Request, frozenset[str]]]:
        """Every request with its place in the description and the parts it may also use."""
        none: frozenset[str] = frozenset()
        for name in type(self.endpoints).model_fields:
            value = getattr(self.endpoints, name)
            if isinstance(value, Request):
                yield f"endpoints.{name}", value, none
            elif isinstance(value, list):
                for i, step in enumerate(value):
                    yield f"endpoints.{name}[{i}]", step, none
        for kind_name, kind in self.entitlements.kinds.items():
            parts = frozenset(kind.parts) | frozenset(kind.defaults) | {"entitlement"}
            for name in ("write", "add", "remove", "read", "read_all", "exists"):
                value = getattr(kind, name)
                where = f"entitlements.kinds.{kind_name}.{name}"
                if isinstance(value, Request):
                    yield where, value, parts
                elif isinstance(value, list):
                    for i, step in enumerate(value):
                        yield f"{where}[{i}]", step, parts

    def _template_problems(self) -> Iterator[str]:
        for where, request, parts in self.requests():
            for root in sorted(request.roots() - CORE_VARIABLES - parts):
                yield (
                    f"{where}: unknown placeholder {{{root}}}; known: "
                    f"{', '.join(sorted(CORE_VARIABLES | parts))}"
                )
            for name in variables(request.path) | variables(request.query):
                if name.split(".", 1)[0] == "password":
                    yield f"{where}: a password goes in the body, never in the path or query"


# --- loading ---------------------------------------------------------------------------------


def profile_names() -> list[str]:
    folder = resources.files("provisor.connectors") / "profiles"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, source: str, target: str) -> dict[str, Any]:
    try:
        data = yaml_limits.safe_load(text)
    except yaml.YAMLError as exc:
        raise PermanentError(f"target {target}: {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PermanentError(f"target {target}: {source} must hold a mapping")
    return data


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merge key by key, anything else replaces."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def load_description(target: str, settings: Mapping[str, Any]) -> tuple[ApiDescription, str]:
    """The description from the settings ``profile``, ``api_file`` and/or ``api`` (laid over
    the first), validated; and a short name of where it came from, for messages."""
    profile, api_file, inline = (
        settings.get("profile"),
        settings.get("api_file"),
        settings.get("api"),
    )
    if profile and api_file:
        raise PermanentError(f"target {target}: give connection.profile or api_file, not both")
    data: dict[str, Any] = {}
    sources: list[str] = []
    if profile:
        name = str(profile)
        if not PROFILE_NAME.match(name) or name not in profile_names():
            raise PermanentError(
                f"target {target}: connection.profile {name!r} is not a shipped REST profile; "
                f"known: {', '.join(profile_names())}"
            )
        text = (resources.files("provisor.connectors") / "profiles" / f"{name}.yaml").read_text()
        data = _read_yaml(text, f"profile {name}", target)
        sources.append(f"profile {name}")
    elif api_file:
        path = Path(str(api_file)).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise PermanentError(
                f"target {target}: cannot read connection.api_file {path}: {exc.strerror}"
            ) from exc
        data = _read_yaml(text, f"api_file {path}", target)
        sources.append(f"api_file {path}")
    if inline is not None:
        if not isinstance(inline, Mapping):
            raise PermanentError(f"target {target}: connection.api must be a mapping")
        data = merged(data, inline)
        sources.append("connection.api")
    if not sources:
        raise PermanentError(
            f"target {target}: a REST target needs its API description: connection.profile "
            f"(one of {', '.join(profile_names())}), connection.api_file or connection.api"
        )
    source = " + ".join(sources)
    try:
        return ApiDescription.model_validate(data), source
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"  {where}: {message}" if where else f"  {message}")
        raise PermanentError(
            f"target {target}: the REST API description ({source}) is invalid:\n"
            + "\n".join(problems)
        ) from None
