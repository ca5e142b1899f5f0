"""REST connector: any JSON HTTP API described in YAML, with RabbitMQ's management API shipped.

Does: follow an API description (``provisor.connectors.rest_spec``: a shipped ``profile``, an
``api_file`` or an inline ``api``) to read, find, list, create, update, disable and enable,
delete accounts, add and remove entitlements of several kinds (their own requests, or a list
field of the account record written back), count and revoke sessions; authenticate with basic,
bearer or OAuth2 client credentials (token cached until it expires, fetched again once on a
401); walk every page of a list (page, offset, cursor or ``Link: rel=next``, and stop on a page
seen before, for APIs that ignore paging); fill templates from the account, the spec and, when
a template asks for ``{record...}``, the account as read just before — under a per-account lock,
so worker threads never interleave a read-modify-write; generate a random password when a
template asks for ``{password}`` (never stored, logged or shown); map HTTP failures to
retryable (``Retry-After`` honoured), not found, conflict or permanent; one keep-alive client,
safe to share between threads.
Does not: decide what to change or retry; evaluate expressions (templates only copy values);
put credentials, tokens or generated passwords in errors or logs.
"""

from __future__ import annotations

import contextlib
import logging
import secrets as token_source
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx2
from pydantic import Field, SecretStr

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    BaseConnector,
    Capability,
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
from provisor.connectors.rest_spec import (
    EntitlementKind,
    GroupedList,
    ListRequest,
    Request,
    TemplateError,
    assign,
    load_description,
    lookup,
    render,
    render_text,
    variables,
)
from provisor.redaction import remember

log = logging.getLogger(__name__)


class RestSettings(ConnectorSettings):
    """A REST target's ``connection`` settings; see ``RestConnector``."""

    profile: str | None = None
    api: dict[str, Any] | None = None
    api_file: str | None = None
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    verify: bool | str = True
    entitlements: dict[str, Any] | None = None

    def secrets(self) -> list[str]:
        """The credentials given, to keep out of error messages."""
        given = (self.password, self.token, self.client_secret)
        return [s.get_secret_value() for s in given if s is not None and s.get_secret_value()]


