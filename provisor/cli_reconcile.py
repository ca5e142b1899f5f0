"""CLI commands for reconciliation: ``reconcile``, ``cases`` and ``marks``.

Does: reconcile one target or all (live, or from a manual target's export) with progress,
print what was found per class and what was done about it; list, resolve and dismiss
correlation cases; list, set and clear account marks. Registered on the main application by
``provisor.cli``. Tables for people, ``--json`` for scripts.
Does not: reconcile, correlate or classify itself (``provisor.engine.reconcile`` does).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from provisor.cli import JsonOption, _now, _open, _parse_when, _print_json, _table, err, out
from provisor.errors import ProvisorError

RECONCILE_FAILED = 14  # a target could not be read

cases_app = typer.Typer(help="Correlation cases: accounts a person must link (or not).")
marks_app = typer.Typer(help="Account marks: protected, decommission-later, ignore.")


def reconcile_command(
    target: Annotated[
        str | None, typer.Option(help="Only this target (default: every target).")
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full/--incremental",
            help="Read every account (default), or only what changed since the last run "
            "where the connector can tell.",
        ),
    ] = True,
    export: Annotated[
        Path | None,
        typer.Option(help="Reconcile from this user export (CSV) instead; needs --target."),
    ] = None,
    report_only: Annotated[
        bool,
        typer.Option("--report-only", help="Classify and report; plan nothing, open no tickets."),
    ] = False,
    batch: Annotated[int, typer.Option(min=1, max=100000, help="Accounts per checkpoint.")] = 500,
    accept_gone: Annotated[
        bool,
        typer.Option(
            "--accept-gone",
            help="Accept a full listing that misses more than half of the stored accounts.",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Read targets, classify every account, and act per each target's remediation policy.

    Classes: ok, drift, terminated-active, orphan, unlinked, unverifiable. A full run killed
    part way resumes from its checkpoint the next time. Manual targets are reconciled from
    their user export with --export.

    Example:  provisor reconcile --target github && provisor apply
    """
    from provisor.engine import reconcile

    if export is not None and target is None:
        raise typer.BadParameter("--export needs --target", param_hint="--export")
    workspace = _open()
    reports: list[Any] = []
    rejected: list[str] = []
    try:
        if export is not None:
            assert target is not None
            found, rejected = reconcile.reconcile_export(
                workspace, target, export, now=_now(), remediate_now=not report_only
            )
            reports.append(found)
        else:
            names = [target] if target else sorted(workspace.compiled.targets)
            for name in names:
                definition = workspace.compiled.targets.get(name)
                manual = definition is not None and definition.target_class.value == "manual"
                if target is None and manual:
                    continue  # reconciled from their exports
                try:
                    reports.append(
                        _one(workspace, name, full, report_only, batch, accept_gone, json_out)
                    )
                except ProvisorError as exc:
                    if target is not None:
                        raise
                    # a target whose connector cannot even be opened: the others still run
                    failed = reconcile.ReconcileReport(name, 0, "full" if full else "incremental")
                    failed.status, failed.error = "failed", str(exc)
                    reports.append(failed)
    finally:
        workspace.close()
    if json_out:
        _print_json(
            {"reports": [r.as_dict() for r in reports], "rejected": rejected}
            if export is not None
            else {"reports": [r.as_dict() for r in reports]}
        )
    else:
        for line in rejected:
            err.print(f"rejected {line}", markup=False)
        for r in reports:
            _show(r)
    if any(r.status != "completed" for r in reports):
        raise typer.Exit(RECONCILE_FAILED)


