"""Metrics for Prometheus: what the engine is doing and what it owes, in the text format.

Does: count and time, in the process that does the work, every operation recorded (by target,
kind and outcome); and read from the store, at each scrape, what every process shares:
revocation debt by target and class (from the console's ledger when the service has one, else
the newest recorded snapshot, with the moment it was computed; nothing at all when it was
never computed), the journal's queue by target and status with the age of its oldest due
operation, each target's circuit (open or not, failures in a row), reconciliation durations
and the last one of each target, and the time each leaver
took from termination to every automated access removal closed (read back gone, or said
unverifiable). Store readings are kept for ``CACHE_SECONDS``: frequent scrapes cost one read.
Does not: serve HTTP (the service's ``/api/v1/metrics`` route does) or decide anything: every
figure is a count of what the journal and the ledger already say, and names no person.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from provisor.domain.plan import REMOVAL_KINDS, OpKind
from provisor.domain.policy import TargetClass
from provisor.engine import circuit, debt
from provisor.engine.debt_board import DebtBoard
from provisor.engine.workspace import Workspace
from provisor.store import models

CACHE_SECONDS = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUEUED = ("pending", "running", "held", "failed")
CLOSED = ("verified", "unverifiable", "cancelled")
LEAVER_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)
RECONCILE_BUCKETS = (0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)

# in-process instruments: this process's own work, in their own registry
PROCESS = CollectorRegistry(auto_describe=True)
OPERATIONS = Counter(
    "provisor_operations",
    "Operations this process recorded, by target, kind and outcome",
    ["target", "kind", "outcome"],
    registry=PROCESS,
)
OPERATION_SECONDS = Histogram(
    "provisor_operation_seconds",
    "Time this process took to execute one operation (read, write, read back)",
    ["target", "kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=PROCESS,
)


class _Process(Collector):
    """The in-process instruments, inside a registry of their own per served workspace."""

    def collect(self) -> Iterator[Any]:
        yield from PROCESS.collect()


class StoreCollector(Collector):
    """What the store says at scrape time (cached for ``CACHE_SECONDS``)."""

    def __init__(self, workspace: Workspace, board: DebtBoard | None = None) -> None:
        self.workspace = workspace
        self.board = board
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Any]] | None = None

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_SECONDS:
                self._cached = (time.monotonic(), list(self._read()))
            families = self._cached[1]
        yield from families

    def _read(self) -> Iterator[Any]:
        now = datetime.now(UTC)
        yield from self._debt()
        with self.workspace.sessions() as session:
            yield from _queue(session, now)
            yield from _circuits(session, sorted(self.workspace.compiled.targets))
            yield from _reconciliations(session)
            automated = [
                name
                for name, target in self.workspace.compiled.targets.items()
                if target.target_class is not TargetClass.MANUAL
            ]
            yield _leavers(session, automated)

    def _debt(self) -> Iterator[Any]:
        items = GaugeMetricFamily(
            "provisor_debt_items",
            "Revocation debt: access that should be gone and is not verified gone",
            labels=["target", "class"],
        )
        overdue = GaugeMetricFamily(
            "provisor_debt_overdue", "Debt items past their target's SLA", labels=["target"]
        )
        unknown = GaugeMetricFamily(
            "provisor_debt_unknown",
            "Leavers' access in a target nobody has read since the termination",
            labels=["target"],
        )
        computed = GaugeMetricFamily(
            "provisor_debt_computed_timestamp_seconds",
            "When the debt figures were computed (a recorded snapshot, or the service's ledger)",
        )
        counts, at = self._debt_counts()
        classes = {n: t.target_class.value for n, t in self.workspace.compiled.targets.items()}
        for target, (n, late, unread) in sorted(counts.items()):
            items.add_metric([target, classes.get(target, "")], n)
            overdue.add_metric([target], late)
            if unread is not None:  # a recorded snapshot does not keep it per target
                unknown.add_metric([target], unread)
        yield from (items, overdue, unknown)
        if at is not None:
            computed.add_metric([], at.timestamp())
            yield computed

    def _debt_counts(self) -> tuple[dict[str, tuple[int, int, int | None]], datetime | None]:
        """Items, overdue and unknown per target, and when they were computed — from the
        newer of the service's ledger and the newest recorded snapshot; nothing when the debt
        was never computed (no figure rather than a zero nobody showed)."""
        # a scrape never starts a computation: it shows the newest one there is
        seen = self.board.peek() if self.board is not None else None
        board = seen.board if seen is not None else None
        with self.workspace.sessions() as session:
            shots = debt.snapshots(session, limit=1)
        shot = shots[-1] if shots else None
        if board is not None and (shot is None or board.computed_at >= shot.at):
            per: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
            for item in board.ledger.items:
                row = per[item.target]
                row[0] += 1
                row[1] += item.overdue
                row[2] += not item.known
            counted: dict[str, tuple[int, int, int | None]] = {
                t: (a, b, c) for t, (a, b, c) in per.items()
            }
            return counted, board.computed_at
        if shot is None:
            return {}, None
        by_target = (shot.totals or {}).get("target", {})
        found: dict[str, tuple[int, int, int | None]] = {
            t: (int(v["items"]), int(v["overdue"]), None) for t, v in by_target.items()
        }
        return found, shot.at


def _queue(session: Any, now: datetime) -> Iterator[Any]:
    op = models.Operation
    depth = GaugeMetricFamily(
        "provisor_queue_operations",
        "Operations in the journal that are not done, by target and status",
        labels=["target", "status"],
    )
    for target, status, count in session.execute(
        select(op.target, op.status, func.count())
        .where(op.status.in_(QUEUED))
        .group_by(op.target, op.status)
    ):
        depth.add_metric([target, status], count)
    yield depth
    oldest = GaugeMetricFamily(
        "provisor_queue_oldest_seconds",
        "Age of the oldest pending operation that is due, by target",
        labels=["target"],
    )
    due = (op.not_before.is_(None)) | (op.not_before <= now)
    for target, created in session.execute(
        select(op.target, func.min(op.created_at))
        .where(op.status == "pending", due)
        .group_by(op.target)
    ):
        if created is not None:
            oldest.add_metric([target], max(0.0, (now - created).total_seconds()))
    yield oldest


def _circuits(session: Any, targets: list[str]) -> Iterator[Any]:
    """Each target's circuit: open or not, and the failures in a row counted so far."""
    state = GaugeMetricFamily(
        "provisor_target_circuit_open",
        "1 while the target's circuit is open (unavailable: its work waits for a probe)",
        labels=["target"],
    )
    failures = GaugeMetricFamily(
        "provisor_target_failures_in_a_row",
        "Operations in a row that found the target unavailable",
        labels=["target"],
    )
    down = circuit.unavailable(session, targets)
    counted = circuit.failing(session)
    for name in targets:
        state.add_metric([name], 1 if name in down else 0)
        failures.add_metric([name], counted.get(name, 0))
    yield from (state, failures)


