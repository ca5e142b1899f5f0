"""Commands for the audit log: ``audit verify`` and ``audit export``.

Does: check the hash chain and say where it breaks (exit code 8), and write the events for
auditors as JSON lines or CSV to stdout or a file.
Does not: hash, verify or format events itself (``provisor.evidence.audit`` does).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from provisor.cli.options import JsonOption, maybe_when, opened
from provisor.cli.output import err, finish, out, print_json
from provisor.errors import ExitCode
from provisor.evidence import audit

audit_app = typer.Typer(
    help="Verify or export the tamper-evident audit log.\n\nExample:  provisor audit verify",
)


@audit_app.command("verify")
def audit_verify(json_out: JsonOption = False) -> None:
    """Check the audit chain; names the first edited, deleted or reordered event.

    Example:  provisor audit verify
    """
    with opened() as workspace, workspace.sessions() as session:
        result = audit.verify(session)
    if json_out:
        print_json(result.as_dict())
    elif result.ok:
        out.print(f"Audit log intact: {result.events} events, head {result.head_hash[:16]}.")
    else:
        where = f" at event {result.first_bad}" if result.first_bad is not None else ""
        err.print(f"Audit log TAMPERED{where}: {result.problem}", markup=False)
    if not result.ok:
        finish(ExitCode.AUDIT_TAMPERED)


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


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(audit_app, name="audit")
