"""Commands that bring access in line: ``plan``, ``apply``, ``run``, ``worker``, ``observe``.

Does: parse arguments, call the planner, the runner, the engine's cycle, the worker and the
observed-access import, and print what they did — tables and progress for people, ``--json``
for scripts.
Does not: plan, execute, verify or loop itself (``provisor.engine.planner``,
``provisor.engine.runner``, ``provisor.engine.cycle``, ``provisor.engine.observed`` do).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from provisor.cli.options import JsonOption, now, opened
from provisor.cli.output import counter, err, finish, moment, out, print_json, table
from provisor.engine.cycle import CycleReport, Cycles
from provisor.engine.observed import import_observed
from provisor.engine.planner import sync_journal
from provisor.engine.runner import ApplyReport, Runner
from provisor.engine.status import target_status
from provisor.errors import ExitCode, NotFoundError


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
    with opened() as workspace, workspace.sessions() as session, session.begin():
        synced = sync_journal(workspace, session, now=now(), identity=identity, target=target)
        home = workspace.config.time.zones().home  # times shown in the workspace's zone
    planned = synced.summary()
    rows = planned["operations"]
    if json_out:
        print_json(planned)
        return
    for who, until in planned["kept_by_grace"].items():
        out.print(f"{who}: access is kept by grace until {moment(until, home)} (see explain).")
    for who, restored in planned["restored"].items():
        out.print(given_back(who, restored, home))
    for who, lacking in planned["unnamed"].items():
        for attribute, why in lacking.items():
            said = f"{who}: no {attribute} could be given ({why})"
            out.print(f"{said}; nothing is planned in the targets it names accounts in.")
    if not rows:
        superseded = f" ({synced.cancelled} superseded operations cancelled.)"
        out.print(
            "Nothing to do: observed access matches desired access."
            + (superseded if synced.cancelled else "")
        )
        return
    table(
        "Plan",
        ["identity", "target", "operation", "entitlement", "journal", "not before", "reason"],
        [
            (
                r["identity"],
                r["target"],
                r["operation"],
                r["entitlement"],
                r["journal"] + (f": {r['parked']}" if r["parked"] else ""),
                moment(r["not_before"], home),
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


def given_back(who: str, restored: dict[str, Any], home: ZoneInfo | None) -> str:
    """One line on what a rescind gives ``who`` back, and where today's policy differs."""
    line = (
        f"{who}: a rescind gives back exactly what was held at the termination of "
        f"{moment(restored['terminated_at'], home)}, until {moment(restored['until'], home)}"
    )
    for key, label in (
        ("not_given", "today's policy grants, not given back"),
        ("beyond_policy", "given back, not granted by today's policy"),
        ("ended", "held then, ended since"),
    ):
        if restored[key]:
            line += f"; {label}: {', '.join(restored[key])}"
    return line + "."


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
    with opened() as workspace:
        runner = Runner(workspace)
        try:
            if retry_failed:
                requeued = runner.requeue_failed(now=now(), target=target, identity=identity)
                err.print(f"{requeued} failed operations put back in line")
            with counter("applying", not json_out) as progress:
                report = runner.apply(now=now, target=target, identity=identity, progress=progress)
        finally:
            runner.close()
    if json_out:
        print_json(report.as_dict())
    else:
        _print_applied(report)
    if report.failed or report.unopened or report.unavailable:
        if report.unopened and not json_out:
            names = ", ".join(sorted(report.unopened))
            err.print(f"targets that cannot be opened: {names}", markup=False)
        finish(ExitCode.APPLY_FAILED)


def _print_applied(report: ApplyReport) -> None:
    out.print(
        f"Applied: {report.verified} verified, {report.unverifiable} unverifiable, "
        f"{report.retrying} to retry, {report.failed} failed, {report.waiting} waiting "
        f"({report.writes} writes)."
    )
    if report.tasks_opened:
        out.print(f"  {report.tasks_opened} manual tasks opened; see 'provisor tasks'")
    for where, count in sorted(report.no_connector.items()):
        out.print(f"  {where}: {count} operations wait: no connector for this target class")
    for where, why in sorted(report.unavailable.items()):
        out.print(f"  {where}: its work waits: {why}", markup=False)
    for line in report.errors:
        err.print(f"failed: {line}", markup=False)


def status(json_out: JsonOption = False) -> None:
    """Each target now: available or not (its circuit), and the work waiting for it.

    A target whose operations found it unreachable too many times in a row is unavailable:
    its work waits, untried, until a probe finds it answering; leavers' removals there go to
    its owner as work items after a while (policy: circuit).

    Example:  provisor status --json
    """
    with opened() as workspace:
        found = target_status(workspace, now())
    if json_out:
        print_json({"targets": [t.as_dict() for t in found]})
        return
    table(
        "Targets",
        ["target", "state", "due", "later", "running", "failed", "held", "oldest due", "tasks"],
        [
            (
                t.target,
                t.state + (f" ({t.failures} failures in a row)" if t.failures else ""),
                t.due,
                t.later,
                t.running,
                t.failed,
                t.held,
                t.oldest_due.isoformat(timespec="seconds") if t.oldest_due else "-",
                t.open_tasks,
            )
            for t in found
        ],
    )
    for t in found:
        if t.unavailable is not None:
            out.print(f"{t.target} is {t.unavailable.says()}", markup=False)
            if t.unavailable.probe_at is not None:
                out.print(f"  next probe: {t.unavailable.probe_at.isoformat()}", markup=False)


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

    def failed(started: datetime, exc: Exception) -> None:
        err.print(f"{started:%Y-%m-%d %H:%M:%S} cycle failed: {exc}", markup=False)

    with opened() as workspace:
        cycles = Cycles(workspace, clock=now)
        try:
            last = cycles.run(
                interval=interval,
                once=once,
                on_cycle=lambda report: _print_cycle(report, json_out),
                on_failure=failed,
            )
        except KeyboardInterrupt:
            out.print("stopped")
            return
        finally:
            cycles.close()
    if once and last is not None and last.applied.unopened:
        finish(ExitCode.APPLY_FAILED)