def _histogram(
    name: str,
    documentation: str,
    labels: list[str],
    values: dict[tuple[str, ...], list[float]],
    buckets: tuple[float, ...],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, seconds in sorted(values.items()):
        counts = [(str(b), sum(1 for s in seconds if s <= b)) for b in buckets]
        counts.append(("+Inf", len(seconds)))
        family.add_metric(list(key), counts, sum(seconds))
    return family


def _reconciliations(session: Any) -> Iterator[Any]:
    run = models.ReconcileRun
    durations: dict[tuple[str, ...], list[float]] = defaultdict(list)
    last = GaugeMetricFamily(
        "provisor_reconcile_last_completed_timestamp_seconds",
        "When each target's last reconciliation completed",
        labels=["target"],
    )
    latest: dict[str, datetime] = {}
    for target, mode, started, finished in session.execute(
        select(run.target, run.mode, run.started_at, run.finished_at).where(
            run.status == "completed", run.finished_at.is_not(None)
        )
    ):
        durations[(target, mode)].append(max(0.0, (finished - started).total_seconds()))
        if target not in latest or finished > latest[target]:
            latest[target] = finished
    yield _histogram(
        "provisor_reconcile_seconds",
        "Duration of completed reconciliations, by target and mode",
        ["target", "mode"],
        durations,
        RECONCILE_BUCKETS,
    )
    for target, finished in sorted(latest.items()):
        last.add_metric([target], finished.timestamp())
    yield last


def _leavers(session: Any, automated: list[str]) -> HistogramMetricFamily:
    """Termination to the last access removal closed in an ``automated`` target, for every
    leaver whose removals planned since the termination are all closed there: ``proof`` says
    whether each was read back gone (``verified``) or some could not be shown either way
    (``partly-unverifiable``, e.g. sessions on a target that cannot list them). A leaver with
    one still open is not counted until it is; deleting an account after its grace period is
    not access and is not waited for."""
    op, ident = models.Operation, models.Identity
    kinds = [k for k in REMOVAL_KINDS if k != OpKind.DELETE.value]
    verified = func.sum(case((op.status == "verified", 1), else_=0))
    unshown = func.sum(case((op.status == "unverifiable", 1), else_=0))
    query = (
        select(
            func.count(),
            verified,
            unshown,
            func.max(func.coalesce(op.verified_at, op.updated_at)),
            func.min(ident.terminated_at),
        )
        .join(ident, ident.external_id == op.identity)
        .where(
            ident.state == "terminated",
            ident.terminated_at.is_not(None),
            op.kind.in_(kinds),
            op.target.in_(automated),
            # every removal still open, whenever it was planned (a parked one from before the
            # termination keeps the leaver open), and those closed since the termination
            op.status != "cancelled",
            op.status.not_in(CLOSED) | (op.updated_at >= ident.terminated_at),
        )
        .group_by(op.identity)
    )
    seconds: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for total, shown, unshown_count, closed, terminated in session.execute(query):
        if closed is None or terminated is None or shown + unshown_count != total:
            continue
        proof = "verified" if not unshown_count else "partly-unverifiable"
        seconds[(proof,)].append(max(0.0, (closed - terminated).total_seconds()))
    return _histogram(
        "provisor_leaver_closed_seconds",
        "Termination to every automated access removal closed, per leaver, by proof",
        ["proof"],
        seconds,
        LEAVER_BUCKETS,
    )


def exposition(workspace: Workspace, board: DebtBoard | None = None) -> bytes:
    """The metrics of ``workspace`` in Prometheus's text format."""
    return generate_latest(registry_for(workspace, board))


def registry_for(workspace: Workspace, board: DebtBoard | None = None) -> CollectorRegistry:
    """A registry with this process's instruments and ``workspace``'s store readings."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Process())
    registry.register(StoreCollector(workspace, board))
    return registry
