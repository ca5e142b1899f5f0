"""Commands for manual work items: ``tasks list|done|verify``.

Does: list work items for manual targets, record that one was done, and record a second
person's verification; print the result, or ``--json``.
Does not: open, confirm or judge tasks itself (``provisor.engine.tasks`` does).
"""

from __future__ import annotations

from typing import Annotated

import typer

from provisor.cli.options import JsonOption, actor, lists_by_default, now, opened
from provisor.cli.output import listing, out, print_json
from provisor.domain import days
from provisor.engine import tasks

tasks_app = typer.Typer(
    help="Work items for manual targets: list, mark done, verify.\n\n"
    "Example:  provisor tasks list --owner finance-ops@example.com"
)


@tasks_app.command("list")
def tasks_list(
    every: Annotated[bool, typer.Option("--all", help="Include verified and cancelled.")] = False,
    owner: Annotated[str | None, typer.Option(help="Only this revocation owner.")] = None,
    json_out: JsonOption = False,
) -> None:
    """List work items for manual targets, overdue first.

    Example:  provisor tasks list --owner finance-ops@example.com
    """
    with opened() as workspace, workspace.sessions() as session:
        found = tasks.list_tasks(session, now(), every=every, owner=owner)
        home = workspace.config.time.zones().home  # times shown in the workspace's zone
    listing(
        found,
        json_out=json_out,
        as_json=lambda v: v.as_dict(),
        empty="No tasks waiting.",
        title="Tasks",
        columns=["task", "status", "due", "owner", "target", "identity", "what"],
        row=lambda v: (
            v.id,
            v.status + (" OVERDUE" if v.overdue else ""),
            days.shown(v.due, home),
            v.owner,
            v.target,
            v.identity,
            v.instructions,
        ),
    )


lists_by_default(tasks_app, tasks_list)


@tasks_app.command("done")
def tasks_done(
    task: Annotated[int, typer.Argument(help="Task number.")],
    evidence: Annotated[str, typer.Option(help="What shows it was done (ticket, note).")],
    by: Annotated[str | None, typer.Option(help="Who did it (default: you).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Record that a task was done; it still needs verification.

    Example:  provisor tasks done 12 --evidence "SNOW RITM0012345"
    """
    who = actor(by)
    with opened() as workspace, workspace.sessions() as session, session.begin():
        tasks.complete(session, task, by=who, evidence=evidence, now=now())
    if json_out:
        print_json({"task": task, "status": "done", "by": who, "evidence": evidence})
        return
    out.print(
        f"Task {task} done; a second person verifies it with 'provisor tasks verify {task}',"
        " or an import of the application's user list confirms it."
    )


@tasks_app.command("verify")
def tasks_verify(
    task: Annotated[int, typer.Argument(help="Task number.")],
    by: Annotated[str | None, typer.Option(help="Who attests (default: you).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Attest, as a second person, that a done task really happened.

    Example:  provisor tasks verify 12 --by alice
    """
    who = actor(by)
    with opened() as workspace, workspace.sessions() as session, session.begin():
        status = tasks.verify(session, task, by=who, now=now())
    if json_out:
        print_json({"task": task, "status": status, "by": who})
        return
    if status == "attested":
        out.print(f"Task {task} attested; it is verified once Provisor reads the target back.")
    else:
        out.print(f"Task {task} verified.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(tasks_app, name="tasks")