def _one(
    workspace: Any,
    name: str,
    full: bool,
    report_only: bool,
    batch: int,
    accept_gone: bool,
    quiet: bool,
) -> Any:
    from provisor.engine import reconcile

    run = partial(
        reconcile.reconcile_target,
        workspace,
        name,
        now=_now(),
        full=full,
        remediate_now=not report_only,
        batch_size=batch,
        accept_gone=accept_gone,
    )
    if quiet or not err.is_terminal:
        return run()
    with Progress(
        SpinnerColumn(),
        TextColumn("reconciling {task.fields[target]}: {task.completed} accounts"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("reconcile", total=None, target=name)
        return run(progress=lambda done: progress.update(task, completed=done))


def _show(r: Any) -> None:
    if r.run == 0:  # the target's connector could not even be opened
        out.print(f"{r.target}: not reconciled")
        err.print(f"  {r.target}: {r.error}", markup=False)
        return
    resumed = f", resumed ({r.skipped} already done)" if r.resumed else ""
    out.print(
        f"{r.target}: {r.mode} run {r.run} {r.status}{resumed}: {r.read} read, {r.new} new, "
        f"{r.changed} changed, {r.gone} gone; {r.cases_opened} cases opened"
    )
    if r.error:
        err.print(f"  {r.target}: {r.error}", markup=False)
    classes = ", ".join(f"{n} {c}" for c, n in r.classes.items()) or "no accounts"
    out.print(f"  classes: {classes}; {r.ignored} ignored, {r.held} held by a mark")
    out.print(
        f"  remediation: {r.planned} operations planned, {r.tickets} tickets opened, "
        f"{r.cancelled} cancelled, {r.confirmed} work items confirmed"
    )
    # every account of an unreadable target is unverifiable for the same reason: said once
    shown = [f for f in r.findings if f["class"] != "unverifiable"]
    if shown:
        _table(
            None,
            ["account", "user name", "identity", "class", "why", "mark", "remedy"],
            [
                (
                    f["account"],
                    f["user_name"],
                    f["identity"],
                    f["class"],
                    f["detail"],
                    f["mark"],
                    f["remedy"],
                )
                for f in shown[:200]
            ],
        )
        if len(shown) > 200:
            out.print(f"  ... and {len(shown) - 200} more (--json lists all)")
    for line in r.errors:
        err.print(f"  {line}", markup=False)


# --- cases ----------------------------------------------------------------------------------


@cases_app.callback(invoke_without_command=True)
def cases_default(context: typer.Context) -> None:
    if context.invoked_subcommand is None:
        cases_list(every=False, target=None, json_out=False)


@cases_app.command("list")
def cases_list(
    every: Annotated[bool, typer.Option("--all", help="Include resolved and dismissed.")] = False,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    json_out: JsonOption = False,
) -> None:
    """List correlation cases: accounts that matched several identities or contradict a link.

    Example:  provisor cases list --target github
    """
    from provisor.engine.correlate import case_dict, list_cases

    workspace = _open()
    try:
        with workspace.sessions() as session:
            found = [case_dict(c) for c in list_cases(session, every=every, target=target)]
    finally:
        workspace.close()
    if json_out:
        _print_json(found)
        return
    if not found:
        out.print("No correlation cases waiting.")
        return
    _table(
        "Correlation cases",
        ["case", "status", "target", "account", "user name", "candidates", "why", "resolved"],
        [
            (
                c["id"],
                c["status"],
                c["target"],
                c["account"],
                c["user_name"],
                ", ".join(c["candidates"]),
                c["reason"],
                c["resolved_identity"] or "",
            )
            for c in found
        ],
    )


@cases_app.command("resolve")
def cases_resolve(
    case: Annotated[int, typer.Argument(help="Case number.")],
    identity: Annotated[str, typer.Option(help="The identity the account belongs to.")],
    note: Annotated[str, typer.Option(help="Why (kept with the decision).")] = "",
    by: Annotated[str | None, typer.Option(help="Who decides (default: you).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Link a case's account to an identity; the next reconciliation classifies it.

    Example:  provisor cases resolve 4 --identity E1042 --note "checked with HR"
    """
    from provisor.engine.correlate import case_dict, resolve_case
    from provisor.evidence import audit

    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            found = case_dict(
                resolve_case(
                    session, case, identity, by=by or audit.current_actor(), now=_now(), note=note
                )
            )
    finally:
        workspace.close()
    if json_out:
        _print_json(found)
    else:
        out.print(f"Case {case}: {found['target']}:{found['account']} linked to {identity}.")


@cases_app.command("dismiss")
def cases_dismiss(
    case: Annotated[int, typer.Argument(help="Case number.")],
    note: Annotated[str, typer.Option(help="Why (kept with the decision).")] = "",
    by: Annotated[str | None, typer.Option(help="Who decides (default: you).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Decide a case's account belongs to none of the candidates: it is an orphan.

    Example:  provisor cases dismiss 4 --note "shared test account"
    """
    from provisor.engine.correlate import case_dict, dismiss_case
    from provisor.evidence import audit

    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            found = case_dict(
                dismiss_case(session, case, by=by or audit.current_actor(), now=_now(), note=note)
            )
    finally:
        workspace.close()
    if json_out:
        _print_json(found)
    else:
        out.print(f"Case {case}: {found['target']}:{found['account']} linked to nobody.")


# --- marks ----------------------------------------------------------------------------------


@marks_app.callback(invoke_without_command=True)
def marks_default(context: typer.Context) -> None:
    if context.invoked_subcommand is None:
        marks_list(target=None, json_out=False)


@marks_app.command("list")
def marks_list(
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    json_out: JsonOption = False,
) -> None:
    """List account marks, with expired ones shown as such (they no longer apply).

    Example:  provisor marks list --target payroll-db
    """
    from provisor.engine.marks import list_marks, mark_dict

    workspace = _open()
    now = _now()
    try:
        with workspace.sessions() as session:
            found = [mark_dict(m, now) for m in list_marks(session, target=target)]
    finally:
        workspace.close()
    if json_out:
        _print_json(found)
        return
    if not found:
        out.print("No account marks.")
        return
    _table(
        "Account marks",
        ["target", "account", "mark", "reason", "by", "expires"],
        [
            (
                m["target"],
                m["account"],
                m["mark"],
                m["reason"],
                m["marked_by"],
                (m["expires_at"] or "never")[:10] + (" (expired)" if m["expired"] else ""),
            )
            for m in found
        ],
    )


@marks_app.command("set")
def marks_set(
    target: Annotated[str, typer.Argument(help="Target name from the policy.")],
    account: Annotated[str, typer.Argument(help="The account's id in the target.")],
    mark: Annotated[str, typer.Option(help="protected | decommission-later | ignore")],
    reason: Annotated[str, typer.Option(help="Why (a ticket, an explanation).")],
    expires: Annotated[
        str | None, typer.Option(help="The mark stops applying at this date (ISO 8601).")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who marks it (default: you).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Mark one account: protected (never touched), decommission-later (reported, left alone
    until the mark expires) or ignore (not reported).

    Example:  provisor marks set github 8f2c --mark protected --reason "break-glass admin"
    """
    from provisor.engine.marks import mark_dict, set_mark
    from provisor.evidence import audit

    when = _parse_when(expires, "--expires") if expires else None
    workspace = _open()
    now = _now()
    try:
        with workspace.sessions() as session, session.begin():
            found = mark_dict(
                set_mark(
                    workspace,
                    session,
                    target,
                    account,
                    mark,
                    reason,
                    by=by or audit.current_actor(),
                    now=now,
                    expires=when,
                ),
                now,
            )
    finally:
        workspace.close()
    if json_out:
        _print_json(found)
    else:
        until = f" until {found['expires_at'][:10]}" if found["expires_at"] else ""
        out.print(f"{target}:{account} marked {mark}{until}.")


@marks_app.command("clear")
def marks_clear(
    target: Annotated[str, typer.Argument(help="Target name from the policy.")],
    account: Annotated[str, typer.Argument(help="The account's id in the target.")],
    by: Annotated[str | None, typer.Option(help="Who clears it (default: you).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Remove the mark from an account.

    Example:  provisor marks clear github 8f2c
    """
    from provisor.engine.marks import clear_mark
    from provisor.evidence import audit

    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            clear_mark(session, target, account, by=by or audit.current_actor())
    finally:
        workspace.close()
    if json_out:
        _print_json({"target": target, "account": account, "cleared": True})
    else:
        out.print(f"{target}:{account}: mark cleared.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("reconcile")(reconcile_command)
    app.add_typer(cases_app, name="cases")
    app.add_typer(marks_app, name="marks")
