"""SCIM 2.0 connector (RFC 7643/7644), built on ``scim2-client`` over ``httpx2``.

Does: discover what the server supports from ``/ServiceProviderConfig``; create users
(userName, externalId, displayName, emails, active), disable and enable them with PATCH
``active`` (or a PUT of the whole user where PATCH is not supported), manage group membership as
entitlements (PATCH add / remove with a value filter, PUT fallback), read one user with its
groups, list every user walking all pages, delete (404 means already gone); bearer or basic
authentication over keep-alive connections; map HTTP failures to retryable (5xx, 429 with
``Retry-After`` in seconds or as an HTTP date, timeouts, refused connections) or permanent.
Listing is built for tens of thousands of users: pages as large as the server allows, only the
attributes the account record needs, the next pages requested while the current one is read
once ``totalResults`` is known, each group's members read once (not a search per user), and
the listed JSON read directly into account records (attribute names compared without regard
to case, as RFC 7643 §2.1 says) rather than validated into models first.
Does not: decide what to change, retry, or know about identities beyond the account spec.
Sessions are not part of SCIM: revoking them is unsupported here.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx2
from scim2_client import SCIMClientException
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_client.errors import RequestNetworkException
from scim2_models import PatchOp, PatchOperation, SCIMException, SearchRequest

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    Capability,
    Conflict,
    ConnectorError,
    NotFound,
    PermanentError,
    RetryableError,
    Unsupported,
)

T = TypeVar("T")
RETRYABLE_STATUS = frozenset({408, 412, 425, 429, 500, 502, 503, 504})
PAGE = 1000  # resources asked for per page; a smaller maximum the server announces wins
READ_AHEAD = 2  # list pages requested at once, once the first page tells the total
# changed users above which their groups come from one read of every group's members rather
# than a search per user (each such search makes the server scan every membership)
MEMBERSHIP_SEARCHES = 50
USER_ATTRIBUTES = ("userName", "externalId", "displayName", "emails", "active", "title")
# how JSON booleans may arrive as strings, as pydantic reads them for the models
TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)


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


class ScimConnector:
    """One SCIM target. Settings (``connection`` in the policy, secrets already resolved):
    ``url`` (base URL, e.g. https://host/scim/v2), ``token`` (bearer) or ``username`` and
    ``password`` (basic), ``timeout`` seconds (default 10), ``patch`` (auto, or false to
    always PUT), ``membership`` (``group``: read members from groups, the default; ``user``:
    read the user's ``groups`` attribute), ``dialect`` (``rfc``, the default, or ``entra``: PATCH
    shaped the way Microsoft Entra provisioning sends it — capitalised ``Add``/``Replace``/
    ``Remove`` and members removed by a ``value`` list rather than a filter in the path — for
    applications built to accept exactly that)."""

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        url = settings.get("url")
        if not url:
            raise PermanentError(f"target {name}: connection.url is required for a SCIM target")
        self.name = name
        headers = {"Accept": "application/scim+json"}
        auth: httpx2.BasicAuth | None = None
        if settings.get("token"):
            headers["Authorization"] = f"Bearer {settings['token']}"
        elif settings.get("username"):
            auth = httpx2.BasicAuth(str(settings["username"]), str(settings.get("password", "")))
        # the last response seen by this thread, for status and Retry-After of a failure
        self._throttle: Callable[[], None] | None = None
        self._seen = threading.local()
        self._http = httpx2.Client(
            base_url=str(url).rstrip("/"),
            headers=headers,
            auth=auth,
            timeout=float(settings.get("timeout", 10)),
            event_hooks={"request": [self._pace], "response": [self._remember]},
        )
        self._scim = SyncSCIMClient(self._http)
        self._patch_setting = settings.get("patch", "auto")
        self._membership = str(settings.get("membership", "group"))
        self._dialect = str(settings.get("dialect", "rfc"))
        if self._membership not in ("group", "user"):
            raise PermanentError(f"target {name}: connection.membership must be group or user")
        if self._dialect not in ("rfc", "entra"):
            raise PermanentError(f"target {name}: connection.dialect must be rfc or entra")
        self._groups: dict[str, str] = {}
        self._page_limit: int | None = None
        self._discovered = False
        self._setup = threading.Lock()
        # PUT of a group is read-modify-write: two workers changing one group at once would
        # lose a change, so they take turns per group.
        self._group_locks: dict[str, threading.Lock] = {}

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
        """Run one SCIM request, turning every failure into a connector error."""
        self._seen.response = None
        try:
            return action()
        except RequestNetworkException as exc:
            cause = exc.__cause__ or exc
            raise RetryableError(f"{self.name}: {what}: {type(cause).__name__}: {cause}") from exc
        except SCIMException as exc:
            raise self._status_error(what, exc.status, str(exc)) from exc
        except SCIMClientException as exc:
            status = self._last.status_code if self._last is not None else None
            raise self._status_error(what, status, str(exc)) from exc

    def _status_error(self, what: str, status: int | None, detail: str) -> ConnectorError:
        message = f"{self.name}: {what}: HTTP {status or '?'}: {detail}"
        if status is None or status in RETRYABLE_STATUS or status >= 500:
            header = self._last.headers.get("Retry-After") if self._last is not None else None
            return RetryableError(message, retry_after(header))
        if status == 404:
            return NotFound(message)
        if status == 409:
            return Conflict(message)
        return PermanentError(message)

    def _raw_patch(self, what: str, path: str, operation: dict[str, Any]) -> None:
        """A PATCH sent exactly as given (for dialects the models would normalise away)."""
        body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"]}
        payload = body | {"Operations": [operation]}
        self._seen.response = None
        try:
            response = self._http.patch(
                path, json=payload, headers={"Content-Type": "application/scim+json"}
            )
        except httpx2.TransportError as exc:
            raise RetryableError(f"{self.name}: {what}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail", ""))
            except ValueError:
                detail = response.text[:200]
            raise self._status_error(what, response.status_code, detail)

    def _discover(self) -> None:
        """Discover the server once, and build every model class the requests will need.

        scim2-models creates pydantic classes on first use (resource models from the schemas,
        list responses and PATCH requests per resource); creating classes parses source with
        ``ast``, which CPython 3.11 does not allow from several threads at once. Doing it here,
        under a lock, leaves the worker threads only cached classes to use.
        """
        if self._discovered:
            return
        with self._setup:
            if self._discovered:
                return
            self._call("discovery", self._scim.discover)
            user = self._scim.get_resource_model("User")
            group = self._scim.get_resource_model("Group")
            for model in (user, group):
                self._probe(model)
            _patch(user, "replace", "active", True)
            _patch(group, "remove", "members")
            self._discovered = True

    def _probe(self, model: Any) -> None:
        probe: Any = SearchRequest(count=1)
        self._call("list", lambda: self._scim.query(model, query_parameters=probe))

    @property
    def _user(self) -> Any:
        self._discover()
        return self._scim.get_resource_model("User")

    @property
    def _group(self) -> Any:
        self._discover()
        return self._scim.get_resource_model("Group")

    @property
    def _can_patch(self) -> bool:
        if self._patch_setting is False or str(self._patch_setting).lower() == "false":
            return False
        self._discover()
        config = self._scim.provider.config
        return bool(config and config.patch and config.patch.supported)

    # --- reading --------------------------------------------------------------------------

    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {
                Capability.CREATE,
                Capability.UPDATE,
                Capability.DISABLE,
                Capability.DELETE,
                Capability.ENTITLEMENTS,
                Capability.READ,
                Capability.LIST,
                Capability.EXTERNAL_ID,
            }
        )

    def _record(self, user: Any) -> AccountRecord:
        attributes: dict[str, Any] = {}
        if user.display_name:
            attributes["name"] = str(user.display_name)
        email = next((e.value for e in user.emails or [] if e.value), None)
        if email:
            attributes["email"] = str(email)
        if user.title:
            attributes["title"] = str(user.title)
        return AccountRecord(
            account=str(user.id),
            user_name=str(user.user_name),
            enabled=user.active is not False,
            entitlements=self._groups_of(user),
            external_id=user.external_id,
            attributes=attributes,
        )

    def _groups_of(self, user: Any) -> frozenset[str]:
        if self._membership == "user":
            return frozenset(g.display for g in (user.groups or []) if g.display)
        return self._groups_holding(str(user.id))

    def _groups_holding(self, account: str) -> frozenset[str]:
        """The groups with ``account`` among their members: one search on the group side."""
        found = self._search(self._group, f"members.value eq {_quoted(account)}", ["displayName"])
        return frozenset(str(g.display_name) for g in found)

    def _search(
        self, model: Any, filter_: str | None, attributes: list[str] | None = None
    ) -> list[Any]:
        """Every resource matching ``filter_``, walking all pages."""
        found: list[Any] = []
        start = 1
        while True:
            request: Any = SearchRequest(
                filter=filter_, start_index=start, count=PAGE, attributes=attributes
            )

            def query(request: Any = request) -> Any:
                return self._scim.query(model, query_parameters=request)

            page = self._call(f"search {filter_ or 'all'}", query)
            resources = list(page.resources or [])
            found.extend(resources)
            total = page.total_results or 0
            if not resources or len(found) >= total:
                return found
            start += len(resources)

    def read(self, account: str) -> AccountRecord | None:
        try:
            user = self._call(f"read {account}", lambda: self._scim.query(self._user, account))
        except NotFound:
            return None
        return self._record(user)

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """By externalId (the identity id) first, else by userName; one request."""
        identity, user_name = _quoted(spec.identity), _quoted(spec.user_name)
        users = self._search(self._user, f"externalId eq {identity} or userName eq {user_name}")
        if not users:
            return None
        users.sort(key=lambda u: u.external_id != spec.identity)
        return self._record(users[0])

    def list_accounts(self) -> Iterator[AccountRecord]:
        with _reader() as pool:
            users = self._listing(pool, "/Users", None, self._user_attributes())
            members = None if self._membership == "user" else self._members(pool)
            for page in users:
                for user in page:
                    yield self._listed(user, members)

    @staticmethod
    def _since(when: datetime) -> str:
        return _quoted(when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def list_changed(self, since: datetime) -> Iterator[AccountRecord]:
        """Users whose own resource changed at or after ``since`` (``meta.lastModified``),
        with their current groups. Group membership changes show in ``changed_memberships``."""
        by_user = self._membership == "user"
        with _reader() as pool:
            filter_ = f"meta.lastModified ge {self._since(since)}"
            users = self._listing(pool, "/Users", filter_, self._user_attributes())
            members: dict[str, set[str]] | None = None
            for page in users:
                changed = users.total if users.total is not None else len(page)
                if not by_user and members is None and changed > MEMBERSHIP_SEARCHES:
                    members = self._members(pool)
                for user in page:
                    if by_user or members is not None:
                        yield self._listed(user, members)
                    else:
                        yield self._listed(user, self._groups_holding(str(user.get("id"))))

    def changed_memberships(self, since: datetime) -> dict[str, frozenset[str]]:
        """For every group changed at or after ``since``: all its members now (account ids).
        Reading membership from the user side, changed users carry their groups instead."""
        if self._membership == "user":
            return {}
        with _reader() as pool:
            filter_ = f"meta.lastModified ge {self._since(since)}"
            found: dict[str, set[str]] = {}
            for page in self._listing(pool, "/Groups", filter_, ("displayName", "members")):
                for group in page:
                    name, ids = self._group_members(group)
                    found.setdefault(name, set()).update(ids)
        return {name: frozenset(ids) for name, ids in found.items()}

    # --- listing --------------------------------------------------------------------------

    def _user_attributes(self) -> tuple[str, ...]:
        return USER_ATTRIBUTES + (("groups",) if self._membership == "user" else ())

    def _get_json(self, what: str, path: str, params: Mapping[str, str | int]) -> dict[str, Any]:
        """One GET answered with a JSON object, its keys in lower case; failures mapped."""
        self._seen.response = None
        try:
            response = self._http.get(path, params=params)
        except httpx2.TransportError as exc:
            raise RetryableError(f"{self.name}: {what}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300:
            try:
                detail = str(_folded(response.json()).get("detail", ""))
            except ValueError:
                detail = response.text[:200]
            raise self._status_error(what, response.status_code, detail)
        try:
            document = response.json()
        except ValueError as exc:
            raise PermanentError(
                f"{self.name}: {what}: HTTP {response.status_code}: the answer is not JSON"
            ) from exc
        if not isinstance(document, dict):
            raise PermanentError(
                f"{self.name}: {what}: HTTP {response.status_code}: the answer is not an object"
            )
        return _folded(document)

    def _page_size(self) -> int:
        """``PAGE``, or less where ``/ServiceProviderConfig`` announces a smaller maximum
        (``filter.maxResults``, ``pagination.maxPageSize``); read once, without the full
        discovery that writing needs."""
        if self._page_limit is None:
            config = self._get_json("discovery", "/ServiceProviderConfig", {})
            bounds = [PAGE]
            for section, key in (("filter", "maxresults"), ("pagination", "maxpagesize")):
                bound = _folded(config.get(section)).get(key)
                if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0:
                    bounds.append(bound)
            self._page_limit = min(bounds)
        return self._page_limit

    def _page(
        self, path: str, filter_: str | None, attributes: tuple[str, ...], start: int, count: int
    ) -> Page:
        """One page of a listing: its resources (keys in lower case) and ``totalResults``."""
        params: dict[str, str | int] = {"startIndex": start, "count": count}
        if filter_:
            params["filter"] = filter_
        if attributes:
            params["attributes"] = ",".join(attributes)
        document = self._get_json(f"search {path.strip('/')} {filter_ or 'all'}", path, params)
        total = document.get("totalresults")
        return (
            _objects(document.get("resources")),
            total if isinstance(total, int) and not isinstance(total, bool) else None,
        )

    def _listing(
        self, pool: ThreadPoolExecutor, path: str, filter_: str | None, attributes: tuple[str, ...]
    ) -> _Pages:
        """Every resource at ``path`` matching ``filter_``, page by page; the first page is
        requested at once."""
        size = self._page_size()
        return _Pages(
            pool, lambda start, count: self._page(path, filter_, attributes, start, count), size
        )

    def _group_members(self, group: dict[str, Any]) -> tuple[str, set[str]]:
        ids = {
            str(m["value"]) for m in _objects(group.get("members")) if m.get("value") is not None
        }
        return str(group.get("displayname")), ids

    def _members(self, pool: ThreadPoolExecutor) -> dict[str, set[str]]:
        """Account id -> the names of its groups, reading every group's members once."""
        members: dict[str, set[str]] = {}
        for page in self._listing(pool, "/Groups", None, ("displayName", "members")):
            for group in page:
                name, ids = self._group_members(group)
                for account in ids:
                    members.setdefault(account, set()).add(name)
        return members

    def _listed(
        self, user: dict[str, Any], groups: Mapping[str, set[str]] | frozenset[str] | None
    ) -> AccountRecord:
        """An account record from a listed user (keys in lower case): ``groups`` is every
        account's groups, or this user's, or None to read them from the user itself."""
        account = user.get("id")
        if account is None or account == "":
            raise PermanentError(f"{self.name}: the server listed a user without an id")
        account = str(account)
        if groups is None:
            entitlements = frozenset(
                str(g["display"]) for g in _objects(user.get("groups")) if g.get("display")
            )
        elif isinstance(groups, frozenset):
            entitlements = groups
        else:
            entitlements = frozenset(groups.get(account, ()))
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
        external_id = user.get("externalid")
        return AccountRecord(
            account=account,
            user_name=str(user.get("username")),
            enabled=enabled,
            entitlements=entitlements,
            external_id=None if external_id is None else str(external_id),
            attributes=attributes,
        )

    # --- writing --------------------------------------------------------------------------

    def _fields(self, model: Any, spec: AccountSpec) -> dict[str, Any]:
        """The user attributes Provisor manages, from the account spec."""
        attrs = spec.attributes
        fields: dict[str, Any] = {"user_name": spec.user_name, "external_id": spec.identity}
        if attrs.get("name"):
            fields["display_name"] = str(attrs["name"])
        if attrs.get("email"):
            fields["emails"] = [model.Emails(value=str(attrs["email"]), primary=True)]
        if attrs.get("title"):
            fields["title"] = str(attrs["title"])
        return fields

    def create(self, spec: AccountSpec) -> str:
        model = self._user
        fields = self._fields(model, spec) | {"active": spec.enabled}
        user = self._call(f"create {spec.user_name}", lambda: self._scim.create(model(**fields)))
        return str(user.id)

    def update(self, account: str, spec: AccountSpec) -> str:
        """Replace the managed attributes (userName included) on the user as read; the
        attributes Provisor does not manage, ``active`` among them, are sent back unchanged."""
        model = self._user
        user = self._call(f"read {account}", lambda: self._scim.query(model, account))
        for key, value in self._fields(model, spec).items():
            setattr(user, key, value)
        self._call(f"update {account}", lambda: self._scim.replace(user))
        return account

    def set_enabled(self, account: str, enabled: bool) -> None:
        model = self._user
        if self._can_patch and self._dialect == "entra":
            operation = {"op": "Replace", "path": "active", "value": enabled}
            self._raw_patch(f"set active={enabled} on {account}", f"/Users/{account}", operation)
            return
        if self._can_patch:
            patch = _patch(model, "replace", "active", enabled)
            self._call(
                f"set active={enabled} on {account}",
                lambda: self._scim.modify(model, account, patch),
            )
            return
        user = self._call(f"read {account}", lambda: self._scim.query(model, account))
        user.active = enabled
        self._call(f"replace {account}", lambda: self._scim.replace(user))

    def _group_id(self, entitlement: str) -> str:
        if entitlement not in self._groups:
            found = self._search(
                self._group, f"displayName eq {_quoted(entitlement)}", ["displayName"]
            )
            if not found:
                raise PermanentError(
                    f"{self.name}: group {entitlement!r} does not exist in the target; create it "
                    "there or remove it from the policy"
                )
            self._groups[entitlement] = str(found[0].id)
        return self._groups[entitlement]

    def _change_membership(self, account: str, entitlement: str, add: bool) -> None:
        model = self._group
        group_id = self._group_id(entitlement)
        verb = "add" if add else "remove"
        what = f"{verb} {account} {'to' if add else 'from'} group {entitlement}"
        if self._can_patch and self._dialect == "entra":
            operation = {
                "op": "Add" if add else "Remove",
                "path": "members",
                "value": [{"value": account}],
            }
            self._raw_patch(what, f"/Groups/{group_id}", operation)
            return
        if self._can_patch:
            patch = (
                _patch(model, "add", "members", [{"value": account}])
                if add
                else _patch(model, "remove", f"members[value eq {_quoted(account)}]")
            )
            self._call(what, lambda: self._scim.modify(model, group_id, patch))
            return
        with self._setup:
            lock = self._group_locks.setdefault(group_id, threading.Lock())
        with lock:
            group = self._call(
                f"read group {entitlement}", lambda: self._scim.query(model, group_id)
            )
            members = [m for m in (group.members or []) if str(m.value) != account]
            if add:
                members.append(model.Members(value=account))
            group.members = members
            self._call(what, lambda: self._scim.replace(group))

    def add_entitlement(self, account: str, entitlement: str) -> None:
        self._change_membership(account, entitlement, add=True)

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        self._change_membership(account, entitlement, add=False)

    def revoke_sessions(self, account: str) -> None:
        raise Unsupported(f"{self.name}: SCIM has no sessions to revoke")

    def delete(self, account: str) -> None:
        try:
            self._call(f"delete {account}", lambda: self._scim.delete(self._user, account))
        except NotFound:
            return

    def close(self) -> None:
        self._http.close()
