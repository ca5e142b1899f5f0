"""An application's user export links accounts by the same rule a live reconciliation uses:
the id the row carries, a person's decision on a case, then the correlation attributes; a value
that matches several identities opens a correlation case instead of a guess, and a link stays
while a case is open."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from provisor.engine import correlate
from provisor.engine.observed import import_observed
from provisor.engine.workspace import Workspace
from provisor.store import models
from tests.engine.test_reconcile import NOW, hire_twins, workspace_for
from tests.engine.test_runner import people


def _links(ws: Workspace) -> dict[str, str | None]:
    oa = models.ObservedAccount
    with ws.sessions() as session:
        return dict(
            session.execute(select(oa.account, oa.identity).where(oa.target == "app")).all()
        )


def _export(path: Path, *rows: str) -> Path:
    path.write_text("account,identity,email,entitlements\n" + "\n".join(rows) + "\n")
    return path


def test_export_links_like_reconciliation_and_opens_cases(tmp_path: Path, scim_url: str) -> None:
    ws = workspace_for(tmp_path, scim_url)
    try:
        people(ws, "E1")
        hire_twins(ws)
        export = _export(
            tmp_path / "app.csv",
            "a-shared,,shared@example.com,staff",
            "a-e1,, E1@EXAMPLE.com,staff",  # by email, despite case and spaces
            "a-ghost,E404,e1@example.com,",  # an id nobody has: the email decides
            "a-carried,E1,nobody@example.com,",  # the id the row carries wins
        )
        first = import_observed(ws, "app", export, now=NOW)
        assert first.cases_opened == 1 and first.errors == []
        assert any("E404" in w and "not a known identity" in w for w in first.warnings)
        assert _links(ws) == {"a-shared": None, "a-e1": "E1", "a-ghost": "E1", "a-carried": "E1"}
        with ws.sessions() as session:
            (case,) = correlate.list_cases(session, every=False, target="app")
            assert case.account == "a-shared" and list(case.candidates) == ["C1", "C2"]
            assert "matches 2 identities" in case.reason

        # the same export again: the case is still open, no second one, nothing guessed
        again = import_observed(ws, "app", export, now=NOW)
        assert again.cases_opened == 0 and _links(ws)["a-shared"] is None

        with ws.sessions() as session, session.begin():
            correlate.resolve_case(session, case.id, "C2", by="tester", now=NOW, note="asked")
        decided = import_observed(ws, "app", export, now=NOW)
        assert decided.cases_opened == 0 and _links(ws)["a-shared"] == "C2"

        # a link already known is kept while an open case decides a contradiction
        moved = _export(tmp_path / "moved.csv", "a-e1,,shared@example.com,staff")
        kept = import_observed(ws, "app", moved, now=NOW)
        assert kept.cases_opened == 1 and _links(ws) == {"a-e1": "E1"}
        assert any("link to E1 kept" in w for w in kept.warnings)
    finally:
        ws.close()
