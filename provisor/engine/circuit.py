"""Each target's circuit breaker: a target that keeps failing to answer is left alone for a
while, said to be unavailable everywhere, probed, and its leavers handed to a person.

Does: count, per target and across every runner (``target_circuits``), operations in a row
that found the target unavailable (``Unavailable``: unreachable, silent, a server error — any
other answer, even a refusal, shows it is there); after the target's ``circuit.failures``
open its circuit (audited): runners leave it alone (its work waits, nothing is attempted or
counted against the operations' attempts) and every run working on it stops (``record`` says
which circuits are open, ``Breaker`` stops the run's accounts) until
``circuit.cool_down_seconds`` on, when one runner probes it (``Connector.check``) and closes
the circuit when it answers (at once when an operator asks, ``probe_soon``); hand a
leaver's removal waiting on an open circuit to the
target's owner as a work item after ``circuit.leavers_to_owner_minutes`` (the owner removes
it by hand; the operation stays open until Provisor's read-back shows it); say which targets
are unavailable, since when and why (``unavailable``). Circuits keep real time, whatever
time a rehearsal acts at.
Does not: decide what an operation's outcome is (``execution``) or retry one (``runner``);
a probe proves only that the target answers, never that any access is gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import false, func, select, update
from sqlalchemy.orm import Session

from provisor.connectors.base import Connector, ConnectorError, Unavailable
from provisor.domain.lifecycle import LifecycleState
from provisor.domain.plan import REMOVAL_KINDS
from provisor.domain.policy import TargetClass, TargetDef
from provisor.engine.tasks import instructions, open_for
from provisor.engine.workspace import Workspace
from provisor.evidence import audit
from provisor.store import models
from provisor.store.db import changed, upsert

log = logging.getLogger(__name__)


class Breaker:
    """One run's view of a target's circuit: its account threads stop taking the target's
    operations once ``failures`` in a row found it unavailable, or once the circuit opened
    elsewhere (``trip``). Thread-safe."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self._lock = threading.Lock()
        self._in_a_row = 0
        self.reason: str | None = None

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def saw(self, unavailable: bool, note: str | None) -> None:
        """An operation's outcome: the target was unavailable, or it answered."""
        with self._lock:
            if not unavailable:
                self._in_a_row = 0
                return
            self._in_a_row += 1
            if self._in_a_row >= self.failures and self.reason is None:
                self.reason = note or "unavailable"

    def trip(self, reason: str) -> None:
        with self._lock:
            self.reason = self.reason or reason


@dataclass(frozen=True)
class Outage:
    """A target whose circuit is open."""

    target: str
    since: datetime
    reason: str
    probe_at: datetime | None
    probes: int
    probe_error: str | None

    def says(self) -> str:
        return f"unavailable since {self.since.isoformat()}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "since": self.since.isoformat(),
            "reason": self.reason,
            "next_probe": self.probe_at.isoformat() if self.probe_at else None,
            "probes": self.probes,
            "probe_error": self.probe_error,
        }


def unavailable(session: Session, targets: Iterable[str] | None = None) -> dict[str, Outage]:
    """The targets whose circuit is open now (of ``targets`` when given)."""
    row = models.TargetCircuit
    query = select(row).where(row.opened_at.is_not(None))
    if targets is not None:
        query = query.where(row.target.in_(sorted(targets)))
    found = {}
    for circuit in session.execute(query).scalars():
        assert circuit.opened_at is not None
        found[circuit.target] = Outage(
            circuit.target,
            circuit.opened_at,
            circuit.reason or "unavailable",
            circuit.probe_at,
            circuit.probes,
            circuit.probe_error,
        )
    return found


def failing(session: Session) -> dict[str, int]:
    """Each target's failures in a row so far (open circuits included)."""
    row = models.TargetCircuit
    return {
        str(name): int(count) for name, count in session.execute(select(row.target, row.failures))
    }


def waiting(session: Session, now: datetime | None = None) -> set[str]:
    """Targets no runner should take work for now: open, and no probe due yet."""
    row = models.TargetCircuit
    query = select(row.target).where(row.opened_at.is_not(None), row.probe_at > (now or _wall()))
    return set(session.execute(query).scalars())


