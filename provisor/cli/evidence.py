"""Commands for evidence: ``debt``, ``verify-leaver``, ``coverage`` and ``targets check``.

Does: print the revocation-debt ledger (grouped, or its trend), write and summarise a leaver's
evidence bundle (one leaver, or a random sample), print the coverage map and blind spots, and
probe targets' read paths; end with the codes that say debt is unknown (16), a leaver's access
is still present (12) or unverified (13), or a target is unproven (15).
Does not: compute anything itself (``provisor.engine.debt``, ``provisor.engine.leavers``,
``provisor.engine.coverage`` and ``provisor.engine.connections`` do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provisor.cli.options import JsonOption, now, opened, parse_when
from provisor.cli.output import err, finish, moment, out, print_json, table
from provisor.domain.debt import GROUPINGS, GroupBy, summarise
from provisor.engine import debt
from provisor.engine.connections import check_targets
from provisor.engine.coverage import coverage
from provisor.engine.leavers import verify_leaver, verify_sample
from provisor.errors import ExitCode

targets_app = typer.Typer(
    help="Targets: probe how each can be read.\n\nExample:  provisor targets check github",
    no_args_is_help=True,
)


def debt_command(
    by: Annotated[
        str | None, typer.Option("--by", help="Group totals by class, target or owner.")
    ] = None,
    trend: Annotated[
        bool, typer.Option("--trend", help="Show recorded totals over time instead.")
    ] = False,
    identity: Annotated[str | None, typer.Option(help="Only this identity.")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    limit: Annotated[int, typer.Option(help="Items (or snapshots) shown in the table.")] = 50,
    record: Annotated[
        bool,
        typer.Option("--record", help="Also record the totals now (reconciliation does)."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Revocation debt: access that must not exist and is not verified gone.

    One item per (identity, target, account, access item): an account enabled or not deleted
    when it must be, an entitlement held but not granted, sessions open or unknown on an
    account that must be disabled. Debt falls only when a read-back, a reconciliation, an
    imported export or an attestation shows the access gone. A leaver's access in a target
    nobody has read since the termination is an "access" item marked unknown; exit code 16
    while any exists.

    Example:  provisor debt --by owner
    """
    if by is not None and by not in GROUPINGS:
        raise typer.BadParameter(f"use one of {', '.join(GROUPINGS)}", param_hint="--by")
    with opened() as workspace:
        if trend:
            with workspace.sessions() as session:
                shots = debt.snapshots(session, limit=limit)
            _show_trend(shots, json_out)
            return
        found = debt.ledger(workspace, now(), identity=identity, target=target, record=record)
    grouping = by  # narrowed to a grouping by the check above
    if json_out:
        print_json(found.as_dict(grouping))
    else:
        _show_ledger(found, grouping, limit)
    if found.unknown:
        finish(ExitCode.DEBT_UNKNOWN)


def _show_ledger(found: debt.Ledger, by: GroupBy | None, limit: int) -> None:
    items = found.items
    if by is not None:
        table(
            f"Revocation debt by {by}",
            [by, "items", "overdue", "identities", "oldest (days)"],
            [
                (g.key, g.items, g.overdue, g.identities, f"{g.oldest_days:.1f}")
                for g in summarise(items, by)
            ],
        )
    elif items:
        table(
            "Revocation debt (overdue first)",
            ["identity", "target", "item", "state", "age (days)", "SLA", "owner", "work"],
            [
                (
                    i.identity,
                    i.target,
                    i.item,
                    i.state,
                    f"{i.age_days:.1f}" + (" OVERDUE" if i.overdue else ""),
                    i.sla_days,
                    i.owner,
                    i.work,
                )
                for i in items[:limit]
            ],
        )
        if len(items) > limit:
            out.print(f"... {len(items) - limit} more; --limit, --by or --json show them.")
    for name, down in sorted(found.unavailable.items()):
        out.print(f"{name} is {down.says()}: its debt cannot fall until it answers again.")
    if not items:
        out.print("No revocation debt: everything that must be gone is verified gone.")
        return
    out.print(
        f"{len(items)} items of debt ({found.overdue} overdue) across "
        f"{found.identities} identities."
    )
    if found.unknown:
        out.print(
            f"{found.unknown} of them unknown: access not read since the termination (neither "
            "debt seen nor verified gone); reconcile those targets in full."
        )


