"""Sign-in through a local OpenID Connect provider (oidc-provider-mock), and ID tokens that
do not check out refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from oidc_provider_mock import User, run_server_in_thread

from tests.api.conftest import Service, serving


@pytest.fixture
def provider() -> Iterator[str]:
    users = [
        User(sub="sub-alice", claims={"email": "alice@example.com", "email_verified": True}),
        User(sub="sub-mallory", claims={"email": "mallory@example.com", "email_verified": True}),
        User(sub="sub-unverified", claims={"email": "rita@example.com", "email_verified": False}),
    ]
    with run_server_in_thread(user_claims=users) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def oidc_service(
    erp_workspace: Path, provider: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Service]:
    monkeypatch.setenv("PROVISOR_OIDC_CLIENT_SECRET", "client-secret-for-tests")
    settings = (
        "  cycle_seconds: 3600\n  oidc:\n"
        f"    issuer: {provider}\n    client_id: provisor\n"
        "    redirect_url: http://127.0.0.1/api/v1/oidc/callback\n"
    )
    with serving(erp_workspace, settings=settings) as running:
        yield running


def _sign_in(service: Service, sub: str) -> httpx2.Response:
    with httpx2.Client(base_url=service.url, timeout=30) as client:
        start_at = client.get("/api/v1/oidc/login")
        assert start_at.status_code == 302
        authorize = start_at.headers["location"]
        query = parse_qs(urlsplit(authorize).query)
        assert query["code_challenge_method"] == ["S256"] and query["nonce"]
        # the person signs in at the provider, which sends them back with a code
        back = httpx2.post(authorize, data={"sub": sub}, timeout=30)
        assert back.status_code == 302, back.text
        callback = urlsplit(back.headers["location"])
        return client.get("/api/v1/oidc/callback?" + callback.query)


def test_an_operator_signs_in_with_the_identity_provider(oidc_service: Service) -> None:
    signed = _sign_in(oidc_service, "sub-alice")
    assert signed.status_code == 200, signed.text
    assert signed.json()["operator"] == "alice"  # matched by the verified e-mail
    with oidc_service.client(token=signed.json()["token"]) as client:
        assert client.get("/api/v1/me").json()["operator"] == "alice"
    # the subject is bound now: the next sign-in finds alice by it
    assert _sign_in(oidc_service, "sub-alice").json()["operator"] == "alice"


def test_people_who_are_no_operators_or_unverified_are_refused(oidc_service: Service) -> None:
    assert _sign_in(oidc_service, "sub-mallory").status_code == 401
    assert _sign_in(oidc_service, "sub-unverified").status_code == 401  # e-mail not verified


def test_a_replayed_or_forged_callback_is_refused(oidc_service: Service) -> None:
    with httpx2.Client(base_url=oidc_service.url, timeout=30) as client:
        authorize = client.get("/api/v1/oidc/login").headers["location"]
        back = httpx2.post(authorize, data={"sub": "sub-alice"}, timeout=30)
        query = urlsplit(back.headers["location"]).query
        assert client.get("/api/v1/oidc/callback?" + query).status_code == 200
        replayed = client.get("/api/v1/oidc/callback?" + query)
        assert replayed.status_code == 401  # the state is used once
        forged = client.get("/api/v1/oidc/callback?code=x&state=made-up")
        assert forged.status_code == 401


def test_an_id_token_not_signed_by_the_provider_is_refused(oidc_service: Service) -> None:
    from joserfc import jwt
    from joserfc.jwk import OctKey, RSAKey

    from provisor.api.oidc import Provider
    from provisor.api.problems import Problem

    settings = oidc_service.workspace.config.service.oidc
    assert settings is not None
    provider = Provider(settings)
    forger = RSAKey.generate_key(2048)
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "aud": settings.client_id,
        "sub": "sub-alice",
        "exp": 4102444800,
        "nonce": "n",
    }
    forged = jwt.encode({"alg": "RS256"}, claims, forger)
    with pytest.raises(Problem):
        provider.verify(forged, "n")
    # a token signed with a shared secret (what an attacker who knows only public values can
    # make) is refused: only the provider's asymmetric keys are trusted
    symmetric = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(b"x" * 32))
    with pytest.raises(Problem):
        provider.verify(symmetric, "n")
