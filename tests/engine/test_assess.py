"""Assessment of stored accounts at scale, on SQLite and on PostgreSQL: the bulk reads, the
quick "as desired" judgement, the shared desired access and the bulk writes give exactly what
judging each account on its own, through the ORM, gives."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from provisor.domain.classify import Verdict, classify, primary_account
from provisor.domain.desired import desired_access
from provisor.domain.lifecycle import EventKind, LifecycleEvent
from provisor.domain.plan import ObservedAccount
from provisor.engine import identities
from provisor.engine.assess import Finding, classify_accounts, identity_states, load_rows
from provisor.engine.planner import observed_for, state_from_row, sync_journal
from provisor.engine.workspace import Workspace
from provisor.sandbox.workspaces import scratch_workspace
from provisor.store import models
from provisor.store.bulk import identity_rows

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SEEN = NOW - timedelta(hours=3, microseconds=250)

POLICY = """\
targets:
  - name: app
    class: scim
    owner: it
    connection: {url: "http://127.0.0.1:9/v2"}
    entitlements: [{name: staff}, {name: eng}, {name: ops}]
  - name: wiki
    class: scim
    owner: it
    leaver_action: remove-entitlements
    connection: {url: "http://127.0.0.1:9/v2"}
    entitlements: [{name: readers}]
rules:
  - name: staff
    when: {attr: department, in: [Eng, Ops]}
    grant: [{target: app, entitlements: [staff]}]
  - name: eng
    when: {attr: department, equals: Eng}
    grant: [{target: app, entitlements: [eng]}, {target: wiki, entitlements: [readers]}]
roles:
  - name: operator
    grants: [{target: app, entitlements: [ops]}]
assignments:
  - {identity: E4, role: operator, approver: boss, granted: "2026-01-01"}
