"""A worker's own metrics endpoint (``provisor worker --metrics-port``): only a token with the
metrics scope reads it, and it shows the operations that worker ran, and each target's
circuit, from the real process."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from provisor.engine import operators
from provisor.sandbox import free_port
from provisor.sandbox.cluster import start_workers, stop_workers, wait_until_done
from provisor.sandbox.scim import ScimApp
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from tests.engine.test_crash_safety import POLICY
from tests.engine.test_workers import SETTINGS


def tokens(workspace: object) -> dict[str, str]:
    """A token for a monitor (the metrics scope) and one for an approver (without it)."""
    made = {}
    now = datetime.now(UTC)
    with workspace.sessions() as session, session.begin():  # type: ignore[attr-defined]
        for name, role, scopes in (("prom", "monitor", ["metrics"]), ("alice", "approver", ["*"])):
            operators.add_operator(session, name, roles=[role], by="test", now=now)
            made[name], _ = operators.create_token(
                session, name, name="t", scopes=scopes, expires_at=None, by="test", now=now
            )
    return made


def scrape(url: str, token: str | None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.get(url, headers=headers, timeout=10)


def test_a_workers_metrics_need_the_metrics_scope_and_count_its_work(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    ScimApp.create_groups(scim_url, "staff")
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, POLICY.format(url=scim_url))
    made = tokens(workspace)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    workers = start_workers(tmp_path, 1, dict(os.environ), options=["--metrics-port", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = scrape(url, None)
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "the metrics endpoint never answered"
                time.sleep(0.2)
        assert first.status_code == 401 and "Bearer" in first.headers["WWW-Authenticate"]
        assert scrape(url, "not-a-token").status_code == 401
        assert scrape(url, made["alice"]).status_code == 403  # an approver may not
        assert scrape(f"http://127.0.0.1:{port}/other", made["prom"]).status_code == 404
        hire_employees(workspace, 10, datetime.now(UTC))
        statuses = wait_until_done(workspace, 60)
        answer = scrape(url, made["prom"])
    finally:
        errors = stop_workers(workers, tmp_path)
        workspace.close()
    assert statuses == {"verified": 20}, errors
    assert answer.status_code == 200
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            key = sample.name + str(sorted(sample.labels.items()))
            found[key] = found.get(key, 0) + sample.value
    ran = sum(
        v
        for k, v in found.items()
        if k.startswith("provisor_operations_total") and "'verified'" in k
    )
    assert ran == 20  # this worker ran them all
    assert found["provisor_target_circuit_open[('target', 'app')]"] == 0
