"""Commands for identity state: ``import``, ``event``, ``tick``, ``holds``, ``approve``,
``identities list|show`` and ``explain``.

Does: parse arguments, call the identity services and views, and print their results — tables
for people, ``--json`` for scripts; rejected rows end the command with their exit code.
Does not: record, fold, guard or explain anything itself (``provisor.engine.identities``,
``provisor.engine.views``, ``provisor.engine.holds`` do).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from provisor.cli.options import (
    JsonOption,
    given,
    lists_by_default,
    maybe_when,
    now,
    opened,
    typed_when,
)
from provisor.cli.output import err, finish, listing, moment, out, print_json, stages, table
from provisor.domain import days
from provisor.domain.lifecycle import EventKind
from provisor.engine import holds as holds_service
from provisor.engine import identities as identity_service
from provisor.engine import views
from provisor.engine.imports import import_feed
from provisor.errors import ExitCode
from provisor.sources.hr import FeedMode

identities_app = typer.Typer(
    help="List identities, or show one with its timeline.\n\n"
    "Example:  provisor identities show E1042"
)


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
    with opened() as workspace, stages(4, not json_out) as step:
        report = import_feed(workspace, file, feed=feed, mode=mode, now=now(), progress=step)
    if json_out:
        print_json(report.as_dict())
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
        _print_transitions(report.outcome, "State changes")
        if report.outcome.hold_id is not None:
            out.print(
                f"[bold yellow]Held[/bold yellow] {report.outcome.held} deprovisioning changes as "
                f"hold {report.outcome.hold_id}: {report.outcome.hold_reason}. "
                f"Review with 'provisor holds', release with 'provisor approve "
                f"{report.outcome.hold_id}'.",
                markup=True,
            )
    if report.errors:
        finish(ExitCode.ROWS_REJECTED)


def _moves(outcome: identity_service.Outcome) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(outcome.transitions.items()))


def _print_transitions(outcome: identity_service.Outcome, label: str) -> None:
    if outcome.transitions:
        out.print(f"{label}: {_moves(outcome)}.")


def attribute_changes(items: list[str] | None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--set")
        changes[name.strip()] = value if value != "" else None
    return changes


def event(
    kind: Annotated[EventKind, typer.Argument(help="Lifecycle event kind.")],
    identity: Annotated[str, typer.Argument(help="Identity id (e.g. employee id).")],
    effective: Annotated[
        str | None,
        typer.Option(
            help="Effective date or date-time (default: now). A date is a day in the person's "
            "time zone: a terminate takes effect at the end of that last working day, a hire "
            "at the start of the first (the feed's end_at and start_at); a date-time without "
            "an offset is a wall-clock time there."
        ),
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
    changes = attribute_changes(attribute)
    at = now()
    when = typed_when(effective, "--effective") if effective else None
    with opened() as workspace:
        data = views.record_event(
            workspace,
            identity,
            kind,
            effective=when,
            changes=changes,
            ref=ref,
            source="cli",
            now=at,
        )
    if json_out:
        print_json(data)
    elif data["duplicates"]:
        out.print(f"{identity}: this {kind.value} was already recorded; nothing changed.")
    elif data["hold"] is not None:
        out.print(f"{identity}: {kind.value} held for approval as hold {data['hold']}.")
    else:
        later = datetime.fromisoformat(data["effective"]) > at
        future = " (takes effect then; 'provisor tick' applies it)" if later else ""
        out.print(
            f"{identity}: {kind.value} effective {data['effective_shown']} recorded{future}; "
            f"state now {data['state']}."
        )


def tick(json_out: JsonOption = False) -> None:
    """Apply every future-dated change that has become due (the service runs this regularly).

    Example:  provisor tick
    """
    with opened() as workspace, workspace.sessions() as session, session.begin():
        outcome = identity_service.tick(session, workspace.config, now=now())
    if json_out:
        print_json(outcome.as_dict())
        return
    out.print(
        f"Tick: {len(outcome.changed)} identities brought up to date; "
        f"state changes: {_moves(outcome) or 'none'}."
    )
    if outcome.hold_id is not None:
        out.print(f"Held {outcome.held} changes as hold {outcome.hold_id}: {outcome.hold_reason}.")


def holds(
    all_holds: Annotated[bool, typer.Option("--all", help="Include decided holds.")] = False,
    json_out: JsonOption = False,
) -> None:
    """List change sets held by the mass-change guard.

    Example:  provisor holds
    """
    with opened() as workspace, workspace.sessions() as session:
        rows = holds_service.list_holds(session, every=all_holds)
    if json_out:
        print_json(rows)
        return
    if not rows:
        out.print("No holds waiting.")
        return
    table(
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


def approve(
    hold: Annotated[int, typer.Argument(help="Hold number (see 'provisor holds').")],
    only: Annotated[
        str | None, typer.Option(help="Comma-separated identity ids to release; others stay held.")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="Comma-separated targets (a held plan batch): release only their part."),
    ] = None,
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Release (or reject) a held change set, all of it or only some identities or targets.

    Example:  provisor approve 3 --only E1001,E1002
    Example:  provisor approve 4 --target github --reject
    """
    chosen = [i.strip() for i in only.split(",") if i.strip()] if only else None
    targets = [t.strip() for t in target.split(",") if t.strip()] if target else None
    with opened() as workspace, workspace.sessions() as session, session.begin():
        outcome = identity_service.decide_hold(
            session,
            workspace.config,
            hold,
            approve=not reject,
            only=chosen,
            targets=targets,
            now=now(),
        )
    if json_out:
        print_json({**outcome.as_dict(), "hold": hold, "approved": not reject})
        return
    verb = "Rejected" if reject else "Approved"
    if outcome.operations:
        done = "cancelled" if reject else "put in line"
        out.print(f"{verb} hold {hold}: {outcome.operations} operations {done}.")
        return
    out.print(
        f"{verb} hold {hold}"
        + (f" for {', '.join(chosen)}" if chosen else "")
        + f"; state changes: {_moves(outcome) or 'none'}."
    )


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
    with opened() as workspace:
        shown, total = views.list_identities(
            workspace, state=state, department=department, kind=kind, limit=limit
        )
        home = workspace.config.time.zones().home  # next changes shown in the workspace's zone
    listing(
        shown,
        json_out=json_out,
        empty="No identities match.",
        title=None,
        columns=["id", "name", "kind", "state", "department", "owner", "next change", "flags"],
        row=lambda r: (
            r["id"],
            r["name"],
            r["kind"],
            r["state"],
            r["department"],
            r["owner"],
            moment(r["next_change"], home),
            "; ".join(r["flags"] or []),
        ),
    )
    if len(shown) < total and not json_out:
        out.print(f"{len(shown)} of {total} shown; use --limit 0 for all.")


