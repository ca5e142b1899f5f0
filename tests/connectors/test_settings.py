"""Typed connector settings and the connector base class: a mistyped setting is refused with
the policy file and line before anything runs; ``targets check`` reaches the target with its
credentials before probing; a connector's capabilities follow from what it implements."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    BaseConnector,
    Capability,
    ConnectorSettings,
    PermanentError,
    Unsupported,
)
from provisor.connectors.ldap import LdapConnector
from provisor.connectors.rest import RestConnector
from provisor.connectors.scim import ScimConnector
from provisor.connectors.sql import open_sql_connector
from provisor.sandbox.scim import ScimApp

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    connection:
      url: "{url}"
      tokne: {{env: APP_TOKEN}}
      timeout: soon
  - name: directory
    class: ldap
    owner: identity-team
    connection:
      url: ldap://127.0.0.1:1
      grops_dn: ou=groups,dc=example,dc=com
  - name: payroll
    class: sql
    owner: finance
    connection: {{mode: users-table, url: "sqlite:///x.db", table: users, user_colum: login}}
"""


def test_policy_names_each_mistyped_setting_with_file_and_line(workspace: Path, cli: Any) -> None:
    (workspace / "policy" / "policy.yaml").write_text(POLICY.format(url="http://127.0.0.1:1/v2"))
    result = cli("policy", "check")
    assert result.code == 3, result.err
    lines = result.err.splitlines()
    assert any(
        "policy/policy.yaml:7 targets[0].connection.tokne: unknown setting (did you mean token?)"
        in line
        for line in lines
    ), result.err
    assert any("policy.yaml:8 targets[0].connection.timeout:" in line for line in lines)
    assert any(
        "policy.yaml:14 targets[1].connection.grops_dn: unknown setting (did you mean groups_dn?)"
        in line
        for line in lines
    )
    assert any("targets[2].connection.user_colum: unknown setting" in line for line in lines)
    # the same policy stops every command that loads it, before anything is written
    assert cli("plan").code == 3
    # a value given by reference is judged once resolved, when the connector opens
    policy = workspace / "policy" / "policy.yaml"
    policy.write_text(
        "targets:\n  - name: app\n    class: scim\n    owner: o\n"
        '    connection: {url: "http://127.0.0.1:1/v2", timeout: {env: APP_TIMEOUT}}\n'
    )
    assert cli("policy", "check").code == 0


def test_connectors_refuse_unknown_settings_and_hide_credentials() -> None:
    with pytest.raises(PermanentError, match=r"unknown connection setting tokne \(did you mean"):
        ScimConnector("t", {"url": "http://127.0.0.1:1/v2", "tokne": "s3cret"})
    scim = ScimConnector("t", {"url": "http://127.0.0.1:1/v2", "token": "s3cret"})
    assert "s3cret" not in repr(scim.settings) and "s3cret" not in str(scim.settings)
    scim.close()
    with pytest.raises(PermanentError, match=r"unknown connection setting grops_dn"):
        LdapConnector("t", {"url": "ldap://x", "bind_dn": "cn=a", "password": "p",
                            "base_dn": "dc=x", "grops_dn": "ou=g,dc=x"})  # fmt: skip
    with pytest.raises(PermanentError, match=r"connection\.pool_size: Input should be greater"):
        open_sql_connector("t", {"mode": "users-table", "url": "sqlite://", "table": "u",
                                 "user_name_column": "n", "pool_size": 0})  # fmt: skip
    with pytest.raises(PermanentError, match=r"unknown connection setting header"):
        RestConnector("t", {"profile": "rabbitmq", "header": {"X-Api-Key": "k"}})


