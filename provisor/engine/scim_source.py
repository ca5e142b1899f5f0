"""The inbound SCIM server's storage: Users and Groups an identity provider pushes, kept in
the workspace database, each change of a User turned into lifecycle events.

Does: store, read, search (filter by ``scim2-models``, index paging) and delete SCIM Users and
Groups (``scim2-server``'s storage protocol), with versions for ETags and userName unique
without regard to case; decide the identity a new User feeds (``provisor.domain.scim_people``)
and keep it for the User's life; in the same transaction as each write, bring the identity
to what the User now says through the feed import's path (validation, manager checks, the
mass-change guard), writes of many requests sharing a transaction (``provisor.engine.writer``):
a new User is a joiner, a changed one a mover, ``active`` false or a
DELETE a leaver effective now, ``active`` true again a rehire; a Group's members get its name
in their ``groups`` attribute; a password is never stored; once a write that fed identities
is committed, tell the caller's ``changed`` whether it ended someone's access.
Does not: speak HTTP or check who calls (``provisor.api.scim``), or validate SCIM payloads
(``scim2-server`` does before calling this).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from scim2_models import (
    Meta,
    NotFoundException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimFilter,
    ScimProvider,
    SearchRequest,
    UniquenessException,
)
from scim2_models.exceptions import InvalidValueException
from scim2_models.path.expressions import CompareOperator, Comparison
from scim2_server.storage import ScimStorage, SearchPage
from scim2_server.utils import parametrize
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from provisor.config.workspace import ScimInboundSettings
from provisor.domain.lifecycle import LifecycleState
from provisor.domain.scim_people import identity_key, manager_reference, person_record
from provisor.engine import holds
from provisor.engine.imports import record_people
from provisor.engine.workspace import Workspace
from provisor.engine.writer import Writer
from provisor.errors import FeedError
from provisor.store.models import Identity, ScimMember, ScimResource

# the attributes a SCIM User sets on its identity: one it no longer has is cleared
MANAGED = frozenset(
    {
        "email",
        "department",
        "title",
        "cost_centre",
        "manager",
        "user_name",
        "external_id",
        "employee_number",
        "organization",
        "division",
        "given_name",
        "family_name",
        "user_type",
        "groups",
    }
)
# simple filters answered from an index before the filter runs on the candidates
_INDEXED = {"username": "name_key", "externalid": "external_id", "id": "id"}


@dataclass(frozen=True)
class _Stored:
    """What a write stored, as plain data: the resource is built from it outside the writer."""

    id: str
    kind: str
    data: dict[str, Any]
    version: int
    created_at: datetime
    modified_at: datetime

    @classmethod
    def of(cls, row: ScimResource) -> _Stored:
        return cls(row.id, row.kind, row.data, row.version, row.created_at, row.modified_at)


def _version(row: ScimResource | _Stored) -> str:
    return f'W/"{row.version}"'


def _user_name_key(data: dict[str, Any]) -> str | None:
    name = data.get("userName")
    return str(name).casefold() if name else None


class ScimSource(ScimStorage):
    """Users and Groups in the workspace database; Users feed identities."""

    def __init__(
        self,
        workspace: Workspace,
        provider: ScimProvider,
        settings: ScimInboundSettings,
        changed: Callable[[bool], None] | None = None,
    ) -> None:
        self.workspace, self.provider, self.settings = workspace, provider, settings
        # told, once a write that fed identities is committed, whether it ended someone's access
        self.changed = changed
        self.source = f"scim:{settings.feed}"
        # writes from many request threads share transactions (one SQLite writer)
        self.writer = Writer(workspace)

    # -- reading -----------------------------------------------------------------------------

    def _resource(
        self, row: ScimResource | _Stored, resource_type: ResourceType | None = None
    ) -> Any:
        kind = resource_type or next(rt for rt in self.provider.resource_types if rt.id == row.kind)
        model: Any = self.provider.model_for(kind)
        resource = model.model_validate(row.data)
        resource.id = row.id
        resource.meta = Meta(
            resource_type=row.kind,
            created=row.created_at,
            last_modified=row.modified_at,
            version=_version(row),
        )
        return resource

    def _row(self, session: Session, resource_type: ResourceType, resource_id: str) -> ScimResource:
        row = session.get(ScimResource, resource_id)
        if row is None or row.kind != resource_type.id:
            raise NotFoundException(detail=f"{resource_type.name} {resource_id!r} not found")
        return row

    def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        with self.workspace.sessions() as session:
            return cast(
                Resource[Any],
                self._resource(self._row(session, resource_type, resource_id), resource_type),
            )

    def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        kinds = {str(rt.id): rt for rt in resource_types}
        scim_filter = search_request.filter
        query = select(ScimResource).where(ScimResource.kind.in_(list(kinds)))
        query = self._narrowed(query, scim_filter, kinds)
        with self.workspace.sessions() as session:
            rows = list(
                session.execute(query.order_by(ScimResource.created_at, ScimResource.id)).scalars()
            )
            candidates = [self._resource(row, kinds[row.kind]) for row in rows]
        if scim_filter is not None and not scim_filter.models and candidates:
            models = tuple(dict.fromkeys(type(r) for r in candidates))
            scim_filter = parametrize(ScimFilter, models[0] if len(models) == 1 else Any)(
                str(scim_filter)
            )
        found = [r for r in candidates if scim_filter is None or scim_filter.match(r)]
        start = max(1, search_request.start_index or 1)
        count = search_request.count
        page = found[start - 1 :] if count is None else found[start - 1 : start - 1 + count]
        return SearchPage(total=len(found), resources=page)

    @staticmethod
    def _narrowed(query: Any, scim_filter: Any, kinds: dict[str, ResourceType]) -> Any:
        """A filter that is one comparison ``userName|externalId|id eq VALUE`` (of the parsed
        filter: its value unescaped), read from an index; every other filter runs on all the
        resources of the types (the filter is applied to the candidates either way)."""
        node = getattr(scim_filter, "ast", None) if scim_filter is not None else None
        if not isinstance(node, Comparison) or node.op is not CompareOperator.eq:
            return query
        path = node.attr_path
        if path.sub_attr or not isinstance(node.value, str):
            return query
        column = _INDEXED.get(path.attr.lower())
        if column is None:
            return query
        value = node.value
        if column == "name_key":  # userName: Users only, without regard to case
            return query.where(
                or_(ScimResource.name_key == value.casefold(), ScimResource.kind != "User")
            )
        return query.where(getattr(ScimResource, column) == value)

    # -- writing -----------------------------------------------------------------------------

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        data = self._stored_data(resource)
        said: list[bool] = []
        stored = self.writer.run(lambda session: self._create(session, resource_type, data, said))
        self._told(said)
        return cast(Resource[Any], self._resource(stored, resource_type))

    def _create(
        self, session: Session, resource_type: ResourceType, data: dict[str, Any], said: list[bool]
    ) -> _Stored:
        now = datetime.now(UTC)
        row = ScimResource(
            id=uuid.uuid4().hex,
            kind=resource_type.id,
            external_id=data.get("externalId"),
            data=data,
            version=1,
            created_at=now,
            modified_at=now,
        )
        if resource_type.id == "User":
            row.name_key = self._unique_name(session, data, None)
            row.identity = self._new_identity(session, data)
        session.add(row)
        session.flush()
        self._members(session, row, data)
        self._feed(session, self._affected(session, row, set()), now, said=said)
        return _Stored.of(row)

    def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        data = self._stored_data(resource)
        said: list[bool] = []
        stored = self.writer.run(
            lambda session: self._update(
                session, resource_type, str(resource.id), data, expected_version, said
            )
        )
        self._told(said)
        return cast(Resource[Any], self._resource(stored, resource_type))

    def _update(
        self,
        session: Session,
        resource_type: ResourceType,
        resource_id: str,
        data: dict[str, Any],
        expected_version: str | None,
        said: list[bool],
    ) -> _Stored:
        now = datetime.now(UTC)
        row = self._row(session, resource_type, resource_id)
        if expected_version is not None and expected_version != _version(row):
            raise PreconditionFailedException
        if data == row.data:
            return _Stored.of(row)
        before = self._member_ids(session, row.id)
        if resource_type.id == "User":
            row.name_key = self._unique_name(session, data, row.id)
        row.data, row.external_id = data, data.get("externalId")
        row.version, row.modified_at = row.version + 1, now
        self._members(session, row, data)
        self._feed(session, self._affected(session, row, before), now, said=said)
        return _Stored.of(row)

    def delete(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        expected_version: str | None = None,
    ) -> None:
        said: list[bool] = []
        self.writer.run(
            lambda session: self._delete(
                session, resource_type, resource_id, expected_version, said
            )
        )
        self._told(said)

    def _delete(
        self,
        session: Session,
        resource_type: ResourceType,
        resource_id: str,
        expected_version: str | None,
        said: list[bool],
    ) -> None:
        now = datetime.now(UTC)
        row = self._row(session, resource_type, resource_id)
        if expected_version is not None and expected_version != _version(row):
            raise PreconditionFailedException
        members = self._member_ids(session, row.id)
        session.execute(
            delete(ScimMember).where(
                or_(ScimMember.group_id == row.id, ScimMember.member_id == row.id)
            )
        )
        if row.kind == "User":
            # a DELETE is a leaver effective now: the identity stays, terminated
            self._feed(session, [], now, gone=[row], said=said)
            session.delete(row)
            session.flush()
            return
        session.delete(row)
        session.flush()
        self._feed(session, self._users(session, members), now, said=said)

    def close(self) -> None:
        self.writer.close()

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _stored_data(resource: Resource[Any]) -> dict[str, Any]:
        """The resource as stored: SCIM JSON without id, meta, groups (read-only, derived)
        and password (never kept)."""
        data = resource.model_dump(mode="json")
        for key in ("id", "meta", "password", "groups"):
            data.pop(key, None)
        return data

    @staticmethod
    def _unique_name(session: Session, data: dict[str, Any], own: str | None) -> str | None:
        key = _user_name_key(data)
        if key is None:
            return None
        taken = session.execute(
            select(ScimResource.id).where(ScimResource.kind == "User", ScimResource.name_key == key)
        ).scalar_one_or_none()
        if taken is not None and taken != own:
            raise UniquenessException(detail=f"userName {data.get('userName')!r} is taken")
        return key

    def _new_identity(self, session: Session, data: dict[str, Any]) -> str:
        identity = identity_key(data, self.settings.identity_from)
        if identity is None:
            names = ", ".join(self.settings.identity_from)
            raise InvalidValueException(detail=f"a User needs one of {names}")
        fed = session.execute(
            select(ScimResource.id).where(ScimResource.identity == identity)
        ).scalar_one_or_none()
        if fed is not None:
            raise UniquenessException(
                detail=f"identity {identity!r} is fed by another User already ({fed})"
            )
        return identity

    @staticmethod
    def _member_ids(session: Session, group_id: str) -> set[str]:
        return set(
            session.execute(
                select(ScimMember.member_id).where(ScimMember.group_id == group_id)
            ).scalars()
        )

    def _members(self, session: Session, row: ScimResource, data: dict[str, Any]) -> None:
        if row.kind != "Group":
            return
        wanted = {str(m["value"]) for m in data.get("members") or [] if m.get("value")}
        have = self._member_ids(session, row.id)
        if wanted - have:
            session.add_all(ScimMember(group_id=row.id, member_id=m) for m in wanted - have)
        if have - wanted:
            session.execute(
                delete(ScimMember).where(
                    ScimMember.group_id == row.id, ScimMember.member_id.in_(have - wanted)
                )
            )
        session.flush()

    def _affected(
        self, session: Session, row: ScimResource, before: set[str]
    ) -> list[ScimResource]:
        """The Users whose identity a write changes: the User, or a Group's members (now or
        before)."""
        if row.kind == "User":
            return [row]
        return self._users(session, before | self._member_ids(session, row.id))

    @staticmethod
    def _users(session: Session, ids: Iterable[str]) -> list[ScimResource]:
        wanted = sorted(ids)
        if not wanted:
            return []
        return list(
            session.execute(
                select(ScimResource).where(ScimResource.id.in_(wanted), ScimResource.kind == "User")
            ).scalars()
        )

    def _feed(
        self,
        session: Session,
        users: list[ScimResource],
        now: datetime,
        gone: Sequence[ScimResource] = (),
        said: list[bool] | None = None,
    ) -> None:
        """Bring the identities of ``users`` (and of ``gone``: deleted ones, leavers) to what
        they say; invalid values refuse the request. Whether it ended someone's access goes to
        ``said``."""
        people = [self._person(session, u, present=True) for u in users if u.identity]
        people += [self._person(session, u, present=False) for u in gone if u.identity]
        if not people:
            return
        try:
            outcome = record_people(
                self.workspace,
                session,
                people,
                feed=self.settings.feed,
                source=self.source,
                managed=MANAGED,
                now=now,
                recent=lambda: holds.recent(
                    session, self.source + ":", self.workspace.config.guard.window_minutes, now
                ),
            )
        except FeedError as exc:
            raise InvalidValueException(detail=str(exc)) from None
        if said is not None:
            said.append(outcome.ends_access)

    def _told(self, said: list[bool]) -> None:
        """After a committed write that fed identities: ``changed`` told whether it ended
        someone's access (the service wakes its runner, or hurries the workers)."""
        if said and self.changed is not None:
            self.changed(any(said))

    def _person(self, session: Session, user: ScimResource, *, present: bool) -> dict[str, Any]:
        data = user.data
        reference = manager_reference(data)
        manager = None
        if reference is not None:
            named = session.get(ScimResource, reference)
            manager = named.identity if named is not None and named.identity else reference
        groups = [
            str(g.data.get("displayName") or g.id)
            for g in session.execute(
                select(ScimResource)
                .join(ScimMember, ScimMember.group_id == ScimResource.id)
                .where(ScimMember.member_id == user.id)
            ).scalars()
        ]
        assert user.identity is not None
        left = None
        if data.get("active") is None:
            # a User without "active" (a PUT leaving it out, a PATCH removing it) keeps its
            # identity's state: a leaver is not rehired by a client that does not say so
            state = session.execute(
                select(Identity.state).where(Identity.external_id == user.identity)
            ).scalar_one_or_none()
            left = state == LifecycleState.TERMINATED.value
        return person_record(
            data, user.identity, manager=manager, groups=groups, present=present, left=left
        )
