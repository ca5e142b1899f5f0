"""The command line's service commands: operators and tokens, made by the local administrator."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from provisor.engine.workspace import Workspace


def _with_stdin(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(value))


def test_operators_and_tokens_from_the_command_line(
    workspace: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_stdin(monkeypatch, "a long enough password\n")
    added = cli(
        "operator", "add", "alice", "--role", "approver", "--email", "a@example.com", "--password"
    )
    assert added.code == 0, added.err
    assert cli("operator", "add", "alice", "--role", "approver").code == 6  # exists already
    unknown = cli("operator", "add", "bob", "--role", "boss")
    assert unknown.code == 6 and "unknown role 'boss'" in unknown.err
    _with_stdin(monkeypatch, "short\n")
    assert cli("operator", "add", "carl", "--role", "auditor", "--password").code == 6
    assert cli("operator", "add", "entra", "--role", "operator").code == 0
    listed = cli("operator", "list", "--json").json()
    assert {o["name"]: o["roles"] for o in listed} == {"alice": ["approver"], "entra": ["operator"]}
    assert "a long enough password" not in str(listed)

    made = cli(
        "token", "create", "--operator", "entra", "--scope", "scim", "--expires", "30d", "--json"
    )
    assert made.code == 0, made.err
    secret = made.json()["token"]
    assert secret.startswith("pvt_") and made.json()["scopes"] == ["scim"]
    beyond = cli("token", "create", "--operator", "alice", "--scope", "scim")
    assert beyond.code == 18 and "do not grant the scope scim" in beyond.err
    listed_tokens = cli("token", "list", "--json").json()
    assert [t["operator"] for t in listed_tokens] == ["entra"]
    assert secret not in str(listed_tokens) and listed_tokens[0]["prefix"] == secret[:10]
    with Workspace.open(workspace).sessions() as session:
        stored = " ".join(str(r) for r in session.execute(text("select * from api_tokens")))
        hashes = " ".join(str(r) for r in session.execute(text("select * from operators")))
    assert secret not in stored and "a long enough password" not in hashes
    assert "$argon2id$" in hashes

    assert cli("token", "revoke", str(listed_tokens[0]["id"])).code == 0
    assert cli("token", "list", "--json").json() == []
    assert len(cli("token", "list", "--all", "--json").json()) == 1
    assert cli("operator", "change", "entra", "--disable").code == 0
    assert cli("operator", "list", "--json").json()[1]["disabled"] is True
    trail = cli("audit", "export").out
    assert "operator.created" in trail and "token.revoked" in trail and secret not in trail
    assert "serve" in cli("--help").out
    assert "Example:" in cli("serve", "--help").out
