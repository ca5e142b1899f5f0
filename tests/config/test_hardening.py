"""Hardening by default: credentials that would cross the network in clear are warned of (an
error with ``require_tls: true``), and the workspace database is its owner's alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisor.domain.transport import cleartext_credentials
from provisor.store.db import DATABASE_FILE


@pytest.mark.parametrize(
    ("connection", "expected"),
    [
        ({"url": "http://scim.example.com/v2", "token": "t"}, "token would be sent unencrypted"),
        ({"url": "http://api.example.com", "username": "u", "password": "p"}, "password"),
        ({"url": "ldap://dir.example.com", "password": "p"}, "ldap:// without start_tls"),
        ({"url": "https://scim.example.com/v2", "token": "t"}, None),
        ({"url": "ldaps://dir.example.com", "password": "p"}, None),
        ({"url": "ldap://dir.example.com", "password": "p", "start_tls": True}, None),
        ({"url": "http://127.0.0.1:8080/scim", "token": "t"}, None),  # never leaves the host
        ({"url": "http://localhost/scim", "token": "t"}, None),
        ({"url": "http://scim.example.com/v2"}, None),  # no credential to expose
        ({"url": "http://scim.example.com/v2", "verify_token": True}, None),
    ],
)
def test_credentials_in_clear(connection: dict[str, Any], expected: str | None) -> None:
    found = cleartext_credentials(connection)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found


POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    connection:
      url: http://scim.example.com/v2
      token: {env: APP_TOKEN}
"""


def test_policy_check_warns_and_require_tls_refuses(workspace: Path, cli: Any) -> None:
    (workspace / "policy" / "policy.yaml").write_text(POLICY)
    warned = cli("policy", "check")
    assert warned.code == 0, warned.err
    assert "warning:" in warned.err and "policy/policy.yaml:6 targets[0] app:" in warned.err
    assert "token would be sent unencrypted to scim.example.com" in warned.err
    config = workspace / "provisor.yaml"
    config.write_text(config.read_text().replace("require_tls: false", "require_tls: true"))
    refused = cli("policy", "check")
    assert refused.code == 3
    assert "require_tls" in refused.err and "policy/policy.yaml:6" in refused.err


def test_the_workspace_database_is_the_owners_alone(workspace: Path) -> None:
    assert (workspace / DATABASE_FILE).stat().st_mode & 0o777 == 0o600


def test_nested_credentials_and_token_endpoints_count() -> None:
    headers = {"url": "http://api.example.com", "api": {"headers": {"Authorization": "x"}}}
    assert "api.headers.Authorization" in (cleartext_credentials(headers) or "")
    oauth = {
        "url": "https://api.example.com",
        "client_secret": "s",
        "auth": {"endpoint": "http://login.example.com/token"},
    }
    assert "login.example.com" in (cleartext_credentials(oauth) or "")
