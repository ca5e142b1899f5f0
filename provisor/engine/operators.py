"""Operators and their tokens: who signs in to the service, with what roles, by what token.

Does: add, change, disable and list operator accounts (roles, owned targets, an optional
password hashed with argon2id, an optional OIDC subject); make API tokens (a random secret
shown once, only its SHA-256 kept, scopes within what the roles grant, an expiry), sign-in
tokens for a password or OIDC sign-in, list tokens with their last use, revoke them; turn a
presented token into a ``Principal`` or refuse it; audit every change with the acting person.
Does not: know HTTP or routes (``provisor.api``), or decide what a permission allows
(``provisor.domain.roles``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisor.domain import roles as rules
from provisor.domain.lifecycle import utc
from provisor.domain.roles import Permission, Reach
from provisor.errors import CredentialsError, DeniedError, LifecycleError, NotFoundError
from provisor.evidence import audit
from provisor.redaction import TOKEN_PREFIX, remember
from provisor.store.models import ApiToken, Operator

_hasher = PasswordHasher()  # argon2id with the library's recommended cost
# verified against when no such operator exists, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash("not a password of anyone")
# a token's last use is written at most this often (a busy client would otherwise write a row
# per request)
LAST_USE_EVERY = timedelta(seconds=60)
MIN_PASSWORD = 12


@dataclass(frozen=True)
class Principal:
    """An authenticated operator acting through one token."""

    name: str
    roles: tuple[str, ...]
    targets: frozenset[str]
    email: str | None
    scopes: frozenset[str]
    token_id: int
    expires_at: datetime | None = None  # the token's, when it has one
    _reach: dict[Permission, Reach] = field(default_factory=dict, compare=False, repr=False)

    def reach(self, permission: Permission) -> Reach:
        found = self._reach.get(permission)
        if found is None:
            found = rules.reach(self.roles, self.scopes, permission)
            self._reach[permission] = found
        return found

    def require(self, permission: Permission, target: str | None = None) -> Reach:
        """The reach of ``permission``; ``DeniedError`` when it has none, or only over the
        operator's own targets and ``target`` is not one of them."""
        found = self.reach(permission)
        if found is Reach.NONE:
            raise DeniedError(f"{self.name} may not {permission.value}: no role or scope allows it")
        if found is Reach.OWN and target is not None and not self.owns(target):
            raise DeniedError(f"{self.name} may {permission.value} only for their own targets")
        return found

    def owns(self, target: str) -> bool:
        return target in self.targets

    def answers_for(self, permission: Permission, target: str, owner: str | None = None) -> bool:
        """Whether ``permission`` reaches this target's work: everything it reaches, or the
        operator's own targets and the tasks whose revocation owner is their e-mail."""
        if self.reach(permission) is Reach.ALL:
            return True
        return self.owns(target) or bool(self.email and owner == self.email)

    def work_on(self, permission: Permission, target: str, owner: str | None = None) -> None:
        """``DeniedError`` unless ``answers_for`` says yes."""
        if not self.answers_for(permission, target, owner):
            raise DeniedError(f"{self.name} may {permission.value} only for their own targets")

    def visible(self, permission: Permission, targets: Iterable[str]) -> set[str] | None:
        """The targets a listing may show: None for all, else the owned ones among them."""
        if self.require(permission) is Reach.ALL:
            return None
        return {t for t in targets if self.owns(t)}


def _roles(names: Sequence[str]) -> list[str]:
    try:
        return [r.value for r in rules.roles_from(names, "role")]
    except ValueError as exc:
        raise LifecycleError(str(exc)) from None


def _scopes(names: Sequence[str]) -> list[Permission]:
    try:
        return rules.scopes_from(names, "scope")
    except ValueError as exc:
        raise LifecycleError(str(exc)) from None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _operator(session: Session, name: str) -> Operator:
    found = session.execute(select(Operator).where(Operator.name == name)).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"no operator {name!r}; 'provisor operator list' lists them")
    return found


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise LifecycleError(f"a password needs at least {MIN_PASSWORD} characters")


def add_operator(
    session: Session,
    name: str,
    *,
    roles: Sequence[str],
    targets: Sequence[str] = (),
    email: str | None = None,
    password: str | None = None,
    oidc_subject: str | None = None,
    by: str,
    now: datetime,
) -> Operator:
    """A new operator account; audited (never with its password)."""
    if not name or len(name) > 128 or any(c.isspace() or not c.isprintable() for c in name):
        raise LifecycleError(f"operator name {name!r}: 1 to 128 printable characters, no spaces")
    exists = session.execute(select(Operator.id).where(Operator.name == name)).first()
    if exists is not None:
        raise LifecycleError(f"operator {name!r} exists already")
    checked = _roles(roles)
    if password is not None:
        _check_password(password)
    operator = Operator(
        name=name,
        email=email,
        password_hash=_hasher.hash(password) if password is not None else None,
        roles=checked,
        targets=sorted(set(targets)),
        oidc_subject=oidc_subject,
        disabled=False,
        created_at=now,
        created_by=by,
    )
    session.add(operator)
    session.flush()
    audit.record(session, "operator.created", name, _described(operator), actor=by)
    return operator