def opened(session: Session) -> set[str]:
    """Targets whose circuit is open (a probe due or not): the ones ``admit`` must look at."""
    row = models.TargetCircuit
    return set(session.execute(select(row.target).where(row.opened_at.is_not(None))).scalars())


def _wall() -> datetime:
    """The circuit's clock: whether a target answers is a matter of real time, whatever time
    a rehearsal (``--now``) acts at."""
    return datetime.now(UTC)


def admit(workspace: Workspace, target: str, connector: Connector) -> str | None:
    """None when a run may work on ``target`` now: its circuit is closed, or this run's probe
    found it answering (the circuit is closed again). Otherwise why not: the circuit is open
    and no probe is due, another runner probes it, or this probe failed too. Only a probe
    that finds the target unavailable (or fails unexpectedly) keeps it open: any other
    answer, a refusal included, shows the target is there."""
    row = models.TargetCircuit
    now = _wall()
    with workspace.sessions() as session, session.begin():
        circuit = session.get(row, target)
        if circuit is None or circuit.opened_at is None:
            return None
        opened, probes = circuit.opened_at, circuit.probes
        said = f"unavailable since {opened.isoformat()}: {circuit.reason}"
        if circuit.probe_at is not None and circuit.probe_at > now:
            return said
        cool_down = workspace.compiled.targets[target].circuit.cool_down_seconds
        # only one runner probes: the one that moves the next probe on
        mine = session.execute(
            update(row)
            .where(row.target == target, row.opened_at == opened, row.probe_at == circuit.probe_at)
            .values(probe_at=now + timedelta(seconds=cool_down), probes=row.probes + 1)
        )
    if not changed(mine):
        return said
    failed = _probe(target, connector)
    with workspace.sessions() as session, session.begin():
        if failed is not None:
            session.execute(
                update(row)
                .where(row.target == target, row.opened_at == opened)
                .values(probe_error=failed)
            )
            return f"{said}; probe failed: {failed}"
        closed = session.execute(
            update(row)
            .where(row.target == target, row.opened_at == opened)
            .values(opened_at=None, failures=0, probe_at=None, probe_error=None, closed_at=now)
        )
        if not changed(closed):
            return f"{said}; opened again meanwhile"
        said_so = {"unavailable_since": opened.isoformat(), "probes": probes + 1}
        audit.append(session, [audit.Entry("target.available", target, said_so)], at=now)
    log.info("%s answers again: its circuit is closed", target)
    return None


def probe_soon(session: Session, target: str) -> Outage | None:
    """Have the next run probe ``target`` now instead of after its cool-down (an operator knows
    it is back): its open circuit, as it was, or None when the circuit is closed (nothing to
    probe). The probe still decides: only an answer closes the circuit. Audited."""
    row = session.get(models.TargetCircuit, target, with_for_update=True)
    if row is None or row.opened_at is None:
        return None
    now = _wall()
    outage = unavailable(session, [target])[target]
    row.probe_at = now
    said = {"unavailable_since": row.opened_at.isoformat(), "probes": row.probes}
    audit.append(session, [audit.Entry("target.probe_asked", target, said)], at=now)
    return outage


def _probe(target: str, connector: Connector) -> str | None:
    """Why the target still counts as unavailable after a check, or None when it answered."""
    try:
        connector.check()
    except Unavailable as exc:
        log.warning("%s: probe failed: %s", target, exc)
        return str(exc)
    except ConnectorError as exc:  # it answered, if only to refuse: it is there
        log.warning("%s: probe answered with an error: %s", target, exc)
        return None
    except Exception as exc:  # unexpected: the target is not shown to answer
        log.exception("%s: probe failed unexpectedly", target)
        return f"{type(exc).__name__}: {exc}"
    return None