lists_by_default(identities_app, identities_list)


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
    known = maybe_when(known_at, "--known-at")
    with opened() as workspace:
        # a date asked for (--as-of, else --now) is answered; by default, as stored
        asked = maybe_when(as_of, "--as-of") or given.now
        data = views.show_identity(workspace, identity, as_of=asked, known_at=known, now=now())
    valid = datetime.fromisoformat(data["as_of"])
    if json_out:
        print_json(data)
        return
    where = days.zone(data["zone"])  # times shown in the person's zone, saying which
    out.print(
        f"{identity}: {data['state']} as of {days.shown(valid, where)}"
        + (f", as known on {days.shown(known, where)}" if known else "")
    )
    for name, value in sorted(data["attributes"].items()):
        out.print(f"  {name}: {value}")
    for name, value in sorted(data["generated"].items()):
        out.print(f"  {name}: {value} (generated)")
    if data["flags"]:
        out.print(f"  flags: {'; '.join(data['flags'])}")
    if data["next_change"]:
        out.print(f"  next change: {days.shown(data['next_change'], where)}")
    table(
        "Timeline",
        ["effective", "recorded", "event", "state", "changes / note"],
        [
            (
                moment(t["effective"], where),
                moment(t["recorded"], where),
                t["event"],
                t["state"],
                t["note"] or ", ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in t["changes"].items()),
            )
            for t in data["timeline"]
        ],
    )


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
    with opened() as workspace:
        data = views.explain_identity(workspace, identity, item, now=now(), as_of=given.now)
    if json_out:
        print_json(data)
    elif item is None:
        _print_access(data)
    elif data["granted"]:
        out.print(f"{identity} has {item}:")
        for reason in data["reasons"]:
            out.print(f"  granted by {reason}")
        for note in data["why_not"]:
            out.print(f"  note: {note}")
    else:
        out.print(f"{identity} does not have {item}:")
        for why in data["why_not"]:
            out.print(f"  {why}")


def _print_access(data: dict[str, Any]) -> None:
    note = data["note"]
    shown = f" ({note})" if note and note != data["state"] else ""
    out.print(f"{data['identity']} is {data['state']}{shown}")
    rows = []
    for name, access in data["targets"].items():
        enabled = "" if access["enabled"] else f" disabled: {access['note']}"
        rows.append((name, "(account)" + enabled, "; ".join(access["account"])))
        for ent, reasons in sorted(access["entitlements"].items()):
            rows.append((name, ent, "; ".join(reasons)))
        for ent, why in sorted(access["withheld"].items()):
            rows.append((name, f"{ent} (withheld)", why))
    if rows:
        table(None, ["target", "access", "why"], rows)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("import")(import_command)
    app.command()(event)
    app.command()(tick)
    app.command()(holds)
    app.command()(approve)
    app.add_typer(identities_app, name="identities")
    app.command("explain")(explain_command)
