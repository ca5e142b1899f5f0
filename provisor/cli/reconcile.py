"""Commands for reconciliation: ``reconcile``, ``cases`` and ``marks``.

Does: reconcile one target or all (live, or from a user export) with progress, print what was
found per class and what was done about it; list, resolve and dismiss correlation cases; list,
set and clear account marks. Tables for people, ``--json`` for scripts.
Does not: reconcile, correlate or classify itself (``provisor.engine.reconcile``,
``provisor.engine.correlate`` and ``provisor.engine.marks`` do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provisor.cli.options import JsonOption, actor, lists_by_default, maybe_when, now, opened
from provisor.cli.output import (
    err,
    finish,
    listing,
    moment,
    named_counter,
    out,
    print_json,
    table,
)
from provisor.engine import correlate, marks, reconcile
from provisor.errors import ExitCode

cases_app = typer.Typer(
    help="Correlation cases: accounts a person must link (or not).\n\n"
    "Example:  provisor cases resolve 4 --identity E1042"
)
marks_app = typer.Typer(
    help="Account marks: protected, decommission-later, ignore.\n\n"
    'Example:  provisor marks set github 8f2c --mark protected --reason "break-glass admin"'
)


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
    if export is not None and target is None:
        raise typer.BadParameter("--export needs --target", param_hint="--export")
    rejected: list[str] = []
    with opened() as workspace:
        if export is not None and target is not None:
            found, rejected = reconcile.reconcile_export(
                workspace, target, export, now=now(), remediate_now=not report_only
            )
            reports = [found]
        else:
            with named_counter(not json_out) as progress:
                reports = reconcile.reconcile_targets(
                    workspace,
                    target,
                    now=now(),
                    full=full,
                    remediate_now=not report_only,
                    batch_size=batch,
                    accept_gone=accept_gone,
                    progress=progress,
                )
    if json_out:
        data: dict[str, Any] = {"reports": [r.as_dict() for r in reports]}
        if export is not None:
            data["rejected"] = rejected
        print_json(data)
    else:
        for line in rejected:
            err.print(f"rejected {line}", markup=False)
        for r in reports:
            _show(r)
    if any(r.status != "completed" for r in reports):
        finish(ExitCode.RECONCILE_FAILED)


def _show(r: reconcile.ReconcileReport) -> None:
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
        columns = ["account", "user_name", "identity", "class", "detail", "mark", "remedy"]
        table(
            None,
            ["account", "user name", "identity", "class", "why", "mark", "remedy"],
            [tuple(f[c] for c in columns) for f in shown[:200]],
        )
        if len(shown) > 200:
            out.print(f"  ... and {len(shown) - 200} more (--json lists all)")
    for line in r.errors:
        err.print(f"  {line}", markup=False)


@cases_app.command("list")
def cases_list(
    every: Annotated[bool, typer.Option("--all", help="Include resolved and dismissed.")] = False,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    json_out: JsonOption = False,
) -> None:
    """List correlation cases: accounts that matched several identities or contradict a link.

    Example:  provisor cases list --target github
    """
    with opened() as workspace, workspace.sessions() as session:
        found = [
            correlate.case_dict(c)
            for c in correlate.list_cases(session, every=every, target=target)
        ]
    listing(
        found,
        json_out=json_out,
        empty="No correlation cases waiting.",
        title="Correlation cases",
        columns=[
            "case",
            "status",
            "target",
            "account",
            "user name",
            "candidates",
            "why",
            "resolved",
        ],
        row=lambda c: (
            c["id"],
            c["status"],
            c["target"],
            c["account"],
            c["user_name"],
            ", ".join(c["candidates"]),
            c["reason"],
            c["resolved_identity"] or "",
        ),
    )


lists_by_default(cases_app, cases_list)


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
    with opened() as workspace, workspace.sessions() as session, session.begin():
        decided = correlate.resolve_case(
            session, case, identity, by=actor(by), now=now(), note=note
        )
        found = correlate.case_dict(decided)
    if json_out:
        print_json(found)
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
    with opened() as workspace, workspace.sessions() as session, session.begin():
        decided = correlate.dismiss_case(session, case, by=actor(by), now=now(), note=note)
        found = correlate.case_dict(decided)
    if json_out:
        print_json(found)
    else:
        out.print(f"Case {case}: {found['target']}:{found['account']} linked to nobody.")


@marks_app.command("list")
def marks_list(
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    json_out: JsonOption = False,
) -> None:
    """List account marks, with expired ones shown as such (they no longer apply).

    Example:  provisor marks list --target payroll-db
    """
    at = now()
    with opened() as workspace, workspace.sessions() as session:
        found = [marks.mark_dict(m, at) for m in marks.list_marks(session, target=target)]
        home = workspace.config.time.zones().home
    listing(
        found,
        json_out=json_out,
        empty="No account marks.",
        title="Account marks",
        columns=["target", "account", "mark", "reason", "by", "expires"],
        row=lambda m: (
            m["target"],
            m["account"],
            m["mark"],
            m["reason"],
            m["marked_by"],
            moment(m["expires_at"], home, "never") + (" (expired)" if m["expired"] else ""),
        ),
    )


lists_by_default(marks_app, marks_list)


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
    when = maybe_when(expires, "--expires")
    at = now()
    with opened() as workspace, workspace.sessions() as session, session.begin():
        made = marks.set_mark(
            workspace, session, target, account, mark, reason, by=actor(by), now=at, expires=when
        )
        found = marks.mark_dict(made, at)
        home = workspace.config.time.zones().home
    if json_out:
        print_json(found)
    else:
        until = f" until {moment(found['expires_at'], home)}" if found["expires_at"] else ""
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
    with opened() as workspace, workspace.sessions() as session, session.begin():
        marks.clear_mark(session, target, account, by=actor(by))
    if json_out:
        print_json({"target": target, "account": account, "cleared": True})
    else:
        out.print(f"{target}:{account}: mark cleared.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("reconcile")(reconcile_command)
    app.add_typer(cases_app, name="cases")
    app.add_typer(marks_app, name="marks")
