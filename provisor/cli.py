"""The ``provisor`` command line.

Does: parse arguments, open the workspace, call the same engine services the API will call,
and present results — tables and progress for people, ``--json`` for scripts. Every error a user
can meet prints one line and exits with its class's code; no traceback.
Does not: hold lifecycle, policy or planning logic.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from provisor.config.policy_files import load_policy
from provisor.config.workspace import load_config, write_starter
from provisor.domain.desired import desired_access, explain
from provisor.domain.lifecycle import ORPHAN_PREFIX, EventKind, LifecycleEvent, utc
from provisor.engine import lifecycle as lifecycle_service
from provisor.engine.imports import import_feed
from provisor.engine.observed import import_observed
from provisor.engine.planner import sync_journal
from provisor.engine.workspace import Workspace, workspace_path
from provisor.errors import LifecycleError, NotFoundError, ProvisorError
from provisor.evidence import audit
from provisor.sources.hr import FeedMode
from provisor.store import db, models

app = typer.Typer(
    name="provisor",
    help=(
        "Provisor: identity lifecycle engine. Joiners, movers and leavers as state transitions, "
        "desired access from policy, and proof that access ended.\n\n"
        "Example:  provisor init && provisor import hr.csv && provisor plan"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
identities_app = typer.Typer(help="List identities, or show one with its timeline.")
audit_app = typer.Typer(help="Verify or export the tamper-evident audit log.")
policy_app = typer.Typer(help="Check policy files.")
tasks_app = typer.Typer(help="Work items for manual targets: list, mark done, verify.")
app.add_typer(identities_app, name="identities")
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")
app.add_typer(tasks_app, name="tasks")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _Context:
    workspace: Path | None = None
    now: datetime | None = None


ctx = _Context()

WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="PROVISOR_WORKSPACE",
        help="Workspace folder (default: the current folder).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.callback()
def _main(
    workspace: WorkspaceOption = None,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            envvar="PROVISOR_NOW",
            help="Act as if it were this date/time (ISO 8601), for rehearsals and what-if runs.",
        ),
    ] = None,
) -> None:
    ctx.workspace = workspace
    ctx.now = _parse_when(now, "--now") if now else None


def _now() -> datetime:
    return ctx.now or datetime.now(UTC)


def _parse_when(value: str, option: str) -> datetime:
    try:
        return utc(datetime.fromisoformat(value))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date; use YYYY-MM-DD or an ISO 8601 date-time", param_hint=option
        ) from None


def _open() -> Workspace:
    return Workspace.open(ctx.workspace)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str, ensure_ascii=False))


def _table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # values come from targets and feeds: shown as text, never read as markup
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    out.print(table)


@contextmanager
def _stages(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A progress bar over the named stages of a long operation (stderr, people only)."""
    if not enabled or not err.is_terminal:
        yield lambda _stage: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=total)

        def step(stage: str) -> None:
            progress.update(task, description=stage, advance=1)

        yield step


# --- workspace ------------------------------------------------------------------------------


@app.command()
def init(json_out: JsonOption = False) -> None:
    """Create a workspace here (config, starter policy, database) or upgrade its database.

    Example:  provisor -w ./acme init
    """
    folder = workspace_path(ctx.workspace).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    written = write_starter(folder)
    workspace = Workspace.open(folder, check=False)
    try:
        before, after = db.upgrade(workspace.engine)
        with workspace.sessions() as session, session.begin():
            if before is None:
                audit.record(session, "workspace.created", str(folder), {"schema": after})
            elif before != after:
                audit.record(
                    session, "workspace.upgraded", str(folder), {"from": before, "to": after}
                )
    finally:
        workspace.close()
    data = {
        "workspace": str(folder),
        "schema_before": before,
        "schema": after,
        "written": [str(p) for p in written],
    }
    if json_out:
        _print_json(data)
        return
    verb = "created" if before is None else ("upgraded" if before != after else "up to date")
    out.print(f"Workspace {folder}: database {verb} (schema {after}).")
    for path in written:
        out.print(f"  wrote {path}")
    out.print("Next: edit policy/*.yaml, then 'provisor import YOUR-HR-FILE.csv'.")


