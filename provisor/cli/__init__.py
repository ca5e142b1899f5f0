"""The ``provisor`` command line: a thin layer over the engine's services.

Does: assemble the commands (one module per command group: ``workspace``, ``identities``,
``access``, ``tasks``, ``reconcile``, ``evidence``, ``audit``, ``service``),
take the global options, and
turn every error a user can meet into one line on stderr and its exit code
(``provisor.errors.ExitCode``), never a traceback; redact credentials from all it prints
and logs.
Does not: query the store, hold a loop or decide anything; every command calls the engine
functions that the API and workers call the same way (see ``output`` for presentation).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from sqlalchemy.exc import SQLAlchemyError

from provisor.cli import (
    access,
    audit,
    evidence,
    identities,
    reconcile,
    service,
    tasks,
    what_if,
    workspace,
)
from provisor.cli.options import NowOption, WorkspaceOption, given, parse_when
from provisor.cli.output import err
from provisor.errors import ExitCode, ProvisorError
from provisor.redaction import install, wrapped

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


@app.callback()
def _main(workspace: WorkspaceOption = None, now: NowOption = None) -> None:
    # nothing a command prints or logs carries a credential, whatever a target answered
    sys.stdout, sys.stderr = wrapped(sys.stdout), wrapped(sys.stderr)
    install()
    given.workspace = workspace
    given.now = parse_when(now, "--now") if now else None


for _group in (
    workspace,
    identities,
    access,
    tasks,
    reconcile,
    evidence,
    audit,
    service,
    what_if,
):
    _group.register(app)


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
        sys.exit(ExitCode.ABORTED)
    except SQLAlchemyError as exc:
        err.print(f"error: database: {str(exc).splitlines()[0]}", markup=False)
        sys.exit(ExitCode.DATABASE)
    sys.exit(result if isinstance(result, int) else ExitCode.OK)


if __name__ == "__main__":  # pragma: no cover
    main()
