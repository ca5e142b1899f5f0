"""Tampering by someone who can write to the database but not reach the signing key or the
checkpoint file: every script below leaves a chain that is consistent with itself, and each is
caught by ``audit verify`` or ``evidence verify`` because signed checkpoints hold the log."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.engine import correlate, identities, marks
from provisor.engine.audit_log import verify_bundle, verify_log
from provisor.engine.correlate import Match
from provisor.engine.leavers import verify_leaver
from provisor.engine.workspace import Workspace
from provisor.errors import ConfigError
from provisor.evidence import audit
from provisor.evidence.audit import GENESIS, chain_hash
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store.models import (
    AccountMark,
    AuditEvent,
    AuditHead,
    CorrelationCase,
    Hold,
    IdentityEvent,
    PolicyVersion,
)

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
POLICY = """\
targets:
  - name: paper
    class: manual
    owner: finance-ops
    entitlements: [{name: viewer}]
rules:
  - name: staff
    when: {attr: employment_type, equals: employee}
    grant: [{target: paper, entitlements: [viewer]}]
"""


def record(ws: Workspace, *events: LifecycleEvent) -> None:
    with ws.sessions() as session, session.begin():
        identities.record_events(session, ws.config, list(events), origin="test", now=NOW)


@pytest.fixture
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """A workspace whose log holds hires, a leaver and that leaver's evidence, closed (so
    checkpointed); yields its folder and the bundle."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROVISOR_AUDIT_KEY", raising=False)
    folder = tmp_path / "ws"
    ws = scratch_workspace(folder, POLICY)
    hired = NOW - timedelta(days=30)
    attributes = {"name": "P", "email": "p@example.com", "employment_type": "employee"}
    record(ws, *[LifecycleEvent(i, EventKind.HIRE, hired, hired, attributes) for i in "ABC"])
    record(ws, LifecycleEvent("A", EventKind.TERMINATE, NOW, NOW))
    written = verify_leaver(ws, "A", now=lambda: NOW, out_dir=folder / "evidence")
    ws.close()
    yield folder, written.json_path


def opened(folder: Path) -> Workspace:
    return Workspace.open(folder)


def rewrite(folder: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """What an attacker's script does: change the events, then renumber and re-hash the whole
    chain and set the head, so that the chain is consistent with itself again."""
    ws = opened(folder)
    ws.config.audit.checkpoints = False  # the attacker cannot sign; closing must not either
    try:
        with ws.sessions() as session, session.begin():
            rows = [
                {c: getattr(e, c) for c in audit.EXPORT_FIELDS}
                for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))
            ]
            rows = edit(rows)
            prev = GENESIS
            for seq, row in enumerate(rows, 1):
                row["seq"], row["prev_hash"] = seq, prev
                row["hash"] = prev = chain_hash(
                    seq, row["at"], row["actor"], row["action"], row["subject"], row["data"], prev
                )
            session.execute(delete(AuditEvent))
            session.flush()
            session.add_all(AuditEvent(**row) for row in rows)
            session.execute(update(AuditHead).values(seq=len(rows), hash=prev))
    finally:
        ws.close()


def problem_of(folder: Path) -> str:
    ws = opened(folder)
    try:
        result = verify_log(ws)
    finally:
        ws.close()
    assert not result.ok
    return result.problem