"""


@pytest.fixture
def ws(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", database_url)
    workspace = scratch_workspace(tmp_path, POLICY)
    yield workspace
    workspace.close()


def hire(identity: str, department: str) -> LifecycleEvent:
    return LifecycleEvent(
        identity,
        EventKind.HIRE,
        NOW - timedelta(days=100),
        NOW - timedelta(days=100),
        {"email": f"{identity.lower()}@example.com", "department": department},
        source="test",
    )


# (target, account, identity, enabled, entitlements, attributes)
ACCOUNTS: list[tuple[str, str, str | None, bool, list[str], dict[str, object]]] = [
    ("app", "u1", "E1", True, ["staff", "eng"], {}),  # as desired
    ("wiki", "w1", "E1", True, ["readers"], {}),  # as desired
    ("app", "u2", "E2", True, ["staff", "eng"], {}),  # extra eng
    ("app", "u2-old", "E2", False, [], {}),  # a second account
    ("wiki", "w2", "E2", False, [], {}),  # granted nothing here, disabled: ok
    ("app", "u3", "E3", True, ["staff"], {}),  # terminated, still enabled
    ("wiki", "w3", "E3", True, [], {}),  # terminated, kept enabled on purpose
    ("app", "u4", "E4", True, ["staff", "ops"], {}),  # its assignment counts: as desired
    ("app", "u5", "E5", False, ["staff", "eng"], {}),  # disabled, should be enabled
    # a live read that shows a user name out of date
    ("wiki", "w5", "E5", True, ["readers"], {"user_name": "old@example.com", "mapped": {}}),
    ("app", "u6", "E6", True, ["staff", "eng"], {"mapped": "not read"}),  # as desired
    ("app", "hand", None, True, ["staff"], {}),  # orphan
    ("app", "loose", "orphan:loose", True, [], {}),  # an orphan's journal key is no link
    ("app", "ghost", "E404", False, ["eng"], {}),  # linked to no known identity
    ("app", "waiting", "E6", True, ["staff"], {}),  # its correlation case is open
    ("wiki", "w6", "E6", True, ["readers"], {}),  # as desired
]


def fill(ws: Workspace) -> None:
    with ws.sessions() as session, session.begin():
        identities.record_events(
            session,
            ws.config,
            [
                hire("E1", "Eng"),
                hire("E2", "Ops"),
                hire("E3", "Eng"),
                hire("E4", "Ops"),
                hire("E5", "Eng"),
                hire("E6", "Eng"),
                LifecycleEvent("E3", EventKind.TERMINATE, NOW - timedelta(days=2), NOW),
            ],
            origin="test",
            now=NOW,
        )
        for target, account, who, enabled, ents, attributes in ACCOUNTS:
            row = models.ObservedAccount(
                target=target,
                account=account,
                identity=who,
                enabled=enabled,
                attributes=attributes,
                sessions=2 if account == "u3" else None,
                observed_at=SEEN,
                source="test",
            )
            session.add(row)
            session.flush()
            for ent in ents:
                session.add(
                    models.ObservedEntitlement(account_id=row.id, entitlement=ent, observed_at=SEEN)
                )
        session.add(
            models.CorrelationCase(
                target="app", account="waiting", reason="two matches", created_at=NOW
            )
        )


def one_by_one(ws: Workspace, unreadable: dict[str, str]) -> dict[tuple[str, str], Verdict]:
    """Each account judged on its own, from ORM rows, with desired access built afresh."""
    compiled = ws.compiled
    with ws.sessions() as session:
        states = {
            row.external_id: state_from_row(row, NOW)
            for row in session.execute(select(models.Identity)).scalars()
        }
        accounts = []
        for row in session.execute(select(models.ObservedAccount)).scalars():
            ents = session.execute(
                select(models.ObservedEntitlement.entitlement).where(
                    models.ObservedEntitlement.account_id == row.id
                )
            ).scalars()
            who = None if (row.identity or "").startswith("orphan:") else row.identity
            accounts.append(
                ObservedAccount(
                    row.target,
                    row.account,
                    who,
                    row.enabled,
                    frozenset(ents),
                    row.observed_at,
                    row.sessions,
                    row.attributes,
                )
            )
        cases = {
            (c.target, c.account): c.id
            for c in session.execute(select(models.CorrelationCase)).scalars()
        }
    groups: dict[tuple[str, str], list[ObservedAccount]] = defaultdict(list)
    for a in accounts:
        if a.identity in states:
            groups[(a.identity, a.target)].append(a)
    found = {}
    for a in accounts:
        state = states.get(a.identity or "")
        members = groups.get((a.identity or "", a.target), [])
        found[(a.target, a.account)] = classify(
            compiled.targets[a.target],
            a,
            state,
            desired_access(compiled, state) if state else None,
            kept=primary_account(members) if len(members) > 1 else None,
            open_case=cases.get((a.target, a.account)),
            unreadable=unreadable.get(a.target),
        )
    return found


def stored(ws: Workspace) -> dict[tuple[str, str], tuple[str | None, str | None, datetime | None]]:
    oa = models.ObservedAccount
    with ws.sessions() as session:
        return {
            (t, a): (c, d, w)
            for t, a, c, d, w in session.execute(
                select(
                    oa.target, oa.account, oa.classification, oa.classified_detail, oa.classified_at
                )
            )
        }


def by_account(findings: list[Finding]) -> dict[tuple[str, str], Verdict]:
    return {(f.row.target, f.row.account): f.verdict for f in findings}


@pytest.mark.parametrize("unreadable", [{}, {"wiki": "timed out"}])
def test_classification_matches_judging_each_account_alone(
    ws: Workspace, unreadable: dict[str, str]
) -> None:
    fill(ws)
    with ws.sessions() as session, session.begin():
        findings = classify_accounts(ws, session, ["app", "wiki"], NOW, unreadable=unreadable)
    verdicts = by_account(findings)
    assert verdicts == one_by_one(ws, unreadable)
    assert len(findings) == len(ACCOUNTS)
    if not unreadable:
        classes = {key: v.classification for key, v in verdicts.items()}
        assert classes == {
            ("app", "u1"): "ok",
            ("wiki", "w1"): "ok",
            ("app", "u2"): "drift",
            ("app", "u2-old"): "drift",
            ("wiki", "w2"): "ok",
            ("app", "u3"): "terminated-active",
            ("wiki", "w3"): "ok",
            ("app", "u4"): "ok",
            ("app", "u5"): "drift",
            ("wiki", "w5"): "drift",
            ("app", "u6"): "ok",
            ("app", "hand"): "orphan",
            ("app", "loose"): "orphan",
            ("app", "ghost"): "orphan",
            ("app", "waiting"): "unlinked",
            ("wiki", "w6"): "ok",
        }
        assert verdicts[("app", "ghost")].detail.startswith("linked to E404, which is not")
        assert "user name is 'old@example.com'" in verdicts[("wiki", "w5")].detail
    # every class and why is stored, at the time of the run
    assert {k: (c, d) for k, (c, d, _) in stored(ws).items()} == {
        k: (v.classification, v.detail) for k, v in verdicts.items()
    }
    assert {w for _, _, w in stored(ws).values()} == {NOW}


def test_only_changed_classes_are_written(ws: Workspace) -> None:
    fill(ws)
    with ws.sessions() as session, session.begin():
        classify_accounts(ws, session, ["app", "wiki"], NOW)
    later = NOW + timedelta(hours=1)
    oa, oe = models.ObservedAccount, models.ObservedEntitlement
    with ws.sessions() as session, session.begin():
        account_id = session.execute(
            select(oa.id).where(oa.target == "app", oa.account == "u2")
        ).scalar_one()
        session.execute(
            oe.__table__.delete().where(oe.account_id == account_id, oe.entitlement == "eng")
        )
        findings = classify_accounts(ws, session, ["app", "wiki"], later)
    after = stored(ws)
    assert after[("app", "u2")] == ("ok", "as desired", later)
    assert {k for k, (_, _, w) in after.items() if w == later} == {("app", "u2")}
    assert by_account(findings) == one_by_one(ws, {})


def test_one_target_and_given_rows(ws: Workspace) -> None:
    fill(ws)
    with ws.sessions() as session, session.begin():
        rows = load_rows(session, ["wiki"])
        states = identity_states(ws, session, {r.identity for r in rows if r.identity}, NOW)
        findings = classify_accounts(ws, session, ["wiki"], NOW, states=states, rows=rows)
    assert sorted(r.account for r in rows) == ["w1", "w2", "w3", "w5", "w6"]
    assert {k: v for k, v in one_by_one(ws, {}).items() if k[0] == "wiki"} == by_account(findings)
    assert set(states) == {"E1", "E2", "E3", "E5", "E6"}


def test_rows_are_read_as_the_orm_reads_them(ws: Workspace) -> None:
    fill(ws)
    with ws.sessions() as session:
        rows = {(r.target, r.account): r for r in load_rows(session, ["app", "wiki"])}
        for row in session.execute(select(models.ObservedAccount)).scalars():
            got = rows[(row.target, row.account)]
            assert (got.id, got.enabled, got.sessions, got.attributes) == (
                row.id,
                row.enabled,
                row.sessions,
                row.attributes,
            )
            assert got.observed_at == row.observed_at == SEEN
            assert got.observed_at.tzinfo is not None
        assert rows[("app", "u1")].entitlements == {"staff", "eng"}
        assert rows[("wiki", "w2")].entitlements == frozenset()
        assert rows[("app", "loose")].identity is None
        assert isinstance(rows[("app", "u1")].enabled, bool)
        linked = observed_for(session, ["E2", "E5"])
        assert sorted(a.account for a in linked["E2"]) == ["u2", "u2-old", "w2"]
        assert {a.account: a.entitlements for a in linked["E5"]} == {
            "u5": {"staff", "eng"},
            "w5": {"readers"},
        }
        assert linked["E5"][0].observed_at == SEEN
        everyone = observed_for(session, None, "wiki")
        assert sorted(everyone) == ["E1", "E2", "E3", "E5", "E6"]


def test_identity_rows_by_lookup_and_by_scan(ws: Workspace) -> None:
    fill(ws)
    with ws.sessions() as session:
        full = {r.external_id: r for r in identity_rows(session)}
        few = identity_rows(session, ids=["E2", "E9"])  # looked up one by one
        most = identity_rows(session, ids=["E1", "E2", "E3", "E4", "E5"])  # one scan
        terminated = identity_rows(session, models.Identity.state == "terminated")
        orm = {r.external_id: r for r in session.execute(select(models.Identity)).scalars()}
    assert [r.external_id for r in few] == ["E2"]
    assert sorted(r.external_id for r in most) == ["E1", "E2", "E3", "E4", "E5"]
    assert [r.external_id for r in terminated] == ["E3"]
    for who, row in full.items():
        assert state_from_row(row, NOW) == state_from_row(orm[who], NOW)
    assert full["E3"].terminated_at == NOW - timedelta(days=2)


def test_plan_of_flagged_identities_is_journaled(ws: Workspace) -> None:
    fill(ws)
    with ws.sessions() as session, session.begin():
        ws.note_policy_version(session)
        session.execute(update(models.Identity).values(needs_plan=False))
    with ws.sessions() as session, session.begin():
        findings = classify_accounts(ws, session, ["app", "wiki"], NOW)
        flagged = sorted(
            {
                f.row.identity
                for f in findings
                if f.row.identity and f.verdict.classification in ("drift", "terminated-active")
            }
        )
        session.execute(
            update(models.Identity)
            .where(models.Identity.external_id.in_(flagged))
            .values(needs_plan=True)
        )
        planned = sync_journal(ws, session, now=NOW, changed_only=True)
    assert flagged == ["E2", "E3", "E5"]
    with ws.sessions() as session:
        journal = {row.id: row for row in session.execute(select(models.Operation)).scalars()}
    assert planned.added == len(planned.operations) == len(journal)
    for op, status, op_id in planned.operations:
        row = journal[op_id]
        assert status == "new" and row.status == "pending" and row.attempts == 0
        assert (row.identity, row.target, row.account, row.kind, row.entitlement) == (
            op.identity,
            op.target,
            op.account,
            op.kind.value,
            op.entitlement,
        )
        assert (row.step, row.reason, row.not_before) == (op.step, op.reason, op.not_before)
        assert row.created_at == row.updated_at == NOW
    kinds = sorted(
        (op.identity, op.kind.value, op.entitlement or "") for op, _, _ in planned.operations
    )
    assert ("E2", "remove-entitlement", "eng") in kinds
    assert ("E3", "disable", "") in kinds
    assert ("E5", "enable", "") in kinds
    with ws.sessions() as session, session.begin():
        session.execute(
            update(models.Identity)
            .where(models.Identity.external_id.in_(flagged))
            .values(needs_plan=True)
        )
        again = sync_journal(ws, session, now=NOW, changed_only=True)
    assert again.added == 0 and sorted(i for _, _, i in again.operations) == sorted(journal)
