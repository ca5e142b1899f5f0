"""SCIM 2.0 connector (RFC 7643/7644), built on ``scim2-client`` over ``httpx2``.

Does: discover what the server supports from ``/ServiceProviderConfig`` and where users and
groups live from ``/ResourceTypes``, leniently; create users (userName, externalId,
displayName, emails, active), disable and enable them with PATCH ``active``, manage group
membership as entitlements (PATCH add / remove with a value filter), with a PUT of the whole
resource where PATCH is not supported or is refused (learned once); read one user with its
groups, list every user walking all pages, delete (404 means already gone); bearer or basic
authentication over keep-alive connections; map HTTP failures to retryable (5xx, 429 with
``Retry-After`` in seconds or as an HTTP date, timeouts, refused connections) or permanent.
Group membership is read only through a path shown to work on the target (``read_paths``:
the users' own groups, the member filter, the group listing, each group read alone, each
probed with controls); an account whose membership no trusted path can read says so in
``AccountRecord.unread`` rather than reporting no groups. Lookups by userName/externalId and
by group displayName check the server's answers and fall back to reading everything.
Every answer is read as plain JSON, tolerantly (missing counts, undeclared attributes, string
booleans, numeric ids, attribute names in any case as RFC 7643 §2.1 says); what is written is
built from scim2-models' strict User and Group models.
Listing is built for tens of thousands of users: pages as large as the server allows, only the
attributes the account record needs, the next pages requested while the current one is read
once ``totalResults`` is known, and each group's members read once (not a search per user).
Does not: decide what to change, retry, store what the probes showed (the engine does, through
``remember``), or know about identities beyond the account spec. Sessions are not part of
SCIM: revoking them is unsupported here.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import httpx2
from pydantic import Field, SecretStr
from scim2_client import SCIMClientException
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_client.errors import RequestNetworkException
from scim2_models import (
    Context,
    Email,
    Group,
    Patch,
    PatchOp,
    PatchOperation,
    ResourceType,
    SCIMException,
    ScimProvider,
    ServiceProviderConfig,
    User,
)

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    BaseConnector,
    Conflict,
    ConnectorError,
    ConnectorSettings,
    NotFound,
    PermanentError,
    ReadPath,
    RetryableError,
    Unavailable,
    Unsupported,
)
from provisor.connectors.http import DOWN_STATUS, KeptAlive, retry_after, transport_error

T = TypeVar("T")
RETRYABLE_STATUS = frozenset({408, 412, 425, 429, 500, 502, 503, 504})
PAGE = 1000  # resources asked for per page; a smaller maximum the server announces wins
READ_AHEAD = 2  # list pages requested at once, once the first page tells the total
# changed users above which their groups come from one read of every group's members rather
# than a search per user (each such search makes the server scan every membership)
MEMBERSHIP_SEARCHES = 50
USER_ATTRIBUTES = ("userName", "externalId", "displayName", "emails", "active", "title")
GROUP_ATTRIBUTES = ("displayName", "members")
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
CONTENT_TYPE = "application/scim+json"
# membership read paths, in the order a single account's read tries the trusted ones
PATH_ORDER = ("user-groups", "member-filter", "group-listing", "group-read")
COMPUTED = "computed:"  # recorded with the read paths: an attribute the server computes
GROUP_READ_PROBES = 5  # groups read one by one to see whether a lone read lists members
USER_PROBE_PAGE = 50  # users read to see whether they list their groups, lacking a control
# how JSON booleans may arrive as strings, as pydantic reads them for the models
TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def _quoted(value: str) -> str:
    """A SCIM filter string literal (RFC 7644 §3.4.2.2 uses JSON string syntax)."""
    return json.dumps(value)


def _folded(value: Any) -> dict[str, Any]:
    """A JSON object with its keys in lower case (SCIM attribute names ignore case); anything
    else as an empty object."""
    if not isinstance(value, dict):
        return {}
    return {str(key).lower(): item for key, item in value.items()}


def _objects(value: Any) -> list[dict[str, Any]]:
    """The objects of a multi-valued attribute, keys in lower case."""
    return (
        [_folded(item) for item in value if isinstance(item, dict)]
        if isinstance(value, list)
        else []
    )


def _flag(value: Any) -> bool | None:
    """A SCIM boolean as JSON or as the strings some servers send; None when it is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        folded = value.strip().lower()
        if folded in TRUE:
            return True
        if folded in FALSE:
            return False
    return None


def _patch(model: Any, op: str, path: str, value: Any = None) -> Any:
    """A one-operation PATCH request for ``model`` (the models are generic in the resource)."""
    operation_model: Any = PatchOperation[model]
    patch_model: Any = PatchOp[model]
    fields = {"op": op, "path": path} | ({"value": value} if value is not None else {})
    return patch_model(operations=[operation_model(**fields)])


Page = tuple[list[dict[str, Any]], int | None]  # resources (keys in lower case), totalResults


class _Pages:
    """The pages of one listing, in order. The first page is requested at once; once it tells
    ``totalResults``, up to ``READ_AHEAD`` pages are requested ahead of the one being read, by
    ``startIndex`` at the server's own page size. A page that ends somewhere other than where
    the next was planned (the listing moved while it was read) plans the rest again from where
    it ended, as a walk page after page would; an empty page ends the listing. Without a total,
    pages are read one after another until a short one."""

    def __init__(
        self, pool: ThreadPoolExecutor, fetch: Callable[[int, int], Page], size: int
    ) -> None:
        self._pool, self._fetch, self._size = pool, fetch, size
        self._stride = size
        self._next = 1
        self._queue: deque[tuple[int, Future[Page]]] = deque()
        self.total: int | None = None
        self._submit()

    def _submit(self) -> None:
        self._queue.append((self._next, self._pool.submit(self._fetch, self._next, self._size)))
        self._next += self._stride

    def _drop(self) -> None:
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        previous: Any = None
        try:
            while self._queue:
                start, future = self._queue.popleft()
                resources, total = future.result()
                self.total = total
                if not resources or resources[0].get("id", start) == previous:
                    return  # the end, or a server without totals answering the same page again
                previous = resources[0].get("id", start)
                end = start + len(resources)
                if start == 1:
                    self._stride = len(resources)  # the server may answer fewer than asked
                if (self._queue[0][0] if self._queue else self._next) != end:
                    self._drop()
                    self._next = end
                last = len(resources) < self._stride if total is None else end - 1 >= total
                if not last:
                    ahead = READ_AHEAD if total is not None else 1
                    while len(self._queue) < ahead and (total is None or self._next <= total):
                        self._submit()
                yield resources
                if last:
                    return
        finally:
            self._drop()


