"""Three workers, one killed with SIGKILL at a seeded random moment of each run, against a
real SCIM server and a real users table on PostgreSQL: ten runs of 200 operations each (about
a minute and a half in all; ``bench/chaos.py`` runs 2,000 a run). Nothing is lost, no account
is made twice, every operation is verified exactly once, and the audit chain stays intact;
the dead worker's accounts are taken over by the others once its leases run out, and a
replacement worker joins each run."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine, text

from provisor.evidence import audit
from provisor.sandbox.cluster import (
    DRILL_POLICY,
    OPS_PER_PERSON,
    chaos,
    scratch_database,
    verified_keys,
)
from provisor.sandbox.sqlapp import app_schema, users_table_connection
from provisor.sandbox.workspaces import scratch_workspace
from tests.connectors.faulty_proxy import FaultyProxy
from tests.engine.test_workers import SETTINGS

RUNS = 10
PEOPLE = 50  # x (a SCIM account + a users-table account with two roles) = 200 operations a run
OPS = OPS_PER_PERSON * PEOPLE


@pytest.fixture
def users_table(postgres_server: str) -> Iterator[str]:
    """An application's users table in a PostgreSQL database of its own."""
    with scratch_database(postgres_server, "provisor_app") as url:
        engine = create_engine(url)
        app_schema(engine)
        engine.dispose()
        yield url


def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
    scim_url: str,
    postgres_url: str,
    users_table: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    proxy = FaultyProxy(scim_url)
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(
        tmp_path, DRILL_POLICY.format(scim=proxy.url, sql=users_table_connection(users_table))
    )

    def nothing_lost(wave: int, statuses: Counter[str]) -> None:
        assert statuses == {"verified": OPS * (wave + 1)}, (wave, statuses)

    try:
        drill = chaos(
            workspace, dict(os.environ), waves=RUNS, people=PEOPLE, seed=15, after_wave=nothing_lost
        )
    finally:
        proxy.close()
    assert drill.killed == RUNS, drill.errors

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
