"""A workspace run by several ``provisor worker`` processes, for tests and benchmarks.

Does: start workers on a workspace (each logging to ``worker-N.log`` in its folder) and stop
them (SIGTERM, running jobs finish first), collecting the warnings and errors they logged; wait
until the journal has no open operation; count each operation's ``operation.verified`` audit
entries; run the chaos drill — waves of joiners, one of three workers killed with SIGKILL at a
seeded random moment of each wave and replaced — with the policy and the checks left to the
caller.
Also makes throwaway databases on a PostgreSQL server (``scratch_database``).
Does not: start PostgreSQL or the targets, or judge the outcome.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.engine.planner import sync_journal
from provisor.engine.runner.dispatch import Queue
from provisor.engine.workspace import Workspace
from provisor.store import models

Workers = list["subprocess.Popen[bytes]"]
OPS_PER_PERSON = 4

# the drill's targets: a SCIM application ({scim}) and a users table (its connection: {sql},
# from sqlapp.users_table_connection) with two roles;
# each joiner gets a SCIM account and a table account with both roles: four operations
DRILL_POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    concurrency: 8
    connection: {{url: "{scim}", timeout: 10}}
  - name: payroll
    class: sql
    owner: payroll-team
    concurrency: 8
    connection: {sql}
    entitlements: [{{name: viewer}}, {{name: editor}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app}}, {{target: payroll, entitlements: [viewer, editor]}}]
"""


@contextmanager
def scratch_database(server: str, prefix: str = "provisor_test") -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL server at ``server`` (a URL to any
    of its databases), dropped when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start_workers(
    folder: Path, count: int, env: dict[str, str], first: int = 0, options: Sequence[str] = ()
) -> Workers:
    """``count`` workers on the workspace in ``folder``, logging to ``folder``/worker-N.log;
    ``options``: more of ``provisor worker``'s options, for each."""
    command = [str(Path(sys.executable).parent / "provisor"), "-w", str(folder), "worker"]
    started = []
    for n in range(first, first + count):
        with (folder / f"worker-{n}.log").open("wb") as log:
            started.append(
                subprocess.Popen(
                    [*command, "--name", f"w{n}", *options],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
    return started


def stop_workers(workers: Workers, folder: Path) -> str:
    """SIGTERM each (running jobs finish first); the warnings and errors in their logs."""
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    logs = sorted(folder.glob("worker-*.log"))
    lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
    return "\n".join(line for line in lines if " WARNING " in line or " ERROR " in line)


def wait_until_done(workspace: Workspace, timeout: float) -> Counter[str]:
    """Wait until no operation is open (or ``timeout`` seconds); the journal's statuses."""
    deadline = time.monotonic() + timeout
    while True:
        with workspace.sessions() as session:
            statuses = Counter(session.execute(select(models.Operation.status)).scalars())
        if not statuses["pending"] + statuses["running"] or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def verified_keys(workspace: Workspace) -> Counter[str]:
    """How many ``operation.verified`` entries the audit log holds for each operation."""
    with workspace.sessions() as session:
        return Counter(
            (json.loads(data) if isinstance(data, str) else data)["key"]
            for data in session.execute(
                select(models.AuditEvent.data).where(
                    models.AuditEvent.action == "operation.verified"
                )
            ).scalars()
        )


def hire_wave(workspace: Workspace, wave: int, people: int, now: datetime) -> None:
    """``people`` employees W{wave}P{i}, hired yesterday, planned."""
    events = [
        LifecycleEvent(
            f"W{wave}P{i}",
            EventKind.HIRE,
            now - timedelta(days=1),
            now,
            {"name": f"Person {wave}-{i}", "email": f"w{wave}p{i}@example.com"}
            | {"employment_type": "employee"},
        )
        for i in range(people)
    ]
    with workspace.sessions() as session, session.begin():
        identities.record_events(session, workspace.config, events, origin="drill", now=now)
    with workspace.sessions() as session, session.begin():
        sync_journal(workspace, session, now=now)


@dataclass
class Drill:
    """What a chaos drill did: workers killed, each wave's seconds, the journal at the end."""

    killed: int = 0
    seconds: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: str = ""


def chaos(
    workspace: Workspace,
    env: dict[str, str],
    *,
    waves: int,
    people: int,
    seed: int,
    after_wave: Callable[[int, Counter[str]], None] | None = None,
) -> Drill:
    """Three workers; in each wave ``people`` joiners are hired, one worker is killed with
    SIGKILL at a seeded random moment and replaced, and the wave runs until nothing is open
    (``after_wave`` sees its statuses)."""
    folder = workspace.path
    rng = random.Random(seed)
    drill = Drill()
    workers = start_workers(folder, 3, env)
    queue = Queue(workspace)
    try:
        for wave in range(waves):
            started = time.monotonic()
            hire_wave(workspace, wave, people, datetime.now(UTC))
            queue.cycle()  # as the service does when it records a change
            time.sleep(rng.uniform(0.1, 1.5))
            victim = rng.randrange(3)
            if workers[victim].poll() is None:
                os.kill(workers[victim].pid, signal.SIGKILL)
                workers[victim].wait()
                drill.killed += 1
            workers[victim] = start_workers(folder, 1, env, first=3 + wave)[0]
            drill.statuses = wait_until_done(workspace, 300)
            drill.seconds.append(time.monotonic() - started)
            if after_wave is not None:
                after_wave(wave, drill.statuses)
    finally:
        drill.errors = stop_workers(workers, folder)
        queue.close()
    return drill