@contextmanager
def _reader() -> Iterator[ThreadPoolExecutor]:
    """Threads for the pages requested ahead; queued requests are dropped on the way out."""
    pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="scim-list")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Refused(PermanentError):
    """The server refused a request outright (400, 405, 501): maybe it does not do that."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


GroupRow = tuple[str, str, frozenset[str]]  # group id, displayName, member account ids


class ScimSettings(ConnectorSettings):
    """A SCIM target's ``connection`` settings."""

    url: str = Field(min_length=1, description="base URL, e.g. https://host/scim/v2")
    token: SecretStr | None = Field(default=None, description="bearer token")
    username: str | None = Field(default=None, description="basic authentication")
    password: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0, description="seconds to connect and per request")
    patch: bool | Literal["auto"] = Field(
        default="auto", description="auto (from ServiceProviderConfig), or false to always PUT"
    )
    membership: Literal["group", "user"] = "group"
    dialect: Literal["rfc", "entra"] = "rfc"


class ScimConnector(BaseConnector):
    """One SCIM target. Settings (``connection`` in the policy, secrets already resolved):
    ``url`` (base URL, e.g. https://host/scim/v2), ``token`` (bearer) or ``username`` and
    ``password`` (basic), ``timeout`` seconds (default 10), ``patch`` (auto, or false to
    always PUT), ``membership`` (``group``, the default, or ``user``: which side to prefer when
    both are shown to work), ``dialect`` (``rfc``, the default, or ``entra``: PATCH
    shaped the way Microsoft Entra provisioning sends it — capitalised ``Add``/``Replace``/
    ``Remove`` and members removed by a ``value`` list rather than a filter in the path — for
    applications built to accept exactly that).

    Group membership is read only through a path shown to work on this target (see
    ``read_paths``); when none is, account records say so in ``unread``."""

    # membership reads count only once shown to work (coverage asks)
    proves_membership = True

    Settings = ScimSettings
    settings: ScimSettings
    carries_identity = True  # externalId
    reads_entitlements = True  # through the read paths shown to work (``unread`` otherwise)

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        given = self.settings
        headers = {"Accept": "application/scim+json"}
        auth: httpx2.BasicAuth | None = None
        if given.token is not None:
            headers["Authorization"] = f"Bearer {given.token.get_secret_value()}"
        elif given.username:
            password = given.password.get_secret_value() if given.password else ""
            auth = httpx2.BasicAuth(given.username, password)
        # the last response seen by this thread, for status and Retry-After of a failure
        self._throttle: Callable[[], None] | None = None
        self._seen = threading.local()
        self._base = given.url.rstrip("/")
        self._http = KeptAlive(
            base_url=self._base,
            headers=headers,
            auth=auth,
            timeout=given.timeout,
            event_hooks={"request": [self._pace], "response": [self._remember]},
        )
        self._scim: SyncSCIMClient | None = None
        self._patch_setting = given.patch
        self._membership = given.membership
        self._dialect = given.dialect
        self._groups: dict[str, str] = {}  # displayName -> id
        self._group_names: dict[str, str] = {}  # id -> displayName
        self._page_limit = PAGE
        self._users_path, self._groups_path = "/Users", "/Groups"
        self._patch_supported = False  # from /ServiceProviderConfig
        self._patch_works = True  # False once PATCH was refused and a PUT did the job
        # members removed by a value list rather than a filter in the path: None until the
        # first removal shows which form this server honours
        self._remove_by_value: bool | None = None
        self._filter_supported = True
        self._attributes_ok = True  # False once the server refused the attributes parameter
        self._discovered = False
        self._setup = threading.Lock()
        # PUT of a group is read-modify-write: two workers changing one group at once would
        # lose a change, so they take turns per group.
        self._group_locks: dict[str, threading.Lock] = {}
        self._paths: dict[str, ReadPath] = {}
        self._earlier: dict[str, ReadPath] = {}
        self._record_paths: Callable[[list[ReadPath]], None] | None = None
        self._checked = False
        self._computed: dict[str, str] = {}  # attribute -> how it was found computed
        self._lookup_trusted: bool | None = None  # userName/externalId filters, once probed

    def set_throttle(self, acquire: Callable[[], None]) -> None:
        """Pace requests: ``acquire`` is called (and may wait) before each HTTP request."""
        self._throttle = acquire

    def _pace(self, _request: httpx2.Request) -> None:
        if self._throttle is not None:
            self._throttle()

    def _remember(self, response: httpx2.Response) -> None:
        self._seen.response = response

    @property
    def _last(self) -> httpx2.Response | None:
        response: httpx2.Response | None = getattr(self._seen, "response", None)
        return response

    # --- plumbing -----------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one request through scim2-client, turning every failure into a connector error."""
        self._seen.response = None
        try:
            result = action()
        except RequestNetworkException as exc:
            cause = exc.__cause__ or exc
            message = f"{self.name}: {what}: {type(cause).__name__}: {cause}"
            if isinstance(cause, httpx2.TransportError):
                raise transport_error(message, cause) from exc
            raise Unavailable(message) from exc
        except SCIMException as exc:
            raise self._status_error(what, exc.status, str(exc)) from exc
        except SCIMClientException as exc:
            status = self._last.status_code if self._last is not None else None
            detail = str(exc)
            if self._last is not None and self._last.status_code >= 400:
                detail = self._detail(self._last)
            raise self._status_error(what, status, detail) from exc
        last = self._last
        if last is not None and last.status_code >= 400:
            # answers are not validated (they are read leniently), so errors are caught here
            raise self._status_error(what, last.status_code, self._detail(last))
        return result

    def _status_error(self, what: str, status: int | None, detail: str) -> ConnectorError:
        message = f"{self.name}: {what}: HTTP {status or '?'}: {detail}"
        if status in (400, 405, 501):
            return _Refused(message, status)
        if status is None or status in RETRYABLE_STATUS or status >= 500:
            header = self._last.headers.get("Retry-After") if self._last is not None else None
            down = status is None or status in DOWN_STATUS
            return (Unavailable if down else RetryableError)(message, retry_after(header))
        if status == 404:
            return NotFound(message)
        if status == 409:
            return Conflict(message)
        return PermanentError(message)

    @staticmethod
    def _detail(response: httpx2.Response) -> str:
        try:
            return str(_folded(response.json()).get("detail", ""))
        except ValueError:
            return response.text[:200]

    def _send(
        self, what: str, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> httpx2.Response:
        """One request sent exactly as given; failures mapped to connector errors."""
        self._seen.response = None
        try:
            response = self._http.request(method, path, json=body, **kwargs)
        except httpx2.TransportError as exc:
            message = f"{self.name}: {what}: {type(exc).__name__}: {exc}"
            raise transport_error(message, exc) from exc
        if response.status_code >= 300:
            raise self._status_error(what, response.status_code, self._detail(response))
        return response

    def _raw_patch(self, what: str, path: str, operation: dict[str, Any]) -> None:
        """A PATCH sent exactly as given (for dialects the models would normalise away)."""
        body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"]}
        payload = body | {"Operations": [operation]}
        self._send(what, "PATCH", path, payload, headers={"Content-Type": CONTENT_TYPE})

    def _document(self, what: str, path: str, params: Mapping[str, str | int]) -> Any:
        """One GET answered with JSON, as sent; failures mapped."""
        response = self._send(what, "GET", path, params=params)
        try:
            return response.json()
        except ValueError as exc:
            raise PermanentError(
                f"{self.name}: {what}: GET {path} answered HTTP {response.status_code} with "
                "something that is not JSON"
            ) from exc

    def _get_json(self, what: str, path: str, params: Mapping[str, str | int]) -> dict[str, Any]:
        """One GET answered with a JSON object, its keys in lower case; failures mapped."""
        document = self._document(what, path, params)
        if not isinstance(document, dict):
            raise PermanentError(
                f"{self.name}: {what}: GET {path} answered with a JSON "
                f"{type(document).__name__}, not an object"
            )
        return _folded(document)

    def _endpoint(self, value: Any, default: str) -> str:
        """A resource type's endpoint as a path under the base URL: ``/Users``, ``Users``,
        ``/scim/v2/Users`` and ``https://host/scim/v2/Users`` all name the same place. An
        absolute URL elsewhere (a server behind a proxy often names its own address) keeps
        only its last segment, since endpoints sit directly under the service's base."""
        if not isinstance(value, str) or not value.strip():
            return default
        text = value.strip()
        if "://" in text:
            if text.startswith(self._base + "/"):
                text = text[len(self._base) :]
            else:
                text = text.rstrip("/").rsplit("/", 1)[-1]
        base_path = "/" + self._base.split("://", 1)[-1].partition("/")[2].strip("/")
        if base_path != "/" and text.startswith(base_path + "/"):
            text = text[len(base_path) :]  # a path from the host's root (/scim/v2/Users)
        return "/" + text.strip("/")

    def _discover(self) -> None:
        """Read ``/ServiceProviderConfig`` and ``/ResourceTypes`` once, leniently: what a
        server leaves out (``totalResults``, a schema, a field) falls back to RFC 7644's
        defaults; what it cannot answer at all is named. Writing uses scim2-models' own
        User and Group models, whatever the server's ``/Schemas`` says, so requests stay
        strict while answers are read tolerantly.

        scim2-models creates pydantic classes on first use; creating classes parses source
        with ``ast``, which CPython 3.11 does not allow from several threads at once. Doing it
        here, under a lock, leaves the worker threads only cached classes to use."""
        if self._discovered:
            return
        with self._setup:
            if self._discovered:
                return
            config = self._get_json("discovery", "/ServiceProviderConfig", {})
            bounds = [PAGE]
            for section, key in (("filter", "maxresults"), ("pagination", "maxpagesize")):
                bound = config.get(section)
                value = _folded(bound).get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    bounds.append(value)
            self._page_limit = min(bounds)
            self._patch_supported = _flag(_folded(config.get("patch")).get("supported")) is True
            filtering = _flag(_folded(config.get("filter")).get("supported"))
            self._filter_supported = filtering is not False
            self._resource_types()
            user = ResourceType.from_resource(User).model_copy(
                update={"endpoint": self._users_path}
            )
            group = ResourceType.from_resource(Group).model_copy(
                update={"endpoint": self._groups_path}
            )
            provider = ScimProvider(
                models=(User, Group),
                resource_types=(user, group),
                config=ServiceProviderConfig(patch=Patch(supported=self._patch_supported)),
            )
            self._scim = SyncSCIMClient(
                self._http,
                provider=provider,
                check_response_payload=False,
                check_response_content_type=False,
            )
            _patch(User, "replace", "active", True)
            _patch(Group, "remove", "members")
            _patch(Group, "add", "members", [{"value": "x"}])
            self._discovered = True

    def _resource_types(self) -> None:
        """Where users and groups live, from ``/ResourceTypes`` when the server has it."""
        try:
            document = self._document("discovery", "/ResourceTypes", {})
        except (NotFound, _Refused):
            return  # not published: RFC 7644's /Users and /Groups
        if isinstance(document, dict):
            types = _objects(_folded(document).get("resources"))
            if not types and "endpoint" in _folded(document):
                types = [_folded(document)]
        else:
            types = _objects(document)
        for item in types:
            name = str(item.get("name") or item.get("id") or "").lower()
            schema = str(item.get("schema") or "")
            if name == "user" or schema == USER_SCHEMA:
                self._users_path = self._endpoint(item.get("endpoint"), "/Users")
            elif name == "group" or schema == GROUP_SCHEMA:
                self._groups_path = self._endpoint(item.get("endpoint"), "/Groups")

    @property
    def _client(self) -> SyncSCIMClient:
        self._discover()
        assert self._scim is not None
        return self._scim

    @property
    def _can_patch(self) -> bool:
        if self._patch_setting is False:
            return False
        self._discover()
        return self._patch_supported and self._patch_works

    # --- reading --------------------------------------------------------------------------

    def _user_document(self, account: str) -> dict[str, Any] | None:
        self._discover()
        try:
            return self._get_json(f"read {account}", f"{self._users_path}/{account}", {})
        except NotFound:
            return None

    def read(self, account: str) -> AccountRecord | None:
        user = self._user_document(account)
        if user is None:
            return None
        groups, unread = self._membership_of(account, user)
        return self._listed(user, groups, unread)

    def _all(
        self, path: str, filter_: str | None, attributes: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Every resource at ``path`` matching ``filter_`` (keys in lower case)."""
        with _reader() as pool:
            return [r for page in self._listing(pool, path, filter_, attributes) for r in page]

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """By externalId (the identity id) first, else by userName. The filter's answer is
        checked here, since a server may ignore a filter (answering every user) or answer one
        it does not understand with nothing: a lookup that found nothing counts only once
        the same filter has found a known user; otherwise every user is read."""
        self._discover()
        identity, user_name = _quoted(spec.identity), _quoted(spec.user_name)
        filter_ = f"externalId eq {identity} or userName eq {user_name}"
        users: list[dict[str, Any]] | None = None
        if self._filter_supported and self._lookup_trusted is not False:
            try:
                answered = self._all(self._users_path, filter_, USER_ATTRIBUTES)
            except _Refused:
                self._lookup_trusted = False
            else:
                users = [u for u in answered if _matches(u, spec)]
                if len(users) != len(answered):
                    self._lookup_trusted = False  # it answered users that do not match
                    users = None
                elif not users and not self._lookup_works():
                    users = None
        if users is None:  # no trustworthy filter: read every user
            users = [
                u for u in self._all(self._users_path, None, USER_ATTRIBUTES) if _matches(u, spec)
            ]
        if not users:
            return None
        users.sort(key=lambda u: str(u.get("externalid")) != spec.identity)
        account = str(users[0].get("id"))
        return self.read(account)

    def _lookup_works(self) -> bool:
        """Whether the userName filter finds a user known to exist (the first one listed)
        and only that one; learned once."""
        if self._lookup_trusted is None:
            first, _ = self._page(self._users_path, None, ("userName",), 1, 2)
            if len(first) < 2:
                return False  # no two users to tell a working filter from an ignored one yet
            known = str(first[0].get("username"))
            try:
                found, _ = self._page(
                    self._users_path, f"userName eq {_quoted(known)}", ("userName",), 1, 2
                )
            except _Refused:
                found = []
            ids = [str(u.get("id")) for u in found]
            self._lookup_trusted = ids == [str(first[0].get("id"))]
        return self._lookup_trusted

    def list_accounts(self) -> Iterator[AccountRecord]:
        """Every user. Group membership is checked afresh first (``read_paths``): the group
        listing gives every account's groups when it is shown to list members; otherwise the
        users' own ``groups`` attribute when shown to work; otherwise the records say their
        membership could not be read."""
        with _reader() as pool:
            # the users' first page is asked for while the groups are read and probed
            users = self._listing(pool, self._users_path, None, self._user_attributes(groups=False))
            rows = self._group_rows()
            self._check(rows)
            if not self._trusted("group-listing") and self._trusted("group-read"):
                rows = [self._group_alone(row[0]) for row in rows]
            trusted = self._trusted("group-listing") or self._trusted("group-read")
            members = self._by_account(rows) if trusted else None
            by_user = members is None and self._trusted("user-groups")
            unread = None if members is not None or by_user else self._blind()
            if members is None:  # the users' own groups are needed after all
                users = self._listing(
                    pool, self._users_path, None, self._user_attributes(groups=True)
                )
            for page in users:
                for user in page:
                    mine = (
                        None if members is None else frozenset(members.get(str(user.get("id")), ()))
                    )
                    yield self._listed(user, mine, unread)

    @staticmethod
    def _since(when: datetime) -> str:
        return _quoted(when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def list_changed(self, since: datetime) -> Iterator[AccountRecord]:
        """Users whose own resource changed at or after ``since`` (``meta.lastModified``),
        with their current groups. Group membership changes show in ``changed_memberships``.
        A server that says it does not support filters cannot list changes: ``Unsupported``."""
        self._discover()
        if not self._filter_supported:
            raise Unsupported(
                f"{self.name}: the server says it does not support filters, so it cannot list "
                "what changed"
            )
        self._ensure_checked()
        by_user = self._trusted("user-groups") and (
            self._membership == "user" or not self._trusted("group-listing")
        )
        with _reader() as pool:
            filter_ = f"meta.lastModified ge {self._since(since)}"
            attributes = self._user_attributes(groups=self._trusted("user-groups"))
            users = self._listing(pool, self._users_path, filter_, attributes)
            members: dict[str, set[str]] | None = None
            for page in users:
                changed = users.total if users.total is not None else len(page)
                if (
                    not by_user
                    and members is None
                    and changed > MEMBERSHIP_SEARCHES
                    and self._trusted("group-listing")
                ):
                    members = self._by_account(self._group_rows())
                for user in page:
                    if members is not None:
                        mine = frozenset(members.get(str(user.get("id")), ()))
                        yield self._listed(user, mine, None)
                    else:
                        groups, unread = self._membership_of(str(user.get("id")), user)
                        yield self._listed(user, groups, unread)

    def changed_memberships(self, since: datetime) -> dict[str, frozenset[str]]:
        """For every group changed at or after ``since``: all its members now (account ids).
        Only where the group listing is shown to list members; otherwise changed users carry
        their groups instead."""
        self._ensure_checked()
        if self._membership == "user" or not self._trusted("group-listing"):
            return {}
        with _reader() as pool:
            filter_ = f"meta.lastModified ge {self._since(since)}"
            found: dict[str, set[str]] = {}
            for page in self._listing(pool, self._groups_path, filter_, GROUP_ATTRIBUTES):
                for group in page:
                    _, name, ids = self._group_row(group)
                    found.setdefault(name, set()).update(ids)
        return {name: frozenset(ids) for name, ids in found.items()}

    # --- membership read paths ------------------------------------------------------------

    def check(self) -> None:
        """Read the service's configuration and one page of one user, with the credentials."""
        self._discover()
        self._get_json("check", self._users_path, {"count": 1})

    def read_paths(self) -> list[ReadPath]:
        """Each way this connector can read group membership, probed now: the group listing
        (``GET /Groups`` with members), each group read alone (``GET /Groups/{id}``), the
        users' own ``groups`` attribute, and the ``members.value eq`` filter. An unfiltered
        read is trusted once it has shown a membership (a server that leaves members out
        shows none); a filter only after it has returned a group known to hold a control
        account and left out one known not to. Both controls come from an unfiltered read."""
        self._check(self._group_rows())
        computed = [
            ReadPath(COMPUTED + k, "computed", why) for k, why in list(self._computed.items())
        ]
        return [self._paths[p] for p in PATH_ORDER if p in self._paths] + computed

    def remember(
        self, earlier: list[ReadPath], record: Callable[[list[ReadPath]], None] | None
    ) -> None:
        """What earlier probes of this target showed; ``record`` hears of every probe.

        A path shown to work before stays trusted while nothing can show it either way now
        (a group listing that has listed members, now that no group has any); a path caught
        answering wrongly now is untrusted, whatever it did before."""
        self._earlier = {p.path: p for p in earlier if not p.path.startswith(COMPUTED)}
        self._computed = {
            p.path.removeprefix(COMPUTED): p.detail for p in earlier if p.path.startswith(COMPUTED)
        }
        self._record_paths = record

    def _record(self) -> None:
        """Tell the engine what the probes showed and which attributes the target computes."""
        if self._record_paths is not None:
            computed = [
                ReadPath(COMPUTED + key, "computed", why)
                for key, why in list(self._computed.items())
            ]
            self._record_paths(list(self._paths.values()) + computed)

    def _merged(self, path: ReadPath) -> ReadPath:
        before = self._earlier.get(path.path)
        if path.status == "untested" and before is not None and before.status == "trusted":
            detail = before.detail.removeprefix("shown before: ").split("; now ")[0]
            return ReadPath(path.path, "trusted", f"shown before: {detail}; now {path.detail}")
        return path

    def _trusted(self, path: str) -> bool:
        found = self._paths.get(path)
        return found is not None and found.status == "trusted"

    def _ensure_checked(self) -> None:
        """Probe once; again while no path is trusted (memberships may have appeared since)."""
        if not self._checked or not any(p.status == "trusted" for p in self._paths.values()):
            self._check(self._group_rows())

    def _group_row(self, group: dict[str, Any]) -> GroupRow:
        ids = frozenset(
            str(m["value"]) for m in _objects(group.get("members")) if m.get("value") is not None
        )
        group_id, name = str(group.get("id")), str(group.get("displayname"))
        self._group_names[group_id] = name
        self._groups.setdefault(name, group_id)
        return group_id, name, ids

    def _group_rows(self) -> list[GroupRow]:
        """Every group with the members the listing shows (none, where it leaves them out)."""
        self._discover()
        return [self._group_row(g) for g in self._all(self._groups_path, None, GROUP_ATTRIBUTES)]

    @staticmethod
    def _by_account(rows: list[GroupRow]) -> dict[str, set[str]]:
        members: dict[str, set[str]] = {}
        for _, name, ids in rows:
            for account in ids:
                members.setdefault(account, set()).add(name)
        return members

    def _check(self, rows: list[GroupRow]) -> None:
        """Probe every membership read path against what the unfiltered reads show."""
        paths: dict[str, ReadPath] = {}
        shown = [row for row in rows if row[2]]
        truth = rows
        if not rows:
            paths["group-listing"] = ReadPath(
                "group-listing", "trusted", "the target has no groups: nobody can hold one"
            )
        elif shown:
            count = sum(len(r[2]) for r in shown)
            paths["group-listing"] = ReadPath(
                "group-listing", "trusted", f"lists {count} memberships across {len(shown)} groups"
            )
        else:
            paths["group-listing"] = ReadPath(
                "group-listing",
                "untested",
                f"none of {len(rows)} groups lists a member: an empty group cannot be told "
                "from one whose members the server leaves out",
            )
            truth = [self._group_alone(row[0]) for row in rows[:GROUP_READ_PROBES]]
            if any(r[2] for r in truth):
                paths["group-read"] = ReadPath(
                    "group-read", "trusted", "groups read one by one list their members"
                )
                alone = next(r for r in truth if r[2])
                paths["group-listing"] = ReadPath(
                    "group-listing",
                    "untrusted",
                    f"it lists {alone[1]} without members, but read alone it has "
                    f"{len(alone[2])}: the listing leaves members out",
                )
            else:
                paths["group-read"] = ReadPath(
                    "group-read",
                    "untested",
                    f"none of {len(truth)} groups read one by one lists a member",
                )
        control = _control(truth)
        paths["user-groups"] = self._probe_user_side(control)
        paths["member-filter"] = self._probe_filter(control)
        if not rows and paths["user-groups"].status == "trusted":
            # a listing of no group while users list theirs: the listing cannot see them
            paths["group-listing"] = ReadPath(
                "group-listing",
                "untrusted",
                "it lists no group, but users list groups: the listing does not see them",
            )
        merged = {name: self._merged(path) for name, path in paths.items()}
        self._paths, self._checked = merged, True
        self._earlier.update(merged)
        self._record()

    def _group_alone(self, group_id: str) -> GroupRow:
        try:
            document = self._get_json(
                f"read group {group_id}", f"{self._groups_path}/{group_id}", {}
            )
        except NotFound:
            return group_id, self._group_names.get(group_id, group_id), frozenset()
        return self._group_row(document)

    def _user_groups(self, user: dict[str, Any]) -> frozenset[str] | None:
        """The groups a user resource lists itself, by name; None when it carries none."""
        listed = user.get("groups")
        if not isinstance(listed, list) or not listed:
            return None
        names = set()
        for item in _objects(listed):
            name = item.get("display") or self._group_names.get(str(item.get("value")))
            if name:
                names.add(str(name))
        return frozenset(names)

    def _probe_user_side(self, control: tuple[str, str, str] | None) -> ReadPath:
        path = "user-groups"
        if control is not None:
            account, held, other = control
            user = self._user_document(account) or {}
            groups = self._user_groups(user) or frozenset()
            if held not in groups:
                return ReadPath(
                    path, "untrusted", f"user {account} does not list {held}, which it holds"
                )
            if other in groups:
                return ReadPath(
                    path, "untrusted", f"user {account} lists {other}, which does not hold it"
                )
            return ReadPath(path, "trusted", f"user {account} lists {held} and not {other}")
        # no control from the group side: the users' own lists are all there is to go by
        size = min(USER_PROBE_PAGE, self._page_limit)
        first, _ = self._page(self._users_path, None, ("userName", "groups"), 1, size)
        if any(self._user_groups(u) for u in first):
            return ReadPath(path, "trusted", "users list their groups")
        return ReadPath(path, "untested", "no user lists a group")

    def _probe_filter(self, control: tuple[str, str, str] | None) -> ReadPath:
        path = "member-filter"
        if not self._filter_supported:
            return ReadPath(path, "untrusted", "the server says it does not support filters")
        if control is None:
            return ReadPath(
                path,
                "untested",
                "no control yet: it needs an account shown in one group and out of another "
                "that lists members",
            )
        account, held, other = control
        try:
            names = self._filtered(account)
        except _Refused as exc:
            return ReadPath(path, "untrusted", f"refused: {exc}")
        if held not in names:
            return ReadPath(
                path,
                "untrusted",
                f"members.value eq {account} left out {held}, which holds it (ignored or "
                "unsupported filter)",
            )
        if other in names:
            return ReadPath(
                path,
                "untrusted",
                f"members.value eq {account} returned {other}, which does not hold it "
                "(ignored filter)",
            )
        return ReadPath(path, "trusted", f"found {held} for {account} and left out {other}")

    def _filtered(self, account: str) -> frozenset[str]:
        found = self._all(
            self._groups_path, f"members.value eq {_quoted(account)}", ("displayName",)
        )
        return frozenset(str(g.get("displayname")) for g in found)

    def _blind(self) -> dict[str, str]:
        reasons = "; ".join(
            f"{p.path}: {p.detail}" for p in self._paths.values() if p.status != "trusted"
        )
        return {"entitlements": f"no membership read is shown to work on {self.name} ({reasons})"}

    def _membership_of(
        self, account: str, user: dict[str, Any]
    ) -> tuple[frozenset[str], dict[str, str] | None]:
        """The account's groups through the first trustworthy path, in the order: the user's
        own ``groups`` (already read), the member filter, the group listing, each group read
        alone; else what the user lists, marked unread."""
        self._ensure_checked()
        order = list(PATH_ORDER)
        if self._membership == "user":
            order.remove("user-groups")
            order.insert(0, "user-groups")
        for path in order:
            if not self._trusted(path):
                continue
            if path == "user-groups":
                if not any(key == "groups" for key in user):
                    continue  # read without its groups (a listing that did not ask for them)
                return self._user_groups(user) or frozenset(), None
            if path == "member-filter":
                try:
                    return self._filtered(account), None
                except _Refused:
                    continue
            rows = self._group_rows()
            if path == "group-read":
                rows = [self._group_alone(row[0]) for row in rows]
            return frozenset(name for _, name, ids in rows if account in ids), None
        return self._user_groups(user) or frozenset(), self._blind()

    # --- listing --------------------------------------------------------------------------

    def _user_attributes(self, *, groups: bool) -> tuple[str, ...]:
        return USER_ATTRIBUTES + (("groups",) if groups else ())

    def _page(
        self, path: str, filter_: str | None, attributes: tuple[str, ...], start: int, count: int
    ) -> Page:
        """One page of a listing: its resources (keys in lower case) and ``totalResults``."""
        params: dict[str, str | int] = {"startIndex": start, "count": count}
        if filter_:
            params["filter"] = filter_
        if attributes and self._attributes_ok:
            params["attributes"] = ",".join(attributes)
        what = f"search {path.strip('/')} {filter_ or 'all'}"
        try:
            document = self._document(what, path, params)
        except _Refused:
            if "attributes" not in params:
                raise
            # a server that refuses the attributes parameter (RFC 7644 allows it): ask for
            # whole resources from now on
            self._attributes_ok = False
            del params["attributes"]
            document = self._document(what, path, params)
        if isinstance(document, list):  # a bare array: every resource, no paging
            return _objects(document), len(document)
        if not isinstance(document, dict):
            raise PermanentError(
                f"{self.name}: {what}: the answer is a JSON {type(document).__name__}, "
                "not a list response"
            )
        folded = _folded(document)
        total = folded.get("totalresults")
        if isinstance(total, str) and total.isdigit():
            total = int(total)
        return (
            _objects(folded.get("resources")),
            total if isinstance(total, int) and not isinstance(total, bool) else None,
        )

    def _listing(
        self, pool: ThreadPoolExecutor, path: str, filter_: str | None, attributes: tuple[str, ...]
    ) -> _Pages:
        """Every resource at ``path`` matching ``filter_``, page by page; the first page is
        requested at once."""
        self._discover()
        return _Pages(
            pool,
            lambda start, count: self._page(path, filter_, attributes, start, count),
            self._page_limit,
        )

    def _listed(
        self,
        user: dict[str, Any],
        groups: frozenset[str] | None,
        unread: Mapping[str, str] | None,
        *,
        keep_computed: bool = False,
    ) -> AccountRecord:
        """An account record from a user resource (keys in lower case): ``groups`` are its
        groups, or None to take them from the user itself."""
        account = user.get("id")
        if account is None or account == "":
            raise PermanentError(f"{self.name}: the server listed a user without an id")
        account = str(account)
        entitlements = groups if groups is not None else (self._user_groups(user) or frozenset())
        active = user.get("active")
        enabled = _flag(active) if active is not None else True
        if enabled is None:
            raise PermanentError(
                f"{self.name}: user {account} has active={active!r}, not a boolean"
            )
        attributes: dict[str, Any] = {}
        if user.get("displayname"):
            attributes["name"] = str(user["displayname"])
        email = next((e["value"] for e in _objects(user.get("emails")) if e.get("value")), None)
        if email:
            attributes["email"] = str(email)
        if user.get("title"):
            attributes["title"] = str(user["title"])
        if not keep_computed:
            for key in list(self._computed):
                attributes.pop(key, None)  # the server's own, not Provisor's to manage
        external_id = user.get("externalid")
        return AccountRecord(
            account=account,
            user_name=str(user.get("username")),
            enabled=enabled,
            entitlements=entitlements,
            external_id=None if external_id is None else str(external_id),
            attributes=attributes,
            unread=dict(unread or {}),
        )

    # --- writing --------------------------------------------------------------------------

    def _fields(self, spec: AccountSpec) -> dict[str, Any]:
        """The user attributes Provisor manages, from the account spec."""
        attrs = spec.attributes
        fields: dict[str, Any] = {"user_name": spec.user_name, "external_id": spec.identity}
        if attrs.get("name"):
            fields["display_name"] = str(attrs["name"])
        if attrs.get("email"):
            fields["emails"] = [Email(value=str(attrs["email"]), primary=True)]
        if attrs.get("title"):
            fields["title"] = str(attrs["title"])
        return fields

    def create(self, spec: AccountSpec) -> str:
        client = self._client
        user: User[Any] = User(**(self._fields(spec) | {"active": spec.enabled}))
        created = self._call(f"create {spec.user_name}", lambda: client.create(user))
        found = _folded(created).get("id") if isinstance(created, dict) else None
        if found is None or found == "":
            raise PermanentError(
                f"{self.name}: create {spec.user_name}: the server answered without the new "
                "user's id"
            )
        return str(found)

    def _replace(
        self, what: str, path: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Read-modify-write with PUT: the resource as read (attributes Provisor does not
        manage sent back unchanged, whatever the server's schema declares), changed, sent
        with ``If-Match`` when the server gave a version."""
        response = self._send(f"read {path}", "GET", path)
        try:
            document = response.json()
        except ValueError as exc:
            raise PermanentError(f"{self.name}: {what}: GET {path} is not JSON") from exc
        if not isinstance(document, dict):
            raise PermanentError(f"{self.name}: {what}: GET {path} is not a JSON object")
        meta = _folded(document.get("meta"))
        version = response.headers.get("ETag") or meta.get("version")
        body = change({k: v for k, v in document.items() if k.lower() != "meta"})
        headers = {"Content-Type": CONTENT_TYPE} | ({"If-Match": str(version)} if version else {})
        self._send(what, "PUT", path, body, headers=headers)

    def update(self, account: str, spec: AccountSpec) -> str:
        """Replace the managed attributes (userName included) on the user as read; the
        attributes Provisor does not manage, ``active`` among them, are sent back unchanged."""
        self._discover()
        managed = User(**self._fields(spec)).model_dump(
            scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST, exclude={"schemas"}
        )

        def change(document: dict[str, Any]) -> dict[str, Any]:
            names = {key.lower() for key in managed}
            kept = {k: v for k, v in document.items() if k.lower() not in names}
            return kept | managed

        self._replace(f"update {account}", f"{self._users_path}/{account}", change)
        self._learn_computed(account, spec)
        return account

    def _learn_computed(self, account: str, spec: AccountSpec) -> None:
        """After an update, the attributes the server shows otherwise than they were sent are
        ones it computes itself (a displayName made from name parts, say): they are no longer
        reported as read, so no update is planned for them again, and this is recorded."""
        user = self._user_document(account)
        if user is None:
            return
        shown = self._listed(user, frozenset(), None, keep_computed=True).attributes
        learned = False
        for key in ("name", "email", "title"):
            sent = spec.attributes.get(key)
            if sent and key in shown and str(shown[key]) != str(sent):
                self._computed[key] = (
                    f"sent {sent!r}, the target shows {shown[key]!r}: it computes this itself"
                )
                learned = True
        if learned:
            self._record()

    def set_enabled(self, account: str, enabled: bool) -> None:
        what = f"set active={enabled} on {account}"
        path = f"{self._users_path}/{account}"
        if self._can_patch and self._dialect == "entra":
            operation = {"op": "Replace", "path": "active", "value": enabled}
            self._raw_patch(what, path, operation)
            return
        if self._can_patch:
            client = self._client
            patch = _patch(User, "replace", "active", enabled)
            try:
                self._call(what, lambda: client.modify(User, account, patch))
                return
            except _Refused as refused:
                self._learn_put(
                    what,
                    path,
                    refused,
                    lambda d: _with_active(d, enabled),
                    lambda: self._shows_active(account, enabled),
                )
                return

        self._discover()
        self._replace(what, path, lambda d: _with_active(d, enabled))

    def _learn_put(
        self,
        what: str,
        path: str,
        refused: _Refused,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        took: Callable[[], bool | None],
    ) -> None:
        """PATCH was refused: do it with PUT instead, and keep to PUT on this target once a
        read (``took``) shows the PUT did the job — some servers accept a PUT and ignore the
        part they do not manage (members, say), and PATCH would then be lost for nothing."""
        try:
            self._replace(what, path, change)
        except ConnectorError as exc:
            raise PermanentError(
                f"{refused} (PATCH refused; a PUT of the whole resource failed too: {exc})"
            ) from exc
        if took():
            self._patch_works = False

    def _group_id(self, entitlement: str) -> str:
        """The group's id by its displayName: a filter whose answer is checked, then the
        whole group listing before the group is called missing (a server may answer a
        filter it ignores or does not support with nothing)."""
        if entitlement not in self._groups:
            found: list[dict[str, Any]] = []
            if self._filter_supported:
                try:
                    found = self._all(
                        self._groups_path,
                        f"displayName eq {_quoted(entitlement)}",
                        ("displayName",),
                    )
                except _Refused:
                    found = []
            for group in found:
                self._group_row(group)
            if entitlement not in self._groups:
                self._group_rows()
            if entitlement not in self._groups:
                raise PermanentError(
                    f"{self.name}: group {entitlement!r} does not exist in the target (read "
                    "from its whole group listing); create it there or remove it from the policy"
                )
        return self._groups[entitlement]

    def _change_membership(self, account: str, entitlement: str, add: bool) -> None:
        self._discover()
        group_id = self._group_id(entitlement)
        path = f"{self._groups_path}/{group_id}"
        verb = "add" if add else "remove"
        what = f"{verb} {account} {'to' if add else 'from'} group {entitlement}"

        def change(document: dict[str, Any]) -> dict[str, Any]:
            key = next((k for k in document if k.lower() == "members"), "members")
            members = document.get(key) if isinstance(document.get(key), list) else []
            kept = [
                m
                for m in members or []
                if not (isinstance(m, dict) and str(m.get("value")) == account)
            ]
            if add:
                kept.append({"value": account})
            return document | {key: kept}

        if self._can_patch and self._dialect == "entra":
            operation = {
                "op": "Add" if add else "Remove",
                "path": "members",
                "value": [{"value": account}],
            }
            self._raw_patch(what, path, operation)
            return
        with self._setup:
            lock = self._group_locks.setdefault(group_id, threading.Lock())
        by_value = {"op": "remove", "path": "members", "value": [{"value": account}]}
        if self._can_patch and not add and self._remove_by_value:
            self._raw_patch(what, path, by_value)
            return
        if self._can_patch:
            client = self._client
            patch = (
                _patch(Group, "add", "members", [{"value": account}])
                if add
                else _patch(Group, "remove", f"members[value eq {_quoted(account)}]")
            )
            try:
                self._call(what, lambda: client.modify(Group, group_id, patch))
            except _Refused as refused:
                # the refusal may be of the filter in the path only (a 400, or a 501 for an
                # operation form the server has not implemented): try the value-list form
                if not add and self._remove_by_value is None and refused.status != 405:
                    try:
                        self._raw_patch(what, path, by_value)
                        self._remove_by_value = True
                        return
                    except _Refused:
                        pass
                with lock:
                    self._learn_put(
                        what,
                        path,
                        refused,
                        change,
                        lambda: self._still_member(account, entitlement) is add,
                    )
                return
            if not add and self._remove_by_value is None:
                self._learn_removal(what, path, account, entitlement, by_value)
            return
        with lock:
            self._replace(what, path, change)

    def _learn_removal(
        self, what: str, path: str, account: str, entitlement: str, by_value: dict[str, Any]
    ) -> None:
        """The first removal on this target: some servers accept a removal by filter in the
        path and do nothing. Read it back; if the member is still there, remove it the way
        Microsoft Entra sends it (``members`` with a value list) and, once that works, keep
        to that form here."""
        still = self._still_member(account, entitlement)
        if still is None:
            return  # cannot tell here: learned at a later removal
        if not still:
            self._remove_by_value = False
            return
        self._raw_patch(what, path, by_value)
        if self._still_member(account, entitlement) is False:
            self._remove_by_value = True

    def _shows_active(self, account: str, enabled: bool) -> bool:
        user = self._user_document(account)
        return user is not None and _flag(user.get("active", True)) is enabled

    def _still_member(self, account: str, entitlement: str) -> bool | None:
        """Whether ``account`` is shown in ``entitlement`` now; None when that cannot be read."""
        user = self._user_document(account)
        if user is None:
            return False
        groups, unread = self._membership_of(account, user)
        if entitlement in groups:
            return True
        return None if unread else False

    def add_entitlement(self, account: str, entitlement: str) -> None:
        self._change_membership(account, entitlement, add=True)

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        self._change_membership(account, entitlement, add=False)

    def delete(self, account: str) -> None:
        self._discover()
        try:
            self._send(f"delete {account}", "DELETE", f"{self._users_path}/{account}")
        except NotFound:
            return

    def close(self) -> None:
        self._http.close()


def _with_active(document: dict[str, Any], enabled: bool) -> dict[str, Any]:
    kept = {k: v for k, v in document.items() if k.lower() != "active"}
    return kept | {"active": enabled}


def _matches(user: dict[str, Any], spec: AccountSpec) -> bool:
    """Whether a user answered by a lookup filter really is the one asked for (userName
    compares without regard to case, as RFC 7643 defines it)."""
    if user.get("externalid") is not None and str(user.get("externalid")) == spec.identity:
        return True
    return str(user.get("username", "")).casefold() == spec.user_name.casefold()


def _control(rows: list[GroupRow]) -> tuple[str, str, str] | None:
    """An account shown in one group and a group shown with members that lacks it: the
    controls a filter must get right before its answers count. Deterministic."""
    listed = sorted((name, ids) for _, name, ids in rows if ids)
    for name, ids in listed:
        for account in sorted(ids):
            other = next((n for n, members in listed if account not in members), None)
            if other is not None:
                return account, name, other
    return None
