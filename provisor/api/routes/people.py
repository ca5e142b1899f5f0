"""Routes for signing in and for operators and their tokens.

Does: sign in with a name and password (a sign-in token, audited either way), sign out, say
who is signed in, make, list and revoke API tokens (one's own; an admin's for anyone), and let
an admin add and change operators.
Does not: check passwords or hash tokens (``provisor.engine.operators``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from provisor.api.problems import Problem
from provisor.api.security import Admin, Anyone, RowId, Space, acting, instant
from provisor.domain.roles import Permission, Reach
from provisor.engine import operators

router = APIRouter(prefix="/api/v1", tags=["people"])


class SignIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class SignedIn(BaseModel):
    token: str
    expires_at: datetime
    operator: str


@router.post("/session", response_model=SignedIn, summary="Sign in with a name and password")
def sign_in(body: SignIn, workspace: Space, request: Request) -> dict[str, Any]:
    """A sign-in token (``Authorization: Bearer``) for ``service.session_hours``."""
    wait = request.app.state.sign_ins.take(body.name.casefold())
    if wait:
        retry = str(max(1, int(wait + 0.999)))
        raise Problem(429, "too many sign-ins for this name", headers={"Retry-After": retry})
    hours = workspace.config.service.session_hours
    with workspace.sessions() as session, session.begin():
        made = operators.sign_in(
            session, body.name, body.password, hours=hours, now=datetime.now(UTC)
        )
        if made is not None:
            secret, token = made
            answer = {"token": secret, "expires_at": token.expires_at, "operator": body.name}
    if made is None:
        raise Problem(401, "the name or the password is wrong", title="not signed in")
    return answer


@router.delete("/session", status_code=204, summary="Sign out: revoke the token used")
def sign_out(who: Anyone, workspace: Space, request: Request) -> None:
    with acting(who), workspace.sessions() as session, session.begin():
        operators.revoke_token(session, who.token_id, by=who.name, now=datetime.now(UTC))
    request.app.state.tokens.forget()


@router.get("/me", summary="Who is signed in, with roles and what they reach")
def me(who: Anyone) -> dict[str, Any]:
    return {
        "operator": who.name,
        "roles": list(who.roles),
        "targets": sorted(who.targets),
        "scopes": sorted(who.scopes),
        "permissions": {
            p.value: who.reach(p).name.lower() for p in Permission if who.reach(p) is not Reach.NONE
        },
    }


class NewToken(BaseModel):
    name: str = Field(default="api", min_length=1, max_length=128)
    scopes: list[str] = Field(min_length=1)
    expires_at: datetime | None = None
    operator: str | None = Field(default=None, description="Another operator's (admin only).")


@router.get("/tokens", summary="Tokens with their last use (one's own; an admin's: all)")
def list_tokens(who: Anyone, workspace: Space, every: bool = False) -> list[dict[str, Any]]:
    mine = None if who.reach(Permission.ADMIN) is Reach.ALL else who.name
    with workspace.sessions() as session:
        return operators.list_tokens(session, operator=mine, every=every, now=datetime.now(UTC))


@router.post("/tokens", status_code=201, summary="Make an API token (shown once)")
def create_token(body: NewToken, who: Anyone, workspace: Space) -> dict[str, Any]:
    """A token never reaches further than the one that made it: its scopes, its expiry."""
    owner = body.operator or who.name
    if owner != who.name:
        who.require(Permission.ADMIN)
    expires = instant(body.expires_at, "expires_at", workspace)
    now = datetime.now(UTC)
    with acting(who), workspace.sessions() as session, session.begin():
        secret, token = operators.create_token(
            session,
            owner,
            name=body.name,
            scopes=body.scopes,
            expires_at=expires,
            by=who.name,
            now=now,
            within=who,
        )
        made = {"id": token.id, "operator": owner, "scopes": list(token.scopes), "token": secret}
        made["expires_at"] = token.expires_at.isoformat() if token.expires_at else None
    return made


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a token")
def revoke_token(token_id: RowId, who: Anyone, workspace: Space, request: Request) -> None:
    with acting(who), workspace.sessions() as session, session.begin():
        if operators.token_owner(session, token_id) != who.name:
            who.require(Permission.ADMIN)
        operators.revoke_token(session, token_id, by=who.name, now=datetime.now(UTC))
    request.app.state.tokens.forget()


class NewOperator(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    roles: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    email: str | None = None
    password: str | None = Field(default=None, max_length=1024)
    oidc_subject: str | None = None


class OperatorChange(BaseModel):
    roles: list[str] | None = None
    targets: list[str] | None = None
    email: str | None = None
    password: str | None = Field(default=None, max_length=1024)
    disabled: bool | None = None


@router.get("/operators", summary="Operators with roles and targets")
def list_operators(who: Admin, workspace: Space) -> list[dict[str, Any]]:
    with workspace.sessions() as session:
        return operators.list_operators(session)


@router.post("/operators", status_code=201, summary="Add an operator")
def add_operator(body: NewOperator, who: Admin, workspace: Space) -> dict[str, Any]:
    with acting(who), workspace.sessions() as session, session.begin():
        made = operators.add_operator(
            session,
            body.name,
            roles=body.roles,
            targets=body.targets,
            email=body.email,
            password=body.password,
            oidc_subject=body.oidc_subject,
            by=who.name,
            now=datetime.now(UTC),
        )
        return next(o for o in operators.list_operators(session) if o["name"] == made.name)


@router.patch("/operators/{name}", summary="Change an operator (disabling revokes their tokens)")
def change_operator(
    name: str, body: OperatorChange, who: Admin, workspace: Space, request: Request
) -> dict[str, Any]:
    with acting(who), workspace.sessions() as session, session.begin():
        operators.change_operator(
            session,
            name,
            roles=body.roles,
            targets=body.targets,
            email=body.email,
            password=body.password,
            disabled=body.disabled,
            by=who.name,
            now=datetime.now(UTC),
        )
        changed = next(o for o in operators.list_operators(session) if o["name"] == name)
    request.app.state.tokens.forget()  # roles, targets or a disabled operator count at once
    return changed
