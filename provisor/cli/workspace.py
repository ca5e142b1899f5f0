"""Commands for the workspace itself: ``init``, ``policy check`` and the ``demo`` tour.

Does: create or upgrade a workspace, validate its policy, run the guided tour; print the result.
Does not: create anything itself (``provisor.engine.workspace`` and ``provisor.demo`` do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provisor.cli.options import JsonOption, given
from provisor.cli.output import err, out, print_json, table
from provisor.engine.workspace import check_policy, init_workspace

policy_app = typer.Typer(help="Check policy files.\n\nExample:  provisor policy check")


def init(json_out: JsonOption = False) -> None:
    """Create a workspace here (config, starter policy, database) or upgrade its database.

    Example:  provisor -w ./acme init
    """
    data = init_workspace(given.workspace)
    if json_out:
        print_json(data)
        return
    before, after = data["schema_before"], data["schema"]
    verb = "created" if before is None else ("upgraded" if before != after else "up to date")
    out.print(f"Workspace {data['workspace']}: database {verb} (schema {after}).")
    for path in data["written"]:
        out.print(f"  wrote {path}")
    out.print("Next: edit policy/*.yaml, then 'provisor import YOUR-HR-FILE.csv'.")


@policy_app.command("check")
def policy_check(json_out: JsonOption = False) -> None:
    """Validate the workspace's policy files; every problem names file, line and field.

    Example:  provisor policy check
    """
    data = check_policy(given.workspace)
    if json_out:
        print_json(data)
        return
    for warning in data["warnings"]:
        err.print(f"warning: {warning}", markup=False)
    out.print(
        f"Policy OK: {data['targets']} targets, {data['rules']} rules, {data['roles']} roles, "
        f"{data['assignments']} assignments, {data['exceptions']} exceptions, "
        f"{data['sod']} SoD constraints ({len(data['files'])} files, "
        f"digest {data['digest'][:12]})."
    )


def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Workspace folder (default: a new temp folder).")
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Then serve the demo organisation in the web console (and the API) until"
            " interrupted, with an account per role printed.",
        ),
    ] = False,
    port: Annotated[int, typer.Option(help="With --serve: the port.")] = 8400,
    json_out: JsonOption = False,
) -> None:
    """Run a guided tour on a sample organisation in a throwaway workspace.

    Imports ~200 people and service accounts, applies a mover, a leaver, a future-dated leaver
    and a rehire, and prints the plans, an explanation and the audit verification.

    Example:  provisor demo
    Example:  provisor demo --serve --port 8400
    """
    from provisor.demo import accounts, run_demo

    def serving(workspace: Any) -> None:
        from provisor.api.server import run_server

        out.print(f"\nThe demo organisation is served at http://127.0.0.1:{port}/console/")
        table(
            "Demo accounts (passwords are new each time)",
            ["name", "role", "password"],
            accounts(workspace),
        )
        out.file.flush()
        run_server(workspace, host="127.0.0.1", port=port, runner=True)

    run_demo(
        directory, out if not json_out else None, json_out=json_out, then=serving if serve else None
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(init)
    app.add_typer(policy_app, name="policy")
    app.command()(demo)
