"""Signed checkpoints of the audit chain: what makes rewriting history detectable by someone who
can write to the database but cannot reach the signing key or the file outside it.

Does: sign the chain head (sequence number and hash, with the time) with an Ed25519 key held
outside the database (``Signer``: a key file made with mode 0600, or the key given in the
environment); record each checkpoint in the database and, first, outside it — appended to a
file (the copy verification trusts), and to syslog or an HTTP endpoint when configured
(``Sinks``); read the trusted checkpoints back and check each signature (``trusted``), so that
``audit.verify`` can hold the chain to them.
Does not: decide when to checkpoint (the workspace does, after every command or cycle that
appended events, and ``provisor run`` at least every minute), or walk the chain
(``provisor.evidence.audit``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import logging.handlers
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisor.errors import ConfigError
from provisor.store.models import AuditCheckpoint, AuditHead

FORMAT = "provisor-audit-checkpoint/1"
KEY_VARIABLE = "PROVISOR_AUDIT_KEY"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """The chain head ``hash`` at event ``seq``, signed at ``at`` by the key ``key_id``."""

    seq: int
    hash: str
    at: datetime
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The bytes signed: the format, the sequence number, the hash and the time."""
        return f"{FORMAT}\n{self.seq}\n{self.hash}\n{self.at.isoformat()}".encode()

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            int(data["seq"]),
            str(data["hash"]),
            datetime.fromisoformat(str(data["at"])).astimezone(UTC),
            str(data["key_id"]),
            str(data["signature"]),
        )


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """The signing key, and the public key checkpoints are verified with."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = _key_id(self.public)

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"

    @classmethod
    def load(cls, path: Path, *, create: bool) -> Signer:
        """The key from ``PROVISOR_AUDIT_KEY`` (base64 of its 32 bytes), else from ``path``,
        made there (mode 0600) when missing and ``create`` is set."""
        given = os.environ.get(KEY_VARIABLE)
        if given:
            return cls(_private_key(given, KEY_VARIABLE))
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"no audit signing key at {path} and {KEY_VARIABLE} is not set: "
                    "checkpoints can be neither made nor checked"
                )
            raw = base64.b64encode(Ed25519PrivateKey.generate().private_bytes_raw()).decode()
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # made at this moment by another process: use that one
            else:
                with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                    handle.write(raw + "\n")
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the audit signing key {path}: {exc}") from None
        return cls(_private_key(text, str(path)))

    def sign(self, seq: int, digest: str, at: datetime) -> Checkpoint:
        unsigned = Checkpoint(seq, digest, at.astimezone(UTC), self.key_id, "")
        signature = base64.b64encode(self._private.sign(unsigned.message())).decode()
        return Checkpoint(seq, digest, unsigned.at, self.key_id, signature)

    def verifies(self, checkpoint: Checkpoint) -> bool:
        if checkpoint.key_id != self.key_id:
            return False
        try:
            self.public.verify(base64.b64decode(checkpoint.signature), checkpoint.message())
        except (InvalidSignature, ValueError):
            return False
        return True


def _private_key(text: str, where: str) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except ValueError:
        raise ConfigError(
            f"{where} does not hold an Ed25519 private key (base64 of 32 bytes)"
        ) from None


@dataclass
class Sinks:
    """Where checkpoints go besides the database: the file (always), syslog and HTTP (when
    set). The file is appended to, never rewritten, and readable by its owner only."""

    file: Path
    syslog: str | None = None
    http: str | None = None
    _syslog_handler: logging.Handler | None = field(default=None, repr=False)

    def emit(self, checkpoint: Checkpoint) -> None:
        line = json.dumps(checkpoint.as_dict(), sort_keys=True)
        descriptor = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(descriptor, (line + "\n").encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if self.syslog:
            self._to_syslog(line)
        if self.http:
            self._to_http(checkpoint)

    def _to_syslog(self, line: str) -> None:
        if self._syslog_handler is None:
            assert self.syslog is not None
            host, _, port = self.syslog.rpartition(":")
            address: str | tuple[str, int] = (
                (host, int(port)) if host and port.isdigit() else self.syslog
            )
            self._syslog_handler = logging.handlers.SysLogHandler(address=address)
        record = logging.LogRecord("provisor.audit", logging.INFO, "", 0, line, None, None)
        self._syslog_handler.emit(record)

    def _to_http(self, checkpoint: Checkpoint) -> None:
        assert self.http is not None
        try:
            httpx2.post(self.http, json=checkpoint.as_dict(), timeout=10).raise_for_status()
        except httpx2.HTTPError as exc:
            # the file already holds it; the endpoint gets the next one
            log.warning("audit checkpoint %s not sent to %s: %s", checkpoint.seq, self.http, exc)


def checkpoint(session: Session, signer: Signer, sinks: Sinks, now: datetime) -> Checkpoint | None:
    """Sign the chain head if events were appended since the last checkpoint; None when not.
    Written outside the database first, then in it, inside the caller's transaction (an
    ``IntegrityError`` when another process signed the same head first). The head is read as
    committed, not locked: appends go on while it is signed and sent to the sinks (an HTTP
    sink may take seconds), and the head signed stays a true point of the chain."""
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    if head is None or head.seq == 0:
        return None
    last = session.execute(select(func.max(AuditCheckpoint.seq))).scalar_one_or_none()
    if last is not None and last >= head.seq:
        return None
    made = signer.sign(head.seq, head.hash, now)
    sinks.emit(made)
    # another process signing this head at the same moment makes the flush fail (the same
    # ``seq``): its checkpoint stands, and the caller rolls this transaction back
    session.add(
        AuditCheckpoint(
            seq=made.seq, hash=made.hash, at=made.at, key_id=made.key_id, signature=made.signature
        )
    )
    session.flush()
    return made


@dataclass
class Trusted:
    """The checkpoints read from the file whose signatures verify, and what was wrong."""

    checkpoints: list[Checkpoint]
    problems: list[str]
    unkeyed: bool = False  # no key to check them with: nothing could be checked

    @property
    def signed(self) -> dict[int, str]:
        return {c.seq: c.hash for c in self.checkpoints}


def trusted(session: Session, signer: Signer, file: Path) -> Trusted:
    """The file's checkpoints, each signature checked; the database's copies must agree."""
    found: list[Checkpoint] = []
    problems: list[str] = []
    stored = list(session.execute(select(AuditCheckpoint)).scalars())
    lines: Sequence[str] = []
    if file.exists():
        lines = file.read_text(encoding="utf-8").splitlines()
    elif stored:
        problems.append(
            f"the checkpoint file {file} is missing, but the database lists {len(stored)} "
            "checkpoints: the copy outside the database was removed"
        )
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            item = Checkpoint.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError):
            problems.append(f"{file}:{number}: not a checkpoint record")
            continue
        if not signer.verifies(item):
            problems.append(
                f"{file}:{number}: checkpoint of event {item.seq} does not verify with the "
                f"signing key {signer.key_id} (signed by {item.key_id}, or altered)"
            )
            continue
        found.append(item)
    in_file = {(c.seq, c.hash) for c in found}
    for row in stored:
        if (row.seq, row.hash) not in in_file and file.exists():
            problems.append(
                f"the database lists a checkpoint of event {row.seq} that the file does not "
                "hold: checkpoints were altered in the database"
            )
    return Trusted(sorted(found, key=lambda c: c.seq), problems)
