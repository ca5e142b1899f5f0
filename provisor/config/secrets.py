"""Secrets: turn the credential references of target connections into the credentials themselves.

Does: resolve ``{env: NAME}`` from the environment and ``{secret: NAME}`` from the secrets file,
an encrypted-at-rest store of name -> value (one Fernet token over a JSON object, keyed by
``PROVISOR_SECRETS_KEY``, written atomically with mode 0600), and say what to do when a
reference cannot be resolved.
Does not: put a secret value in an error message, a repr or a log, accept credentials written
in plain text in policy (``provisor.domain.policy`` refuses them), or cache decrypted values.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from provisor.domain.policy import SecretRef
from provisor.errors import SecretError
from provisor.redaction import remember_connection

KEY_VARIABLE = "PROVISOR_SECRETS_KEY"


def generate_key() -> bytes:
    """A new random key for a secrets file, to be kept in ``PROVISOR_SECRETS_KEY``."""
    return Fernet.generate_key()


def key_from_env() -> bytes:
    """The secrets file key from ``PROVISOR_SECRETS_KEY``."""
    value = os.environ.get(KEY_VARIABLE, "")
    if not value:
        raise SecretError(
            f"{KEY_VARIABLE} is not set; set it to the key the secrets file was written with "
            "(for a new file, generate one with: python -c "
            "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
        )
    return value.encode()


class SecretsFile:
    """Named secrets, encrypted at rest in one file. Values never appear in errors or reprs."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        try:
            self._fernet = Fernet(key)
        except ValueError:
            raise SecretError(
                f"the secrets key ({KEY_VARIABLE}) is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None

    def __repr__(self) -> str:
        try:
            count = str(len(self._load()))
        except SecretError:
            count = "unreadable"
        return f"SecretsFile({str(self.path)!r}, names={count})"

    def get(self, name: str) -> str:
        entries = self._load()
        if name not in entries:
            raise self._missing(name)
        return entries[name]

    def set(self, name: str, value: str) -> None:
        entries = self._load()
        entries[name] = value
        self._write(entries)

    def delete(self, name: str) -> None:
        entries = self._load()
        if name not in entries:
            raise self._missing(name)
        del entries[name]
        self._write(entries)

    def names(self) -> list[str]:
        return sorted(self._load())

    def _missing(self, name: str) -> SecretError:
        if not self.path.exists():
            return SecretError(f"secrets file {self.path} does not exist (secret {name!r})")
        return SecretError(f"no secret {name!r} in {self.path}")

    def _load(self) -> dict[str, str]:
        try:
            token = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SecretError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            entries = json.loads(self._fernet.decrypt(token))
        except InvalidToken:
            raise SecretError(f"cannot decrypt {self.path}: wrong {KEY_VARIABLE}?") from None
        except ValueError:
            raise SecretError(f"{self.path} is not a provisor secrets file") from None
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise SecretError(f"{self.path} is not a provisor secrets file")
        return entries

    def _write(self, entries: Mapping[str, str]) -> None:
        token = self._fernet.encrypt(json.dumps(entries, sort_keys=True).encode("utf-8"))
        # mkstemp creates the file with mode 0600; os.replace keeps it.
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(token)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def resolve_secret(ref: SecretRef, secrets: SecretsFile | None) -> str:
    """The credential a reference names."""
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise SecretError(
                f"environment variable {ref.env} is not set or empty; "
                f"set it (export {ref.env}=...) where provisor runs"
            )
        return value
    assert ref.secret is not None
    if secrets is None:
        raise SecretError(f"secret {ref.secret!r} is referenced but no secrets file is configured")
    return secrets.get(ref.secret)


def resolve_connection(settings: Mapping[str, Any], secrets: SecretsFile | None) -> dict[str, Any]:
    """Connection settings with every secret reference replaced by the credential it names;
    each credential is remembered for redaction (``provisor.redaction``) from then on."""
    found: list[str] = []

    def resolved(value: Any) -> Any:
        if isinstance(value, SecretRef):
            found.append(resolve_secret(value, secrets))
            return found[-1]
        if isinstance(value, Mapping):
            return {key: resolved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [resolved(item) for item in value]
        return value

    result = {key: resolved(value) for key, value in settings.items()}
    remember_connection(result, found)
    return result
