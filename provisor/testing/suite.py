"""The connector contract, ready to collect: ``pytest --pyargs provisor.testing.suite`` with the
options of ``provisor.testing.plugin``.

Does: run every check of ``ConnectorContract`` on the connector named on the command line.
Does not: exercise sessions (that needs a way to open one in the target: write a test module
of your own, see ``provisor.testing.contract``).
"""

from __future__ import annotations

from typing import Any

import pytest

from provisor.connectors.base import Connector
from provisor.testing.contract import ConnectorContract


class TestConnectorContract(ConnectorContract):
    @pytest.fixture
    def connector(self, contract_connector: Connector) -> Connector:
        return contract_connector

    @pytest.fixture
    def entitlements(self, contract_entitlements: tuple[str, str]) -> tuple[str, str]:
        return contract_entitlements

    @pytest.fixture
    def open_session(self) -> Any:
        pytest.skip("opening a session needs an open_session fixture of your own")
