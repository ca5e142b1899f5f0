from __future__ import annotations

import stat
from pathlib import Path

import pytest

from provisor.config.secrets import (
    SecretsFile,
    generate_key,
    key_from_env,
    resolve_connection,
    resolve_secret,
)
from provisor.domain.policy import SecretRef
from provisor.errors import SecretError

VALUE = "s3cr3t-Value-\u00e9"


def test_env_reference_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIM_TOKEN", VALUE)

    assert resolve_secret(SecretRef(env="SCIM_TOKEN"), None) == VALUE


def test_missing_env_reference_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCIM_TOKEN", raising=False)

    with pytest.raises(SecretError, match=r"SCIM_TOKEN is not set.*export SCIM_TOKEN="):
        resolve_secret(SecretRef(env="SCIM_TOKEN"), None)


def test_secret_reference_resolves_from_file(tmp_path: Path) -> None:
    secrets = SecretsFile(tmp_path / "secrets.enc", generate_key())
    secrets.set("ldap-bind", VALUE)

    assert resolve_secret(SecretRef(secret="ldap-bind"), secrets) == VALUE
    with pytest.raises(SecretError, match="no secret 'other'"):
        resolve_secret(SecretRef(secret="other"), secrets)
    with pytest.raises(SecretError, match="no secrets file is configured"):
        resolve_secret(SecretRef(secret="ldap-bind"), None)


def test_missing_secrets_file(tmp_path: Path) -> None:
    secrets = SecretsFile(tmp_path / "absent.enc", generate_key())

    assert secrets.names() == []
    with pytest.raises(SecretError, match="does not exist"):
        secrets.get("anything")


def test_resolve_connection_replaces_only_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIM_TOKEN", VALUE)
    settings = {
        "url": "https://scim.example.com",
        "token": SecretRef(env="SCIM_TOKEN"),
        "port": 443,
    }

    assert resolve_connection(settings, None) == {
        "url": "https://scim.example.com",
        "token": VALUE,
        "port": 443,
    }


def test_round_trip_and_encrypted_at_rest(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "secrets.enc"
    secrets = SecretsFile(path, key)
    secrets.set("b", VALUE)
    secrets.set("a", "other")
    secrets.delete("a")

    reopened = SecretsFile(path, key)
    assert reopened.get("b") == VALUE
    assert reopened.names() == ["b"]
    assert VALUE.encode() not in path.read_bytes()
    assert b'"b"' not in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.enc"]
    with pytest.raises(SecretError, match="no secret 'a'"):
        reopened.delete("a")


def test_wrong_key(tmp_path: Path) -> None:
    path = tmp_path / "secrets.enc"
    SecretsFile(path, generate_key()).set("name", VALUE)

    with pytest.raises(SecretError, match="wrong PROVISOR_SECRETS_KEY") as caught:
        SecretsFile(path, generate_key()).get("name")
    assert VALUE not in str(caught.value)


def test_invalid_key() -> None:
    with pytest.raises(SecretError, match="not a valid Fernet key"):
        SecretsFile(Path("unused.enc"), b"not-a-key")


def test_repr_hides_values(tmp_path: Path) -> None:
    secrets = SecretsFile(tmp_path / "secrets.enc", generate_key())
    secrets.set("api", VALUE)

    assert VALUE not in repr(secrets)
    assert repr(secrets) == f"SecretsFile({str(tmp_path / 'secrets.enc')!r}, names=1)"


def test_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv("PROVISOR_SECRETS_KEY", key.decode())
    assert key_from_env() == key

    monkeypatch.delenv("PROVISOR_SECRETS_KEY")
    with pytest.raises(SecretError, match="PROVISOR_SECRETS_KEY is not set"):
        key_from_env()
