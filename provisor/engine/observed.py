"""The observed-state store, filled from an application's own account export.

Does: read a target's user export (CSV: one account a row with enabled flag, entitlements and,
when the application knows them, open sessions), correlate each account to an identity by the
target's correlation attributes (case and whitespace insensitive; an ambiguous match links to
nobody and is reported; a person's decision on a correlation case wins), and replace what is
observed for that target, with an audit event. A row that names an account but cannot be read
whole is reported and its account kept as present and enabled, never dropped.
Does not: talk to targets (connectors will write here after reading back) or decide what the
differences mean (planning and reconciliation do).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update

from provisor.engine.tasks import confirm_from_observed
from provisor.engine.workspace import Workspace
from provisor.errors import FeedError, NotFoundError
from provisor.evidence import audit
from provisor.store import models

_TRUE = {"true", "yes", "1", "enabled", "active", "y"}
_FALSE = {"false", "no", "0", "disabled", "inactive", "locked", "n"}


@dataclass
class ObservedImport:
    target: str
    accounts: int = 0
    linked: int = 0
    unlinked: int = 0
    entitlements: int = 0
    confirmed: int = 0  # manual tasks this export verified
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _norm(value: object) -> str:
    return " ".join(str(value).split()).casefold()


def import_observed(
    workspace: Workspace, target: str, path: Path, *, now: datetime
) -> ObservedImport:
    """Replace the observed accounts of ``target`` with those in the export at ``path``."""
    target_def = workspace.compiled.targets.get(target)
    if target_def is None:
        raise NotFoundError(f"no target {target!r} in the policy")
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
    report = ObservedImport(target)
    with workspace.sessions() as session, session.begin():
        index: dict[str, dict[str, list[str]]] = {a: {} for a in target_def.correlation}
        for external_id, attributes in session.execute(
            select(models.Identity.external_id, models.Identity.attributes)
        ):
            for attr in target_def.correlation:
                value = external_id if attr == "id" else (attributes or {}).get(attr)
                if value:
                    index[attr].setdefault(_norm(value), []).append(external_id)
        decided: dict[str, str | None] = {}
        for case in session.execute(
            select(models.CorrelationCase)
            .where(
                models.CorrelationCase.target == target,
                models.CorrelationCase.status != "open",
            )
            .order_by(models.CorrelationCase.id)
        ).scalars():
            decided[case.account] = case.resolved_identity  # the newest decision wins
        session.execute(
            delete(models.ObservedAccount).where(models.ObservedAccount.target == target)
        )
        seen: set[str] = set()
        for row in reader:
            line = reader.line_num
            account = (row.get("account") or "").strip()
            if not account:
                report.errors.append(f"{path}:{line} account: empty")
                continue
            if len(account) > 512:
                report.errors.append(f"{path}:{line} account: longer than 512 characters")
                continue
            if account in seen:
                report.errors.append(f"{path}:{line} account: {account} is listed twice")
                continue
            # A row that names an account but cannot be read whole is reported, and the
            # account is kept as present (enabled): absent from the store would read as
            # "removed" when nobody knows that.
            doubt: str | None = None
            enabled_text = _norm(row.get("enabled") or "true")
            if enabled_text not in _TRUE | _FALSE:
                shown = row.get("enabled")
                doubt = f"{path}:{line} enabled: {shown!r} is not a yes/no"
            sessions_text = (row.get("sessions") or "").strip()
            if sessions_text and not sessions_text.isdigit():
                doubt = doubt or f"{path}:{line} sessions: {sessions_text!r} is not a count"
                sessions_text = ""
            seen.add(account)
            extra = {
                k: v
                for k, v in row.items()
                if k not in ("account", "identity", "enabled", "entitlements", "sessions") and v
            }
            identity = (row.get("identity") or "").strip() or None
            if identity is None and account in decided:
                identity = decided[account]  # a person's decision on a correlation case
            elif identity is None:
                for attr in target_def.correlation:
                    value = account if attr == "account" else extra.get(attr)
                    matches = index.get(attr, {}).get(_norm(value)) if value else None
                    if matches and len(matches) == 1:
                        identity = matches[0]
                        break
                    if matches:
                        report.warnings.append(
                            f"{path}:{line} {account}: {attr} matches {len(matches)} identities "
                            f"({', '.join(sorted(matches))}); left unlinked"
                        )
                        break
            entitlements = sorted(
                {e.strip() for e in (row.get("entitlements") or "").split(";") if e.strip()}
            )
            too_long = [e for e in entitlements if len(e) > 256]
            if too_long:
                doubt = doubt or (
                    f"{path}:{line} entitlements: {too_long[0][:40]}... is longer than 256 "
                    "characters"
                )
                entitlements = [e for e in entitlements if len(e) <= 256]
            if doubt is not None:
                report.errors.append(doubt + f"; {account} kept as present")
                enabled_text = "true"
                extra["rejected"] = doubt
            result = session.execute(
                insert(models.ObservedAccount).returning(models.ObservedAccount.id),
                {
                    "target": target,
                    "account": account,
                    "identity": identity,
                    "enabled": enabled_text in _TRUE,
                    "attributes": extra,
                    "sessions": int(sessions_text) if sessions_text else None,
                    "observed_at": now,
                    "source": f"export {path.name}",
                },
            )
            account_id = result.scalar_one()
            if entitlements:
                session.execute(
                    insert(models.ObservedEntitlement),
                    [
                        {"account_id": account_id, "entitlement": e, "observed_at": now}
                        for e in entitlements
                    ],
                )
            report.accounts += 1
            report.entitlements += len(entitlements)
            if identity:
                report.linked += 1
            else:
                report.unlinked += 1
        if report.linked:
            linked = select(models.ObservedAccount.identity).where(
                models.ObservedAccount.target == target
            )
            session.execute(
                update(models.Identity)
                .where(models.Identity.external_id.in_(linked))
                .values(needs_plan=True)
            )
        report.confirmed = confirm_from_observed(session, target, f"export {path.name}", now)
        audit.record(
            session,
            "observed.imported",
            target,
            {k: v for k, v in report.as_dict().items() if k not in ("errors", "warnings")}
            | {"file": str(path), "errors": len(report.errors)},
        )
    return report
