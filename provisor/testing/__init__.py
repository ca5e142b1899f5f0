"""What connector authors need to test a connector against their real server.

``provisor.testing.ConnectorContract`` is the contract suite every connector runs (a mixin for a
pytest class), with ``CountingConnector`` and ``contract_spec`` beside it. The same suite runs
from the command line against any connector through the pytest plugin
(``provisor.testing.plugin``, installed with Provisor): ``pytest --pyargs
provisor.testing.suite --connector package.module:Factory --connector-settings FILE.yaml
--connector-entitlements a,b``. Throwaway servers to run it against live are in
``provisor.sandbox``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConnectorContract", "CountingConnector", "contract_spec"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that importing this package does not need pytest
    if name in __all__:
        from provisor.testing import contract

        return getattr(contract, name)
    raise AttributeError(name)
