"""Options every command shares: the workspace, the clock (``--now``), ``--json``, dates.

Does: hold the global ``--workspace`` and ``--now`` given to ``provisor``, parse dates given on
the command line (a usage error names the option; a date is a day in the workspace's zone),
open the workspace, name the acting person, run a group's listing when no subcommand is
given.
Does not: print, or decide what a command does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from provisor.domain import days
from provisor.engine import zones
from provisor.engine.workspace import Workspace, workspace_path
from provisor.evidence import audit


@dataclass
class Globals:
    workspace: Path | None = None
    now: datetime | None = None


given = Globals()

WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="PROVISOR_WORKSPACE",
        help="Workspace folder (default: the current folder).",
    ),
]
NowOption = Annotated[
    str | None,
    typer.Option(
        "--now",
        envvar="PROVISOR_NOW",
        help="Act as if it were this date/time (ISO 8601), for rehearsals and what-if runs.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def now() -> datetime:
    """The command's clock: ``--now`` when given, else the time now."""
    return given.now or datetime.now(UTC)


def typed_when(value: str, option: str) -> date | datetime:
    """A date or date-time as typed, not placed in time yet (``engine.zones`` does that)."""
    try:
        return days.parse_value(value)
    except days.TimeError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def parse_when(value: str, option: str) -> datetime:
    """A date or date-time for the workspace as a whole: a date is the start of that day in
    the workspace's time zone (``time.zone``), a date-time without an offset a wall-clock time
    there, one with an offset the instant it says."""
    typed = typed_when(value, option)
    if isinstance(typed, datetime) and typed.tzinfo is not None:
        return typed.astimezone(UTC)
    return zones.workspace_instant_at(workspace_path(given.workspace).resolve(), typed)


def maybe_when(value: str | None, option: str) -> datetime | None:
    return parse_when(value, option) if value else None


@contextmanager
def opened(pool: tuple[int, int] | None = None) -> Iterator[Workspace]:
    """The workspace given to ``provisor``, closed when the block ends; ``pool``: its
    database connections (kept, more when busy) when not the default."""
    workspace = (
        Workspace.open(given.workspace)
        if pool is None
        else Workspace.open(given.workspace, pool=pool)
    )
    try:
        yield workspace
    finally:
        workspace.close()


def actor(by: str | None) -> str:
    """Who acts: ``--by`` when given, else the operating-system user."""
    return by or audit.current_actor()


def lists_by_default(group: typer.Typer, listing: Callable[..., Any]) -> None:
    """``provisor GROUP [--json]`` without a subcommand runs the group's ``listing`` with its
    defaults."""

    @group.callback(invoke_without_command=True)
    def default(context: typer.Context, json_out: JsonOption = False) -> None:
        if context.invoked_subcommand is None:
            listing(json_out=json_out)