@policy_app.command("check")
def policy_check(json_out: JsonOption = False) -> None:
    """Validate the workspace's policy files; every problem names file, line and field.

    Example:  provisor policy check
    """
    folder = workspace_path(ctx.workspace).resolve()
    config = load_config(folder)
    loaded = load_policy([folder / p for p in config.policy])
    policy = loaded.policy
    data = {
        "digest": loaded.digest,
        "files": [str(f) for f in loaded.files],
        "targets": len(policy.targets),
        "rules": len(policy.rules),
        "roles": len(policy.roles),
        "assignments": len(policy.assignments),
        "exceptions": len(policy.exceptions),
        "sod": len(policy.sod),
    }
    if json_out:
        _print_json(data)
        return
    out.print(
        f"Policy OK: {data['targets']} targets, {data['rules']} rules, {data['roles']} roles, "
        f"{data['assignments']} assignments, {data['exceptions']} exceptions, "
        f"{data['sod']} SoD constraints ({len(loaded.files)} files, digest {loaded.digest[:12]})."
    )


# --- identity state -------------------------------------------------------------------------


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="HR feed file (.csv or .jsonl).")],
    feed: Annotated[
        str | None, typer.Option(help="Feed name in provisor.yaml (default: hr).")
    ] = None,
    mode: Annotated[
        FeedMode | None, typer.Option(help="Override the feed's mode: snapshot or events.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Import an HR feed: a snapshot of everyone, or a file of lifecycle events.

    Bad rows are reported as file:line column: reason and skipped; good rows still apply.
    Re-importing the same file changes nothing.

    Example:  provisor import people.csv --feed hr
    """
    workspace = _open()
    try:
        with _stages(4, not json_out) as step:
            report = import_feed(workspace, file, feed=feed, mode=mode, now=_now(), progress=step)
    finally:
        workspace.close()
    data = report.as_dict()
    if json_out:
        _print_json(data)
    else:
        for line in report.errors:
            err.print(f"[red]rejected[/red] {line}", markup=True)
        for line in report.warnings:
            err.print(f"[yellow]warning[/yellow] {line}", markup=True)
        events = ", ".join(f"{v} {k}" for k, v in sorted(report.counts.items())) or "no changes"
        out.print(
            f"Imported {report.file} ({report.mode}): {report.rows_read} rows read, "
            f"{report.rows_accepted} accepted, {len(report.errors)} rejected, "
            f"{report.unchanged} unchanged; events: {events}."
        )
        if report.outcome.transitions:
            moves = ", ".join(f"{v} {k}" for k, v in sorted(report.outcome.transitions.items()))
            out.print(f"State changes: {moves}.")
        if report.outcome.hold_id is not None:
            out.print(
                f"[bold yellow]Held[/bold yellow] {report.outcome.held} deprovisioning changes as "
                f"hold {report.outcome.hold_id}: {report.outcome.hold_reason}. "
                f"Review with 'provisor holds', release with 'provisor approve "
                f"{report.outcome.hold_id}'.",
                markup=True,
            )
    if report.errors:
        raise typer.Exit(10)


@app.command()
def event(
    kind: Annotated[EventKind, typer.Argument(help="Lifecycle event kind.")],
    identity: Annotated[str, typer.Argument(help="Identity id (e.g. employee id).")],
    effective: Annotated[
        str | None, typer.Option(help="Effective date/time (default: now).")
    ] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option("--set", help="Attribute change NAME=VALUE (repeatable; NAME= clears)."),
    ] = None,
    ref: Annotated[str | None, typer.Option(help="Rescind: key of the termination.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Record one lifecycle event by hand (hire, move, leave, return, terminate, rehire, ...).

    Example:  provisor event terminate E1042 --effective 2026-12-31
    Example:  provisor event move E1042 --set department=Sales --set title="Account Executive"
    """
    changes: dict[str, Any] = {}
    for item in attribute or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--set")
        changes[name.strip()] = value if value != "" else None
    if identity.startswith(ORPHAN_PREFIX):
        raise typer.BadParameter(
            f"{identity!r}: ids starting {ORPHAN_PREFIX!r} name accounts linked to no identity",
            param_hint="IDENTITY",
        )
    now = _now()
    when = _parse_when(effective, "--effective") if effective else now
    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            if kind is EventKind.RESCIND and ref is None:
                ref = lifecycle_service.latest_termination_key(session, identity)
                if ref is None:
                    raise LifecycleError(f"{identity}: has no termination to rescind")
            new = LifecycleEvent(identity, kind, when, now, changes, ref, "cli")
            outcome = lifecycle_service.record_events(
                session, workspace.config, [new], origin="event", now=now, strict=True
            )
            row = session.execute(
                select(models.Identity).where(models.Identity.external_id == identity)
            ).scalar_one_or_none()
            state = row.state if row else None
    finally:
        workspace.close()
    data = {
        "event": new.key,
        "identity": identity,
        "kind": kind.value,
        "effective": when.isoformat(),
        "state": state,
        **outcome.as_dict(),
    }
    if json_out:
        _print_json(data)
        return
    if outcome.duplicates:
        out.print(f"{identity}: this {kind.value} was already recorded; nothing changed.")
    elif outcome.hold_id is not None:
        out.print(f"{identity}: {kind.value} held for approval as hold {outcome.hold_id}.")
    else:
        future = " (takes effect then; 'provisor tick' applies it)" if when > now else ""
        out.print(
            f"{identity}: {kind.value} effective {when.date()} recorded{future}; state now {state}."
        )


@app.command()
def tick(json_out: JsonOption = False) -> None:
    """Apply every future-dated change that has become due (the service runs this regularly).

    Example:  provisor tick
    """
    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            outcome = lifecycle_service.tick(session, workspace.config, now=_now())
    finally:
        workspace.close()
    data = outcome.as_dict()
    if json_out:
        _print_json(data)
        return
    moves = ", ".join(f"{v} {k}" for k, v in sorted(outcome.transitions.items())) or "none"
    out.print(
        f"Tick: {len(outcome.changed)} identities brought up to date; state changes: {moves}."
    )
    if outcome.hold_id is not None:
        out.print(f"Held {outcome.held} changes as hold {outcome.hold_id}: {outcome.hold_reason}.")


@app.command()
def holds(
    all_holds: Annotated[bool, typer.Option("--all", help="Include decided holds.")] = False,
    json_out: JsonOption = False,
) -> None:
    """List change sets held by the mass-change guard.

    Example:  provisor holds
    """
    workspace = _open()
    try:
        with workspace.sessions() as session:
            query = select(models.Hold).order_by(models.Hold.id)
            if not all_holds:
                query = query.where(models.Hold.status.in_(["open", "partial"]))
            rows: list[dict[str, Any]] = []
            for hold in session.execute(query).scalars():
                waiting = (
                    session.execute(
                        select(models.IdentityEvent.identity).where(
                            models.IdentityEvent.hold_id == hold.id,
                            models.IdentityEvent.status == "held",
                        )
                    )
                    .scalars()
                    .all()
                )
                rows.append(
                    {
                        "hold": hold.id,
                        "status": hold.status,
                        "origin": hold.origin,
                        "created": hold.created_at.isoformat(),
                        "reason": hold.reason,
                        "waiting": len(waiting),
                        "identities": sorted(set(waiting)),
                        "decided_by": hold.decided_by,
                    }
                )
    finally:
        workspace.close()
    if json_out:
        _print_json(rows)
        return
    if not rows:
        out.print("No holds waiting.")
        return
    _table(
        "Holds",
        ["hold", "status", "origin", "waiting", "reason", "identities"],
        [
            (
                r["hold"],
                r["status"],
                r["origin"],
                r["waiting"],
                r["reason"],
                ", ".join(r["identities"][:8]) + (" ..." if len(r["identities"]) > 8 else ""),
            )
            for r in rows
        ],
    )


@app.command()
def approve(
    hold: Annotated[int, typer.Argument(help="Hold number (see 'provisor holds').")],
    only: Annotated[
        str | None, typer.Option(help="Comma-separated identity ids to release; others stay held.")
    ] = None,
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Release (or reject) a held change set, all of it or only some identities.

    Example:  provisor approve 3 --only E1001,E1002
    """
    chosen = [i.strip() for i in only.split(",") if i.strip()] if only else None
    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            outcome = lifecycle_service.decide_hold(
                session, workspace.config, hold, approve=not reject, only=chosen, now=_now()
            )
    finally:
        workspace.close()
    data = {**outcome.as_dict(), "hold": hold, "approved": not reject}
    if json_out:
        _print_json(data)
        return
    verb = "Rejected" if reject else "Approved"
    moves = ", ".join(f"{v} {k}" for k, v in sorted(outcome.transitions.items())) or "none"
    out.print(
        f"{verb} hold {hold}"
        + (f" for {', '.join(chosen)}" if chosen else "")
        + f"; state changes: {moves}."
    )


# --- access ---------------------------------------------------------------------------------


@app.command()
def plan(
    identity: Annotated[str | None, typer.Option(help="Only this identity.")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Compute operations from desired vs observed access and bring the journal in line.

    Leavers are ordered: revoke sessions, disable, remove entitlements, then delete after the
    target's grace period. Each operation says why it exists.

    Example:  provisor plan --identity E1042
    """
    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            synced = sync_journal(workspace, session, now=_now(), identity=identity, target=target)
    finally:
        workspace.close()
    rows: list[dict[str, Any]] = [
        {
            "id": journal_id,
            "journal": status,
            "identity": op.identity,
            "target": op.target,
            "step": op.step,
            "operation": op.kind.value,
            "entitlement": op.entitlement,
            "account": op.account,
            "reason": op.reason,
            "not_before": op.not_before.isoformat() if op.not_before else None,
            "parked": synced.parked.get(journal_id),
        }
        for op, status, journal_id in synced.operations
    ]
    if json_out:
        _print_json({"operations": rows, "added": synced.added, "cancelled": synced.cancelled})
        return
    if not rows:
        out.print(
            "Nothing to do: observed access matches desired access."
            + (
                f" ({synced.cancelled} superseded operations cancelled.)"
                if synced.cancelled
                else ""
            )
        )
        return
    _table(
        "Plan",
        ["identity", "target", "operation", "entitlement", "journal", "not before", "reason"],
        [
            (
                r["identity"],
                r["target"],
                r["operation"],
                r["entitlement"],
                r["journal"] + (f": {r['parked']}" if r["parked"] else ""),
                (r["not_before"] or "")[:10],
                r["reason"],
            )
            for r in rows
        ],
    )
    parked = sum(1 for r in rows if r["parked"])
    if parked:
        out.print(
            f"{parked} of them parked with the reason shown: they run again after "
            "'provisor apply --retry-failed', or when reconciliation still finds the access."
        )
    out.print(
        f"{len(rows)} operations ({synced.added} new in the journal, "
        f"{synced.cancelled} superseded ones cancelled)."
    )


@app.command("apply")
def apply_command(
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    identity: Annotated[str | None, typer.Option(help="Only this identity.")] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Put parked (failed) operations back in line.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Run the journal's pending operations now; each ends verified only after a read-back.

    Failures are retried with backoff; after the last attempt an operation is parked as
    failed and listed. Running it again writes nothing when targets already match.

    Example:  provisor plan && provisor apply --target github
    """
    from provisor.engine.runner import Runner

    workspace = _open()
    runner = Runner(workspace)
    try:
        if retry_failed:
            requeued = runner.requeue_failed(now=_now(), target=target, identity=identity)
            err.print(f"{requeued} failed operations put back in line")
        if json_out or not err.is_terminal:
            report = runner.apply(now=_now, target=target, identity=identity)
        else:
            with Progress(
                SpinnerColumn(),
                TextColumn("applying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as progress:
                task = progress.add_task("apply", total=None)
                report = runner.apply(
                    now=_now,
                    target=target,
                    identity=identity,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
    finally:
        runner.close()
        workspace.close()
    if json_out:
        _print_json(report.as_dict())
    else:
        out.print(
            f"Applied: {report.verified} verified, {report.unverifiable} unverifiable, "
            f"{report.retrying} to retry, {report.failed} failed, {report.waiting} waiting "
            f"({report.writes} writes)."
        )
        if report.tasks_opened:
            out.print(f"  {report.tasks_opened} manual tasks opened; see 'provisor tasks'")
        for where, count in sorted(report.no_connector.items()):
            out.print(f"  {where}: {count} operations wait: no connector for this target class")
        for line in report.errors:
            err.print(f"failed: {line}", markup=False)
    if report.failed or report.unopened:
        if report.unopened and not json_out:
            names = ", ".join(sorted(report.unopened))
            err.print(f"targets that cannot be opened: {names}", markup=False)
        raise typer.Exit(11)


@app.command("run")
def run_command(
    interval: Annotated[float, typer.Option(help="Seconds between cycles.")] = 60.0,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and stop.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Keep the engine running: every cycle ticks, reconciles the targets whose
    ``reconcile_every`` has come round, plans and applies, retrying what is due.

    The first cycle plans everyone; later ones plan the identities that changed (and those
    with time-bound grants), and everyone again when the policy files change. Stop it with
    Ctrl-C; the journal keeps everything for the next start.

    Example:  provisor run --interval 30
    """
    import time

    from provisor.engine.reconcile import reconcile_due
    from provisor.engine.runner import Runner

    workspace = _open()
    runner = Runner(workspace)
    full = True  # the first cycle, and any after the policy files change, plan everyone
    try:
        while True:
            started = _now()
            try:
                if workspace.refresh_policy() and not full:
                    out.print(f"{started:%Y-%m-%d %H:%M:%S} policy changed: planning everyone")
                    full = True
                    runner.close()
                    runner = Runner(workspace)  # connection settings may have changed
                with workspace.sessions() as session, session.begin():
                    ticked = lifecycle_service.tick(session, workspace.config, now=started)
                reconciled = reconcile_due(workspace, now=started)
                with workspace.sessions() as session, session.begin():
                    planned = sync_journal(workspace, session, now=started, changed_only=not full)
                full = False
                applied = runner.apply(now=_now)
            except (ProvisorError, SQLAlchemyError) as exc:
                # one bad cycle (a policy typo, a locked database) must not stop the service
                err.print(f"{started:%Y-%m-%d %H:%M:%S} cycle failed: {exc}", markup=False)
                if once:
                    raise
                time.sleep(interval)
                continue
            cycle = {
                "at": started.isoformat(),
                "changed": len(ticked.changed),
                "held": ticked.held,
                "planned": planned.added,
                "cancelled": planned.cancelled,
                "reconciled": {r.target: r.status for r in reconciled},
                **applied.as_dict(),
            }
            for failed in (r for r in reconciled if r.error):
                err.print(f"reconcile {failed.target}: {failed.error}", markup=False)
            for where, why in sorted(applied.unopened.items()):
                err.print(f"apply {where}: the target cannot be opened: {why}", markup=False)
            if json_out:
                out.print(json.dumps(cycle, default=str), markup=False, highlight=False)
            else:
                out.print(
                    f"{started:%Y-%m-%d %H:%M:%S} tick: {len(ticked.changed)} changed; plan: "
                    f"{planned.added} new, {planned.cancelled} cancelled; apply: "
                    f"{applied.verified} verified, {applied.retrying} retrying, "
                    f"{applied.failed} failed, {applied.waiting} waiting"
                    + "".join(
                        f"; reconciled {r.target} ({r.mode}): {r.read} read, "
                        f"{sum(n for c, n in r.classes.items() if c != 'ok')} findings"
                        for r in reconciled
                        if not r.error
                    )
                )
            if once:
                if applied.unopened:
                    raise typer.Exit(11)
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        out.print("stopped")
    finally:
        runner.close()
        workspace.close()


@app.command("explain")
def explain_command(
    identity: Annotated[str, typer.Argument(help="Identity id.")],
    item: Annotated[
        str | None, typer.Argument(help="TARGET or TARGET:ENTITLEMENT to explain.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Say why an identity has (or does not have) an account or entitlement.

    Without TARGET, lists everything the identity should hold and why.

    Example:  provisor explain E1042 github:admins
    """
    workspace = _open()
    try:
        compiled = workspace.compiled
        with workspace.sessions() as session:
            state = lifecycle_service.identity_state(
                session, workspace.config, identity, as_of=_now()
            )
    finally:
        workspace.close()
    if item is None:
        desired = desired_access(compiled, state)
        data: dict[str, Any] = {
            "identity": identity,
            "state": state.state.value if state.state else None,
            "note": desired.note,
            "targets": {
                name: {
                    "enabled": a.enabled,
                    "note": a.note,
                    "account": [str(r) for r in a.account_reasons],
                    "entitlements": {e: [str(r) for r in rs] for e, rs in a.entitlements.items()},
                    "withheld": a.withheld,
                }
                for name, a in sorted(desired.targets.items())
            },
            "sod": [
                {
                    "constraint": v.constraint,
                    "entitlements": list(v.entitlements),
                    "allowed_by": v.allowed_by,
                }
                for v in desired.sod
            ],
        }
        if json_out:
            _print_json(data)
            return
        out.print(f"{identity} is {data['state']}" + (f" ({desired.note})" if desired.note else ""))
        rows = []
        for name, a in sorted(desired.targets.items()):
            rows.append(
                (
                    name,
                    "(account)" + ("" if a.enabled else f" disabled: {a.note}"),
                    "; ".join(str(r) for r in a.account_reasons),
                )
            )
            for ent, reasons in sorted(a.entitlements.items()):
                rows.append((name, ent, "; ".join(str(r) for r in reasons)))
            for ent, why in sorted(a.withheld.items()):
                rows.append((name, f"{ent} (withheld)", why))
        if rows:
            _table(None, ["target", "access", "why"], rows)
        return
    target, _, entitlement = item.partition(":")
    if target not in compiled.targets:
        raise NotFoundError(f"no target {target!r}; targets: {', '.join(compiled.targets)}")
    answer = explain(compiled, state, target, entitlement or None)
    data = {
        "identity": identity,
        "target": target,
        "entitlement": answer.entitlement,
        "granted": answer.granted,
        "enabled": answer.enabled,
        "reasons": list(answer.reasons),
        "why_not": list(answer.why_not),
    }
    if json_out:
        _print_json(data)
        return
    if answer.granted:
        out.print(f"{identity} has {item}:")
        for reason in answer.reasons:
            out.print(f"  granted by {reason}")
        for note in answer.why_not:
            out.print(f"  note: {note}")
    else:
        out.print(f"{identity} does not have {item}:")
        for why in answer.why_not:
            out.print(f"  {why}")


@app.command()
def observe(
    target: Annotated[str, typer.Argument(help="Target name from the policy.")],
    file: Annotated[Path, typer.Argument(help="CSV export: account, enabled, entitlements, ...")],
    json_out: JsonOption = False,
) -> None:
    """Load what a target really holds from its own user export (replaces earlier observations).

    Columns: account (required), identity, enabled, entitlements (separated by ';'), sessions,
    and any attribute used for correlation (e.g. email).

    Example:  provisor observe payroll payroll-users.csv
    """
    workspace = _open()
    try:
        report = import_observed(workspace, target, file, now=_now())
    finally:
        workspace.close()
    if json_out:
        _print_json(report.as_dict())
    else:
        for line in report.errors:
            err.print(f"rejected {line}")
        for line in report.warnings:
            err.print(f"warning {line}")
        out.print(
            f"Observed {report.accounts} accounts in {target}: {report.linked} linked, "
            f"{report.unlinked} unlinked, {report.entitlements} entitlements; "
            f"{report.confirmed} manual tasks confirmed."
        )
    if report.errors:
        raise typer.Exit(10)


# --- manual tasks ---------------------------------------------------------------------------


@tasks_app.callback(invoke_without_command=True)
def tasks_default(context: typer.Context) -> None:
    if context.invoked_subcommand is None:
        tasks_list(every=False, owner=None, json_out=False)


@tasks_app.command("list")
def tasks_list(
    every: Annotated[bool, typer.Option("--all", help="Include verified and cancelled.")] = False,
    owner: Annotated[str | None, typer.Option(help="Only this revocation owner.")] = None,
    json_out: JsonOption = False,
) -> None:
    """List work items for manual targets, overdue first.

    Example:  provisor tasks list --owner finance-ops@example.com
    """
    from provisor.engine import tasks

    workspace = _open()
    try:
        with workspace.sessions() as session:
            views = tasks.list_tasks(session, _now(), every=every, owner=owner)
    finally:
        workspace.close()
    if json_out:
        _print_json([v.as_dict() for v in views])
        return
    if not views:
        out.print("No tasks waiting.")
        return
    _table(
        "Tasks",
        ["task", "status", "due", "owner", "target", "identity", "what"],
        [
            (
                v.id,
                v.status + (" OVERDUE" if v.overdue else ""),
                v.due.date(),
                v.owner,
                v.target,
                v.identity,
                v.instructions,
            )
            for v in views
        ],
    )


@tasks_app.command("done")
def tasks_done(
    task: Annotated[int, typer.Argument(help="Task number.")],
    evidence: Annotated[str, typer.Option(help="What shows it was done (ticket, note).")],
    by: Annotated[str | None, typer.Option(help="Who did it (default: you).")] = None,
) -> None:
    """Record that a task was done; it still needs verification.

    Example:  provisor tasks done 12 --evidence "SNOW RITM0012345"
    """
    from provisor.engine import tasks

    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            tasks.complete(
                session, task, by=by or audit.current_actor(), evidence=evidence, now=_now()
            )
    finally:
        workspace.close()
    out.print(
        f"Task {task} done; a second person verifies it with 'provisor tasks verify {task}',"
        " or an import of the application's user list confirms it."
    )


@tasks_app.command("verify")
def tasks_verify(
    task: Annotated[int, typer.Argument(help="Task number.")],
    by: Annotated[str | None, typer.Option(help="Who attests (default: you).")] = None,
) -> None:
    """Attest, as a second person, that a done task really happened.

    Example:  provisor tasks verify 12 --by alice
    """
    from provisor.engine import tasks

    workspace = _open()
    try:
        with workspace.sessions() as session, session.begin():
            tasks.verify(session, task, by=by or audit.current_actor(), now=_now())
    finally:
        workspace.close()
    out.print(f"Task {task} verified.")


# --- identities -----------------------------------------------------------------------------


@identities_app.callback(invoke_without_command=True)
def identities_default(context: typer.Context) -> None:
    if context.invoked_subcommand is None:
        identities_list(state=None, department=None, kind=None, limit=50, json_out=False)


@identities_app.command("list")
def identities_list(
    state: Annotated[str | None, typer.Option(help="Only this lifecycle state.")] = None,
    department: Annotated[str | None, typer.Option(help="Only this department.")] = None,
    kind: Annotated[
        str | None, typer.Option(help="human, service_account, api_key or bot.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 50,
    json_out: JsonOption = False,
) -> None:
    """List identities with their state.

    Example:  provisor identities list --state leave
    """
    workspace = _open()
    try:
        with workspace.sessions() as session:
            query = select(models.Identity).order_by(models.Identity.external_id)
            if state:
                query = query.where(models.Identity.state == state)
            if kind:
                query = query.where(models.Identity.kind == kind)
            total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            rows = [
                {
                    "id": r.external_id,
                    "name": r.name,
                    "kind": r.kind,
                    "state": r.state,
                    "department": (r.attributes or {}).get("department"),
                    "email": r.email,
                    "owner": r.owner,
                    "flags": r.flags,
                    "next_change": r.next_change_at.isoformat() if r.next_change_at else None,
                }
                for r in session.execute(query).scalars()
                if not department or (r.attributes or {}).get("department") == department
            ]
            if department:
                total = len(rows)  # the department lives in the attributes, filtered here
    finally:
        workspace.close()
    shown = rows[:limit] if limit else rows
    if json_out:
        _print_json(shown)
        return
    _table(
        None,
        ["id", "name", "kind", "state", "department", "owner", "next change", "flags"],
        [
            (
                r["id"],
                r["name"],
                r["kind"],
                r["state"],
                r["department"],
                r["owner"],
                (r["next_change"] or "")[:10],
                "; ".join(r["flags"] or []),
            )
            for r in shown
        ],
    )
    if len(shown) < total:
        out.print(f"{len(shown)} of {total} shown; use --limit 0 for all.")


@identities_app.command("show")
def identities_show(
    identity: Annotated[str, typer.Argument(help="Identity id.")],
    as_of: Annotated[str | None, typer.Option(help="Valid time: the state on this date.")] = None,
    known_at: Annotated[
        str | None, typer.Option(help="Record time: as Provisor knew it at this date.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Show one identity: state, attributes and timeline — on any date, as known on any date.

    Example:  provisor identities show E1042 --as-of 2026-03-01 --known-at 2026-02-15
    """
    valid = _parse_when(as_of, "--as-of") if as_of else _now()
    known = _parse_when(known_at, "--known-at") if known_at else None
    workspace = _open()
    try:
        with workspace.sessions() as session:
            state = lifecycle_service.identity_state(
                session, workspace.config, identity, as_of=valid, known_at=known
            )
            row = session.execute(
                select(models.Identity).where(models.Identity.external_id == identity)
            ).scalar_one()
            flags = row.flags
    finally:
        workspace.close()
    timeline: list[dict[str, Any]] = [
        {
            "effective": t.event.effective.isoformat(),
            "recorded": t.event.recorded.isoformat(),
            "event": t.event.kind.value,
            "applied": t.applied,
            "state": t.state_after.value if t.state_after else None,
            "changes": {k: list(v) for k, v in t.changes.items()},
            "note": t.note,
            "source": t.event.source,
            "key": t.event.key,
        }
        for t in state.timeline
    ]
    data = {
        "id": identity,
        "state": state.state.value if state.state else None,
        "as_of": valid.isoformat(),
        "known_at": known.isoformat() if known else None,
        "attributes": dict(state.attributes),
        "flags": flags,
        "employment_start": state.employment_start,
        "terminated_at": state.terminated_at,
        "next_change": state.next_change,
        "timeline": timeline,
    }
    if json_out:
        _print_json(data)
        return
    out.print(
        f"{identity}: {data['state']} as of {valid.date()}"
        + (f", as known on {known.date()}" if known else "")
    )
    for name, value in sorted(state.attributes.items()):
        out.print(f"  {name}: {value}")
    if flags:
        out.print(f"  flags: {'; '.join(flags)}")
    if state.next_change:
        out.print(f"  next change: {state.next_change.date()}")
    _table(
        "Timeline",
        ["effective", "recorded", "event", "state", "changes / note"],
        [
            (
                t["effective"][:10],
                t["recorded"][:19],
                t["event"],
                t["state"],
                t["note"] or ", ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in t["changes"].items()),
            )
            for t in timeline
        ],
    )


# --- audit ----------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(json_out: JsonOption = False) -> None:
    """Check the audit chain; names the first edited, deleted or reordered event.

    Example:  provisor audit verify
    """
    workspace = _open()
    try:
        with workspace.sessions() as session:
            result = audit.verify(session)
    finally:
        workspace.close()
    data = {
        "ok": result.ok,
        "events": result.events,
        "head_seq": result.head_seq,
        "head_hash": result.head_hash,
        "first_bad": result.first_bad,
        "problem": result.problem,
    }
    if json_out:
        _print_json(data)
    elif result.ok:
        out.print(f"Audit log intact: {result.events} events, head {result.head_hash[:16]}.")
    else:
        where = f" at event {result.first_bad}" if result.first_bad is not None else ""
        err.print(f"Audit log TAMPERED{where}: {result.problem}")
    if not result.ok:
        raise typer.Exit(8)


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
    start = _parse_when(since, "--since") if since else None
    end = _parse_when(until, "--until") if until else None
    workspace = _open()
    try:
        with workspace.sessions() as session:
            lines = audit.export(session, since=start, until=end, fmt=fmt)  # type: ignore[arg-type]
            if output is None:
                for line in lines:
                    sys.stdout.write(line)
            else:
                with output.open("w", encoding="utf-8", newline="") as handle:
                    handle.writelines(lines)
    finally:
        workspace.close()


# --- demo -----------------------------------------------------------------------------------


@app.command()
def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Workspace folder (default: a new temp folder).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run a guided tour on a sample organisation in a throwaway workspace.

    Imports ~200 people and service accounts, applies a mover, a leaver, a future-dated leaver
    and a rehire, and prints the plans, an explanation and the audit verification.

    Example:  provisor demo
    """
    from provisor.demo import run_demo

    run_demo(directory, out if not json_out else None, json_out=json_out)


# Commands kept in their own modules, registered once everything they use is defined above.
from provisor import cli_evidence, cli_reconcile  # noqa: E402

cli_reconcile.register(app)
cli_evidence.register(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: one line per error, the error's exit code, no traceback."""
    try:
        result = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except ProvisorError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {exc.format_message()}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except SQLAlchemyError as exc:
        err.print(f"error: database: {str(exc).splitlines()[0]}", markup=False)
        sys.exit(9)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