def record(
    session: Session,
    seen: Mapping[str, Sequence[bool]],
    reasons: Mapping[str, str],
    definitions: Mapping[str, TargetDef],
    tripped: Iterable[str] = (),
) -> tuple[dict[str, str], set[str]]:
    """Count a batch of outcomes per target (``seen``: in order, True where the target was
    unavailable; ``reasons``: the last such failure of each), opening the circuits that
    reach their target's ``failures`` in a row across every runner, and those of ``tripped``
    targets (a run's ``Breaker`` saw that many in a row itself). Returns the circuits this
    opened, with why, and every target of the batch whose circuit is open now (opened here
    or by another runner): the caller's run stops working on those."""
    row = models.TargetCircuit
    targets = sorted(seen)
    if not any(any(downs) for downs in seen.values()):
        failed = select(row.target).where(
            row.target.in_(targets), (row.failures > 0) | row.opened_at.is_not(None)
        )
        if session.execute(failed).first() is None:
            return {}, set()  # the common case: every target answered and none had failed
    now = _wall()
    down = [{"target": t, "failures": 0, "probes": 0} for t in targets if any(seen[t])]
    upsert(session, row, down, ("target",), where=false())  # rows to lock, made at most once
    query = select(row).where(row.target.in_(targets)).with_for_update()
    rows = {c.target: c for c in session.execute(query).scalars()}
    opened: dict[str, str] = {}
    entries = []
    for target in targets:
        circuit = rows.get(target)
        if circuit is None:
            continue  # it never failed: nothing to count
        outcomes = seen[target]
        answered = [i for i, was_down in enumerate(outcomes) if not was_down]
        tail = len(outcomes) - 1 - answered[-1] if answered else None
        failures = tail if tail is not None else circuit.failures + len(outcomes)
        if failures != circuit.failures:
            circuit.failures = failures
        threshold = definitions[target].circuit.failures if target in definitions else 0
        reason = reasons.get(target)
        if (
            reason is not None
            and circuit.opened_at is None
            and (failures >= threshold or target in tripped)
        ):
            cool_down = definitions[target].circuit.cool_down_seconds
            probe = now + timedelta(seconds=cool_down)
            circuit.opened_at, circuit.reason, circuit.probe_at = now, reason, probe
            circuit.probes, circuit.probe_error = 0, None
            opened[target] = reason
            said = {"failures": failures, "reason": reason, "probe_at": probe.isoformat()}
            entries.append(audit.Entry("target.unavailable", target, said))
    if entries:
        audit.append(session, entries, at=now)
    return opened, {t for t, c in rows.items() if c.opened_at is not None}


def hand_to_owners(
    workspace: Workspace, session: Session, now: datetime, wall: datetime | None = None
) -> int:
    """A work item to the target's owner for each leaver's removal that has waited on an open
    circuit for the target's ``circuit.leavers_to_owner_minutes`` (since the circuit opened,
    by ``wall``, the real time; and since the removal came due, by ``now``, the engine's
    clock) and has none yet. Returns how many."""
    wall = wall or _wall()
    targets = workspace.compiled.targets
    work: list[tuple[models.Operation, TargetDef, str]] = []
    for name, circuit in sorted(unavailable(session, targets).items()):
        definition = targets[name]
        minutes = definition.circuit.leavers_to_owner_minutes
        if minutes is None or definition.target_class is TargetClass.MANUAL:
            continue
        waited = timedelta(minutes=minutes)
        if circuit.since > wall - waited:
            continue
        since = now - waited
        op, who = models.Operation, models.Identity
        rows = session.execute(
            select(op, who.name)
            .join(who, who.external_id == op.identity)
            .where(
                op.target == name,
                op.status.in_(("pending", "running")),
                op.kind.in_(REMOVAL_KINDS),
                func.coalesce(op.not_before, op.created_at) <= since,
                who.state == LifecycleState.TERMINATED.value,
                op.id.not_in(select(models.Task.operation_id)),
            )
            .order_by(op.identity, op.step)
            # one a runner is recording now is left for the next cycle: it may be verified
            .with_for_update(of=op, skip_locked=True)
        ).all()
        for row, person in rows:
            text = (
                f"{instructions(row, person)}. Provisor cannot reach {name} ({circuit.says()}): "
                "remove it by hand; Provisor reads it back once the target answers again."
            )
            work.append((row, definition, text))
    for task in open_for(session, work, now):
        task.read_back = True
    return len(work)
