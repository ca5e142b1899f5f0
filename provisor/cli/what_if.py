"""``provisor what-if event|import|policy``: what a change would do, with nothing kept.

Does: hand a lifecycle event, an HR file or another policy to ``engine.what_if`` and print
what it would come to — events recorded and held, operations planned and cancelled, plan
batches held, revocation debt before and after, each changed person's access and why — or
``--json``.
Does not: record, plan or apply anything in the workspace (the engine works on a copy that
it throws away), or sign an audit checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from provisor.cli.access import given_back
from provisor.cli.identities import attribute_changes
from provisor.cli.options import JsonOption, now, opened, typed_when
from provisor.cli.output import moment, out, print_json, table
from provisor.domain.lifecycle import EventKind
from provisor.engine import what_if
from provisor.engine.workspace import Workspace
from provisor.sources.hr import FeedMode

what_if_app = typer.Typer(
    help="What a change would do — plan, holds, debt, explanations — with nothing kept.",
    no_args_is_help=True,
)


@contextmanager
def _read_only() -> Iterator[Workspace]:
    with opened() as workspace:
        workspace.current = False  # nothing is appended to the audit chain: nothing to sign
        yield workspace


def _show(found: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(found)
        return
    recorded = found["recorded"]
    if recorded:
        events = recorded.get("events") or {}
        said = ", ".join(f"{v} {k}" for k, v in sorted(events.items())) if events else ""
        out.print(
            f"Would record {recorded.get('recorded', 0)} events"
            + (f" ({said})" if said else "")
            + (f"; held for approval: {recorded['held']}" if recorded.get("held") else "")
            + "."
        )
    for hold in found["holds"]:
        out.print(f"Would hold ({hold['kind']}): {hold['reason']}")
    for who, until in found["kept_by_grace"].items():
        out.print(f"{who}: access would be kept by grace until {moment(until)} (see explain).")
    for who, restored in found["restored"].items():
        out.print(given_back(who, restored, None))
    table(
        "Operations the plan would add",
        ["identity", "target", "operation", "entitlement", "journal", "reason"],
        [
            (
                o["identity"],
                o["target"],
                o["operation"],
                o["entitlement"],
                o["journal"],
                o["reason"],
            )
            for o in found["operations"]
        ],
    )
    before, after = found["debt"]["before"], found["debt"]["after"]
    out.print(
        f"Revocation debt: {before['items']} items -> {after['items']} "
        f"({after['items'] - before['items']:+d}); overdue {before['overdue']} -> "
        f"{after['overdue']}; cancelled operations: {found['cancelled']}."
    )
    for who, access in found["explained"].items():
        held = {t: sorted(a["entitlements"]) for t, a in access.get("targets", {}).items()}
        out.print(f"  {who} would hold: {held or access.get('note') or 'nothing'}")
    out.print("Nothing was recorded or changed.")


def _run(change: what_if.Change | None, policy: Path | None) -> Any:
    with _read_only() as workspace:
        return what_if.what_if(workspace, now=now(), change=change, policy=policy)


@what_if_app.command("event")
def what_if_event(
    kind: Annotated[EventKind, typer.Argument(help="Lifecycle event kind.")],
    identity: Annotated[str, typer.Argument(help="Identity id.")],
    effective: Annotated[
        str | None, typer.Option(help="Effective date or date-time, as for 'provisor event'.")
    ] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option("--set", help="Attribute change NAME=VALUE (repeatable; NAME= clears)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """What recording one lifecycle event would do.

    Example:  provisor what-if event terminate E1042 --effective 2026-12-31
    """
    changes = attribute_changes(attribute)
    when = typed_when(effective, "--effective") if effective else None
    change = what_if.event_change(identity, kind, effective=when, changes=changes, now=now())
    _show(_run(change, None), json_out)


@what_if_app.command("import")
def what_if_import(
    file: Annotated[Path, typer.Argument(help="HR feed file (.csv or .jsonl).")],
    feed: Annotated[str | None, typer.Option(help="Feed name in provisor.yaml.")] = None,
    mode: Annotated[FeedMode | None, typer.Option(help="snapshot or events.")] = None,
    json_out: JsonOption = False,
) -> None:
    """What importing an HR file would do.

    Example:  provisor what-if import people.csv
    """
    change = what_if.import_change(file, feed=feed, mode=mode, now=now())
    _show(_run(change, None), json_out)


@what_if_app.command("policy")
def what_if_policy(
    policy: Annotated[Path, typer.Argument(help="A policy file or folder to try instead.")],
    json_out: JsonOption = False,
) -> None:
    """What planning with another policy would do.

    Example:  provisor what-if policy ./policy-draft
    """
    _show(_run(None, policy), json_out)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(what_if_app, name="what-if")
