"""One cycle at a time across the processes of a workspace on PostgreSQL
(``cycle.one_at_a_time``): a second waits for the running one, a third does not wait too, and
the locks are free again once each block ends."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from provisor.engine.cycle import CYCLE_LOCK, WAITER_LOCK, one_at_a_time
from provisor.engine.runner.dispatch import conninfo
from provisor.sandbox.workspaces import scratch_workspace


def test_one_cycle_runs_one_waits_and_a_third_goes_without_waiting(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    workspace = scratch_workspace(tmp_path, "targets: []\nrules: []\n")
    probe = psycopg.connect(conninfo(workspace), autocommit=True)

    def free(key: int) -> bool:  # looked up, not taken: the probe never gets in the way
        row = probe.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s",
            (key,),
        ).fetchone()
        return row == (0,)

    running, waiting_ran, release = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, bool] = {}

    def first() -> None:
        with one_at_a_time(workspace, one_waits=True) as mine:
            got["first"] = mine
            running.set()
            release.wait(30)

    def second() -> None:
        with one_at_a_time(workspace, one_waits=True) as mine:
            got["second"] = mine
            waiting_ran.set()

    try:
        threads = [threading.Thread(target=first)]
        threads[0].start()
        assert running.wait(30) and not free(CYCLE_LOCK)
        threads.append(threading.Thread(target=second))
        threads[1].start()
        for _ in range(300):  # the second is waiting once it holds the waiter's lock
            if not free(WAITER_LOCK):
                break
            threading.Event().wait(0.01)
        assert not free(WAITER_LOCK) and not waiting_ran.is_set()
        with one_at_a_time(workspace, one_waits=True) as mine:
            assert mine is False  # one waits already: this one does not
        release.set()
        assert waiting_ran.wait(30)
        for thread in threads:
            thread.join(30)
        assert got == {"first": True, "second": True}
        assert free(CYCLE_LOCK) and free(WAITER_LOCK)
    finally:
        release.set()
        probe.close()
        workspace.close()
