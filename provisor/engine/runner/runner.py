"""The runner: the journal's open operations, account by account, through each target's connector.

Does: claim open operations, recording in the journal (committed, before any is written)
which run intends to write them; group them by account in step order, run accounts in
parallel up to each target's concurrency (paced by its rate limit), write outcomes to the
journal, the observed store (``readbacks``) and the audit log in batches from one thread (at
least every second); have an operation whose intent a run that died had recorded resolved by
this run's read-back, and say so in the audit log; open manual work items, refer accounts
that may not be taken over to a person, and put parked operations back in line.
Does not: decide what an operation does to an account (``execution``) or plan.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    Connector,
    PermanentError,
)
from provisor.domain.plan import REMOVALS, OpKind, account_spec
from provisor.domain.policy import TargetClass, TargetDef
from provisor.engine import circuit, names
from provisor.engine.circuit import Breaker
from provisor.engine.connections import Pool
from provisor.engine.correlate import Match, open_case
from provisor.engine.identities import window
from provisor.engine.metrics import OPERATION_SECONDS, OPERATIONS
from provisor.engine.runner.execution import Job, Outcome, Owns, execute, failure_of, owned_by
from provisor.engine.runner.leases import Account, Keeper, give_back, renew
from provisor.engine.runner.limits import SharedBucket, Slots
from provisor.engine.runner.pacing import TokenBucket, backoff
from provisor.engine.runner.readbacks import Seen, adopt, observe
from provisor.engine.tasks import open_tasks, requeue_operations, verified_by_read_back
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError
from provisor.evidence import audit
from provisor.store import models
from provisor.store.bulk import chunks
from provisor.store.db import table as table_of

log = logging.getLogger(__name__)

# the journal's table: claims and hand-backs run for every batch of every run, and its Core
# statements skip the ORM's work (they run where the session holds none of the rows they
# change: see ``_give_back_done``)
_OPERATIONS = table_of(models.Operation)
MAX_ATTEMPTS = 5
FLUSH_EVERY = 200  # outcomes per journal transaction at most
FLUSH_SECONDS = 1.0  # and outcomes are never kept longer than this before being written
# a removal's outcome waits at most this long for the run's other removals still running, so
# that a leaver's proof on every target is written in one transaction, not one per target
TOGETHER_SECONDS = 0.1
# what an operation an interrupted run had announced is recorded as, once this run has read
# it back: the read shows the change made (by that run, or it was so already: a read cannot
# tell which); or this run wrote it (again, perhaps) and read it back; or the target cannot
# show it either way
INTERRUPTED_VERIFIED = "intended by an interrupted run; found done on read-back"
INTERRUPTED_REDONE = "intended by an interrupted run; written (again) by this run, then read back"
INTERRUPTED_UNSHOWN = "intended by an interrupted run; the target cannot show whether it was done"


def timed_execute(
    job: Job,
    connector: Connector,
    spec: AccountSpec,
    known: AccountRecord | None,
    due: frozenset[str],
    owns: Owns | None = None,
) -> Outcome:
    """``execute``, its duration observed for the job's target and kind (failures too)."""
    started = time.perf_counter()
    try:
        return execute(job, connector, spec, known, due, owns)
    finally:
        seconds = time.perf_counter() - started
        OPERATION_SECONDS.labels(job.target, job.kind.value).observe(seconds)


class Hold(Protocol):
    """What other work waits on while a leaver's removals go first (``urgency.Urgency``)."""

    @property
    def urgent(self) -> bool: ...

    def hold(self) -> None: ...


class _Slot:
    """One account's slot of its target (``limits.Slots``; none without a ``gate``): taken
    before its first operation, given back while it waits for ``hold`` between operations
    (a leaver's account may need it), taken again after."""

    def __init__(self, gate: Slots | None, run: str, seconds: int, hold: Hold | None) -> None:
        self.gate, self.run, self.seconds, self.hold = gate, run, seconds, hold
        self.slot: int | None = None
        self.started = False

    def take(self, removal: bool, job: Job) -> bool:
        if self.gate is None:
            return True
        try:
            self.slot = self.gate.take(self.run, self.seconds, removal=removal)
        except Exception:  # the database failed: nothing was written; the account waits
            log.exception("no slot of %s for %s", job.target, job.identity)
            return False
        return True

    def pause(self, job: Job) -> bool:
        """Before each operation: whether the account goes on (the first always does)."""
        if not self.started or self.hold is None or not self.hold.urgent:
            self.started = True
            return True
        self.give()
        self.hold.hold()
        return self.take(False, job)

    def give(self) -> None:
        if self.gate is not None and self.slot is not None:
            self.gate.give(self.run, self.slot)
            self.slot = None


