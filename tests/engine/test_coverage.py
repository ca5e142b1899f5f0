"""The coverage map: categories, capabilities and blind spots, read without any network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisor.domain.channels import channel
from provisor.engine.coverage import coverage
from provisor.sandbox.workspaces import scratch_workspace

POLICY = """\
targets:
  - name: github
    class: scim
    owner: platform-team
    connection: {url: "http://127.0.0.1:9/scim/v2", token: {env: PROVISOR_TEST_NO_SUCH_TOKEN}}
    entitlements: [{name: members}]
  - name: directory
    class: ldap
    owner: identity-team
    connection:
      url: ldap://127.0.0.1:9
      bind_dn: cn=admin,dc=example,dc=com
      password: {env: PROVISOR_TEST_NO_SUCH_PASSWORD}
      base_dn: ou=people,dc=example,dc=com
      groups_dn: ou=groups,dc=example,dc=com
    entitlements: [{name: staff}]
  - name: payroll-db
    class: sql
    owner: finance-it
    connection: {mode: postgres-roles, url: "postgresql+psycopg://provisor@127.0.0.1:9/payroll"}
    entitlements: [{name: payroll-read}]
  - name: messaging
    class: rest
    owner: messaging-team
    connection:
      profile: rabbitmq
      url: http://127.0.0.1:9
      username: provisor
      password: {env: PROVISOR_TEST_NO_SUCH_PASSWORD}
  - name: legacy-erp
    class: manual
    owner: finance-ops
    entitlements: [{name: erp-user}]
  - name: homegrown
    class: rest
    owner: it
    connection: {connector: "no_such_package.module:Factory"}
"""


@pytest.fixture
def found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    workspace = scratch_workspace(tmp_path, POLICY)
    try:
        return {c.target: c for c in coverage(workspace)}
    finally:
        workspace.close()


def test_every_target_by_category_and_capability(found: dict[str, Any]) -> None:
    assert sorted(found) == [
        "directory",
        "github",
        "homegrown",
        "legacy-erp",
        "messaging",
        "payroll-db",
    ]
    categories = {name: c.category for name, c in found.items()}
    assert categories == {
        "github": "SCIM-managed",
        "directory": "directory",
        "payroll-db": "database",
        "messaging": "API-managed",
        "legacy-erp": "manual",
        "homegrown": "API-managed",
    }
    github = found["github"]
    assert github.write == ["create", "update", "disable", "delete", "entitlements"]
    assert github.read_back[:2] == ["read", "list"] and not github.sessions
    assert github.channel == "scim"
    # the token cannot be resolved on this machine: said, and capabilities read anyway
    assert any("credentials not resolvable here" in n for n in github.notes)
    db = found["payroll-db"]
    assert db.sessions and db.channel == "sql:postgres-roles"
    assert db.layers == {
        "account": "read back",
        "entitlements": "read back",
        "sessions": "read back",
    }
    assert db.blind_spots == []
    assert found["messaging"].channel == "rest:rabbitmq"
    assert found["messaging"].layers["entitlements"] == "none defined"


def test_blind_spots_name_target_layer_and_why(found: dict[str, Any]) -> None:
    github = {b.layer: b.why for b in found["github"].blind_spots}
    assert list(github) == ["entitlements", "sessions"]
    assert "no session interface" in github["sessions"]
    # a SCIM target's membership read counts once a probe has shown it to work; never probed:
    assert "run 'provisor targets check'" in github["entitlements"]
    assert [b.layer for b in found["directory"].blind_spots] == ["sessions"]
    manual = found["legacy-erp"]
    assert [b.layer for b in manual.blind_spots] == ["account", "entitlements", "sessions"]
    assert "attests" in manual.blind_spots[0].why
    broken = found["homegrown"]
    assert broken.error is not None and "cannot import no_such_package" in broken.error
    assert [b.layer for b in broken.blind_spots] == ["account", "entitlements", "sessions"]
    assert broken.channel == "custom:no_such_package.module:Factory"


def test_cli_coverage_table_and_json(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    scratch_workspace(tmp_path, POLICY).close()
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(tmp_path))
    data = cli("coverage", "--json").json()
    assert data["targets"][0]["target"] == "directory"
    spots = {(b["target"], b["layer"]) for b in data["blind_spots"]}
    assert ("github", "sessions") in spots and ("payroll-db", "sessions") not in spots
    table = cli("coverage")
    assert table.code == 0
    assert "Blind" in table.out and "github" in table.out
    assert "Example:" in cli("coverage", "--help").out


def test_channel_names_the_way_removal_travels() -> None:
    from provisor.domain.policy import TargetDef

    target = TargetDef.model_validate({"name": "t", "class": "manual", "owner": "o"})
    assert channel(target) == "manual"
