"""CLI commands for evidence: revocation debt, proof of removal, the coverage map.

Does: ``provisor debt`` (the ledger, grouped, or its trend), ``provisor verify-leaver`` (one
leaver, or a random sample), ``provisor coverage`` and ``provisor targets check`` (read paths
probed now); registered on the main application by
``provisor.cli``. Tables for people, ``--json`` for scripts.
Does not: compute anything itself (``provisor.engine.debt``, ``provisor.evidence.bundle``,
``provisor.engine.coverage`` do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provisor.cli import JsonOption, _now, _open, _parse_when, _print_json, _table, err, out

LEAVER_FAILED = 12  # something a leaver had is still present
LEAVER_INCOMPLETE = 13  # nothing present, but some layer could not be verified
DEBT_UNKNOWN = 16  # some leaver's access has not been read since the termination


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
    from provisor.engine import debt

    if by is not None and by not in debt.GROUPINGS:
        raise typer.BadParameter(f"use one of {', '.join(debt.GROUPINGS)}", param_hint="--by")
    workspace = _open()
    try:
        if trend:
            with workspace.sessions() as session:
                shots = debt.snapshots(session, limit=limit)
            _show_trend(shots, json_out)
            return
        if record:
            with workspace.sessions() as session, session.begin():
                debt.record_snapshot(workspace, session, now=_now())
        with workspace.sessions() as session:
            from sqlalchemy import select

            from provisor.domain.lifecycle import ORPHAN_PREFIX
            from provisor.errors import NotFoundError
            from provisor.store import models

            if target is not None and target not in workspace.compiled.targets:
                names = ", ".join(workspace.compiled.targets)
                raise NotFoundError(f"no target {target!r} in the policy; targets: {names}")
            if identity is not None and not identity.startswith(ORPHAN_PREFIX):
                known = session.execute(
                    select(models.Identity.id).where(models.Identity.external_id == identity)
                ).first()
                if known is None:
                    raise NotFoundError(f"no identity {identity!r}; see 'provisor identities'")
            items = debt.debt_items(workspace, session, _now(), identity=identity, target=target)
    finally:
        workspace.close()
    overdue = sum(1 for i in items if i.overdue)
    identities = len({i.identity for i in items})
    unknown = sum(1 for i in items if not i.known)
    if by is not None:
        groups = debt.summarise(items, by)
        if json_out:
            _print_json(
                {
                    "by": by,
                    "items": len(items),
                    "overdue": overdue,
                    "unknown": unknown,
                    "groups": [g.as_dict() for g in groups],
                }
            )
            _exit_if_unknown(unknown)
            return
        _table(
            f"Revocation debt by {by}",
            [by, "items", "overdue", "identities", "oldest (days)"],
            [(g.key, g.items, g.overdue, g.identities, f"{g.oldest_days:.1f}") for g in groups],
        )
    elif json_out:
        _print_json(
            {
                "items": len(items),
                "overdue": overdue,
                "unknown": unknown,
                "identities": identities,
                "debt": [i.as_dict() for i in items],
            }
        )
        _exit_if_unknown(unknown)
        return
    elif items:
        _table(
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
    if not items:
        out.print("No revocation debt: everything that must be gone is verified gone.")
        return
    out.print(f"{len(items)} items of debt ({overdue} overdue) across {identities} identities.")
    if unknown:
        out.print(
            f"{unknown} of them unknown: access not read since the termination (neither debt "
            "seen nor verified gone); reconcile those targets in full."
        )
    _exit_if_unknown(unknown)


def _exit_if_unknown(unknown: int) -> None:
    if unknown:
        raise typer.Exit(DEBT_UNKNOWN)


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
        _print_json({"snapshots": rows})
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
            (row["at"][:19], row["reconcile_run"], row["items"], change, row["overdue"], by_class)
        )
    columns = ["at", "run", "items", "change", "overdue", "by class"]
    _table("Revocation debt over time", columns, lines)


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
    from provisor.evidence.bundle import verify_leaver, verify_sample

    if (identity is None) == (sample is None):
        raise typer.BadParameter("give an identity id, or --sample N --since DATE")
    if sample is not None and since is None:
        raise typer.BadParameter("--sample needs --since DATE", param_hint="--since")
    workspace = _open()
    try:
        if identity is not None:
            written = verify_leaver(workspace, identity, now=_now, out_dir=out_dir)
            results = [written]
            if json_out:
                _print_json({**written.as_dict(), "bundle": written.bundle})
            else:
                _show_bundle(written.bundle)
                out.print(f"Outcome: {written.outcome}. Evidence: {written.json_path}")
                out.print(f"  {written.html_path}  (SHA-256 {written.sha256[:16]}...)")
        else:
            assert sample is not None and since is not None
            report = verify_sample(
                workspace,
                sample,
                _parse_when(since, "--since"),
                now=_now,
                out_dir=out_dir,
                seed=seed,
            )
            results = report.results
            if json_out:
                _print_json(report.as_dict())
            else:
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
    finally:
        workspace.close()
    if any(r.outcome == "fail" for r in results):
        raise typer.Exit(LEAVER_FAILED)
    if any(r.outcome == "incomplete" for r in results):
        raise typer.Exit(LEAVER_INCOMPLETE)


def _show_bundle(bundle: dict[str, Any]) -> None:
    rows = []
    for section in bundle["targets"]:
        for layer in section["layers"]:
            rows.append((section["target"], layer["layer"], layer["state"], layer["why"]))
    who = bundle["identity"]
    _table(
        f"Leaver {who['id']}, terminated {who['terminated_at'][:10]}",
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
    from provisor.engine.coverage import coverage

    workspace = _open()
    try:
        found = coverage(workspace)
    finally:
        workspace.close()
    blind = [b for c in found for b in c.blind_spots]
    if json_out:
        _print_json(
            {"targets": [c.as_dict() for c in found], "blind_spots": [b.as_dict() for b in blind]}
        )
        return
    _table(
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
    if blind:
        _table(
            "Blind spots: removal cannot be verified",
            ["target", "layer", "why"],
            [(b.target, b.layer, b.why) for b in blind],
        )
    else:
        out.print("No blind spots: every layer of every target is read back.")


targets_app = typer.Typer(help="Targets: probe how each can be read.", no_args_is_help=True)
TARGET_UNPROVEN = 15  # a target could not be probed, or no membership read is shown to work


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
    from provisor.engine.connections import check

    workspace = _open()
    try:
        targets = workspace.compiled.targets
        if target is not None and target not in targets:
            names = ", ".join(sorted(targets)) or "none"
            raise typer.BadParameter(f"no target {target!r}; targets: {names}")
        found = [check(workspace, targets[n]) for n in sorted(targets) if target in (None, n)]
    finally:
        workspace.close()
    if json_out:
        _print_json({"targets": [c.as_dict() for c in found]})
    else:
        rows = []
        for c in found:
            if c.error or not c.probes:
                rows.append((c.target, "-", "-", c.error or "no probes: reads as declared"))
            rows.extend((c.target, p.path, p.status, p.detail) for p in c.paths)
        _table("Read paths", ["target", "path", "status", "how it was shown"], rows)
    unproven = [
        c.target
        for c in found
        if (c.error and c.probes) or (c.paths and not any(p.status == "trusted" for p in c.paths))
    ]
    if unproven:
        err.print(f"not proven: {', '.join(unproven)}", markup=False)
        raise typer.Exit(TARGET_UNPROVEN)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(targets_app, name="targets")
    app.command("debt")(debt_command)
    app.command("verify-leaver")(verify_leaver_command)
    app.command("coverage")(coverage_command)