def _may_send(breaker: Breaker, bucket: TokenBucket | SharedBucket | None, target: str) -> bool:
    """Whether an account's next operation may go to ``target``: its circuit has not opened
    (else the rest waits for it), and the rate limit gave a token (a shared bucket whose
    database failed stops the account here; what it did is still recorded)."""
    if breaker.tripped:
        return False
    try:
        if bucket is not None:
            bucket.acquire()
    except Exception:
        log.exception("pacing %s failed", target)
        return False
    return True


@dataclass
class ApplyReport:
    verified: int = 0
    unverifiable: int = 0
    retrying: int = 0
    failed: int = 0
    writes: int = 0
    waiting: int = 0  # not due yet, behind an earlier step, or with a person (manual task)
    tasks_opened: int = 0
    accounts: int = 0  # accounts this run took (held their leases)
    no_connector: dict[str, int] = field(default_factory=dict)
    unopened: dict[str, str] = field(default_factory=dict)  # target -> why it cannot be opened
    unavailable: dict[str, str] = field(default_factory=dict)  # target -> its open circuit
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _snapshot(record: AccountRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "account": record.account,
        "user_name": record.user_name,
        "enabled": record.enabled,
        "entitlements": sorted(record.entitlements),
        "sessions": record.sessions,
    } | ({"unread": dict(record.unread)} if record.unread else {})