def test_targets_check_reaches_the_target_before_probing(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScimApp(bearer_token="right-token") as app:
        folder = tmp_path / "ws"
        monkeypatch.setenv("PROVISOR_WORKSPACE", str(folder))
        monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
        assert cli("init").code == 0
        (folder / "policy" / "policy.yaml").write_text(
            "targets:\n  - name: app\n    class: scim\n    owner: app-team\n"
            f'    connection: {{url: "{app.url}", token: {{env: APP_TOKEN}}}}\n'
        )
        monkeypatch.setenv("APP_TOKEN", "wrong-token")
        refused = cli("targets", "check", "--json")
        assert refused.code == 15
        (found,) = refused.json()["targets"]
        assert found["error"].startswith("the target cannot be reached with these settings")
        assert "HTTP 401" in found["error"] and "wrong-token" not in refused.out
        assert found["paths"] == []  # nothing probed on a target that was not reached
        monkeypatch.setenv("APP_TOKEN", "right-token")
        reached = cli("targets", "check", "--json")
        assert reached.json()["targets"][0]["error"] is None


class Listing(BaseConnector):
    """A read-only connector: it lists, and can do nothing else."""

    def __init__(self, name: str, settings: dict[str, Any], accounts: list[AccountRecord]):
        super().__init__(name, settings)
        self.accounts = accounts

    def list_accounts(self) -> Iterator[AccountRecord]:
        yield from self.accounts


class Writer(Listing):
    reads_entitlements = True  # its records show each account's whole membership

    def create(self, spec: AccountSpec) -> str:
        return spec.user_name

    def set_enabled(self, account: str, enabled: bool) -> None: ...

    def add_entitlement(self, account: str, entitlement: str) -> None: ...

    def remove_entitlement(self, account: str, entitlement: str) -> None: ...


def test_capabilities_follow_from_what_a_connector_implements() -> None:
    alice = AccountRecord("a1", "alice", True, frozenset({"dev"}), external_id="E1")
    bob = AccountRecord("b2", "bob", True, frozenset())
    reader = Listing("t", {}, [alice, bob])
    assert reader.capabilities() == {Capability.LIST, Capability.READ}
    assert reader.read("b2") == bob and reader.read("zz") is None
    assert reader.find(AccountSpec("E1", "renamed")) == alice  # the identity id wins
    assert reader.find(AccountSpec("E9", "bob")) == bob
    for write in (
        lambda: reader.create(AccountSpec("E3", "carol")),
        lambda: reader.set_enabled("a1", False),
        lambda: reader.remove_entitlement("a1", "dev"),
        lambda: reader.revoke_sessions("a1"),
        lambda: reader.delete("a1"),
    ):
        with pytest.raises(Unsupported):
            write()
    reader.check()  # lists one account: reached
    writer = Writer("t", {}, [])
    assert writer.capabilities() == {
        Capability.LIST,
        Capability.READ,
        Capability.CREATE,
        Capability.DISABLE,
        Capability.ENTITLEMENTS,
    }
    with pytest.raises(PermanentError, match="unknown connection setting url"):
        Listing("t", {"url": "x"}, [])


class BlindWriter(Listing):
    """Grants and revokes, but its records do not show memberships or sessions."""

    def add_entitlement(self, account: str, entitlement: str) -> None: ...

    def remove_entitlement(self, account: str, entitlement: str) -> None: ...

    def revoke_sessions(self, account: str) -> None: ...


def test_writing_a_layer_is_no_claim_to_read_it() -> None:
    """A connector that can remove entitlements and sessions but whose records show neither
    claims neither: a leaver's account read back without entitlements is then unverifiable,
    never "removed"."""
    from provisor.domain.policy import TargetDef
    from provisor.domain.proof import REMOVED, UNVERIFIABLE, judge_record

    blind = BlindWriter("t", {}, [])
    assert blind.capabilities() == {Capability.LIST, Capability.READ}
    target = TargetDef.model_validate(
        {"name": "t", "class": "rest", "owner": "o", "entitlements": [{"name": "dev"}]}
    )
    record = AccountRecord("a1", "alice", False, frozenset())
    layers = {
        layer.layer: layer.state
        for layer in judge_record(target, record, blind.capabilities(), None, record_now())
    }
    assert layers["entitlements"] == UNVERIFIABLE and layers["sessions"] == UNVERIFIABLE
    assert layers["account"] == REMOVED  # disabled, as read


def record_now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 6, 1, tzinfo=UTC)


def test_an_empty_credential_is_refused() -> None:
    with pytest.raises(PermanentError, match="token: an empty credential"):
        ScimConnector("t", {"url": "http://127.0.0.1:1/v2", "token": ""})


def test_settings_models_report_problems_without_raising() -> None:
    class Needs(ConnectorSettings):
        url: str
        retries: int = 3

    assert Needs.problems({"url": "x"}) == []
    assert Needs.problems({}) == [(("url",), "required")]
    assert Needs.problems({}, complete=False) == []  # still to be filled in
    assert Needs.problems({"url": "x", "retry": 1}) == [
        (("retry",), "unknown setting (did you mean retries?)")
    ]
