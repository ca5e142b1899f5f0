"""Three workers, one killed with SIGKILL at a seeded random moment of each run, against a
real SCIM server and a real users table on PostgreSQL: ten runs of 200 operations each (about
a minute and a half in all; ``bench/chaos.py`` runs 2,000 a run). Nothing is lost, no account
is made twice, every operation is verified exactly once, and the audit chain stays intact;
the dead worker's accounts are taken over by the others once its leases run out, and a
replacement worker joins each run."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import identities
from provisor.engine.planner import sync_journal
from provisor.engine.runner.dispatch import Queue
from provisor.evidence import audit
from provisor.sandbox.workspaces import scratch_workspace
from tests.connectors.faulty_proxy import FaultyProxy
from tests.connectors.test_sql import app_schema
from tests.engine.test_workers import (
    SETTINGS,
    start_workers,
    stop_workers,
    verified_keys,
    wait_until_done,
)

RUNS = 10
PEOPLE = 50  # x (a SCIM account + a users-table account with two roles) = 200 operations a run
OPS = 4 * PEOPLE

POLICY = """\
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
    connection:
      mode: users-table
      url: "{sql}"
      table: accounts
      key: id
      user_name_column: login
      external_id_column: identity
      columns: {{full_name: name, mail: email}}
      defaults: {{tenant: 7}}
      active_column: status
      active_value: active
      inactive_value: locked
      membership_table: account_roles
      membership_account_column: account_id
      membership_entitlement_column: role_id
      entitlement_name_column: name
    entitlements: [{{name: viewer}}, {{name: editor}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app}}, {{target: payroll, entitlements: [viewer, editor]}}]
"""


@pytest.fixture
def users_table(postgres_server: str) -> Iterator[str]:
    """An application's users table in a PostgreSQL database of its own."""
    name = f"provisor_app_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    app_schema(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _hire(workspace, run: int, now: datetime) -> None:  # type: ignore[no-untyped-def]
    events = [
        LifecycleEvent(
            f"R{run}P{i}",
            EventKind.HIRE,
            now - timedelta(days=1),
            now,
            {"name": f"Person {run}-{i}", "email": f"r{run}p{i}@example.com"}
            | {"employment_type": "employee"},
        )
        for i in range(PEOPLE)
    ]
    with workspace.sessions() as session, session.begin():
        identities.record_events(session, workspace.config, events, origin="test", now=now)
    with workspace.sessions() as session, session.begin():
        sync_journal(workspace, session, now=now)


def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
    scim_url: str,
    postgres_url: str,
    users_table: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    env = dict(os.environ)
    proxy = FaultyProxy(scim_url)
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(scim=proxy.url, sql=users_table))
    queue = Queue(workspace)
    rng = random.Random(15)
    workers = start_workers(tmp_path, 3, env)
    killed = 0
    try:
        for run in range(RUNS):
            _hire(workspace, run, datetime.now(UTC))
            queue.cycle()  # as the service does when it records a change
            time.sleep(rng.uniform(0.1, 1.5))
            victim = rng.randrange(3)
            if workers[victim].poll() is None:
                os.kill(workers[victim].pid, signal.SIGKILL)
                workers[victim].wait()
                killed += 1
            workers[victim] = start_workers(tmp_path, 1, env, first=3 + run)[0]
            statuses = wait_until_done(workspace, 60)
            assert statuses == {"verified": OPS * (run + 1)}, (run, statuses)
    finally:
        errors = stop_workers(workers, tmp_path)
        queue.close()
        proxy.close()
    assert killed == RUNS, errors

    people = PEOPLE * RUNS
    # executed once: one user made per person on the SCIM server, one row in the table
    posts = [p for m, p, _ in proxy.requests if m == "POST" and p.rstrip("/").endswith("/Users")]
    assert len(posts) == people
    users = httpx2.get(f"{scim_url}/Users", params={"count": 2 * people}).json()["Resources"]
    assert Counter(u["userName"] for u in users).most_common(1)[0][1] == 1
    assert len(users) == people
    app = create_engine(users_table)
    with app.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM accounts")).scalar_one() == people
        roles = connection.execute(text("SELECT count(*) FROM account_roles")).scalar_one()
        assert roles == 2 * people
    app.dispose()
    # recorded once: each operation verified exactly once in the audit log, chain intact
    verified = verified_keys(workspace)
    assert len(verified) == OPS * RUNS and set(verified.values()) == {1}
    with workspace.sessions() as session:
        assert audit.verify(session).ok
    workspace.close()