def test_an_untouched_log_and_its_evidence_verify(signed: tuple[Path, Path], cli: Any) -> None:
    folder, bundle = signed
    ws = opened(folder)
    try:
        result = verify_log(ws)
        assert result.ok and result.checkpoints >= 1, result
        assert result.unprotected == 0 and result.protected_through == result.head_seq
        check = verify_bundle(ws, bundle)
        assert check.ok and check.identity == "A" and check.problems == [], check
    finally:
        ws.close()
    lines = (folder / "audit-checkpoints.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["seq"] == result.head_seq
    assert (folder / "audit-signing.key").stat().st_mode & 0o777 == 0o600
    shown = cli("--workspace", str(folder), "audit", "verify")
    assert shown.code == 0 and "Held to" in shown.out and "0 event(s) after it" in shown.out
    assert cli("--workspace", str(folder), "evidence", "verify", str(bundle)).code == 0


def test_rewrite_and_rechain_is_caught(signed: tuple[Path, Path], cli: Any) -> None:
    folder, _ = signed

    def new_actor(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[1]["actor"] = "somebody-else"
        return rows

    rewrite(folder, new_actor)
    ws = opened(folder)
    with ws.sessions() as session:
        assert audit.verify(session).ok  # consistent with itself: the unsigned check passes
    ws.close()
    assert "signed checkpoint recorded: the history up to it was rewritten" in problem_of(folder)
    failed = cli("--workspace", str(folder), "audit", "verify")
    assert failed.code == 8 and "TAMPERED" in failed.err


def test_tail_truncation_with_the_head_moved_back_is_caught(signed: tuple[Path, Path]) -> None:
    folder, _ = signed
    rewrite(folder, lambda rows: rows[:-2])
    assert "a signed checkpoint covers event" in problem_of(folder)


def test_a_status_edit_of_a_lifecycle_event_is_caught(signed: tuple[Path, Path]) -> None:
    folder, _ = signed
    ws = opened(folder)
    ws.config.audit.checkpoints = False
    with ws.sessions() as session, session.begin():
        session.execute(
            update(IdentityEvent)
            .where(IdentityEvent.kind == EventKind.TERMINATE.value)
            .values(status="held")
        )
    ws.close()
    assert "its status was edited outside Provisor" in problem_of(folder)


def test_deleting_the_evidence_event_is_caught(signed: tuple[Path, Path], cli: Any) -> None:
    folder, bundle = signed
    rewrite(folder, lambda rows: [r for r in rows if r["action"] != "evidence.leaver"])
    assert "signed checkpoint" in problem_of(folder)
    ws = opened(folder)
    try:
        check = verify_bundle(ws, bundle)
    finally:
        ws.close()
    assert not check.ok
    assert any("no evidence.leaver event records this file" in p for p in check.problems)
    failed = cli("--workspace", str(folder), "evidence", "verify", str(bundle))
    assert failed.code == 8 and "NOT verified" in failed.err


def test_an_edited_bundle_is_caught(signed: tuple[Path, Path]) -> None:
    folder, bundle = signed
    bundle.write_text(bundle.read_text().replace('"incomplete"', '"pass"'))
    ws = opened(folder)
    try:
        check = verify_bundle(ws, bundle)
    finally:
        ws.close()
    assert not check.ok and check.event_seq is None


def test_removing_or_forging_checkpoints_is_caught(signed: tuple[Path, Path]) -> None:
    folder, _ = signed
    file = folder / "audit-checkpoints.jsonl"
    kept = file.read_text()
    record_ = json.loads(kept.splitlines()[-1])
    record_["hash"] = "0" * 64
    file.write_text(kept + json.dumps(record_) + "\n")
    assert "does not verify with the signing key" in problem_of(folder)
    file.unlink()
    assert "checkpoint file" in problem_of(folder) and "missing" in problem_of(folder)


def test_the_tail_since_the_last_checkpoint_is_reported(signed: tuple[Path, Path]) -> None:
    folder, _ = signed
    ws = opened(folder)
    ws.config.audit.checkpoints = False  # events appended and no checkpoint made yet
    hired = NOW - timedelta(days=1)
    record(ws, LifecycleEvent("D", EventKind.HIRE, hired, hired, {"name": "D"}))
    ws.close()
    ws = opened(folder)
    try:
        result = verify_log(ws)
        assert result.ok and result.unprotected == 1, result
        assert ws.checkpoint() is not None and verify_log(ws).unprotected == 0
    finally:
        ws.close()


def decided(folder: Path) -> None:
    """A mark, a correlation case resolved by a person, a hold on a mass leaving, and the
    policy version in use: the decisions the next test edits one at a time."""
    ws = opened(folder)
    hired = NOW - timedelta(days=30)
    attributes = {"name": "P", "email": "p@example.com", "employment_type": "employee"}
    record(
        ws, *[LifecycleEvent(f"M{i}", EventKind.HIRE, hired, hired, attributes) for i in range(9)]
    )
    record(ws, *[LifecycleEvent(f"M{i}", EventKind.TERMINATE, NOW, NOW) for i in range(6)])
    with ws.sessions() as session, session.begin():
        marks.set_mark(ws, session, "paper", "acct-1", "protected", "INC-1", by="t", now=NOW)
        case = correlate.open_case(
            session,
            "paper",
            "acct-2",
            "x",
            Match(None, "ambiguous", "matches 2 identities", ("B", "C")),
            NOW,
        )
        correlate.resolve_case(session, case.id, "B", by="t", now=NOW)
        ws.note_policy_version(session)
    ws.close()
    assert problem_of_ok(folder) is None


def problem_of_ok(folder: Path) -> str | None:
    ws = opened(folder)
    try:
        result = verify_log(ws)
    finally:
        ws.close()
    return None if result.ok else result.problem


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (update(AccountMark).values(mark="ignore"), "the mark on paper:acct-1 is 'ignore'"),
        (delete(AccountMark), "the mark on paper:acct-1 was removed outside Provisor"),
        (update(CorrelationCase).values(resolved_identity="C"), "correlation case 1 is resolved"),
        (update(Hold).values(status="approved"), "hold 1 is approved but the audit log made"),
        (
            update(PolicyVersion).values(document=PolicyVersion.document + " "),
            "no longer hashes to its digest",
        ),
    ],
)
def test_an_edit_of_each_decision_is_caught(
    signed: tuple[Path, Path], edit: Any, found: str
) -> None:
    folder, _ = signed
    decided(folder)
    ws = opened(folder)
    ws.config.audit.checkpoints = False
    with ws.sessions() as session, session.begin():
        session.execute(edit)
    ws.close()
    assert found in problem_of(folder)


