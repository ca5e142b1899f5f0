"""The read-only example connector (``examples/htpasswd_connector.py``): a leaver's login still
in the file is debt and a failed proof, never "removed"; once someone takes it out of the file,
the next read shows it gone."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisor.connectors.base import Capability
from provisor.connectors.registry import open_connector
from provisor.domain.policy import TargetClass
from provisor.sandbox.workspaces import hire_employees, scratch_workspace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
POLICY = """\
targets:
  - name: web
    class: rest
    owner: web-team
    leaver_action: disable
    connection:
      connector: "htpasswd_connector:HtpasswdConnector"
      path: "{folder}/htpasswd"
      group_file: "{folder}/groups"
    entitlements: [{{name: editors}}]
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: web, entitlements: [editors]}}]
"""


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "htpasswd_connector", raising=False)


def test_reads_only(examples: None, tmp_path: Path) -> None:
    (tmp_path / "htpasswd").write_text("# web logins\nann:$apr1$x\nbob:$apr1$y\n")
    (tmp_path / "groups").write_text("editors: ann\nviewers: ann bob\n")
    settings = {
        "connector": "htpasswd_connector:HtpasswdConnector",
        "path": str(tmp_path / "htpasswd"),
        "group_file": str(tmp_path / "groups"),
    }
    connector = open_connector("web", TargetClass.REST, settings)
    assert connector is not None
    assert connector.capabilities() == {Capability.LIST, Capability.READ, Capability.ENTITLEMENTS}
    ann = connector.read("ann")
    assert ann is not None and ann.entitlements == {"editors", "viewers"}
    assert [r.account for r in connector.list_accounts()] == ["ann", "bob"]
    without_groups = open_connector("web", TargetClass.REST, {**settings, "group_file": None})
    assert without_groups is not None
    assert Capability.ENTITLEMENTS not in without_groups.capabilities()


def test_a_leavers_login_in_the_file_is_never_called_removed(
    examples: None, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    (tmp_path / "htpasswd").write_text("p0@example.com:$apr1$x\np1@example.com:$apr1$y\n")
    (tmp_path / "groups").write_text("editors: p0@example.com p1@example.com\n")
    workspace = scratch_workspace(tmp_path, POLICY.format(folder=tmp_path))
    hire_employees(workspace, 2, NOW - timedelta(days=2))
    workspace.close()
    at = ["--now", NOW.isoformat()]
    assert cli(*at, "event", "terminate", "E1").code == 0
    found = cli(*at, "reconcile", "--target", "web", "--json").json()["reports"][0]
    classes = {f["account"]: f["class"] for f in found["findings"]}
    assert classes["p1@example.com"] == "terminated-active"
    applied = cli(*at, "apply", "--json")
    report = applied.json()
    assert applied.code == 11 and report["writes"] == 0 and report["failed"] == 2
    assert any(
        "E1 web disable" in e and "cannot be enabled or disabled" in e for e in report["errors"]
    )
    debt = cli(*at, "debt", "--identity", "E1", "--json").json()
    assert {i["item"] for i in debt["debt"]} >= {"account", "entitlement:editors"}
    assert cli(*at, "verify-leaver", "E1").code == 12  # still present
    # someone removes the login by hand; the next read shows it gone
    (tmp_path / "htpasswd").write_text("p0@example.com:$apr1$x\n")
    later = ["--now", (NOW + timedelta(hours=1)).isoformat()]
    assert cli(*later, "reconcile", "--target", "web").code == 0
    assert cli(*later, "debt", "--identity", "E1", "--json").json()["items"] == 0
    assert cli(*later, "verify-leaver", "E1").code in (0, 13)