def _print_cycle(cycle: CycleReport, json_out: bool) -> None:
    at = f"{cycle.at:%Y-%m-%d %H:%M:%S}"
    if cycle.policy_changed:
        out.print(f"{at} policy changed: planned everyone", markup=False)
    for failed in (r for r in cycle.reconciled if r.error):
        err.print(f"reconcile {failed.target}: {failed.error}", markup=False)
    for where, why in sorted(cycle.applied.unopened.items()):
        err.print(f"apply {where}: the target cannot be opened: {why}", markup=False)
    if json_out:
        out.print(json.dumps(cycle.as_dict(), default=str), markup=False, highlight=False)
        return
    applied = cycle.applied
    reconciled = "".join(
        f"; reconciled {r.target} ({r.mode}): {r.read} read, "
        f"{sum(n for c, n in r.classes.items() if c != 'ok')} findings"
        for r in cycle.reconciled
        if not r.error
    )
    out.print(
        f"{at} tick: {len(cycle.ticked.changed)} changed; plan: "
        f"{cycle.planned.added} new, {cycle.planned.cancelled} cancelled; apply: "
        f"{applied.verified} verified, {applied.retrying} retrying, "
        f"{applied.failed} failed, {applied.waiting} waiting{reconciled}"
    )


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
    with opened() as workspace:
        report = import_observed(workspace, target, file, now=now())
    if json_out:
        print_json(report.as_dict())
    else:
        for line in report.errors:
            err.print(f"rejected {line}", markup=False)
        for line in report.warnings:
            err.print(f"warning {line}", markup=False)
        out.print(
            f"Observed {report.accounts} accounts in {target}: {report.linked} linked, "
            f"{report.unlinked} unlinked, {report.entitlements} entitlements; "
            f"{report.cases_opened} correlation cases opened; "
            f"{report.confirmed} manual tasks confirmed."
        )
    if report.errors:
        finish(ExitCode.ROWS_REJECTED)


def worker(
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Jobs this process runs at once.")
    ] = 4,
    name: Annotated[
        str | None, typer.Option(help="The worker's name in the queue (default: host:pid).")
    ] = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once the job queue is empty.")
    ] = False,
    log_level: Annotated[
        str, typer.Option(help="What goes to standard error: debug, info, warning, error.")
    ] = "info",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Serve GET /metrics (a token with the metrics scope) here."
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics endpoint listens on.")
    ] = "127.0.0.1",
) -> None:
    """Run the journal's work as one of any number of workers, on any machines, sharing the
    workspace's PostgreSQL database: each operation runs and is recorded once, an account's
    operations never run at once, a target's concurrency and rate limit hold across all
    workers, and a worker that dies has its work taken over by the others. Stop it with
    Ctrl-C or SIGTERM: running jobs finish first. Settings: the 'runner' section of
    provisor.yaml (set 'workers: true' so that 'provisor serve' hands its work to workers).

    Example:  PROVISOR_DATABASE_URL=postgresql+psycopg://provisor@db/provisor provisor worker
    --metrics-port 9401
    """
    from provisor.api.scrape import Scrape
    from provisor.engine.runner.worker import Worker

    level = logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        raise typer.BadParameter(f"{log_level!r} is not a level", param_hint="--log-level")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(max(level, logging.WARNING))  # a line per request
    with opened(Worker.connections(concurrency)) as workspace:
        process = Worker(workspace, concurrency=concurrency, name=name)
        scrape = None if metrics_port is None else Scrape(workspace, metrics_host, metrics_port)
        try:
            process.run(wait=not until_idle)
        finally:
            if scrape is not None:
                scrape.close()


def probe(
    target: Annotated[str, typer.Argument(help="The target whose circuit is open.")],
) -> None:
    """Probe an unavailable target at once, instead of after its cool-down: the next run (a
    worker within runner.sweep_seconds, 'provisor run' or 'serve' at its next cycle) checks
    it before any other work, and only an answer closes its circuit. Audited.

    Example:  provisor probe crm
    """
    from provisor.engine import circuit

    with opened() as workspace:
        if target not in workspace.compiled.targets:
            known = ", ".join(sorted(workspace.compiled.targets))
            raise NotFoundError(f"no target {target!r} in the policy; targets: {known}")
        with workspace.sessions() as session, session.begin():
            outage = circuit.probe_soon(session, target)
    if outage is None:
        out.print(f"{target} is available (its circuit is closed): nothing to probe.")
        return
    out.print(
        f"{target}: {outage.says()}. The next run probes it at once "
        f"(probes so far: {outage.probes}).",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(plan)
    app.command("apply")(apply_command)
    app.command("run")(run_command)
    app.command()(worker)
    app.command()(status)
    app.command()(probe)
    app.command()(observe)
