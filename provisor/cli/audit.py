"""Commands for the audit log: ``audit verify``, ``audit export`` and ``evidence verify``.

Does: check the hash chain against its signed checkpoints and say where it breaks (exit code
8) and how much of it no checkpoint covers yet; write the events for auditors as JSON lines or
CSV to stdout or a file; check an evidence bundle against the log offline (exit code 8 when it
does not hold).
Does not: hash, verify or format events itself (``provisor.evidence.audit`` and
``provisor.engine.audit_log`` do).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from provisor.cli.options import JsonOption, maybe_when, opened
from provisor.cli.output import err, finish, out, print_json
from provisor.engine.audit_log import verify_bundle, verify_log
from provisor.errors import ExitCode
from provisor.evidence import audit

audit_app = typer.Typer(
    help="Verify or export the tamper-evident audit log.\n\nExample:  provisor audit verify",
)


evidence_app = typer.Typer(
    help="Check evidence bundles against the audit log.\n\n"
    "Example:  provisor evidence verify evidence/leaver-E1042-20261204T101500Z-1a2b3c4d.json",
    no_args_is_help=True,
)


@audit_app.command("verify")
def audit_verify(json_out: JsonOption = False) -> None:
    """Check the audit chain against its signed checkpoints; names the first edited, deleted
    or reordered event, and says how many events no checkpoint covers yet.

    Example:  provisor audit verify
    """
    with opened() as workspace:
        result = verify_log(workspace)
    if json_out:
        print_json(result.as_dict())
    elif result.ok:
        out.print(f"Audit log intact: {result.events} events, head {result.head_hash[:16]}.")
        if result.checkpoints:
            out.print(
                f"Held to {result.checkpoints} signed checkpoints: shown intact through event "
                f"{result.protected_through}; {result.unprotected} event(s) after it are "
                "consistent with the chain only, until the next checkpoint."
            )
        else:
            out.print(
                "No signed checkpoint yet: the chain is consistent with itself only, and a "
                "rewrite of the whole log would not show."
            )
    elif not result.checkable:
        err.print(f"Audit log cannot be checked: {result.problem}", markup=False)
    else:
        where = f" at event {result.first_bad}" if result.first_bad is not None else ""
        err.print(f"Audit log TAMPERED{where}: {result.problem}", markup=False)
    if not result.ok:
        finish(ExitCode.AUDIT_TAMPERED if result.checkable else ExitCode.AUDIT_UNCHECKED)


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="From this date/time (inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this date/time (exclusive).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default: stdout).")
    ] = None,
) -> None:
    """Export audit events for auditors, with their hashes so the chain can be re-checked.

    Example:  provisor audit export --since 2026-01-01 --format csv -o audit-2026.csv
    """
    if fmt not in ("jsonl", "csv"):
        raise typer.BadParameter("use jsonl or csv", param_hint="--format")
    start, end = maybe_when(since, "--since"), maybe_when(until, "--until")
    with opened() as workspace, workspace.sessions() as session:
        lines = audit.export(session, since=start, until=end, fmt=fmt)  # type: ignore[arg-type]
        if output is None:
            for line in lines:
                sys.stdout.write(line)
        else:
            with output.open("w", encoding="utf-8", newline="") as handle:
                handle.writelines(lines)


@evidence_app.command("verify")
def evidence_verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle's JSON file.")],
    json_out: JsonOption = False,
) -> None:
    """Check an evidence bundle offline: its hash recorded in the audit log, the chain head it
    names present, and a signed checkpoint covering it.

    Example:  provisor evidence verify evidence/leaver-E1042-20261204T101500Z-1a2b3c4d.json
    """
    with opened() as workspace:
        check = verify_bundle(workspace, bundle)
    if json_out:
        print_json(check.as_dict())
    elif check.ok:
        out.print(
            f"Evidence intact: {bundle.name} ({check.identity}) recorded by audit event "
            f"{check.event_seq}, covered by the signed checkpoint of event {check.checkpoint_seq}."
        )
    else:
        err.print(f"Evidence NOT verified: {bundle.name}", markup=False)
        for problem in check.problems:
            err.print(f"  {problem}", markup=False)
    if not check.ok:
        finish(ExitCode.AUDIT_TAMPERED)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(audit_app, name="audit")
    app.add_typer(evidence_app, name="evidence")
