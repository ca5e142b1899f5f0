"""The connector contract as a pytest plugin: run it against any connector from the command line.

Does: add ``--connector`` (``package.module:Factory``), ``--connector-settings`` (a YAML file of
``connection`` settings; ``{env: NAME}`` references are read from the environment) and
``--connector-entitlements`` (two entitlements that exist in the target) to pytest, and give
the contract suite in ``provisor.testing.suite`` the connector they describe::

    pytest --pyargs provisor.testing.suite --connector redis_acl_connector:RedisAclConnector \\
        --connector-settings redis.yaml --connector-entitlements read,write

Installed with Provisor (entry point ``pytest11``); it only adds options and fixtures.
Does not: open sessions in the target (the sessions check is skipped: a test module of your
own gives ``open_session``), or create anything outside the accounts the suite makes and
deletes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisor.connectors.base import Connector
from provisor.connectors.registry import load_factory
from provisor.domain import yaml_limits


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("provisor", "Provisor connector contract")
    group.addoption("--connector", help="the connector's factory, package.module:Factory")
    group.addoption("--connector-settings", help="YAML file of the target's connection settings")
    group.addoption(
        "--connector-entitlements", help="two entitlements that exist in the target, a,b"
    )


def _resolved(value: Any, where: str) -> Any:
    if isinstance(value, dict) and set(value) == {"env"}:
        name = str(value["env"])
        if name not in os.environ:
            raise pytest.UsageError(f"{where}: the environment variable {name} is not set")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _resolved(v, f"{where}.{k}") for k, v in value.items()}
    return value


@pytest.fixture
def contract_connector(request: pytest.FixtureRequest) -> Iterator[Connector]:
    """The connector named on the command line, opened with its settings."""
    path = request.config.getoption("--connector")
    if not path:
        pytest.skip("give --connector package.module:Factory to run the connector contract")
    file = request.config.getoption("--connector-settings")
    settings: dict[str, Any] = {}
    if file:
        loaded = yaml_limits.safe_load(Path(file).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise pytest.UsageError(f"{file}: the settings must be a mapping")
        settings = _resolved(loaded, file)
    connector = load_factory(str(path), "contract")("contract", settings)
    yield connector
    connector.close()


@pytest.fixture
def contract_entitlements(request: pytest.FixtureRequest) -> tuple[str, str]:
    given = request.config.getoption("--connector-entitlements") or ""
    names = [n.strip() for n in given.split(",") if n.strip()]
    if len(names) != 2:
        raise pytest.UsageError("--connector-entitlements needs two entitlement names, a,b")
    return names[0], names[1]
