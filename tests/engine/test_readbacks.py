"""A batch of read-backs stored at once leaves the observed store exactly as storing them one
after another would: memberships a read could not show, accounts gone and made again, renames,
export rows giving way, orphans."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisor.domain.accounts import AccountRecord
from provisor.engine.runner.readbacks import Seen, observe
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from tests.engine.test_runner import POLICY

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
UNREAD = {"entitlements": "no membership read path shown to work"}


def record(account: str, *held: str, shown: bool = True, enabled: bool = True) -> AccountRecord:
    return AccountRecord(
        account=account,
        user_name=account,
        enabled=enabled,
        entitlements=frozenset(held),
        unread={} if shown else UNREAD,
    )


def op(identity: str, account: str | None) -> models.Operation:
    return models.Operation(identity=identity, target="app", account=account)


# what the store held before the batch: (identity, account, source, entitlements)
BEFORE = [
    ("E1", "u1", "read-back", ["a", "b"]),
    ("E2", "u2", "read-back", ["a"]),
    ("E4", "u4", "read-back", ["a"]),
    ("E5", "old5", "read-back", ["a"]),
    ("E6", "x6", "export people.csv", ["a"]),
    ("E7", "u7", "read-back", ["a"]),
    (None, "orphan9", "read-back", ["admin"]),
]

# the batch, in outcome order: (operation's identity, its account, read-back, renamed from)
BATCH: list[tuple[str, str | None, AccountRecord | None, str | None]] = [
    ("E1", "u1", record("u1", "c", shown=False), None),  # adds c to a, b
    ("E1", "u1", record("u1", "d"), None),  # then the whole truth: d only
    ("E2", "u2", record("u2", "c", shown=False), None),  # a stays, c added
    ("E3", None, record("u3", "x", shown=False), None),  # new account, nothing stored
    ("E3", "u3", record("u3", "y", shown=False), None),  # x and y
    ("E4", "u4", None, None),  # gone...
    ("E4", "u4", record("u4", "b"), None),  # ...and made again, in the same batch
    ("E5", "old5", record("new5", "a"), "old5"),  # renamed: the old name's row goes
    ("E6", None, record("u6", "a"), None),  # the export's row for E6 gives way
    ("E7", "u7", record("u7", enabled=False), None),  # disabled, holding nothing
    ("E7", "u7", None, None),  # then deleted
    ("orphan:orphan9", "orphan9", record("orphan9", enabled=False), None),
    ("E8", None, record("orphan9", "admin", shown=False), None),  # then linked to E8
    ("E10", None, record("u10", "a"), None),  # made in the batch...
    ("E10", "u10", None, None),  # ...and gone in it
    ("E11", None, record("u11", "a", shown=False), None),  # made in the batch...
    ("E11", "u11", record("v11", "b"), "u11"),  # ...and renamed in it
    ("E12", None, record("u12", "a"), None),  # made in the batch...
    ("orphan:u12", "u12", None, None),  # ...and removed as an orphan's
]


def workspace(folder: Path) -> Workspace:
    ws = scratch_workspace(folder, POLICY.format(url="http://127.0.0.1:9", timeout=1))
    with ws.sessions() as session, session.begin():
        for who, account, source, held in BEFORE:
            row = models.ObservedAccount(
                target="app",
                account=account,
                identity=who,
                enabled=True,
                attributes={},
                observed_at=NOW - timedelta(days=1),
                source=source,
            )
            session.add(row)
            session.flush()
            session.add_all(
                models.ObservedEntitlement(
                    account_id=row.id, entitlement=e, observed_at=NOW - timedelta(days=1)
                )
                for e in held
            )
    return ws


def store(ws: Workspace, batches: Sequence[Sequence[int]]) -> None:
    """The batch's read-backs stored in ``batches`` (lists of positions in ``BATCH``), each
    in one transaction."""
    for positions in batches:
        with ws.sessions() as session, session.begin():
            seen = [
                Seen(op(BATCH[i][0], BATCH[i][1]), BATCH[i][2], NOW + timedelta(seconds=i))
                if BATCH[i][3] is None
                else Seen(
                    op(BATCH[i][0], BATCH[i][1]),
                    BATCH[i][2],
                    NOW + timedelta(seconds=i),
                    BATCH[i][3],
                    True,
                )
                for i in positions
            ]
            observe(session, seen)


def state(ws: Workspace) -> dict[str, Any]:
    with ws.sessions() as session:
        oa, oe = models.ObservedAccount, models.ObservedEntitlement
        held: dict[int, list[str]] = {}
        for account_id, name in session.execute(select(oe.account_id, oe.entitlement)):
            held.setdefault(account_id, []).append(name)
        return {
            row.account: (row.identity, row.enabled, row.source, sorted(held.get(row.id, [])))
            for row in session.execute(select(oa)).scalars()
        }


EXPECTED = {
    "u1": ("E1", True, "read-back", ["d"]),
    "u2": ("E2", True, "read-back", ["a", "c"]),
    "u3": ("E3", True, "read-back", ["x", "y"]),
    "u4": ("E4", True, "read-back", ["b"]),
    "new5": ("E5", True, "read-back", ["a"]),
    "u6": ("E6", True, "read-back", ["a"]),
    "orphan9": ("E8", True, "read-back", ["admin"]),
    "v11": ("E11", True, "read-back", ["b"]),
}


def test_a_batch_is_stored_as_one_read_back_after_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    one_by_one = workspace(tmp_path / "one")
    together = workspace(tmp_path / "together")
    try:
        store(one_by_one, [[i] for i in range(len(BATCH))])
        store(together, [list(range(len(BATCH)))])
        assert state(one_by_one) == EXPECTED
        assert state(together) == EXPECTED
    finally:
        one_by_one.close()
        together.close()


def test_a_batch_on_postgresql(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    together = workspace(tmp_path)
    try:
        store(together, [list(range(len(BATCH)))])
        assert state(together) == EXPECTED
    finally:
        together.close()
