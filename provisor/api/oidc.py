"""Sign-in through an OpenID Connect provider: the authorization code flow with PKCE.

Does: send a person to the provider (``GET /api/v1/oidc/login``: a fresh state, nonce and PKCE
verifier, kept ten minutes), take them back (``GET /api/v1/oidc/callback``: the code exchanged
at the provider's token endpoint, the ID token's signature checked against the provider's
published keys — asymmetric algorithms only — and its issuer, audience, expiry and nonce),
and sign in the operator with that subject (or, the first time, the one with that verified
e-mail): a sign-in token, as a password sign-in gives. A person the provider vouches for but
who is no operator is refused; so is everything that does not check out.
Does not: create operators (an admin does), or keep the provider's tokens.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx2
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from provisor.api.problems import Problem
from provisor.api.security import Space
from provisor.config.workspace import OidcSettings
from provisor.engine import operators

router = APIRouter(prefix="/api/v1/oidc", tags=["people"])

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
PENDING_SECONDS = 600


class Provider:
    """One OIDC provider: its discovery document and keys (read once), sign-ins under way."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._discovered: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._pending: dict[str, tuple[float, str, str]] = {}  # state -> (at, nonce, verifier)
        self._lock = threading.Lock()

    def _discovery(self) -> dict[str, Any]:
        if self._discovered is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            found = httpx2.get(url, timeout=10)
            found.raise_for_status()
            self._discovered = dict(found.json())
        return self._discovered

    def _key_set(self, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            found = httpx2.get(self._discovery()["jwks_uri"], timeout=10)
            found.raise_for_status()
            self._keys = KeySet.import_key_set(found.json())
        return self._keys

    def login_url(self) -> str:
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        now = time.monotonic()
        with self._lock:
            self._pending = {k: v for k, v in self._pending.items() if now - v[0] < PENDING_SECONDS}
            self._pending[state] = (now, nonce, verifier)
        query = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_url,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        }
        return str(self._discovery()["authorization_endpoint"]) + "?" + urlencode(query)

    def claims(self, code: str, state: str) -> dict[str, Any]:
        """The verified ID token claims of a callback, or ``Problem`` 401."""
        with self._lock:
            pending = self._pending.pop(state, None)
        if pending is None or time.monotonic() - pending[0] >= PENDING_SECONDS:
            raise Problem(401, "this sign-in is unknown or has expired; start again")
        _, nonce, verifier = pending
        secret = os.environ.get(self.settings.client_secret_env, "")
        exchanged = httpx2.post(
            self._discovery()["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.settings.redirect_url,
                "code_verifier": verifier,
            },
            auth=(self.settings.client_id, secret),
            timeout=10,
        )
        if exchanged.status_code != 200 or "id_token" not in exchanged.json():
            raise Problem(401, "the identity provider refused the sign-in")
        return self.verify(str(exchanged.json()["id_token"]), nonce)

    def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The claims of ``id_token`` once its signature, issuer, audience, expiry and nonce
        check out; ``Problem`` 401 otherwise."""
        try:
            try:
                token = jwt.decode(id_token, self._key_set(), algorithms=ALGORITHMS)
            except JoseError:  # the provider may have rotated its keys
                token = jwt.decode(id_token, self._key_set(refresh=True), algorithms=ALGORITHMS)
            registry = jwt.JWTClaimsRegistry(
                leeway=60,
                iss={"essential": True, "value": str(self._discovery().get("issuer", ""))},
                aud={"essential": True, "value": self.settings.client_id},
                sub={"essential": True},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            registry.validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise Problem(401, f"the ID token does not check out: {exc}") from None
        return dict(token.claims)


def _provider(request: Request) -> Provider:
    found: Provider | None = request.app.state.oidc
    if found is None:
        raise Problem(404, "OpenID Connect sign-in is not configured (service.oidc)")
    return found


@router.get("/login", summary="Sign in with the OpenID Connect provider (a redirect)")
def login(request: Request) -> RedirectResponse:
    return RedirectResponse(_provider(request).login_url(), status_code=302)


@router.get("/callback", summary="Where the provider sends the person back: a sign-in token")
def callback(request: Request, workspace: Space, code: str = "", state: str = "") -> dict[str, Any]:
    if not code or not state:
        raise Problem(400, "the provider sent no code or state")
    claims = _provider(request).claims(code, state)
    email = claims.get("email") if claims.get("email_verified") else None
    hours = workspace.config.service.session_hours
    with workspace.sessions() as session, session.begin():
        made = operators.sign_in_oidc(
            session, str(claims["sub"]), email, hours=hours, now=datetime.now(UTC)
        )
        if made is not None:
            secret, token = made
            answer = {"token": secret, "expires_at": token.expires_at, "operator": None}
            answer["operator"] = operators.token_owner(session, token.id)
    if made is None:
        raise Problem(401, "no operator of this service has this identity", title="not signed in")
    return answer
