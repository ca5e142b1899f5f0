"""The observed-state store, filled from an application's own account export.

Does: take a target's user export (parsed by ``provisor.sources.exports``), link each account
to an identity by the one correlation rule reconciliation uses (``provisor.engine.correlate``:
the identity id the row carries, a person's decision on a correlation case, then the target's
correlation attributes; an account keeps its earlier link while nothing contradicts it),
open a correlation case instead of guessing when a value matches several identities or
contradicts a link, and replace what is observed for that target, with an audit event. A row
that names an account but cannot be read whole is reported and its account kept as present and
enabled, never dropped.
Does not: parse files, talk to targets, or decide what the differences mean (planning and
reconciliation do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from provisor.domain.policy import TargetDef
from provisor.engine.correlate import Correlator, open_case
from provisor.engine.tasks import confirm_from_observed
from provisor.engine.workspace import Workspace
from provisor.errors import NotFoundError
from provisor.evidence import audit
from provisor.sources.exports import ExportRow, read_export
from provisor.store import models


@dataclass
class ObservedImport:
    target: str
    accounts: int = 0
    linked: int = 0
    unlinked: int = 0
    entitlements: int = 0
    confirmed: int = 0  # manual tasks this export verified
    cases_opened: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def import_observed(
    workspace: Workspace, target: str, path: Path, *, now: datetime
) -> ObservedImport:
    """Replace the observed accounts of ``target`` with those in the export at ``path``."""
    definition = workspace.compiled.targets.get(target)
    if definition is None:
        raise NotFoundError(f"no target {target!r} in the policy")
    export = read_export(path)
    report = ObservedImport(target, errors=list(export.errors))
    source = f"export {path.name}"
    with workspace.sessions() as session, session.begin():
        oa = models.ObservedAccount
        earlier: dict[str, str | None] = {
            account: identity
            for account, identity in session.execute(
                select(oa.account, oa.identity).where(oa.target == target)
            )
        }
        session.execute(delete(oa).where(oa.target == target))
        correlator = Correlator.load(session, definition)
        for row in export.rows:
            where = f"{path}:{row.line}"
            identity = _link(session, correlator, definition, row, earlier, now, report, where)
            _store(session, target, row, identity, source, now, report)
        if report.linked:
            linked = select(oa.identity).where(oa.target == target)
            session.execute(
                update(models.Identity)
                .where(models.Identity.external_id.in_(linked))
                .values(needs_plan=True)
            )
        report.confirmed = confirm_from_observed(session, target, source, now)
        audit.record(
            session,
            "observed.imported",
            target,
            {k: v for k, v in report.as_dict().items() if k not in ("errors", "warnings")}
            | {"file": str(path), "errors": len(report.errors)},
        )
    return report


def _link(
    session: Session,
    correlator: Correlator,
    target: TargetDef,
    row: ExportRow,
    earlier: dict[str, str | None],
    now: datetime,
    report: ObservedImport,
    where: str,
) -> str | None:
    """The identity ``row``'s account belongs to, opening a case where a person must decide."""
    match = correlator.correlate(
        row.account, None, row.identity, row.attributes, earlier.get(row.account)
    )
    if match.case_reason is not None and row.account not in correlator.waiting:
        case = open_case(session, target.name, row.account, None, match, now)
        correlator.waiting[row.account] = case.id
        report.cases_opened += 1
        report.warnings.append(
            f"{where} {row.account}: {match.case_reason}; correlation case "
            f"{case.id} opened"
            + (f", link to {match.identity} kept meanwhile" if match.identity else "")
        )
    elif row.identity is not None and row.identity not in correlator.known:
        report.warnings.append(f"{where} identity: {row.identity!r} is not a known identity")
    return match.identity


def _store(
    session: Session,
    target: str,
    row: ExportRow,
    identity: str | None,
    source: str,
    now: datetime,
    report: ObservedImport,
) -> None:
    if row.doubt is not None:
        report.errors.append(row.doubt + f"; {row.account} kept as present")
    account_id = session.execute(
        insert(models.ObservedAccount).returning(models.ObservedAccount.id),
        {
            "target": target,
            "account": row.account,
            "identity": identity,
            "enabled": row.enabled,
            "attributes": row.attributes,
            "sessions": row.sessions,
            "observed_at": now,
            "source": source,
        },
    ).scalar_one()
    if row.entitlements:
        session.execute(
            insert(models.ObservedEntitlement),
            [
                {"account_id": account_id, "entitlement": e, "observed_at": now}
                for e in row.entitlements
            ],
        )
    report.accounts += 1
    report.entitlements += len(row.entitlements)
    if identity:
        report.linked += 1
    else:
        report.unlinked += 1
