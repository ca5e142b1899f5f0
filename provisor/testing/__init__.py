"""Helpers for testing connectors against real servers.

``provisor.testing.ConnectorContract`` is the contract suite every connector runs (it needs
pytest); ``provisor.testing.slapd`` and ``provisor.testing.rabbitmq`` start throwaway servers
and need no test framework, so the product's demo can use them too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConnectorContract", "CountingConnector", "contract_spec"]


def __getattr__(name: str) -> Any:
    # imported on first use so that the server helpers work where pytest is not installed
    if name in __all__:
        from provisor.testing import contract

        return getattr(contract, name)
    raise AttributeError(name)
