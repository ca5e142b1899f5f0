"""The contract suite as a pytest plugin: run against the Redis example from the command line,
with settings from a file, and skipped with a clear message when no connector is named."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_runs_the_contract_on_a_connector_named_on_the_command_line(tmp_path: Path) -> None:
    settings = tmp_path / "redis.yaml"
    prefix = f"plugin{uuid.uuid4().hex[:8]}_"
    settings.write_text(f"url: {{env: CONTRACT_REDIS_URL}}\nuser_prefix: {prefix}\n")
    result = _pytest(
        "--pyargs",
        "provisor.testing.suite",
        "--connector",
        "redis_acl_connector:RedisAclConnector",
        "--connector-settings",
        str(settings),
        "--connector-entitlements",
        "read,write",
        "-rs",
        env={
            "PYTHONPATH": str(ROOT / "examples"),
            "CONTRACT_REDIS_URL": "redis://127.0.0.1:6379/0",
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
    assert "opening a session needs an open_session fixture of your own" in result.stdout


def test_without_a_connector_it_says_what_to_give() -> None:
    result = _pytest("--pyargs", "provisor.testing.suite", "-rs")
    assert "give --connector package.module:Factory" in result.stdout
    assert " passed" not in result.stdout