def _described(operator: Operator) -> dict[str, Any]:
    return {
        "name": operator.name,
        "email": operator.email,
        "roles": list(operator.roles),
        "targets": list(operator.targets),
        "password": operator.password_hash is not None,
        "oidc_subject": operator.oidc_subject,
        "disabled": operator.disabled,
    }


def change_operator(
    session: Session,
    name: str,
    *,
    roles: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    email: str | None = None,
    password: str | None = None,
    oidc_subject: str | None = None,
    disabled: bool | None = None,
    by: str,
    now: datetime,
) -> Operator:
    """Change an operator; disabling one revokes every token they hold. Audited."""
    operator = _operator(session, name)
    if roles is not None:
        operator.roles = _roles(roles)
    if targets is not None:
        operator.targets = sorted(set(targets))
    if email is not None:
        operator.email = email or None
    if oidc_subject is not None:
        operator.oidc_subject = oidc_subject or None
    if password is not None:
        _check_password(password)
        operator.password_hash = _hasher.hash(password)
    if disabled is not None:
        operator.disabled = disabled
    if disabled or password is not None:
        _revoke_all(session, operator, by=by, now=now)
    audit.record(session, "operator.changed", name, _described(operator), actor=by)
    return operator


def _revoke_all(session: Session, operator: Operator, *, by: str, now: datetime) -> None:
    for token in session.execute(
        select(ApiToken).where(ApiToken.operator_id == operator.id, ApiToken.revoked_at.is_(None))
    ).scalars():
        token.revoked_at, token.revoked_by = now, by


