"""A target's slots shared by every worker (``limits.Slots``) on PostgreSQL: their rows made
once per process without locking a row anyone holds, and made again when they went (a
restored backup)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from provisor.engine.runner import limits
from provisor.engine.runner.dispatch import conninfo
from provisor.engine.runner.limits import Slots
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models

POLICY = "targets: []\nrules: []\n"


def _slot_rows(workspace, target: str) -> dict[int, str | None]:  # type: ignore[no-untyped-def]
    with workspace.sessions() as session:
        rows = session.execute(
            select(models.TargetSlot.slot, models.TargetSlot.run).where(
                models.TargetSlot.target == target
            )
        )
        return {slot: run for slot, run in rows}


def test_slot_rows_are_made_once_without_waiting_for_a_held_row_and_again_when_gone(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    workspace = scratch_workspace(tmp_path, POLICY)
    holder = psycopg.connect(conninfo(workspace))
    try:
        Slots(workspace, "app", 2)
        assert _slot_rows(workspace, "app") == {0: None, 1: None}
        # another transaction holds slot 0 (a take in flight, a lease renewal): a new process
        # making the rows for a larger concurrency neither waits for it nor deadlocks
        holder.execute("SELECT 1 FROM target_slots WHERE target = 'app' AND slot = 0 FOR UPDATE")
        monkeypatch.setattr(limits, "_MADE", limits.WeakKeyDictionary())
        made = threading.Thread(target=Slots, args=(workspace, "app", 3))
        made.start()
        made.join(10)
        assert not made.is_alive()
        holder.rollback()
        assert _slot_rows(workspace, "app") == {0: None, 1: None, 2: None}
        # made once per process: rows deleted since (a restored backup) are not made at once…
        with workspace.sessions() as session, session.begin():
            session.query(models.TargetSlot).delete()
        gate = Slots(workspace, "app", 3)
        assert _slot_rows(workspace, "app") == {}
        # …but the first take that finds none makes them again, and gets one
        run = uuid.uuid4().hex
        slot = gate.take(run, 30, removal=True)
        assert _slot_rows(workspace, "app")[slot] == run
        gate.give(run, slot)
        assert set(_slot_rows(workspace, "app").values()) == {None}
    finally:
        holder.close()
        workspace.close()
