"""Credentials are masked in every form a target may echo them in, and in every place Provisor
writes text: errors, log records, printed output, stored columns, audit entries."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from provisor import redaction
from provisor.errors import ProvisorError

SECRET = "s3cr3t/pa ss+word="


@pytest.fixture(autouse=True)
def remembered() -> Iterator[None]:
    redaction.forget_all()
    redaction.remember(SECRET, users=["svc-admin"])
    yield
    redaction.forget_all()


@pytest.mark.parametrize(
    "form",
    [
        SECRET,
        quote(SECRET, safe=""),
        base64.b64encode(SECRET.encode()).decode(),
        base64.b64encode(f"svc-admin:{SECRET}".encode()).decode(),
        json.dumps(SECRET)[1:-1],
    ],
)
def test_every_form_of_a_known_secret_is_masked(form: str) -> None:
    shown = redaction.redact(f"upstream said: {form} (end)")
    assert form not in shown and "***" in shown and shown.endswith("(end)")


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: ***"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '"authorization": "***"'),
        ("{'X-Api-Key': 'k-123456789'}", "'X-Api-Key': '***'"),
        ("Cookie: session=abc; other=def\nnext line", "Cookie: ***\nnext line"),
        ("set-cookie=sid=zzz", "set-cookie=***"),
        ("token was Bearer abcdef123456 here", "Bearer *** here"),
        ("GET https://svc:hunter2@host/x failed", "https://svc:***@host/x failed"),
        ("https://:hunter2@host", "https://:***@host"),
        ("GET /v2/Users?password=hunter2&x=1", "?password=***&x=1"),
        ("url /a?x=1&api_key=zz9 answered 500", "&api_key=*** answered 500"),
    ],
)
def test_credential_shapes_are_masked_without_being_known(text: str, kept: str) -> None:
    redaction.forget_all()
    assert kept in redaction.redact(text)


def test_ordinary_text_is_left_alone() -> None:
    redaction.forget_all()
    text = "basic authentication failed; the token endpoint answered HTTP 401 for E1"
    assert redaction.redact(text) == text


def test_errors_logs_and_streams_carry_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    error = ProvisorError(f"app: HTTP 400: echoed {SECRET}")
    assert SECRET not in str(error) and "***" in str(error)

    redaction.install()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("provisor.test").warning("answer: %s", f"Bearer {SECRET}")
        try:
            raise RuntimeError(SECRET)
        except RuntimeError:
            logging.getLogger("provisor.test").exception("failed")
    assert SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)

    buffer = io.StringIO()
    stream = redaction.wrapped(buffer)  # type: ignore[arg-type]
    stream.write(f"printed {SECRET}\n")
    assert redaction.wrapped(stream) is stream
    assert SECRET not in buffer.getvalue() and buffer.getvalue() == "printed ***\n"


def test_a_stored_error_and_an_audit_entry_are_masked(tmp_path: object) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from provisor.evidence import audit
    from provisor.store import models

    engine = create_engine("sqlite://")
    models.Base.metadata.create_all(engine)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with Session(engine) as session, session.begin():
        session.add(
            models.ReconcileRun(
                target="app", mode="full", started_at=now, error=f"HTTP 401 {SECRET}"
            )
        )
        audit.record(session, "operation.failed", f"app:{SECRET}", {"error": f"x {SECRET}"})
    with Session(engine) as session:
        assert SECRET not in session.scalars(select(models.ReconcileRun.error)).one()
        event = session.scalars(select(models.AuditEvent)).one()
        assert SECRET not in event.data and SECRET not in event.subject
        assert audit.verify(session).ok  # the chain is over what was stored
