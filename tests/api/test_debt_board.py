"""The console's debt board: the ledger kept between views is shown as current only while
nothing audited has happened since; a slow recomputation never makes an old ledger pass for a
new one, and a ledger that could not be computed never reads as no debt."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import debt, debt_board, identities
from provisor.engine.debt_board import Board, DebtBoard
from provisor.engine.observed import import_observed
from provisor.engine.workspace import Workspace


@pytest.fixture
def ws(erp_workspace: Path) -> Iterator[Workspace]:
    """Fay (F1) holds erp-user in erp, as an export shows."""
    workspace = Workspace.open(erp_workspace)
    export = erp_workspace / "erp.csv"
    export.write_text("account,email,enabled,entitlements\nfay,fay@example.com,true,erp-user\n")
    import_observed(workspace, "erp", export, now=datetime.now(UTC))
    yield workspace
    workspace.close()


def terminate(ws: Workspace, who: str) -> None:
    now = datetime.now(UTC)
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [LifecycleEvent(who, EventKind.TERMINATE, now, now, {})],
            origin="test",
            now=now,
        )


def owed(board: Board | None) -> set[str]:
    assert board is not None
    return {i.identity for i in board.ledger.items}


def test_a_quick_ledger_is_recomputed_as_soon_as_something_is_audited(ws: Workspace) -> None:
    board = DebtBoard(ws)
    first = board.view()
    assert first.current and owed(first.board) == set()
    assert board.view().board is first.board  # nothing happened: the same ledger
    terminate(ws, "F1")
    second = board.view()
    assert second.current and owed(second.board) == {"F1"}
    assert second.board is not None and first.board is not None
    assert second.board.head > first.board.head


def test_a_slow_ledger_is_shown_as_not_current_until_it_is_recomputed(ws: Workspace) -> None:
    board = DebtBoard(ws, wait_s=0.0, gap=0.0)  # every computation is slow: views never wait
    board.prime()
    board.settle()
    before = board.view()
    assert before.current and owed(before.board) == set()
    terminate(ws, "F1")
    stale = board.view()
    # the old ledger (no debt) is still what is shown, and it says it is not current
    assert stale.board is before.board and not stale.current and stale.refreshing
    assert stale.stale == "changed"
    board.settle()
    fresh = board.view()
    assert fresh.current and owed(fresh.board) == {"F1"}


def test_a_slow_ledger_is_not_recomputed_more_often_than_its_gap(ws: Workspace) -> None:
    board = DebtBoard(ws, wait_s=0.0, gap=1000.0)
    board.prime()
    board.settle()
    terminate(ws, "F1")
    stale = board.view()  # the last computation just ended: no new one before the gap
    assert not stale.current and not stale.refreshing
    assert owed(stale.board) == set()


def test_an_old_ledger_is_not_current_even_when_nothing_was_audited(ws: Workspace) -> None:
    board = DebtBoard(ws, fresh_for=timedelta(milliseconds=50))
    first = board.view().board
    time.sleep(0.1)
    again = board.view()
    assert again.current and again.board is not first  # recomputed: it had grown old


def test_a_ledger_that_cannot_be_computed_is_an_error_never_no_debt(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> debt.Ledger:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(debt_board.debt, "ledger", broken)
    seen = DebtBoard(ws).view()
    assert seen.board is None and not seen.current
    assert seen.error is not None and "the store went away" in seen.error


def test_a_closed_board_starts_no_computation(ws: Workspace) -> None:
    board = DebtBoard(ws)
    board.close()
    seen = board.view()
    assert seen.board is None and not seen.current and not seen.refreshing