def list_operators(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(select(Operator).order_by(Operator.name)).scalars()
    return [_described(o) | {"created_at": o.created_at.isoformat()} for o in rows]


def create_token(
    session: Session,
    operator: str,
    *,
    name: str,
    scopes: Sequence[str],
    expires_at: datetime | None,
    by: str,
    now: datetime,
    kind: str = "api",
    within: Principal | None = None,
) -> tuple[str, ApiToken]:
    """A new token for ``operator``: the secret (shown once, never stored) and its row.
    Made through another token (``within``), it reaches no further than that one: its
    scopes, and its expiry at the latest."""
    owner = _operator(session, operator)
    if owner.disabled:
        raise LifecycleError(f"operator {operator!r} is disabled")
    allowed = rules.granted(owner.roles)
    if within is not None:
        allowed = allowed & {Permission(s) for s in within.scopes}
        expires_at = _no_later(expires_at, within.expires_at)
    wanted = _scopes(scopes)
    if "*" in scopes:
        wanted = sorted(set(wanted) & allowed)
    if within is not None:
        lacking = sorted(p.value for p in set(wanted) - set(within.scopes))
        if lacking:
            raise DeniedError(f"the token used lacks the scopes {', '.join(lacking)}")
    beyond = sorted(p.value for p in set(wanted) - allowed)
    if beyond:
        raise DeniedError(
            f"{operator}'s roles ({', '.join(owner.roles) or 'none'}) do not grant the scope"
            f" {', '.join(beyond)}"
        )
    if not wanted:
        raise LifecycleError("a token needs at least one scope its operator's roles grant")
    if expires_at is not None:
        expires_at = utc(expires_at)  # a time without a zone is UTC
        if expires_at <= now:
            raise LifecycleError("a token's expiry must be in the future")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    if kind == "api":
        remember(secret)  # sign-in tokens are many and short-lived: their shape masks them
    token = ApiToken(
        operator_id=owner.id,
        name=name,
        kind=kind,
        token_hash=digest(secret),
        prefix=secret[:10],
        scopes=[p.value for p in wanted],
        created_at=now,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    if kind == "api":
        audit.record(session, "token.created", operator, _token_dict(token, owner), actor=by)
    return secret, token


def _no_later(wanted: datetime | None, limit: datetime | None) -> datetime | None:
    if limit is None:
        return wanted
    return limit if wanted is None else min(utc(wanted), limit)


def _token_dict(token: ApiToken, owner: Operator) -> dict[str, Any]:
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": token.id,
        "operator": owner.name,
        "name": token.name,
        "kind": token.kind,
        "prefix": token.prefix,
        "scopes": list(token.scopes),
        "created_at": when(token.created_at),
        "expires_at": when(token.expires_at),
        "last_used_at": when(token.last_used_at),
        "revoked_at": when(token.revoked_at),
    }


def list_tokens(
    session: Session, *, operator: str | None = None, every: bool = False, now: datetime
) -> list[dict[str, Any]]:
    """Tokens with their last use: live ones, or ``every`` one (revoked and expired too)."""
    query = select(ApiToken, Operator).join(Operator, Operator.id == ApiToken.operator_id)
    if operator is not None:
        query = query.where(Operator.name == operator)
    if not every:
        query = query.where(ApiToken.revoked_at.is_(None), ApiToken.kind == "api")
    found = []
    for token, owner in session.execute(query.order_by(ApiToken.id)):
        if not every and token.expires_at is not None and token.expires_at <= now:
            continue
        found.append(_token_dict(token, owner))
    return found


def token_owner(session: Session, token_id: int) -> str:
    """The name of the operator holding token ``token_id``."""
    row = session.execute(
        select(Operator.name)
        .join(ApiToken, ApiToken.operator_id == Operator.id)
        .where(ApiToken.id == token_id)
    ).first()
    if row is None:
        raise NotFoundError(f"no token {token_id}; 'provisor token list' lists them")
    return str(row[0])


def revoke_token(session: Session, token_id: int, *, by: str, now: datetime) -> None:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFoundError(f"no token {token_id}; 'provisor token list' lists them")
    if token.revoked_at is None:
        token.revoked_at, token.revoked_by = now, by
        owner = session.get(Operator, token.operator_id)
        assert owner is not None
        audit.record(session, "token.revoked", owner.name, _token_dict(token, owner), actor=by)


def authenticate(session: Session, secret: str, now: datetime) -> Principal:
    """The operator a presented token signs in, or ``CredentialsError`` (unknown, revoked,
    expired, or its operator disabled: the message never says which). Read on every request
    (revoking a token stops it at once), as plain columns; its last use is written at most
    every ``LAST_USE_EVERY`` (the caller commits)."""
    found = session.execute(
        select(
            ApiToken.id,
            ApiToken.scopes,
            ApiToken.expires_at,
            ApiToken.revoked_at,
            ApiToken.last_used_at,
            Operator.name,
            Operator.roles,
            Operator.targets,
            Operator.email,
            Operator.disabled,
        )
        .join(Operator, Operator.id == ApiToken.operator_id)
        .where(ApiToken.token_hash == digest(secret))
    ).first()
    if found is None:
        raise CredentialsError("the token is not valid")
    token_id, scopes, expires, revoked, last_used, name, roles, targets, email, disabled = found
    if revoked is not None or (expires is not None and expires <= now) or disabled:
        raise CredentialsError("the token is not valid")
    if last_used is None or now - last_used >= LAST_USE_EVERY:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
    return Principal(
        name=name,
        roles=tuple(roles),
        targets=frozenset(targets),
        email=email,
        scopes=frozenset(scopes),
        token_id=token_id,
        expires_at=expires,
    )


def sign_in(
    session: Session, name: str, password: str, *, hours: float, now: datetime
) -> tuple[str, ApiToken] | None:
    """A sign-in token for a name and password (argon2id); None when they sign no one in (the
    refusal is audited: commit, then refuse)."""
    operator = session.execute(select(Operator).where(Operator.name == name)).scalar_one_or_none()
    stored = operator.password_hash if operator is not None else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
        ok = stored is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or operator is None or operator.disabled:
        audit.record(session, "operator.sign-in-refused", name[:128], {"how": "password"})
        return None
    if _hasher.check_needs_rehash(operator.password_hash or ""):
        operator.password_hash = _hasher.hash(password)
    return _session_token(session, operator, "password", hours=hours, now=now)


def _session_token(
    session: Session, operator: Operator, how: str, *, hours: float, now: datetime
) -> tuple[str, ApiToken]:
    scopes = sorted(rules.granted(operator.roles) & rules.SESSION_SCOPES)
    secret, token = create_token(
        session,
        operator.name,
        name=f"sign-in ({how})",
        scopes=scopes or [Permission.READ.value],
        expires_at=now + timedelta(hours=hours),
        by=operator.name,
        now=now,
        kind="session",
    )
    data = {"how": how, "token": token.id}
    audit.record(session, "operator.signed-in", operator.name, data, actor=operator.name)
    return secret, token


def sign_in_oidc(
    session: Session, subject: str, email: str | None, *, hours: float, now: datetime
) -> tuple[str, ApiToken] | None:
    """A sign-in token for an OIDC subject the identity provider vouched for: the operator
    with that subject, else the one with that (verified) e-mail, which is then bound to it."""
    operator = session.execute(
        select(Operator).where(Operator.oidc_subject == subject)
    ).scalar_one_or_none()
    if operator is None and email:
        matching = list(
            session.execute(
                select(Operator).where(Operator.email == email, Operator.oidc_subject.is_(None))
            ).scalars()
        )
        # an e-mail several operators share says nobody in particular: refused
        operator = matching[0] if len(matching) == 1 else None
        if operator is not None:
            operator.oidc_subject = subject
    if operator is None or operator.disabled:
        audit.record(session, "operator.sign-in-refused", subject[:128], {"how": "oidc"})
        return None
    return _session_token(session, operator, "oidc", hours=hours, now=now)
