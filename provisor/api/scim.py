"""The inbound SCIM 2.0 server at /scim/v2: identity providers and HR systems as a source.

Does: serve Users (with the enterprise extension) and Groups through ``scim2-server`` over the
workspace's storage (``provisor.engine.scim_source``); announce what it supports in
``/ServiceProviderConfig`` (PATCH, filters, ETags; no bulk, sort or password change),
``/Schemas`` and ``/ResourceTypes``; accept the request shapes Microsoft Entra ID and Okta send
(``provisor.domain.scim_quirks``) unless ``service.scim.strict`` is set; answer a PATCH with
200 and the resource; refuse a request without a bearer token of an operator whose roles and
token grant ``scim`` (401, 403; discovery endpoints included), and one beyond its token's
rate (429 with Retry-After); bind the operator as the acting person of every change; wake
the service's runner after a change to a User (``hurry`` when it ended someone's access: a
leaver from the identity provider is planned at once, not at the next periodic cycle).
Does not: decide what a User means for an identity (the storage and the lifecycle path do).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any, Protocol, TypeVar

import anyio
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    ETag,
    External,
    Filter,
    ForbiddenException,
    InvalidSyntaxException,
    Patch,
    PatchOp,
    PreconditionFailedException,
    Reference,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimProvider,
    SearchRequest,
    ServiceProviderConfig,
    Sort,
    UnauthorizedException,
)
from scim2_server.applications.asgi import ASGIApplication
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.service import ScimService
from scim2_server.storage import AsyncScimStorage, SearchPage
from scim2_server.utils import load_default_resource_types, load_default_schemas
from sqlalchemy.exc import OperationalError

from provisor.api.security import Buckets, Tokens
from provisor.config.workspace import ScimInboundSettings
from provisor.domain import scim_quirks
from provisor.domain.roles import Permission, Reach
from provisor.engine import operators
from provisor.engine.scim_source import ScimSource
from provisor.engine.workspace import Workspace
from provisor.errors import CredentialsError
from provisor.evidence import audit

T = TypeVar("T")
# how often a request whose resource another request changed meanwhile is served again
RETRIES = 3

BEARER = AuthenticationScheme(
    type=AuthenticationScheme.Type.oauthbearertoken,
    name="Bearer token",
    description="A Provisor API token with the scim scope: provisor token create --scope scim",
    spec_uri=Reference[External]("https://datatracker.ietf.org/doc/html/rfc6750"),
    primary=True,
)
_SERVED_SCHEMAS = (
    "urn:ietf:params:scim:schemas:core:2.0:User",
    "urn:ietf:params:scim:schemas:core:2.0:Group",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
)


def provider(settings: ScimInboundSettings) -> ScimProvider:
    """What the server serves and announces."""
    schemas = [s for s in load_default_schemas().values() if s.id in _SERVED_SCHEMAS]
    config = ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=settings.page_size),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[BEARER],
    )
    return ScimProvider.from_discovery(
        schemas, load_default_resource_types().values(), config=config
    )


# the managers the PATCH being served removes by filter (read with its body, used with the
# stored resource: both steps run in the request's task)
_manager_filters: ContextVar[list[str] | None] = ContextVar("manager_filters", default=None)


class Service(ScimService):
    """``scim2-server``'s protocol with Provisor's choices: real clients' shapes accepted
    (unless strict), and a PATCH answered with the resource."""

    def __init__(self, provider: ScimProvider, settings: ScimInboundSettings) -> None:
        super().__init__(provider)
        self.strict = settings.strict

    def read_body(
        self, model: type[Any], body: bytes, content_type: str | None, scim_ctx: Context
    ) -> Any:
        if self.strict and body:
            self._check_strictly(model, body, content_type, scim_ctx)
        if not self.strict and body:
            try:
                decoded = json.loads(body)
            except (ValueError, RecursionError):
                decoded = None  # the parser below says what is wrong
            if decoded is not None:
                if scim_ctx is Context.RESOURCE_PATCH_REQUEST:
                    _manager_filters.set(scim_quirks.manager_filters(decoded))
                    decoded = scim_quirks.patch(decoded)
                elif scim_ctx in (
                    Context.RESOURCE_CREATION_REQUEST,
                    Context.RESOURCE_REPLACEMENT_REQUEST,
                ):
                    decoded = scim_quirks.resource(decoded, _SERVED_SCHEMAS)
                body = json.dumps(decoded).encode()
        return super().read_body(model, body, content_type, scim_ctx)

    @staticmethod
    def _check_strictly(
        model: type[Any], body: bytes, content_type: str | None, scim_ctx: Context
    ) -> None:
        """Refuse what the interoperability profile forbids (a body that is no JSON is left
        to the parser, which says what is wrong)."""
        if (content_type or "").partition(";")[0].strip().lower() != "application/scim+json":
            raise InvalidSyntaxException(detail="send Content-Type: application/scim+json")
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            return
        fields = getattr(model, "model_fields", {})
        known = [*_SERVED_SCHEMAS, "schemas", "id", "externalId", "meta"]
        known += [f.serialization_alias or f.alias or n for n, f in fields.items()]
        problem = scim_quirks.strict_problem(
            decoded, patch_request=scim_ctx is Context.RESOURCE_PATCH_REQUEST, known=known
        )
        if problem is not None:
            raise InvalidSyntaxException(detail=problem)

    def apply_patch(
        self, current: Resource[Any], patch_op: PatchOp[Any], conditions: Any
    ) -> Resource[Any] | None:
        named = _manager_filters.get()
        if not self.strict and (named is not None or _filtered_paths(patch_op)):
            operations = [o.model_dump(mode="json") for o in patch_op.operations or []]
            now = current.model_dump(mode="json")
            fixed = scim_quirks.typed_additions(now, operations)
            if named is not None:
                fixed = scim_quirks.without_manager_removal(now, fixed, named)
            if not fixed:  # nothing left to do (the named manager was not the manager)
                self.check_preconditions(current, "PATCH", conditions)
                return None
            if fixed != operations:
                body = {"schemas": [scim_quirks.PATCH_SCHEMA], "Operations": fixed}
                patch_op = type(patch_op).model_validate(
                    body, scim_ctx=Context.RESOURCE_PATCH_REQUEST
                )
        return super().apply_patch(current, patch_op, conditions)

    def patch_response(
        self,
        base_url: str,
        resource: Resource[Any],
        response_parameters: ResponseParameters[Any],
    ) -> ScimResponse:
        """200 with the resource (Okta and Entra read it; RFC 7644 allows either)."""
        published = self.publish(base_url, resource)
        return self.resource_response(
            published, Context.RESOURCE_REPLACEMENT_RESPONSE, response_parameters
        )


class ThreadedStorage(AsyncScimStorage):
    """The workspace storage, run in worker threads (its database calls block), in the
    context of the request: the acting operator goes along."""

    def __init__(self, storage: ScimSource) -> None:
        self.storage = storage

    @staticmethod
    async def _run(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))

    async def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        return await self._run(self.storage.get, resource_type, resource_id)

    async def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        return await self._run(self.storage.search, resource_types, search_request)

    async def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        return await self._run(self.storage.create, resource_type, resource)

    async def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        return await self._run(
            self.storage.update, resource_type, resource, expected_version=expected_version
        )

    async def delete(
        self, resource_type: ResourceType, resource_id: str, *, expected_version: str | None = None
    ) -> None:
        await self._run(
            self.storage.delete, resource_type, resource_id, expected_version=expected_version
        )


class Wakes(Protocol):
    """The service's wake-up (``app.LocalWake``, ``dispatch.Wake``)."""

    def set(self) -> None: ...

    def hurry(self) -> None: ...

    def warn(self) -> None: ...