class Runner:
    """Runs due journal operations once (``apply``); ``provisor run`` calls it in a loop."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        connectors: Mapping[str, Connector] | None = None,
        rng: random.Random | None = None,
        pool: Pool | None = None,
    ) -> None:
        """``pool``: connectors shared with other runners of the process (a worker's), left
        open by ``close``; else the runner opens its own."""
        self.workspace = workspace
        self.max_attempts = max_attempts
        self._own_pool = pool is None
        self._connectors = Pool(workspace, connectors) if pool is None else pool
        self._rng = rng or random.Random()
        self._buckets: dict[str, TokenBucket | SharedBucket] = {}
        self.run_id = uuid.uuid4().hex  # a new one for every apply
        self._lease_seconds = workspace.config.runner.lease_seconds
        # the account each running future works on; accounts done and not yet given back
        self._accounts: dict[Future[list[Outcome]], Account] = {}
        self._done_accounts: set[Account] = set()
        self._keeper = Keeper(workspace, self.run_id, self._lease_seconds)
        # operations an earlier run intended to write and never recorded: op id -> (run, when)
        self._interrupted: dict[int, tuple[str, datetime | None]] = {}
        self._more: list[audit.Entry] = []  # audit entries a batch's records made besides
        # (identity, target) whose user name is generated and who has none: nothing is made
        self._nameless: set[tuple[str, str]] = set()
        self._breakers: dict[str, Breaker] = {}  # this run's view of each target's circuit
        self._hold: Hold | None = None  # this run's, see ``apply``
        self._giving = ThreadPoolExecutor(1, "provisor-give")  # slots given back, see _give
        self._starting: dict[str, int] = {}  # accounts of each target not started yet
        self._starting_lock = threading.Lock()
        self._removing: set[Future[list[Outcome]]] = set()  # accounts with a removal, running

    def _bucket(
        self, where: str, connector: Connector, definition: TargetDef
    ) -> TokenBucket | SharedBucket | None:
        """The target's rate limit. A connector that can pace its own requests (it has
        ``set_throttle``) gets the bucket and spends one token per request to the target,
        kept across runs; otherwise each operation spends one. On PostgreSQL the bucket is
        the database's, shared by every runner and worker of the workspace; on SQLite (one
        machine) it is this process's."""
        if not definition.rate_limit:
            return None
        if where not in self._buckets:
            shared = self.workspace.engine.dialect.name == "postgresql"
            self._buckets[where] = (
                SharedBucket(self.workspace, where, definition.rate_limit)
                if shared
                else TokenBucket(definition.rate_limit)
            )
        bucket = self._buckets[where]
        throttle = getattr(connector, "set_throttle", None)
        if throttle is not None:
            throttle(bucket.acquire)
            return None
        return bucket

    def connector(self, target: str) -> Connector | None:
        return self._connectors.get(target)

    def close(self) -> None:
        if self._own_pool:
            self._connectors.close()

    def apply(
        self,
        *,
        now: Callable[[], datetime],
        target: str | None = None,
        identity: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        identities: Collection[str] | None = None,
        targets: Collection[str] | None = None,
        slots: bool = False,
        hold: Hold | None = None,
    ) -> ApplyReport:
        """Run the open operations (of ``target``, of ``identity`` or ``identities`` when
        given) whose accounts this run can take. ``slots``: take one of the target's slots
        shared by every worker (``limits.Slots``) per account. ``hold``: waited for before an
        account without a removal takes its slot, and between its operations (its slot given
        back meanwhile), while leavers go first. ``targets``: only the accounts in these."""
        report = ApplyReport()
        self.run_id, self._hold, self._breakers = uuid.uuid4().hex, hold, {}
        self._giving, self._starting = ThreadPoolExecutor(1, "provisor-give"), {}
        self._keeper = Keeper(self.workspace, self.run_id, self._lease_seconds)
        self._done_accounts.clear()
        groups = self._groups(target, identity, identities)
        if targets is not None:
            groups = {key: jobs for key, jobs in groups.items() if key[1] in targets}
        total = sum(len(jobs) for jobs in groups.values())
        by_target: dict[str, list[list[Job]]] = {}
        for (_who, where), jobs in groups.items():
            by_target.setdefault(where, []).append(jobs)
        self._wait_for_leavers(groups)  # before any more work: a leaver's run needs the cores
        specs = self._specs(groups)
        done = 0
        pending: list[Outcome] = []
        claimed: set[int] = set()
        finished: set[int] = set()
        pools: list[ThreadPoolExecutor] = []
        # every target runs at once, each in its own pool: a big joiner wave in one application
        # never delays leavers in another; results come back to this one writer thread
        futures: dict[Future[list[Outcome]], int] = {}
        try:
            usable = self._usable(by_target, report, now)
            # every usable target's accounts leased and claimed at once: one transaction each
            held = self._keeper.take(
                {(jobs[0].identity, w) for w in usable for jobs in by_target[w]}
            )
            report.accounts += len(held)
            ours = [
                job.id
                for where in usable
                for jobs in by_target[where]
                if (jobs[0].identity, where) in held
                for job in jobs
            ]
            mine = self._claim(ours, now())
            claimed |= mine
            for where, accounts in sorted(by_target.items()):
                count = sum(len(jobs) for jobs in accounts)
                connector = usable.get(where)
                taken_here = sum(1 for jobs in accounts for job in jobs if job.id in mine)
                done += count - taken_here
                if connector is None:
                    continue
                report.waiting += count - taken_here
                pool = ThreadPoolExecutor(
                    self.workspace.compiled.targets[where].concurrency, f"provisor-{where}"
                )
                pools.append(pool)
                started = self._start(pool, where, connector, accounts, mine, specs, now, slots)
                futures.update(started)
            self._collect(futures, report, pending, finished, (done, total), progress)
        finally:
            for pool in [*pools, self._giving]:  # every account's slot given back too
                pool.shutdown(wait=True)
            try:
                self._flush(pending, report)
                self._release(claimed - finished)
            finally:
                self._forget()
        return report

    def _forget(self) -> None:
        """The end of a run: its leases no longer renewed, its accounts forgotten."""
        self._keeper.stop()
        self._accounts.clear()
        self._removing.clear()

    def _wait_for_leavers(self, groups: Mapping[tuple[str, str], list[Job]]) -> None:
        """A run of other work alone (no removal among its accounts) waits for the run's
        ``hold`` before it works out its accounts' specs, leases and claims anything."""
        if self._hold is not None and not any(
            job.kind in REMOVALS for jobs in groups.values() for job in jobs
        ):
            self._hold.hold()

    def _start(
        self,
        pool: ThreadPoolExecutor,
        where: str,
        connector: Connector,
        accounts: list[list[Job]],
        mine: set[int],
        specs: Mapping[tuple[str, str], AccountSpec],
        now: Callable[[], datetime],
        slots: bool,
    ) -> dict[Future[list[Outcome]], int]:
        """The accounts of ``where`` whose operations this run claimed (``mine``) put in
        its ``pool``, leavers' first: a removal never waits in the pool behind joiners."""
        definition = self.workspace.compiled.targets[where]
        breaker = self._breakers[where] = Breaker(definition.circuit.failures)
        gate = Slots(self.workspace, where, definition.concurrency) if slots else None
        bucket = self._bucket(where, connector, definition)
        futures: dict[Future[list[Outcome]], int] = {}
        for jobs in sorted(accounts, key=lambda js: not any(j.kind in REMOVALS for j in js)):
            taken = [j for j in jobs if j.id in mine]
            if taken:
                run = partial(self._run_account, taken, connector, specs, now, bucket, breaker)
                with self._starting_lock:
                    self._starting[where] = self._starting.get(where, 0) + 1
                future = pool.submit(self._gated, gate, taken, run)
                futures[future] = len(taken)
                if any(j.kind in REMOVALS for j in taken):
                    self._removing.add(future)
                self._accounts[future] = (jobs[0].identity, where)
        return futures

    def _usable(
        self,
        by_target: Mapping[str, list[list[Job]]],
        report: ApplyReport,
        now: Callable[[], datetime],
    ) -> dict[str, Connector]:
        """The connectors of the targets this run can work on, before any work starts: each
        opened (``_opened``), and admitted by its circuit (the open ones read at once, each
        of those through ``circuit.admit``: probes run in parallel, so a target that does not
        answer delays no other). The
        operations of the others are accounted for in ``report``."""
        counts = {
            where: sum(len(jobs) for jobs in accounts) for where, accounts in by_target.items()
        }
        opened = {
            where: self._opened(where, counts[where], report, now) for where in sorted(counts)
        }
        usable = {where: c for where, c in opened.items() if c is not None}
        if not usable:
            return {}
        try:  # one read for all: only targets with an open circuit are admitted one by one
            with self.workspace.sessions() as session:
                open_now = circuit.opened(session)
        except Exception:  # the database failed: each target asks on its own below
            open_now = set(usable)
        asking = {where: c for where, c in usable.items() if where in open_now}
        if not asking:
            return usable
        with ThreadPoolExecutor(min(8, len(asking)), "provisor-probe") as probes:
            verdicts = dict(zip(asking, probes.map(self._admit, asking.items()), strict=True))
        for where, closed in verdicts.items():
            if closed is not None:
                report.unavailable[where] = closed
                report.waiting += counts[where]
                del usable[where]
        return usable

    def _admit(self, item: tuple[str, Connector]) -> str | None:
        """``circuit.admit``, any failure of its own (the database) keeping the target out of
        this run."""
        where, connector = item
        try:
            return circuit.admit(self.workspace, where, connector)
        except Exception as exc:
            log.exception("%s: its circuit could not be read", where)
            return f"its circuit could not be read: {exc}"

    def _opened(
        self, where: str, count: int, report: ApplyReport, now: Callable[[], datetime]
    ) -> Connector | None:
        """The target's connector; None, with the ``count`` operations accounted for in
        ``report``, when they cannot run here: a connector that cannot be opened, a manual
        target (its work items opened), a target class with no connector."""
        try:
            connector = self.connector(where)
        except ProvisorError as exc:
            report.unopened[where] = str(exc)
            report.errors.append(f"{where}: cannot open the connector: {exc}")
            report.waiting += count
            return None
        if connector is None:
            definition = self.workspace.compiled.targets.get(where)
            if definition is not None and definition.target_class is TargetClass.MANUAL:
                with self.workspace.sessions() as session, session.begin():
                    report.tasks_opened += open_tasks(self.workspace, session, now(), [where])
                report.waiting += count
            else:
                report.no_connector[where] = count
            return None
        return connector

    def _collect(
        self,
        futures: Mapping[Future[list[Outcome]], int],
        report: ApplyReport,
        pending: list[Outcome],
        finished: set[int],
        count: tuple[int, int],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Take the accounts' outcomes as they come (``pending``, ids into ``finished``) and
        write them in batches of ``FLUSH_EVERY``, never later than ``FLUSH_SECONDS`` on (or
        once the run's ``hold`` lets go) — and as soon as a removal is among them and the
        run's other accounts with a removal are done too, or ``TOGETHER_SECONDS`` after it
        came: a leaver's proof is not kept waiting, and is written once for all its targets
        rather than once for each."""
        done, total = count
        waiting_for = set(futures)
        flushed = time.monotonic()
        removed: float | None = None  # when the first removal's outcome not yet written came
        while waiting_for:
            wait_at_most = (
                FLUSH_SECONDS
                if removed is None
                else max(0.0, removed + TOGETHER_SECONDS - time.monotonic())
            )
            ready, waiting_for = wait(waiting_for, wait_at_most, FIRST_COMPLETED)
            for future in ready:
                size = futures[future]
                outcomes = future.result()
                if removed is None and any(o.job.kind in REMOVALS for o in outcomes):
                    removed = time.monotonic()
                self._removing.discard(future)
                report.waiting += size - len(outcomes)
                pending.extend(outcomes)
                finished.update(o.job.id for o in outcomes)
                self._done_accounts.add(self._accounts.pop(future))
                done += size
            now_for_removals = removed is not None and (
                not self._removing or time.monotonic() - removed >= TOGETHER_SECONDS
            )
            if pending and (
                now_for_removals
                or len(pending) >= FLUSH_EVERY
                or (removed is None and time.monotonic() - flushed >= FLUSH_SECONDS)
            ):
                if removed is None and not self._removing and self._hold is not None:
                    self._hold.hold()  # other work's outcomes wait too: a leaver's go first
                self._flush(pending, report)
                pending.clear()
                flushed, removed = time.monotonic(), None
            if ready and progress is not None:
                progress(done, total)

    def requeue_failed(
        self, *, now: datetime, target: str | None = None, identity: str | None = None
    ) -> int:
        """Put parked operations back in line with a fresh set of attempts."""
        op = models.Operation
        with self.workspace.sessions() as session, session.begin():
            query = select(op).where(op.status == "failed")
            if target is not None:
                query = query.where(op.target == target)
            if identity is not None:
                query = query.where(op.identity == identity)
            rows = list(session.execute(query).scalars())
            requeue_operations(session, rows, "put back in line by hand", now)
        return len(rows)

    def _claim(self, ids: list[int], at: datetime | None = None) -> set[int]:
        """Mark open operations ``running`` so a plan made meanwhile leaves them alone, and
        record (committed, before any of them is written) that this run intends to write them.
        A row left ``running`` by a crash is claimed again; one whose intent a run that died
        had recorded is remembered, to be resolved by this run's read-back."""
        op = _OPERATIONS.c
        mine: set[int] = set()
        with self.workspace.sessions() as session, session.begin():
            for part in chunks(ids):
                left = select(op.id, op.intent_run, op.intent_at).where(
                    op.id.in_(part), op.status == "running", op.intent_run.is_not(None)
                )
                for op_id, run, when in session.execute(left):
                    self._interrupted[op_id] = (str(run), when)
                claimed = session.execute(
                    update(_OPERATIONS)
                    .where(op.id.in_(part), op.status.in_(["pending", "running"]))
                    .values(
                        status="running",
                        intent_run=self.run_id,
                        intent_at=at or datetime.now(UTC),
                    )
                    .returning(op.id)
                )
                mine.update(claimed.scalars())
        return mine

    def _release(self, ids: set[int]) -> None:
        """Claimed operations that did not run this time (not due, behind a failed step)."""
        op = _OPERATIONS.c
        with self.workspace.sessions() as session, session.begin():
            for part in chunks(sorted(ids)):
                session.execute(
                    update(_OPERATIONS)
                    .where(op.id.in_(part), op.status == "running", op.intent_run == self.run_id)
                    .values(status="pending", intent_run=None, intent_at=None)
                )
            give_back(session, self.run_id)

    def _groups(
        self, target: str | None, identity: str | None, identities: Collection[str] | None = None
    ) -> dict[tuple[str, str], list[Job]]:
        """Open operations by account (identity, target), each list in step order."""
        if identities is not None:
            groups: dict[tuple[str, str], list[Job]] = {}
            for part in chunks(sorted(identities)):
                groups.update(self._some_groups(target, identity, list(part)))
            return groups
        return self._some_groups(target, identity, None)

    def _some_groups(
        self, target: str | None, identity: str | None, identities: list[str] | None
    ) -> dict[tuple[str, str], list[Job]]:
        op = _OPERATIONS.c
        # the columns a job needs, read as rows: a slice of accounts is read for every run
        query = (
            select(
                op.id,
                op.key,
                op.identity,
                op.target,
                op.account,
                op.kind,
                op.entitlement,
                op.not_before,
                op.next_attempt_at,
                op.attempts,
            )
            .where(op.status.in_(["pending", "running"]))
            .order_by(op.identity, op.target, op.step, op.id)
        )
        if target is not None:
            query = query.where(op.target == target)
        if identity is not None:
            query = query.where(op.identity == identity)
        if identities is not None:
            query = query.where(op.identity.in_(identities))
        groups: dict[tuple[str, str], list[Job]] = {}
        with self.workspace.sessions() as session:
            for row in session.execute(query):
                groups.setdefault((row.identity, row.target), []).append(
                    Job(
                        row.id,
                        row.key,
                        row.identity,
                        row.target,
                        row.account,
                        OpKind(row.kind),
                        row.entitlement,
                        row.not_before,
                        row.next_attempt_at,
                        row.attempts,
                    )
                )
        return groups

    def _specs(self, groups: Iterable[tuple[str, str]]) -> dict[tuple[str, str], AccountSpec]:
        """The account spec of each (identity, target), from the identity's attributes."""
        ids = sorted({who for who, _ in groups})
        attributes: dict[str, dict[str, Any]] = {}
        with self.workspace.sessions() as session:
            for part in chunks(ids):
                query = select(models.Identity.external_id, models.Identity.attributes).where(
                    models.Identity.external_id.in_(part)
                )
                attributes.update((i, a or {}) for i, a in session.execute(query))
            made = names.values(session, self.workspace.compiled.policy, ids)
        for who, values in made.items():
            attributes[who] = {**attributes.get(who, {}), **values}
        generated = self.workspace.compiled.policy.generated_map
        targets = self.workspace.compiled.targets
        self._nameless = {
            (who, where)
            for who, where in groups
            if where in targets
            and targets[where].user_name_from in generated
            and targets[where].user_name_from not in made.get(who, {})
        }
        specs = {}
        for who, where in groups:
            definition = self.workspace.compiled.targets.get(where)
            attrs = attributes.get(who, {})
            if definition is None:
                specs[(who, where)] = AccountSpec(who, str(attrs.get("email") or who), attrs)
            else:
                specs[(who, where)] = account_spec(definition, who, attrs)
        return specs

    def _owns(self, job: Job, spec: AccountSpec) -> Owns | None:
        """For a target whose user names are generated, what tells this person's account
        from another's (``execution.owned_by``); None elsewhere."""
        definition = self.workspace.compiled.targets.get(job.target)
        generated = self.workspace.compiled.policy.generated_map
        if definition is None or definition.user_name_from not in generated:
            return None
        return owned_by(definition, spec)

    def _gated(
        self,
        gate: Slots | None,
        jobs: list[Job],
        run: Callable[[Callable[[], bool]], list[Outcome]],
    ) -> list[Outcome]:
        """``run`` (an account's ``_run_account``), holding one of the target's slots while it
        runs when ``gate``; nothing at all once the target's circuit opened. An account
        without a removal waits for the run's ``hold`` before it takes a slot, and gives it
        back while it waits between operations (``_Slot``); an account with a removal may give
        it back behind (``_give``)."""
        where = jobs[0].target
        with self._starting_lock:
            self._starting[where] -= 1
        if self._breakers[where].tripped:
            return []
        removal = any(job.kind in REMOVALS for job in jobs)
        slot = _Slot(gate, self.run_id, self._lease_seconds, None if removal else self._hold)
        if slot.hold is not None:
            slot.hold.hold()
        if not slot.take(removal, jobs[0]):
            return []
        try:
            return run(partial(slot.pause, jobs[0]))
        finally:
            self._give(slot, removal and self._starting[where] == 0)

    def _give(self, slot: _Slot, behind: bool) -> None:
        """Give ``slot`` back; ``behind``: from the run's ``_giving`` thread, so that a
        leaver's outcomes go to be recorded without waiting for that (only when no account
        of the target waits to start in this run: it would find no slot free yet)."""
        if behind and slot.gate is not None:
            try:
                self._giving.submit(slot.give)
                return
            except RuntimeError:  # shut down (the process is ending): given back here
                pass
        slot.give()

    def _run_account(
        self,
        jobs: list[Job],
        connector: Connector,
        specs: Mapping[tuple[str, str], AccountSpec],
        now: Callable[[], datetime],
        bucket: TokenBucket | SharedBucket | None,
        breaker: Breaker,
        pause: Callable[[], bool],
    ) -> list[Outcome]:
        """One account's open operations in step order. A removal that cannot run yet stops
        the rest (leavers' removals keep their order); an addition that fails or is not due
        holds back only the later additions — removals never wait on an addition. Nothing
        more is tried once the target's circuit opened (``breaker``). ``pause`` is asked
        before each operation (``_Slot.pause``)."""
        outcomes: list[Outcome] = []
        account: str | None = None
        renamed_from: str | None = None  # an update renamed the account: its old id
        known: AccountRecord | None = None
        held = False  # an addition failed or is not due yet: later additions wait
        due = frozenset(
            j.entitlement for j in jobs if j.kind is OpKind.ADD_ENTITLEMENT and j.entitlement
        )
        for job in jobs:
            if held and job.kind not in REMOVALS:
                continue
            if not pause():
                break  # no slot again after waiting for a leaver: the rest waits in line
            when = now()
            if not job.due(when):
                if job.kind in REMOVALS or job.kind is OpKind.CREATE:
                    break
                held = True
                continue
            if account is not None and job.account in (None, renamed_from):
                job = dataclasses.replace(job, account=account)
            if not _may_send(breaker, bucket, job.target):
                break
            if not self._keeper.holds((job.identity, job.target)):
                break  # the account's lease ran out or was taken over: write nothing more
            try:
                outcome = self._execute(job, jobs, connector, specs, known, due)
            except Exception as exc:  # every failure is recorded; none may escape a worker
                failure = failure_of(job, exc)
                failure.at = when
                outcomes.append(failure)
                breaker.saw(failure.down, failure.note)
                known = None
                # A removal that failed must not keep the leaver's other access in place;
                # later additions wait, since they may need what this one would have made;
                # nothing goes on without the account a failed create would have made.
                if job.kind in REMOVALS:
                    continue
                if job.kind is OpKind.CREATE:
                    break
                held = True
                continue
            outcome.at = when
            outcomes.append(outcome)
            breaker.saw(False, None)
            known = outcome.record
            if outcome.record is not None:
                if job.account is not None and outcome.record.account != job.account:
                    renamed_from = job.account
                account = outcome.record.account
        return outcomes

    def _execute(
        self,
        job: Job,
        jobs: list[Job],
        connector: Connector,
        specs: Mapping[tuple[str, str], AccountSpec],
        known: AccountRecord | None,
        due: frozenset[str],
    ) -> Outcome:
        """One operation sent and read back (``timed_execute``) with the account spec it
        needs; raises what it fails with."""
        if job.account is None and (job.identity, job.target) in self._nameless:
            raise PermanentError(
                f"{job.target}: no user name could be made for {job.identity} "
                "('provisor plan' says why): no account is made under another name"
            )
        spec = specs[(job.identity, job.target)]
        if job.kind is OpKind.CREATE and any(j.kind is OpKind.DISABLE for j in jobs):
            # the plan wants the new account disabled: never let it exist enabled
            spec = dataclasses.replace(spec, enabled=False)
        return timed_execute(job, connector, spec, known, due, self._owns(job, spec))

    def _flush(self, outcomes: list[Outcome], report: ApplyReport) -> None:
        """Write a batch of outcomes: journal, observed store and audit log, one transaction."""
        if not outcomes:
            return
        entries: list[audit.Entry] = []
        self._more = []  # a batch rolled back takes what its records added with it
        at = max(o.at for o in outcomes if o.at)
        with self.workspace.sessions() as session, session.begin():
            # the renewal is the first write: on SQLite it takes the write lock before the rows
            # are read, on PostgreSQL the rows are locked as they are read; either way nobody
            # takes an operation over between the check below and its record
            renew(session, self.run_id, datetime.now(UTC), self._lease_seconds)
            rows: dict[int, models.Operation] = {}
            for part in chunks([o.job.id for o in outcomes]):
                query = select(models.Operation).where(models.Operation.id.in_(part))
                rows.update((r.id, r) for r in session.execute(query.with_for_update()).scalars())
            verified = []
            seen: list[Seen] = []
            for outcome in outcomes:
                entry = self._record(session, rows[outcome.job.id], outcome, report, seen)
                entries.append(entry)
                if entry.action == "operation.verified":
                    verified.append(outcome.job.id)
            observe(session, seen)
            session.flush()
            adopt(session, [(s.op, s.renamed_from) for s in seen if s.adopted])
            entries.extend(verified_by_read_back(session, verified, at))
            opened, down = self._count_failures(session, outcomes, at)
            entries.extend(self._more)
            self._more.clear()
            audit.append(session, entries, at=at)
            self._give_back_done(session)
        for where, reason in sorted(opened.items()):
            log.warning("%s is unavailable: its circuit is open (%s)", where, reason)
            report.unavailable[where] = f"unavailable: {reason}"
        for where in down:  # opened here or by another runner: this run leaves it alone now
            if where in self._breakers:
                self._breakers[where].trip(opened.get(where, "its circuit is open"))

    def _count_failures(
        self, session: Session, outcomes: list[Outcome], at: datetime
    ) -> tuple[dict[str, str], set[str]]:
        """Count the batch's outcomes in each target's circuit: the circuits opened, and the
        targets whose circuit is open (``circuit.record``)."""
        seen: dict[str, list[bool]] = {}
        reasons: dict[str, str] = {}
        for outcome in sorted(outcomes, key=lambda o: o.at or at):
            seen.setdefault(outcome.job.target, []).append(outcome.down)
            if outcome.down:
                reasons[outcome.job.target] = outcome.note or "unavailable"
        tripped = {t for t, breaker in self._breakers.items() if breaker.tripped}
        definitions = self.workspace.compiled.targets
        return circuit.record(session, seen, reasons, definitions, tripped)

    def _record(
        self,
        session: Session,
        row: models.Operation,
        outcome: Outcome,
        report: ApplyReport,
        seen: list[Seen],
    ) -> audit.Entry:
        """Record ``outcome`` on its journal row; its read-back goes to ``seen``, to be
        stored with the batch's. Returns the audit entry."""
        at = outcome.at
        assert at is not None
        if row.status != "running" or row.intent_run != self.run_id:
            return self._ignored(row, outcome)
        row.attempts += 1
        row.updated_at = at
        row.intent_run = row.intent_at = None
        interrupted = self._interrupted.pop(row.id, None)
        if interrupted is not None and outcome.status in ("verified", "unverifiable"):
            said = (
                INTERRUPTED_UNSHOWN
                if outcome.status == "unverifiable"
                else INTERRUPTED_REDONE
                if outcome.wrote
                else INTERRUPTED_VERIFIED
            )
            outcome.note = said + (f" ({outcome.note})" if outcome.note else "")
        row.last_error = outcome.note
        status = outcome.status
        if status == "retry" and row.attempts >= self.max_attempts:
            status = "failed"
        if status in ("verified", "unverifiable"):
            row.status, row.next_attempt_at = status, None
            row.observed = _snapshot(outcome.record)
            if status == "verified":
                row.verified_at = at
                report.verified += 1
            else:
                report.unverifiable += 1
            report.writes += outcome.wrote
            renamed_from, adopted = None, False
            if outcome.record is not None and row.account != outcome.record.account:
                renamed_from, adopted = row.account, True
                row.account = outcome.record.account
            seen.append(Seen(row, outcome.record, at, renamed_from, adopted))
        elif status == "retry":
            wait = backoff(row.attempts, outcome.retry_after, self._rng)
            row.status, row.next_attempt_at = "pending", at + timedelta(seconds=wait)
            report.retrying += 1
        else:
            row.status, row.next_attempt_at = "failed", None
            report.failed += 1
            report.errors.append(f"{row.identity} {row.target} {row.kind}: {outcome.note}")
            if outcome.refused is not None:
                self._refer(session, row, outcome.refused, at)
        self._next_name(session, row, outcome.taken, at)
        OPERATIONS.labels(row.target, row.kind, status).inc()
        return audit.Entry(
            f"operation.{status}",
            row.identity,
            {
                "key": row.key,
                "target": row.target,
                "kind": row.kind,
                "entitlement": row.entitlement,
                "account": row.account,
                "attempts": row.attempts,
                "observed": row.observed if status in ("verified", "unverifiable") else None,
                "note": outcome.note,
                "next_attempt": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
            }
            | (
                {}
                if interrupted is None
                else {
                    "interrupted_run": interrupted[0],
                    "intended_at": interrupted[1].isoformat() if interrupted[1] else None,
                }
            ),
        )

    def _next_name(
        self, session: Session, row: models.Operation, taken: tuple[str, str] | None, at: datetime
    ) -> None:
        """A generated user name another account holds in the target (``taken``: the name
        and the account): kept from everyone, and the person given the next one
        (``names.blocked``), used when the operation is tried again."""
        if taken is None:
            return
        name, account = taken
        policy = self.workspace.compiled.policy
        keep = window(self.workspace.config)
        self._more.extend(
            names.blocked(session, policy, row.identity, row.target, name, account, at, keep)
        )

    def _give_back_done(self, session: Session) -> None:
        """Give back the accounts whose work is over: their operations that did not run this
        time go back in line first, so the next run to take the account finds no intent of a
        run that is alive."""
        op = _OPERATIONS.c
        for part in chunks(sorted(self._done_accounts)):
            # the table's statement, not the ORM's: the session holds only rows recorded (and
            # flushed) in this batch, none of them running, so there is nothing in it to
            # bring in line
            session.execute(
                update(_OPERATIONS)
                .where(
                    tuple_(op.identity, op.target).in_(part),
                    op.status == "running",
                    op.intent_run == self.run_id,
                )
                .values(status="pending", intent_run=None, intent_at=None)
            )
        give_back(session, self.run_id, self._done_accounts)
        self._keeper.drop(self._done_accounts)
        self._done_accounts.clear()

    def _ignored(self, row: models.Operation, outcome: Outcome) -> audit.Entry:
        """An outcome for an operation that is not this run's any more (another decision, or
        a run that took the account over after this one's lease expired): never recorded."""
        return audit.Entry(
            "operation.ignored",
            row.identity,
            {
                "key": row.key,
                "status": row.status,
                "outcome": outcome.status,
                "run": self.run_id,
                "owner": row.intent_run,
            },
        )

    def _refer(
        self, session: Session, op: models.Operation, found: AccountRecord, now: datetime
    ) -> None:
        """An account not taken over: stored as read, linked to nobody, with a correlation case
        naming the identity it matched by name (one open case per account)."""
        observed = models.ObservedAccount
        row = session.execute(
            select(observed).where(observed.target == op.target, observed.account == found.account)
        ).scalar_one_or_none()
        if row is None:
            row = observed(
                target=op.target,
                account=found.account,
                identity=None,
                enabled=found.enabled,
                sessions=found.sessions,
                attributes={
                    "user_name": found.user_name,
                    "external_id": found.external_id,
                    "mapped": dict(found.attributes),
                },
                observed_at=now,
                source="read-back",
            )
            session.add(row)
            session.flush()
            session.add_all(
                models.ObservedEntitlement(account_id=row.id, entitlement=e, observed_at=now)
                for e in sorted(found.entitlements)
            )
        case = models.CorrelationCase
        waiting = session.execute(
            select(case.id).where(
                case.target == op.target, case.account == found.account, case.status == "open"
            )
        ).first()
        if waiting is None:
            reason = str(op.last_error or "matched by name only")
            match = Match(None, "user name", case_reason=reason, candidates=(op.identity,))
            open_case(session, op.target, found.account, found.user_name, match, now)
