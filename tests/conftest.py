"""Shared fixtures: workspaces, the CLI entry point, and a real PostgreSQL server.

PostgreSQL comes from ``PROVISOR_TEST_POSTGRES_URL`` when set, else the server answering on
127.0.0.1:5432, else a throwaway cluster started here from Debian's ``postgresql`` package. If
none of these works the PostgreSQL tests fail; they are never skipped silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from provisor.cli import main
from provisor.sandbox import free_port
from provisor.sandbox.cluster import scratch_database
from provisor.sandbox.scim import ScimApp
from provisor.store import db

DATA = Path(__file__).parent / "data"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``provisor`` through its real entry point (``provisor.cli:main``)."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def workspace(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialised SQLite workspace with the starter configuration and policy."""
    folder = tmp_path / "ws"
    monkeypatch.setenv("PROVISOR_WORKSPACE", str(folder))
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROVISOR_NOW", raising=False)
    result = cli("init")
    assert result.code == 0, result.err
    return folder


# --- PostgreSQL -----------------------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "no PostgreSQL server answers on 127.0.0.1:5432 and Debian's postgresql package is "
            "not installed (apt-get install postgresql), and PROVISOR_TEST_POSTGRES_URL is unset"
        )
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server where tests may create databases."""
    configured = os.environ.get("PROVISOR_TEST_POSTGRES_URL")
    if configured:
        if not _answers(configured):
            pytest.fail(f"PROVISOR_TEST_POSTGRES_URL={configured} does not answer")
        yield configured
        return
    local = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    if _answers(local):
        yield local
        return
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="provisor-pg-"))
    data = root / "data"
    port = free_port()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-F -p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while not _answers(url):
        if time.monotonic() > deadline:
            pytest.fail(f"throwaway PostgreSQL on port {port} did not start; see {root}/log")
        time.sleep(0.2)
    try:
        yield url
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server, dropped afterwards."""
    with scratch_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store suite runs on both: an SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store_engine(database_url: str) -> Iterator[Engine]:
    """An engine on ``database_url`` with the schema made; disposed afterwards."""
    made = db.make_engine(database_url)
    db.upgrade(made)
    yield made
    made.dispose()


@pytest.fixture
def workspace_store(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Workspaces opened in the test keep their data in ``database_url``'s kind of store:
    their own SQLite file, or this PostgreSQL database."""
    if database_url.startswith("sqlite"):
        monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("PROVISOR_DATABASE_URL", database_url)
    return database_url


# --- SCIM 2.0: the scim2-server package -----------------------------------------------------


@pytest.fixture(scope="session")
def scim_server() -> Iterator[str]:
    """A real SCIM 2.0 server (``scim2-server``, in memory) on a free loopback port, with a
    tenant created on first use of each path, so every test gets an empty server."""
    with ScimApp(tenants=True) as app:
        yield app.root


@pytest.fixture
def scim_url(scim_server: str) -> str:
    """Base URL of an empty SCIM service (its own tenant on the shared server)."""
    return f"{scim_server}/t{uuid.uuid4().hex[:10]}/v2"