def _show_trend(shots: list[Any], json_out: bool) -> None:
    rows = [
        {
            "at": s.at.isoformat(),
            "reconcile_run": s.reconcile_run,
            "items": s.items,
            "overdue": s.overdue,
            "by_class": {k: v["items"] for k, v in s.totals.get("class", {}).items()},
        }
        for s in shots
    ]
    if json_out:
        print_json({"snapshots": rows})
        return
    if not rows:
        out.print("No debt snapshots yet: reconciliation (or 'provisor debt --record') adds them.")
        return
    previous: int | None = None
    lines = []
    for row in rows:
        change = "" if previous is None else f"{row['items'] - previous:+d}"
        previous = row["items"]
        by_class = ", ".join(f"{k} {v}" for k, v in sorted(row["by_class"].items()))
        lines.append(
            (
                moment(row["at"]),
                row["reconcile_run"],
                row["items"],
                change,
                row["overdue"],
                by_class,
            )
        )
    columns = ["at", "run", "items", "change", "overdue", "by class"]
    table("Revocation debt over time", columns, lines)


def verify_leaver_command(
    identity: Annotated[str | None, typer.Argument(help="The leaver's identity id.")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the bundles (default: WORKSPACE/evidence)."),
    ] = None,
    sample: Annotated[
        int | None, typer.Option("--sample", help="Verify this many random leavers.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="With --sample: leavers terminated on or after this date.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="With --sample: random seed, for a repeatable sample.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Read every target live, now, and write the evidence that a leaver's access is gone.

    Per target and layer (account, entitlements, sessions): verified-removed, still-present,
    unverifiable (with why) or kept-by-policy, with the operation history and the audit-chain
    head. Writes JSON and HTML; the JSON's SHA-256 goes into the audit log. Exits 12 when
    something is still present, 13 when a layer could not be verified.

    Example:  provisor verify-leaver E1042 --out ./evidence
    """
    if (identity is None) == (sample is None):
        raise typer.BadParameter("give an identity id, or --sample N --since DATE")
    if sample is not None and since is None:
        raise typer.BadParameter("--sample needs --since DATE", param_hint="--since")
    with opened() as workspace:
        if identity is not None:
            written = verify_leaver(workspace, identity, now=now, out_dir=out_dir)
            results = [written]
            if json_out:
                print_json({**written.as_dict(), "bundle": written.bundle})
            else:
                _show_bundle(written.bundle)
                out.print(f"Outcome: {written.outcome}. Evidence: {written.json_path}")
                out.print(f"  {written.html_path}  (SHA-256 {written.sha256[:16]}...)")
        else:
            assert sample is not None and since is not None
            start = parse_when(since, "--since")
            report = verify_sample(workspace, sample, start, now=now, out_dir=out_dir, seed=seed)
            results = report.results
            if json_out:
                print_json(report.as_dict())
            else:
                _show_sample(report, since)
    if any(r.outcome == "fail" for r in results):
        finish(ExitCode.LEAVER_FAILED)
    if any(r.outcome == "incomplete" for r in results):
        finish(ExitCode.LEAVER_INCOMPLETE)


def _show_sample(report: Any, since: str) -> None:
    out.print(
        f"Sampled {len(report.results)} of {report.population} leavers terminated "
        f"since {since}: {report.count('pass')} pass, "
        f"{report.count('incomplete')} incomplete, {report.count('fail')} fail."
    )
    for r in report.results:
        if r.outcome != "pass":
            out.print(f"  {r.identity} {r.outcome}: {r.json_path}")
            for line in r.failures:
                out.print(f"    {line}", markup=False)


def _show_bundle(bundle: dict[str, Any]) -> None:
    rows = []
    for section in bundle["targets"]:
        for layer in section["layers"]:
            rows.append((section["target"], layer["layer"], layer["state"], layer["why"]))
    who = bundle["identity"]
    table(
        f"Leaver {who['id']}, terminated {moment(who['terminated_at'])}",
        ["target", "layer", "state", "why"],
        rows,
    )
    chain = bundle["audit"]
    state = "intact" if chain["chain_verified"] else f"FAILED: {chain['chain_problem']}"
    out.print(f"Audit chain head: event {chain['head_seq']} {chain['head_hash'][:16]}; {state}.")


def coverage_command(json_out: JsonOption = False) -> None:
    """Every target by category and by what Provisor can do there, with the blind spots.

    Categories: SCIM-managed, directory, database, API-managed, manual. Capabilities come
    from each connector, opened without contacting the target. A blind spot is a target or
    layer where removal cannot be verified.

    Example:  provisor coverage --json
    """
    with opened() as workspace:
        found = coverage(workspace)
    blind = [b for c in found for b in c.blind_spots]
    if json_out:
        print_json(
            {"targets": [c.as_dict() for c in found], "blind_spots": [b.as_dict() for b in blind]}
        )
        return
    table(
        "Coverage",
        ["target", "category", "channel", "write", "read back", "sessions", "owner"],
        [
            (
                c.target,
                c.category,
                c.channel,
                ", ".join(c.write) or "-",
                ", ".join(c.read_back) or "-",
                "yes" if c.sessions else "no",
                c.owner,
            )
            for c in found
        ],
    )
    for c in found:
        for note in c.notes:
            err.print(f"note: {c.target}: {note}", markup=False)
    down = [c for c in found if c.unavailable is not None]
    for c in down:
        assert c.unavailable is not None
        out.print(
            f"{c.target} is {c.unavailable.says()}: nothing is written or read back there until "
            "a probe finds it answering.",
            markup=False,
        )
    if blind:
        table(
            "Blind spots: removal cannot be verified",
            ["target", "layer", "why"],
            [(b.target, b.layer, b.why) for b in blind],
        )
    else:
        out.print(
            "No blind spots: every layer of every target is read back"
            + (" (once the unavailable targets answer)." if down else ".")
        )


@targets_app.command("check")
def targets_check_command(
    target: Annotated[str | None, typer.Argument(help="Only this target.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Probe every read path of each target now and print what each showed.

    A read counts as proof only where it is shown to work on that target: an unfiltered read
    (a group listing, a group read alone, a user's own groups) once it has shown a
    membership; a filter once it has returned an object known to match and left out one
    known not to. The result is recorded, and reads that are not trusted are not used as
    proof. Exit code 15 when a target cannot be probed or none of its membership reads works.

    Example:  provisor targets check github
    """
    with opened() as workspace:
        found = check_targets(workspace, target)
    if json_out:
        print_json({"targets": [c.as_dict() for c in found]})
    else:
        rows = []
        for c in found:
            if c.error or not c.probes:
                rows.append((c.target, "-", "-", c.error or "no probes: reads as declared"))
            rows.extend((c.target, p.path, p.status, p.detail) for p in c.paths)
        table("Read paths", ["target", "path", "status", "how it was shown"], rows)
    unproven = [c.target for c in found if not c.proven]
    if unproven:
        err.print(f"not proven: {', '.join(unproven)}", markup=False)
        finish(ExitCode.TARGET_UNPROVEN)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(targets_app, name="targets")
    app.command("debt")(debt_command)
    app.command("verify-leaver")(verify_leaver_command)
    app.command("coverage")(coverage_command)
