"""Every CSV Provisor writes is safe to open in a spreadsheet: a value from a feed or a target
that starts like a formula is written as text."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from provisor.domain.spreadsheet import safe_cell
from provisor.evidence import audit
from provisor.store import models

FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("value", FORMULAS)
def test_formula_starts_become_text(value: str) -> None:
    assert safe_cell(value) == "'" + value


def test_plain_values_and_numbers_are_kept() -> None:
    assert safe_cell("E1042") == "E1042"
    assert safe_cell(-5) == -5
    assert safe_cell(None) is None


def test_the_audit_export_neutralises_ids_and_actors() -> None:
    engine = create_engine("sqlite://")
    models.Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        for value in FORMULAS:
            audit.append(
                session,
                [audit.Entry("lifecycle.hire", value, {"identity": value})],
                actor=value,
                at=datetime(2026, 1, 1, tzinfo=UTC),
            )
    with Session(engine) as session:
        text = "".join(audit.export(session, fmt="csv"))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(FORMULAS)
    for row, value in zip(rows, FORMULAS, strict=True):
        for column in ("actor", "subject"):
            assert row[column] == "'" + value
            assert not row[column].startswith(tuple("=+-@\t\r"))
