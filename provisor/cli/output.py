"""How the command line presents results: consoles, tables, JSON, progress, exit codes.

Does: print tables for people (a rich table on a terminal; plain tab-separated rows, never
wrapped, when the output goes to a pipe or file), JSON for scripts, progress bars on stderr
when it is a terminal, and end a command with a code from the one table
(``provisor.errors.ExitCode``).
Does not: open workspaces, compute anything, or decide which code an outcome deserves beyond
what the command tells it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

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

from provisor.domain import days
from provisor.errors import ExitCode

# values from targets and feeds are printed as they are: no markup, no :emoji: codes
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def finish(code: ExitCode) -> NoReturn:
    """End the command with ``code`` (after its output is printed)."""
    raise typer.Exit(int(code))


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str, ensure_ascii=False))


def _cell(value: Any) -> str:
    return "" if value is None else " ".join(str(value).split())


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table of ``rows``; values from targets and feeds are text, never read as markup."""
    if not out.is_terminal:
        if title:
            out.print(title, markup=False)
        for line in (columns, *rows):
            out.print("\t".join(_cell(v) for v in line), markup=False)
        return
    shown = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        shown.add_column(column, overflow="fold")
    for row in rows:
        shown.add_row(*(Text("" if v is None else str(v)) for v in row))
    out.print(shown)


def listing(
    found: Sequence[Any],
    *,
    json_out: bool,
    empty: str,
    title: str | None,
    columns: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    as_json: Callable[[Any], Any] = lambda item: item,
) -> None:
    """What a ``list`` command prints: ``found`` as JSON, ``empty`` when there is nothing, or a
    table with one ``row`` per item."""
    if json_out:
        print_json([as_json(item) for item in found])
    elif not found:
        out.print(empty)
    else:
        table(title, columns, [row(item) for item in found])


@contextmanager
def stages(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
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


@contextmanager
def counter(label: str, enabled: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    """A bar counting ``done`` of ``total`` items (stderr, people only); None when not shown."""
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@contextmanager
def named_counter(enabled: bool) -> Iterator[Callable[[str, int], None] | None]:
    """A spinner counting items per named part (``reconciling NAME: N accounts``)."""
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("reconciling {task.fields[part]}: {task.completed} accounts"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("reconcile", total=None, part="")
        yield lambda part, done: progress.update(task, completed=done, part=part)


def moment(value: str | datetime | None, where: ZoneInfo | None = None, empty: str = "") -> str:
    """A time (a datetime, or its ISO text) as people read it, saying its zone: in ``where``,
    else in UTC (``days.shown``); ``empty`` when there is none."""
    return days.shown(value, where, empty)
