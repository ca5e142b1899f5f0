"""Redaction: credentials kept out of every text Provisor stores, prints or logs.

Does: remember each credential the process resolves or obtains (``remember``), in every form it
may come back in (as given, URL-encoded, base64, JSON-escaped, and as HTTP Basic credentials
with the user names of the same connection); replace those, and whatever follows an
``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie`` or API-key header, a
``Bearer``/``Basic`` token, a password in a URL or a credential query parameter, with ``***``
(``redact``); apply that to every log record (``install``) and to what a stream is given
(``RedactingStream``). Importable from every layer, like ``provisor.errors``.
Does not: resolve references (``provisor.config.secrets``), judge what a policy may contain
(``provisor.domain.policy`` refuses inline credentials), or keep a credential anywhere but in
this process's memory.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, urlsplit

MASK = "***"
# Values shorter than this are not hidden by value: they would blank out ordinary words and
# parts of ids, keys and dates (a 4-digit PIN inside a hash); the patterns below still hide them
# where they appear as a header, token or URL password.
MIN_LENGTH = 8

_HEADER = re.compile(
    r"""(?ix)
    (?P<name>(?:proxy-)?authorization|set-cookie|cookie|x-api-key|api-key|x-auth-token)
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?P<value>[^"'\r\n]+)
    """
)
# an authorization scheme as headers write it, then a token (prose such as "basic" is left alone)
_SCHEME_TOKEN = re.compile(
    r"\b(Bearer|bearer|BEARER|Basic|BASIC|Digest|Negotiate)(\s+)[\w.~+/=\-]{6,}"
)
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/@\s:'\"]*:)[^/@\s'\"]+@")
_QUERY_CREDENTIAL = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|pass|token|access_token|refresh_token|api_?key|apikey"
    r"|secret|client_secret|auth|signature|sig|code)=)[^&\s'\"#]+"
)
# a Provisor API or sign-in token (``provisor.engine.operators`` makes them with this prefix)
TOKEN_PREFIX = "pvt_"
_PROVISOR_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]{16,}")
# Every shape above contains one of these (in lower case): text with none of them is left as it
# is without running the patterns, which keeps redaction cheap on the hot paths (an import
# writes an audit entry per event).
_TRIGGERS = (
    "authoriz",
    "cookie",
    "api-key",
    "auth-token",
    "bearer",
    "basic",
    "digest",
    "negotiate",
    "://",
    "pass",
    "pwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "auth=",
    "sig=",
    "signature=",
    "code=",
    TOKEN_PREFIX,
)
# The names of settings that hold a user name a password goes with (for Basic forms).
USER_SETTINGS = ("user", "username", "user_name", "login", "bind_dn", "client_id")


class _Known:
    """The credential forms this process has seen, and one pattern matching any of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, forms: Iterable[str]) -> None:
        fresh = {f for f in forms if len(f) >= MIN_LENGTH} - self._forms
        if not fresh:
            return
        with self._lock:
            self._forms |= fresh
            ordered = sorted(self._forms, key=len, reverse=True)  # longest form first
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def hide(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text

    def clear(self) -> None:
        with self._lock:
            self._forms.clear()
            self._pattern = None


_known = _Known()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms(secret: str, users: Iterable[str] = ()) -> set[str]:
    """The ways ``secret`` may be written back to us: as given, URL-encoded, base64 (with and
    without padding), JSON-escaped, and as Basic credentials ``user:secret`` in base64."""
    found = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    found |= {_b64(secret), _b64(secret).rstrip("=")}
    for user in users:
        found |= {_b64(f"{user}:{secret}"), _b64(f"{user}:{secret}").rstrip("=")}
    password = _url_password(secret)
    if password:
        found |= forms(password)
    return found


def _url_password(value: str) -> str | None:
    if "://" not in value:
        return None
    try:
        return urlsplit(value).password
    except ValueError:
        return None


def remember(secret: str, users: Iterable[str] = ()) -> None:
    """Hide ``secret`` (and its other forms) from every text redacted in this process."""
    if secret:
        _known.add(forms(secret, users))


def remember_connection(settings: dict[str, Any], secrets: Iterable[str]) -> None:
    """Hide the ``secrets`` resolved for one connection, with the user names it sets."""
    users = [str(settings[k]) for k in USER_SETTINGS if isinstance(settings.get(k), str)]
    for secret in secrets:
        remember(secret, users)


def forget_all() -> None:
    """Forget every remembered credential (tests; a process that changes its credentials)."""
    _known.clear()


def _may_hold_shapes(text: str) -> bool:
    lowered = text.lower()
    for trigger in _TRIGGERS:  # noqa: SIM110 (a plain loop: measurably cheaper than any())
        if trigger in lowered:
            return True
    return False


def redact(text: str, *, shapes: bool = True) -> str:
    """``text`` with every known credential masked, and (``shapes``) every credential-shaped
    value: a header's, a token's, a URL's password or credential parameter."""
    if not text:
        return text
    text = _known.hide(text)
    if not shapes:
        return text
    if not _may_hold_shapes(text):
        return text
    text = _HEADER.sub(lambda m: m["name"] + m["sep"] + MASK, text)
    text = _SCHEME_TOKEN.sub(lambda m: m[1] + m[2] + MASK, text)
    text = _URL_PASSWORD.sub(lambda m: m[1] + MASK + "@", text)
    text = _PROVISOR_TOKEN.sub(MASK, text)
    return _QUERY_CREDENTIAL.sub(lambda m: m[1] + MASK, text)


def redact_data(value: Any) -> Any:
    """A JSON-like value with every string in it (keys included) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


class RedactingStream:
    """A text stream that masks every known credential in what it is given before passing it
    on (stdout, stderr). Shapes are not masked here: what is printed names settings such as
    ``headers.Authorization``, and text from targets was masked when it was taken in."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text, shapes=False))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def unredacted(stream: TextIO) -> TextIO:
    """The stream under ``stream``'s redaction: for the one thing shown on purpose, a new
    token printed once to the person who made it."""
    if isinstance(stream, RedactingStream):
        return stream._stream
    return stream


def wrapped(stream: TextIO) -> TextIO:
    """``stream`` redacting what it is given (itself when it does already)."""
    if isinstance(stream, RedactingStream):
        return stream
    return RedactingStream(stream)  # type: ignore[return-value]


_installed = False


def install() -> None:
    """Redact every log record this process makes, whatever handler writes it."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return record

    logging.setLogRecordFactory(factory)