def test_a_journal_outcome_edited_in_the_database_is_caught(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal the application refused, made to look verified in the journal; and a verified
    one set back to run again: both are named."""
    from provisor.sandbox.scim import ScimApp
    from provisor.store.models import Operation
    from tests.engine.test_runner import apply, people, plan, setup_workspace

    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    ScimApp.create_groups(scim_url, "staff", "engineering")
    ws = setup_workspace(tmp_path / "ws", scim_url)
    try:
        people(ws, "E1", "E2")
        plan(ws)
        apply(ws)
        assert verify_log(ws).ok
        with ws.sessions() as session, session.begin():
            first, second = session.scalars(
                select(Operation).where(Operation.status == "verified").order_by(Operation.id)
            ).all()[:2]
            first.status = "pending"
            second.status = "failed"
        problem = verify_log(ws).problem
        assert f"operation {first.key} was recorded verified" in problem, problem
        with ws.sessions() as session, session.begin():
            session.execute(update(Operation).values(status="verified"))
        assert "never recorded that: edited outside Provisor" in verify_log(ws).problem
        with ws.sessions() as session, session.begin():  # a pending removal stopped by hand
            session.execute(update(Operation).values(status="cancelled"))
        assert "is cancelled but the audit log" in verify_log(ws).problem
    finally:
        ws.config.audit.checkpoints = False
        ws.close()


def test_a_held_batch_released_by_hand_is_caught(
    tmp_path: Path, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the removal guard held, set going in the database instead of approved."""
    from provisor.store.models import Operation
    from tests.connectors.test_scim import make_group
    from tests.engine.test_removal_guard import STAFF
    from tests.engine.test_runner import apply, people, plan, setup_workspace

    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    ws = setup_workspace(tmp_path / "ws", scim_url)
    try:
        people(ws, *STAFF)
        plan(ws)
        apply(ws)
        policy = ws.path / "policy" / "policy.yaml"
        policy.write_text(policy.read_text().split("  - name: engineering\n")[0])
        ws.refresh_policy()
        plan(ws, NOW + timedelta(hours=1))
        assert verify_log(ws).ok
        with ws.sessions() as session, session.begin():
            session.execute(
                update(Operation)
                .where(Operation.status == "held")
                .values(status="pending", hold_id=None)
            )
        assert "released outside Provisor" in verify_log(ws).problem
    finally:
        ws.config.audit.checkpoints = False
        ws.close()


def test_without_the_key_the_log_is_neither_intact_nor_tampered(
    signed: tuple[Path, Path], cli: Any
) -> None:
    folder, _ = signed
    key = folder / "audit-signing.key"
    kept = key.read_text()
    key.unlink()
    ws = opened(folder)
    try:
        result = verify_log(ws)
        assert not result.ok and not result.checkable and "key" in result.problem
        with pytest.raises(ConfigError, match="signing key"):
            ws.checkpoint()  # never a new key once checkpoints exist
    finally:
        ws.config.audit.checkpoints = False
        ws.close()
    assert not key.exists()
    shown = cli("--workspace", str(folder), "audit", "verify")
    assert shown.code == 17 and "cannot be checked" in shown.err and "TAMPERED" not in shown.err
    key.write_text(kept)
