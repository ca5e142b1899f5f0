"""Fixtures for the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provisor.engine.workspace import Workspace
from tests.connectors.faulty_proxy import FaultyProxy
from tests.connectors.test_scim import make_group
from tests.engine.test_runner import setup_workspace


@pytest.fixture
def proxied(
    tmp_path: Path, scim_server: str, scim_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workspace, FaultyProxy, str]]:
    """A workspace whose SCIM target is reached through a fault-injecting proxy (1 s timeout);
    also yields the proxy and the server's own URL for checking behind Provisor's back."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    make_group(scim_url, "staff")
    make_group(scim_url, "engineering")
    proxy = FaultyProxy(scim_server)
    workspace = setup_workspace(tmp_path, proxy.url + scim_url.removeprefix(scim_server), 1)
    yield workspace, proxy, scim_url
    workspace.close()
    proxy.close()