class ScimApplication(ASGIApplication):
    """The SCIM server, behind Provisor's tokens and rates."""

    def __init__(
        self, workspace: Workspace, buckets: Buckets, tokens: Tokens, wake: Wakes | None = None
    ) -> None:
        settings = workspace.config.service.scim
        served = provider(settings)

        def changed(ends_access: bool) -> None:  # planned now, not at the next cycle
            if wake is not None:
                (wake.hurry if ends_access else wake.set)()

        self.source = ScimSource(workspace, served, settings, changed)
        super().__init__(ThreadedStorage(self.source), served, Service(served, settings))
        self.workspace, self.buckets, self.tokens = workspace, buckets, tokens
        self._resource_locks: dict[str, asyncio.Lock] = {}

    def needs_auth(self, request: ScimRequest) -> bool:
        return True  # discovery too: nothing here is served to anonymous callers

    async def dispatch_request(self, request: ScimRequest) -> ScimResponse:
        scheme, _, secret = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise UnauthorizedException(detail="send 'Authorization: Bearer TOKEN'")
        secret = secret.strip()
        digest = operators.digest(secret)
        wait = self.buckets.take(digest)
        if wait:
            return _too_many(wait)
        try:
            who = await anyio.to_thread.run_sync(self.tokens.sign_in, secret, digest)
        except CredentialsError:
            raise UnauthorizedException(detail="the token is not valid") from None
        if who.reach(Permission.SCIM) is not Reach.ALL:
            raise ForbiddenException(detail=f"{who.name}'s token does not grant the scim scope")
        request.subject = who
        async with self._one_at_a_time(request), _acting(who.name):
            for attempt in range(RETRIES):
                try:
                    return await self.handler.handle(request)
                except PreconditionFailedException:
                    # the server checks the version it read itself: another request changed
                    # the resource meanwhile. A client that asked for no version (If-Match)
                    # gets its change applied to the newer one, as if it had come later.
                    if request.header("If-Match") or attempt == RETRIES - 1:
                        raise
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _one_at_a_time(self, request: ScimRequest) -> AsyncIterator[None]:
        """Changes to one resource are served one after another here (each is applied to the
        version the one before left); reads go straight through."""
        if request.method.upper() not in ("PATCH", "PUT", "DELETE"):
            yield
            return
        key = request.path.rstrip("/")
        lock = self._resource_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._resource_locks.pop(key, None)

    def handle_exception(self, request: ScimRequest, exception: Exception) -> ScimResponse:
        if isinstance(exception, OperationalError):  # a busy database: try again
            self.log.warning("database busy on %s", request.path)
            body = {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                "status": "503",
                "detail": "the database is busy; try again",
            }
            return ScimResponse(HTTPStatus.SERVICE_UNAVAILABLE, body, {"Retry-After": "1"})
        return super().handle_exception(request, exception)


def _filtered_paths(patch_op: PatchOp[Any]) -> bool:
    """Whether an operation's path has a value filter (only those may need rewriting against
    the stored resource)."""
    return any("[" in str(o.path or "") for o in patch_op.operations or [])


@asynccontextmanager
async def _acting(name: str) -> AsyncIterator[None]:
    with audit.acting_as(name):
        yield


def _too_many(seconds: float) -> ScimResponse:
    wait = str(max(1, int(seconds + 0.999)))
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": "429",
        "detail": "this token exceeds its request rate; slow down",
    }
    return ScimResponse(HTTPStatus.TOO_MANY_REQUESTS, body, {"Retry-After": wait})