def _revealed(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


LOCKS = 64  # accounts share a fixed set of locks: bounded memory, rare false sharing
DETAIL = 300  # characters of a server's error message kept in an error


def _id(value: Any) -> str:
    return "" if value is None else str(value)


def _field_values(record: Any, path: str) -> list[Any]:
    """A list field's values; a comma-separated text counts as a list too."""
    value = lookup(record, path)
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return list(value) if isinstance(value, list) else []


@dataclass
class _Call:
    """What one operation knows: the template context, and the secrets it made (to redact)."""

    context: dict[str, Any]
    secrets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Entitlement:
    name: str
    kind_name: str
    kind: EntitlementKind
    parts: Mapping[str, Any]


def _complete(paging: Any, data: Any, items: list[Any], seen: int) -> bool:
    """Whether the list is whole after this page, by what the answer says."""
    if paging.style == "none" or not items:
        return True
    if paging.total is not None:
        total = lookup(data, paging.total)
        if isinstance(total, int) and seen >= total:
            return True
    return paging.style in ("page", "offset") and len(items) < paging.size


@dataclass
class _Position:
    """Where a paged list is: the page number, the offset, the cursor, or the next link."""

    page: int
    offset: int = 0
    cursor: Any = None
    next_url: str | None = None

    def query(self, paging: Any, base: dict[str, Any]) -> dict[str, Any]:
        query = dict(base)
        if paging.style == "page":
            query[paging.page_param] = self.page
        elif paging.style == "offset":
            query[paging.offset_param] = self.offset
        elif paging.style == "cursor" and self.cursor is not None:
            query[paging.cursor_param] = self.cursor
        return query

    def advance(self, paging: Any, data: Any, items: list[Any], link: str | None) -> bool:
        """Move to the next page; False when there is none."""
        if paging.style == "page":
            self.page += 1
        elif paging.style == "offset":
            self.offset += len(items)
        elif paging.style == "cursor":
            self.cursor = lookup(data, paging.next_cursor)
            return self.cursor not in (None, "")
        elif paging.style == "link":
            self.next_url = link
            return bool(link)
        return True


class _OAuth2:
    """Client-credentials tokens, fetched when missing or expired, shared by every thread."""

    def __init__(
        self, connector: RestConnector, url: str, settings: RestSettings, client: httpx2.Client
    ) -> None:
        auth = connector.api.auth
        self.connector = connector
        self.url = url
        self.client = client  # its own: the token endpoint may be another server
        self.client_id = settings.client_id or ""
        self.client_secret = _revealed(settings.client_secret)
        if not self.client_id or not self.client_secret:
            raise PermanentError(
                f"target {connector.name}: OAuth2 needs connection.client_id and "
                "connection.client_secret"
            )
        self.scope = settings.scope or auth.scope
        self.client_auth = auth.client_auth
        self.lock = threading.Lock()
        self.token: str | None = None
        self.expires = 0.0
        self.fetched = 0  # tokens fetched so far, for tests and diagnostics

    def current(self) -> str:
        with self.lock:
            if self.token is None or time.monotonic() >= self.expires:
                self.token, lifetime = self._fetch()
                # renew a little before the server's expiry, so a request never carries a
                # token that expires on the way
                self.expires = time.monotonic() + max(0.0, lifetime - min(30.0, lifetime / 10))
                self.fetched += 1
            return self.token

    def invalidate(self, token: str) -> None:
        with self.lock:
            if self.token == token:
                self.token = None

    def _fetch(self) -> tuple[str, float]:
        name = self.connector.name
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = str(self.scope)
        extra: dict[str, Any] = {}
        if self.client_auth == "basic":
            extra["auth"] = httpx2.BasicAuth(self.client_id, self.client_secret)
        else:
            form |= {"client_id": self.client_id, "client_secret": self.client_secret}
        try:
            response = self.client.post(self.url, data=form, **extra)
        except httpx2.TransportError as exc:
            message = f"{name}: OAuth2 token request: {type(exc).__name__}: {exc}"
            raise transport_error(message, exc) from exc
        if response.status_code >= 400:
            message = f"{name}: the OAuth2 token endpoint answered HTTP {response.status_code}"
            try:
                reason = response.json().get("error")
            except ValueError:
                reason = None
            if reason:
                message += f" ({str(reason)[:60]})"
            if response.status_code >= 500 or response.status_code in (408, 429):
                down = Unavailable if response.status_code in DOWN_STATUS else RetryableError
                raise down(message, retry_after(response.headers.get("Retry-After")))
            raise PermanentError(message + "; check connection.client_id and client_secret")
        try:
            data = response.json()
            token = str(data["access_token"])
            lifetime = float(data.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError):
            raise PermanentError(
                f"{name}: the OAuth2 token endpoint's answer has no access_token"
            ) from None
        remember(token)
        return token, lifetime


class RestConnector(BaseConnector):
    """One REST target. Settings (``connection`` in the policy, secrets already resolved):
    the description (``profile``, ``api_file`` and/or ``api``), ``url`` (overrides the
    description's), credentials for its ``auth`` type (``username``/``password``, ``token``,
    ``client_id``/``client_secret`` with optional ``scope``), ``timeout`` seconds, ``verify``
    (TLS certificate check: true, false or a CA bundle path) and ``entitlements`` (policy name
    -> value, laid over the description's names)."""

    Settings = RestSettings
    settings: RestSettings
    carries_identity = True  # when the description maps an external id (see ``unavailable``)
    reads_entitlements = True  # as the description reads them (see ``unavailable``)
    reads_sessions = True  # the description's session listing (see ``unavailable``)

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        given = self.settings
        self.api, self.source = load_description(name, given.model_dump(exclude_none=True))
        url = given.url or self.api.url
        if not url:
            raise PermanentError(f"target {name}: connection.url is required ({self.source})")
        self.url = str(url).rstrip("/")
        self._secrets = given.secrets()
        auth: httpx2.BasicAuth | None = None
        headers = dict(self.api.headers)
        kind = self.api.auth.type
        if kind == "basic":
            if not given.username:
                raise PermanentError(f"target {name}: connection.username is required ({kind})")
            auth = httpx2.BasicAuth(given.username, _revealed(given.password))
        elif kind == "bearer":
            if given.token is None:
                raise PermanentError(f"target {name}: connection.token is required ({kind})")
            token = given.token.get_secret_value()
            headers[self.api.auth.header] = f"{self.api.auth.scheme} {token}".strip()
        self._verify: bool | str = given.verify
        self._http = KeptAlive(
            base_url=self.url,
            headers=headers,
            auth=auth,
            timeout=given.timeout or self.api.timeout,
            verify=self._verify,
            limits=httpx2.Limits(max_keepalive_connections=16, max_connections=32),
        )
        # the per-account session read counts only once shown: untrusted after it showed
        # none for an account the full session listing showed with sessions
        self._sessions_path: ReadPath | None = None
        self._record_paths: Callable[[list[ReadPath]], None] | None = None
        self._oauth: _OAuth2 | None = None
        if kind == "oauth2":
            assert self.api.auth.endpoint is not None
            token_url = urljoin(self.url + "/", self.api.auth.endpoint.lstrip("/"))
            if "://" in self.api.auth.endpoint:
                token_url = self.api.auth.endpoint
            token_client = httpx2.Client(timeout=self._http.timeout, verify=self._verify)
            self._oauth = _OAuth2(self, token_url, given, token_client)
        self._locks = [threading.Lock() for _ in range(LOCKS)]
        self._known: set[tuple[str, str]] = set()  # entitlement targets seen to exist
        self._names = self._entitlement_names(given.entitlements)

    def __repr__(self) -> str:
        return f"RestConnector({self.name!r}, url={self.url!r}, {self.source})"

    # --- plumbing -----------------------------------------------------------------------

    def _redact(self, text: str, call: _Call | None) -> str:
        hidden = [*self._secrets, *(call.secrets if call else [])]
        if self._oauth is not None and self._oauth.token:
            hidden.append(self._oauth.token)
        for secret in hidden:
            if secret:
                text = text.replace(secret, "***")
        return text

    def _send(
        self,
        what: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        call: _Call | None = None,
    ) -> httpx2.Response:
        """One request; failures become connector errors. ``path`` may be a full URL of the
        same origin (a ``Link`` header's next page)."""
        for attempt in (1, 2):
            headers: dict[str, str] = {}
            token = None
            if self._oauth is not None:
                token = self._oauth.current()
                headers[self.api.auth.header] = f"{self.api.auth.scheme} {token}".strip()
            try:
                response = self._http.request(
                    method,
                    path,
                    params=dict(query) if query else None,
                    json=body,
                    headers=headers,
                )
            except httpx2.TransportError as exc:
                detail = self._redact(f"{type(exc).__name__}: {exc}", call)
                raise transport_error(f"{self.name}: {what}: {detail}", exc) from None
            log.debug("%s: %s %s -> %s", self.name, method, path, response.status_code)
            if response.status_code == 401 and token is not None and attempt == 1:
                assert self._oauth is not None
                self._oauth.invalidate(token)  # expired or revoked early: one fresh token
                continue
            if response.status_code >= 400:
                raise self._status_error(what, response, call)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _status_error(
        self, what: str, response: httpx2.Response, call: _Call | None
    ) -> ConnectorError:
        body = response.text
        detail = self._redact(" ".join(body.split()), call)[:DETAIL]
        message = f"{self.name}: {what}: HTTP {response.status_code}" + (
            f": {detail}" if detail else ""
        )
        outcome = self.api.errors.outcome(response.status_code, body)
        if outcome == "retryable":
            down = Unavailable if response.status_code in DOWN_STATUS else RetryableError
            return down(message, retry_after(response.headers.get("Retry-After")))
        if outcome == "not_found":
            return NotFound(message)
        if outcome == "conflict":
            return Conflict(message)
        return PermanentError(message)

    def _json(self, what: str, response: httpx2.Response, *, required: bool = True) -> Any:
        """The answer's JSON; None for an empty answer, or a non-JSON one to a write (``OK``
        after a DELETE) when ``required`` is false."""
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            if not required:
                return None
            raise PermanentError(
                f"{self.name}: {what}: the answer is not JSON "
                f"({response.headers.get('content-type', 'no content type')})"
            ) from None

    def _lock(self, account: str) -> threading.Lock:
        return self._locks[zlib.crc32(account.encode()) % LOCKS]

    def _context(self, account: str | None = None, spec: AccountSpec | None = None) -> _Call:
        context: dict[str, Any] = {"account": account}
        if spec is not None:
            context |= {
                "user_name": spec.user_name,
                "identity": spec.identity,
                "enabled": spec.enabled,
                "attributes": dict(spec.attributes),
            }
        return _Call(context)

    def _prepare(self, request: Request, call: _Call) -> None:
        """Fill what the request's templates ask for and the call lacks: a fresh password, the
        account as it is now (``record``), the user name from that record."""
        used = {name.split(".", 1)[0] for name in request.uses()}
        context = call.context
        if "password" in used and not context.get("password"):
            password = token_source.token_urlsafe(24)
            context["password"] = password
            call.secrets.append(password)
        needs_record = "record" in used or ("user_name" in used and "user_name" not in context)
        if needs_record and "record" not in context:
            if not context.get("account"):
                raise PermanentError(
                    f"{self.name}: a request to {request.path} uses the account as read, but "
                    "there is no account yet"
                )
            record = self._get(str(context["account"]), call)
            if record is None:
                raise NotFound(f"{self.name}: account {context['account']} does not exist")
            context["record"] = record
        if "user_name" not in context and "record" in context:
            context["user_name"] = lookup(context["record"], self.api.account.user_name)

    def _do(self, what: str, request: Request, call: _Call) -> Any:
        self._prepare(request, call)
        try:
            path = render_text(request.path, call.context, path=True)
        except TemplateError as exc:
            raise PermanentError(f"{self.name}: {what}: {exc}") from None
        query = render(request.query, call.context) if request.query else None
        body = render(request.body, call.context) if request.body is not None else None
        response = self._send(what, request.method, path, query=query, body=body, call=call)
        return self._json(what, response, required=request.method == "GET")

    def _steps(self, what: str, steps: list[Request], call: _Call) -> None:
        for step in steps:
            self._do(what, step, call)

    def _needs_lock(self, steps: list[Request]) -> bool:
        return any("record" in step.roots() for step in steps)

    def _get(self, account: str, call: _Call | None = None) -> Any:
        """The account's record as JSON, or None when it does not exist."""
        what = f"read {account}"
        request = self.api.endpoints.get
        context = {"account": account}
        try:
            path = render_text(request.path, context, path=True)
        except TemplateError as exc:
            raise PermanentError(f"{self.name}: {what}: {exc}") from None
        query = render(request.query, context) if request.query else None
        try:
            response = self._send(what, request.method, path, query=query, call=call)
        except NotFound:
            return None
        return self._json(what, response)

    def _list(self, what: str, request: ListRequest, call: _Call) -> Iterator[Any]:
        """Every item of a list, page after page."""
        self._prepare(request, call)
        paging = request.paging
        try:
            path: str = render_text(request.path, call.context, path=True)
        except TemplateError as exc:
            raise PermanentError(f"{self.name}: {what}: {exc}") from None
        base_query: dict[str, Any] = render(request.query, call.context) if request.query else {}
        size_name = paging.size_name
        if size_name and paging.style != "none":
            base_query[size_name] = paging.size
        position = _Position(paging.first_page)
        previous: list[Any] | None = None
        seen = 0
        for _ in range(paging.max_pages):
            if position.next_url is not None:
                response = self._send(what, request.method, position.next_url, call=call)
            else:
                query = position.query(paging, base_query)
                response = self._send(what, request.method, path, query=query, call=call)
            data = self._json(what, response)
            items = lookup(data, request.items)
            if items is None:
                items = []
            if not isinstance(items, list):
                raise PermanentError(
                    f"{self.name}: {what}: the answer has no list at {request.items or '(top)'}"
                )
            if items and items == previous:
                # the server ignored the paging parameters and sent the same page again
                log.debug("%s: %s: same page twice; the list is complete", self.name, what)
                return
            yield from items
            seen += len(items)
            previous = items
            if _complete(paging, data, items, seen):
                return
            link = response.links.get("next", {}).get("url")
            if not position.advance(paging, data, items, link):
                return
            if position.next_url is not None:
                position.next_url = self._same_origin(
                    what, urljoin(str(response.url), position.next_url)
                )
        raise PermanentError(
            f"{self.name}: {what}: still more pages after {paging.max_pages}; raise "
            "paging.max_pages if the list is really that long"
        )

    def _same_origin(self, what: str, url: str) -> str:
        """A next-page link, refused when it leads elsewhere (credentials would follow it)."""
        here, there = urlsplit(self.url), urlsplit(url)
        if (here.scheme, here.netloc) != (there.scheme, there.netloc):
            raise PermanentError(
                f"{self.name}: {what}: the next-page link leads to another server "
                f"({there.scheme}://{there.netloc}); not followed"
            )
        return url

    # --- entitlements --------------------------------------------------------------------

    def _entitlement_names(self, extra: Any) -> dict[str, _Entitlement]:
        names: dict[str, Any] = dict(self.api.entitlements.names)
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise PermanentError(
                    f"target {self.name}: connection.entitlements maps entitlement names to "
                    "values (e.g. messaging: 'vhost:/')"
                )
            names |= dict(extra)
        resolved: dict[str, _Entitlement] = {}
        for name, value in names.items():
            found = self._resolve(str(name), value)
            if found is None:
                raise PermanentError(
                    f"target {self.name}: entitlement {name!r} maps to {value!r}, which matches "
                    f"no entitlement kind ({self._forms()})"
                )
            resolved[str(name)] = found
        return resolved

    def _forms(self) -> str:
        kinds = self.api.entitlements.kinds
        return ", ".join(kind.pattern for kind in kinds.values()) or "no kinds described"

    def _resolve(self, name: str, value: Any) -> _Entitlement | None:
        kinds = self.api.entitlements.kinds
        if isinstance(value, Mapping):
            kind_name = str(value.get("kind", ""))
            kind = kinds.get(kind_name)
            if kind is None:
                return None
            parts = {k: v for k, v in value.items() if k != "kind"}
            if set(kind.parts) - set(parts):
                return None
            return _Entitlement(name, kind_name, kind, {**kind.defaults, **parts})
        for kind_name, kind in kinds.items():
            parsed = kind.parse(str(value))
            if parsed is not None:
                return _Entitlement(name, kind_name, kind, {**kind.defaults, **parsed})
        return None

    def _entitlement(self, name: str) -> _Entitlement:
        found = self._names.get(name) or self._resolve(name, name)
        if found is None:
            raise PermanentError(
                f"{self.name}: entitlement {name!r} is unknown: map it in "
                f"connection.entitlements or name it in a described form ({self._forms()})"
            )
        kind = found.kind
        if kind.values is not None and str(found.parts[kind.parts[0]]) not in kind.values:
            raise PermanentError(
                f"{self.name}: entitlement {name!r}: {found.parts[kind.parts[0]]!r} is not one "
                f"of {', '.join(kind.values)}"
            )
        return found

    def _names_for(self, kind_name: str, kind: EntitlementKind, item: Any) -> set[str]:
        """The entitlement names an entry read from the target stands for: the names mapped to
        it, else its name in the kind's pattern."""
        parts: Mapping[str, Any] = item if isinstance(item, Mapping) else {kind.parts[0]: item}
        mapped = {
            e.name
            for e in self._names.values()
            if e.kind_name == kind_name
            and all(_id(lookup(parts, key)) == _id(value) for key, value in e.parts.items())
        }
        if mapped:
            return mapped
        if any(lookup(parts, part) in (None, "") for part in kind.parts):
            return set()
        return {kind.name_of(parts)}

    def _entitlements_of(self, account: str, record: Any) -> frozenset[str]:
        names: set[str] = set()
        for kind_name, kind in self.api.entitlements.kinds.items():
            if kind.field is not None:
                for value in _field_values(record, kind.field):
                    names |= self._names_for(kind_name, kind, value)
            else:
                assert kind.read is not None
                call = self._context(account)
                call.context["record"] = record
                what = f"read {kind_name} entitlements of {account}"
                for item in self._list(what, kind.read, call):
                    names |= self._names_for(kind_name, kind, item)
        return frozenset(names)

    def _check_exists(self, entitlement: _Entitlement, call: _Call) -> None:
        kind = entitlement.kind
        if kind.exists is None:
            return
        key = (entitlement.kind_name, repr(sorted(entitlement.parts.items())))
        if key in self._known:
            return
        try:
            self._do(f"look up entitlement {entitlement.name}", kind.exists, call)
        except NotFound:
            raise PermanentError(
                f"{self.name}: entitlement {entitlement.name!r} does not exist in the target "
                f"({kind.name_of(entitlement.parts)}); create it there or remove it from the "
                "policy"
            ) from None
        self._known.add(key)

    def _change(self, account: str, name: str, add: bool) -> None:
        entitlement = self._entitlement(name)
        kind = entitlement.kind
        verb = "add" if add else "remove"
        what = f"{verb} entitlement {name} {'to' if add else 'from'} {account}"
        call = self._context(account)
        call.context |= dict(entitlement.parts) | {"entitlement": name}
        if kind.field is not None:
            self._change_field(account, entitlement, add, what, call)
            return
        steps = kind.add if add else kind.remove
        assert steps is not None
        if add:
            self._check_exists(entitlement, call)
        try:
            if self._needs_lock(steps):
                with self._lock(account):
                    self._steps(what, steps, call)
            else:
                self._steps(what, steps, call)
        except NotFound:
            if add:
                raise
            # already gone (or the account is): removing is done

    def _change_field(
        self, account: str, entitlement: _Entitlement, add: bool, what: str, call: _Call
    ) -> None:
        kind = entitlement.kind
        assert kind.field is not None
        value = entitlement.parts[kind.parts[0]]
        write = kind.write or self.api.endpoints.update
        assert write is not None
        with self._lock(account):
            record = self._get(account, call)
            if record is None:
                if add:
                    raise NotFound(f"{self.name}: {what}: account {account} does not exist")
                return
            current = _field_values(record, kind.field)
            wanted = [v for v in current if _id(v) != _id(value)] + ([value] if add else [])
            if sorted(map(_id, wanted)) == sorted(map(_id, current)):
                return  # already as intended
            changed = dict(record)
            as_text = isinstance(lookup(record, kind.field), str)  # "a,b": written back alike
            assign(changed, kind.field, ",".join(map(_id, wanted)) if as_text else wanted)
            call.context["record"] = changed
            self._do(what, write, call)

    # --- reading --------------------------------------------------------------------------

    def unavailable(self) -> frozenset[Capability]:
        """What the API description leaves out."""
        endpoints, account = self.api.endpoints, self.api.account
        off = {
            Capability.CREATE: endpoints.create is None,
            Capability.UPDATE: endpoints.update is None
            or not (account.attributes or account.rename),
            Capability.DISABLE: endpoints.disable is None or account.enabled is None,
            Capability.DELETE: endpoints.delete is None,
            Capability.ENTITLEMENTS: not self.api.entitlements.kinds,
            Capability.SESSIONS: endpoints.list_sessions is None
            or endpoints.revoke_sessions is None,
            Capability.EXTERNAL_ID: not account.external_id,
        }
        return frozenset(capability for capability, missing in off.items() if missing)

    def _record(
        self,
        item: Any,
        entitlements: frozenset[str] | None = None,
        sessions: int | None = None,
        *,
        count_sessions: bool = True,
    ) -> AccountRecord:
        mapping = self.api.account
        account = _id(lookup(item, mapping.id))
        if entitlements is None:
            entitlements = self._entitlements_of(account, item)
        if (
            sessions is None
            and count_sessions
            and self.api.endpoints.list_sessions is not None
            and not self._sessions_untrusted
        ):
            sessions = self._count_sessions(account)
        external = lookup(item, mapping.external_id) if mapping.external_id else None
        return AccountRecord(
            account=account,
            user_name=_id(lookup(item, mapping.user_name)),
            enabled=mapping.enabled.judge(item) if mapping.enabled is not None else True,
            entitlements=entitlements,
            external_id=_id(external) or None,
            sessions=sessions,
            attributes={
                attribute: lookup(item, path) for attribute, path in mapping.attributes.items()
            },
        )

    def _count_sessions(self, account: str) -> int:
        request = self.api.endpoints.list_sessions
        assert request is not None
        call = self._context(account)
        return sum(1 for _ in self._list(f"list sessions of {account}", request, call))

    @property
    def _sessions_untrusted(self) -> bool:
        return self._sessions_path is not None and self._sessions_path.status == "untrusted"

    def _probe_sessions(self, grouped: Mapping[str, list[Any]]) -> None:
        """Check the per-account session read against the full session listing: for an
        account that listing shows with sessions (the control), the per-account read must
        show some. Once it fails, it is not used: session counts are unknown. With no session
        anywhere to check with, it stays untested and is still used (it is a read of the
        account's own session resource, not a filter)."""
        if self.api.endpoints.list_sessions is None:
            return
        control = next((a for a, items in sorted(grouped.items()) if items), None)
        if control is None:
            if self._sessions_path is None:
                self._sessions_path = ReadPath(
                    "sessions", "untested", "no account has a session to check the read with"
                )
        else:
            listed = len(grouped[control])
            seen = self._count_sessions(control)
            self._sessions_path = (
                ReadPath(
                    "sessions",
                    "trusted",
                    f"the per-account read shows {seen} for {control}, listed with {listed}",
                )
                if seen
                else ReadPath(
                    "sessions",
                    "untrusted",
                    f"the per-account read shows none for {control}, which the full session "
                    f"listing shows with {listed}: session counts are unknown here",
                )
            )
        if self._record_paths is not None:
            self._record_paths([self._sessions_path])

    def read_paths(self) -> list[ReadPath]:
        """The per-account session read, probed now against the full session listing (where
        the description has both)."""
        all_sessions = self.api.endpoints.list_all_sessions
        if all_sessions is not None:
            self._probe_sessions(self._grouped("list sessions", all_sessions))
        return [self._sessions_path] if self._sessions_path is not None else []

    def remember(
        self, earlier: list[ReadPath], record: Callable[[list[ReadPath]], None] | None
    ) -> None:
        """What earlier probes showed of the session read; ``record`` hears of every probe."""
        self._sessions_path = next((p for p in earlier if p.path == "sessions"), None)
        self._record_paths = record

    def read(self, account: str) -> AccountRecord | None:
        item = self._get(account)
        if item is None:
            return None
        return self._record(item)

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """By external id first, else by user name: with the ``find`` endpoint when described,
        else a direct read when the id is the user name, else by walking the list."""
        mapping = self.api.account
        request = self.api.endpoints.find
        if request is None and mapping.id == mapping.user_name:
            item = self._get(spec.user_name)
            return self._record(item) if item is not None else None
        if request is not None:
            items = self._list(f"find {spec.user_name}", request, self._context(None, spec))
        else:
            items = self._list(
                f"list (to find {spec.user_name})", self.api.endpoints.list, self._context()
            )
        by_name = None
        for item in items:
            if mapping.external_id and _id(lookup(item, mapping.external_id)) == spec.identity:
                return self._record(item)
            if by_name is None and _id(lookup(item, mapping.user_name)) == spec.user_name:
                by_name = item
        return self._record(by_name) if by_name is not None else None

    def _grouped(self, what: str, request: GroupedList) -> dict[str, list[Any]]:
        groups: dict[str, list[Any]] = {}
        for item in self._list(what, request, self._context()):
            groups.setdefault(_id(lookup(item, request.account)), []).append(item)
        return groups

    def check(self) -> None:
        """Reach the target with the configured credentials: the first page of its account
        listing — not the entitlement and session listings a full read starts with (a circuit
        probe calls this while the target may be struggling)."""
        next(iter(self._list("check", self.api.endpoints.list, self._context())), None)

    def list_accounts(self) -> Iterator[AccountRecord]:
        """Every account; entitlements and sessions from one listing each where described."""
        kinds = self.api.entitlements.kinds
        bulk: dict[str, dict[str, list[Any]]] = {}
        for kind_name, kind in kinds.items():
            if kind.read_all is not None:
                bulk[kind_name] = self._grouped(f"list {kind_name} entitlements", kind.read_all)
        sessions: dict[str, list[Any]] | None = None
        all_sessions = self.api.endpoints.list_all_sessions
        if all_sessions is not None:
            sessions = self._grouped("list sessions", all_sessions)
            self._probe_sessions(sessions)
        for item in self._list("list accounts", self.api.endpoints.list, self._context()):
            account = _id(lookup(item, self.api.account.id))
            entitlements: frozenset[str] | None = None
            if len(bulk) == sum(1 for k in kinds.values() if k.field is None):
                names: set[str] = set()
                for kind_name, kind in kinds.items():
                    entries = (
                        _field_values(item, kind.field)
                        if kind.field is not None
                        else bulk[kind_name].get(account, [])
                    )
                    for entry in entries:
                        names |= self._names_for(kind_name, kind, entry)
                entitlements = frozenset(names)
            count = len(sessions.get(account, [])) if sessions is not None else None
            yield self._record(item, entitlements, count, count_sessions=False)

    # --- writing --------------------------------------------------------------------------

    def _exists(self, spec: AccountSpec) -> bool:
        mapping = self.api.account
        if self.api.endpoints.find is None and mapping.id == mapping.user_name:
            return self._get(spec.user_name) is not None
        return self.find(spec) is not None

    def create(self, spec: AccountSpec) -> str:
        request = self.api.endpoints.create
        if request is None:
            raise Unsupported(f"{self.name}: the description has no create endpoint")
        what = f"create {spec.user_name}"
        if request.check_exists and self._exists(spec):
            raise Conflict(f"{self.name}: {what}: an account named {spec.user_name} exists")
        call = self._context(None, spec)
        item = self._do(what, request, call)
        account = _id(lookup(item, self.api.account.id)) if isinstance(item, dict) else ""
        if not account and request.id:
            account = render_text(request.id, call.context)
        if not account:
            raise PermanentError(
                f"{self.name}: {what}: the answer carries no account id at "
                f"{self.api.account.id!r}; describe endpoints.create.id"
            )
        if not spec.enabled and "enabled" not in {v.split(".")[0] for v in variables(request.body)}:
            self.set_enabled(account, False)
        return account

    def update(self, account: str, spec: AccountSpec) -> str:
        request = self.api.endpoints.update
        mapping = self.api.account
        if request is None:
            raise Unsupported(f"{self.name}: the description has no update endpoint")
        what = f"update {account}"
        call = self._context(account, spec)
        with self._lock(account):
            if not mapping.rename:
                item = self._get(account, call)
                if item is None:
                    raise NotFound(f"{self.name}: {what}: account {account} does not exist")
                current = _id(lookup(item, mapping.user_name))
                if current != spec.user_name:
                    raise Unsupported(
                        f"{self.name}: accounts cannot be renamed here ({current} -> "
                        f"{spec.user_name}); create one with the new name instead"
                    )
                call.context["record"] = item
                if not mapping.attributes:
                    return account  # no name change and no attributes: nothing to write
            item = self._do(what, request, call)
        if isinstance(item, dict) and lookup(item, mapping.id) not in (None, ""):
            return _id(lookup(item, mapping.id))
        if mapping.id == mapping.user_name:
            return spec.user_name
        return account

    def set_enabled(self, account: str, enabled: bool) -> None:
        steps = self.api.endpoints.enable if enabled else self.api.endpoints.disable
        if steps is None:
            raise Unsupported(f"{self.name}: the description has no disable/enable endpoints")
        what = f"{'enable' if enabled else 'disable'} {account}"
        call = self._context(account)
        call.context["enabled"] = enabled
        with self._lock(account):
            self._steps(what, steps, call)

    def add_entitlement(self, account: str, entitlement: str) -> None:
        self._change(account, entitlement, add=True)

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        self._change(account, entitlement, add=False)

    def revoke_sessions(self, account: str) -> None:
        """Close every session, then wait (up to ``revoke_wait`` seconds) until the target
        counts none, so a read straight after shows them gone."""
        endpoints = self.api.endpoints
        if endpoints.revoke_sessions is None:
            raise Unsupported(f"{self.name}: the description has no way to revoke sessions")
        what = f"revoke sessions of {account}"
        call = self._context(account)
        with contextlib.suppress(NotFound):  # no sessions, or no account: nothing is open
            self._steps(what, endpoints.revoke_sessions, call)
        if endpoints.list_sessions is None:
            return
        deadline = time.monotonic() + endpoints.revoke_wait
        while True:
            left = self._count_sessions(account)
            if left == 0:
                return
            if time.monotonic() >= deadline:
                raise RetryableError(f"{self.name}: {what}: {left} session(s) still open")
            time.sleep(0.05)

    def delete(self, account: str) -> None:
        request = self.api.endpoints.delete
        if request is None:
            raise Unsupported(f"{self.name}: the description has no delete endpoint")
        try:
            self._do(f"delete {account}", request, self._context(account))
        except NotFound:
            return

    def close(self) -> None:
        self._http.close()
        if self._oauth is not None:
            self._oauth.client.close()
