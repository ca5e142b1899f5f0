"""SCIM 2.0 connector (RFC 7643/7644), built on ``scim2-client`` over ``httpx2``.

Does: discover what the server supports from ``/ServiceProviderConfig``; create users
(userName, externalId, displayName, emails, active), disable and enable them with PATCH
``active`` (or a PUT of the whole user where PATCH is not supported), manage group membership as
entitlements (PATCH add / remove with a value filter, PUT fallback), read one user with its
groups, list every user walking all pages, delete (404 means already gone); bearer or basic
authentication over one keep-alive connection; map HTTP failures to retryable (5xx, 429 with
``Retry-After`` in seconds or as an HTTP date, timeouts, refused connections) or permanent.
Does not: decide what to change, retry, or know about identities beyond the account spec.
Sessions are not part of SCIM: revoking them is unsupported here.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
PAGE = 200


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


def _patch(model: Any, op: str, path: str, value: Any = None) -> Any:
    """A one-operation PATCH request for ``model`` (the models are generic in the resource)."""
    operation_model: Any = PatchOperation[model]
    patch_model: Any = PatchOp[model]
    fields = {"op": op, "path": path} | ({"value": value} if value is not None else {})
    return patch_model(operations=[operation_model(**fields)])


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

    def _record(self, user: Any, groups: frozenset[str] | None = None) -> AccountRecord:
        if groups is None:
            groups = self._groups_of(user)
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
            entitlements=groups,
            external_id=user.external_id,
            attributes=attributes,
        )

    def _groups_of(self, user: Any) -> frozenset[str]:
        if self._membership == "user":
            return frozenset(g.display for g in (user.groups or []) if g.display)
        found = self._search(
            self._group, f"members.value eq {_quoted(str(user.id))}", ["displayName"]
        )
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
        members: dict[str, set[str]] = {}
        if self._membership != "user":
            for group in self._search(self._group, None, ["displayName", "members"]):
                for member in group.members or []:
                    members.setdefault(str(member.value), set()).add(str(group.display_name))
        for user in self._search(self._user, None):
            groups = None if self._membership == "user" else frozenset(members.get(user.id, ()))
            yield self._record(user, groups)

    @staticmethod
    def _since(when: datetime) -> str:
        return _quoted(when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def list_changed(self, since: datetime) -> Iterator[AccountRecord]:
        """Users whose own resource changed at or after ``since`` (``meta.lastModified``),
        with their current groups. Group membership changes show in ``changed_memberships``."""
        for user in self._search(self._user, f"meta.lastModified ge {self._since(since)}"):
            yield self._record(user)

    def changed_memberships(self, since: datetime) -> dict[str, frozenset[str]]:
        """For every group changed at or after ``since``: all its members now (account ids).
        Reading membership from the user side, changed users carry their groups instead."""
        if self._membership == "user":
            return {}
        found = self._search(
            self._group,
            f"meta.lastModified ge {self._since(since)}",
            ["displayName", "members"],
        )
        return {
            str(group.display_name): frozenset(str(m.value) for m in group.members or [])
            for group in found
        }

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
