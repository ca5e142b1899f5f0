"""``provisor demo --serve``: the demo organisation left running in the console, with an
account per role printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from provisor.sandbox.service import free_port


def test_demo_serve_leaves_the_organisation_running_in_the_console(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PROVISOR_WORKSPACE", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from provisor.cli import main; main()",
            "demo",
            "--serve",
            "--port",
            str(port),
            "--dir",
            str(tmp_path / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    accounts: dict[str, str] = {}
    seen: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 240
        while len(accounts) < 6:
            line = process.stdout.readline()
            assert line or process.poll() is None, "".join(seen[-40:])
            assert time.monotonic() < deadline, "".join(seen[-40:])
            seen.append(line)
            cells = line.split()
            if len(cells) == 3 and cells[0].startswith("demo-"):
                accounts[cells[1]] = cells[2]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(url + "/console/login", timeout=2)
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with httpx2.Client(base_url=url, timeout=30) as owner:
            signed = owner.post(
                "/console/login", data={"name": "demo-owner", "password": accounts["owner"]}
            )
            assert signed.status_code == 303
            tasks = owner.get("/console/tasks")
            assert tasks.status_code == 200 and "task-" in tasks.text  # manual removals wait
        with httpx2.Client(base_url=url, timeout=30) as auditor:
            auditor.post(
                "/console/login", data={"name": "demo-auditor", "password": accounts["auditor"]}
            )
            page = auditor.get("/console/")
            assert page.status_code == 200 and 'id="debt-items"' in page.text
            assert auditor.get("/console/evidence").status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
