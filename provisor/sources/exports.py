"""An application's own user export (CSV), parsed row by row.

Does: read a target's user export as UTF-8 (with or without BOM): one account a row, with
``account`` (required), ``identity`` (the identity id, when the application knows it),
``enabled`` (a yes/no; default yes), ``entitlements`` (separated by ``;``), ``sessions`` (a
count, when the application knows it) and any other column as an attribute (used for
correlation). Each row is checked on its own: an empty, over-long or repeated account is
rejected with ``file:line column: reason``; a row that names an account but cannot be read
whole (an unknown yes/no, a non-numeric session count, an over-long entitlement) is kept as
present and enabled, with the doubt it raised — absent would read as "removed" when nobody
knows that. A whole file is refused (``FeedError``) only when it cannot be read or has no
``account`` column.
Does not: correlate accounts, read or write storage (``provisor.engine.observed`` does).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from provisor.errors import FeedError

_TRUE = {"true", "yes", "1", "enabled", "active", "y"}
_FALSE = {"false", "no", "0", "disabled", "inactive", "locked", "n"}
KNOWN = ("account", "identity", "enabled", "entitlements", "sessions")
MAX_ACCOUNT = 512
MAX_ENTITLEMENT = 256


@dataclass(frozen=True)
class ExportRow:
    """One account of the export as read. ``doubt``: why the row could not be read whole (it
    is then kept as present and enabled)."""

    line: int
    account: str
    identity: str | None
    enabled: bool
    entitlements: tuple[str, ...]
    sessions: int | None
    attributes: dict[str, str]
    doubt: str | None = None


@dataclass
class Export:
    """The rows read from one export, and the rows rejected (``file:line column: reason``)."""

    path: Path
    rows: list[ExportRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _flag(value: str | None) -> str:
    return " ".join((value or "true").split()).casefold()


def read_export(path: Path) -> Export:
    """Every row of the export at ``path``; see the module docstring for what is checked."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedError(f"{path}: cannot read the export: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "account" not in reader.fieldnames:
        raise FeedError(
            f"{path}: the export needs an 'account' column; found "
            f"{', '.join(reader.fieldnames or []) or 'no header'}"
        )
    export = Export(path)
    seen: set[str] = set()
    for raw in reader:
        line = reader.line_num
        account = (raw.get("account") or "").strip()
        problem = (
            "empty"
            if not account
            else f"longer than {MAX_ACCOUNT} characters"
            if len(account) > MAX_ACCOUNT
            else f"{account} is listed twice"
            if account in seen
            else None
        )
        if problem is not None:
            export.errors.append(f"{path}:{line} account: {problem}")
            continue
        seen.add(account)
        export.rows.append(_row(path, line, account, raw))
    return export


def _row(path: Path, line: int, account: str, raw: dict[str, str | None]) -> ExportRow:
    doubt: str | None = None
    enabled = _flag(raw.get("enabled"))
    if enabled not in _TRUE | _FALSE:
        doubt = f"{path}:{line} enabled: {raw.get('enabled')!r} is not a yes/no"
    sessions = (raw.get("sessions") or "").strip()
    if sessions and not sessions.isdigit():
        doubt = doubt or f"{path}:{line} sessions: {sessions!r} is not a count"
        sessions = ""
    attributes = {k: v for k, v in raw.items() if k not in KNOWN and k is not None and v}
    names = sorted({e.strip() for e in (raw.get("entitlements") or "").split(";") if e.strip()})
    too_long = [e for e in names if len(e) > MAX_ENTITLEMENT]
    if too_long:
        doubt = doubt or (
            f"{path}:{line} entitlements: {too_long[0][:40]}... is longer than "
            f"{MAX_ENTITLEMENT} characters"
        )
        names = [e for e in names if len(e) <= MAX_ENTITLEMENT]
    if doubt is not None:
        attributes["rejected"] = doubt
    return ExportRow(
        line=line,
        account=account,
        identity=(raw.get("identity") or "").strip() or None,
        enabled=doubt is not None or enabled in _TRUE,
        entitlements=tuple(names),
        sessions=int(sessions) if sessions else None,
        attributes=attributes,
        doubt=doubt,
    )
