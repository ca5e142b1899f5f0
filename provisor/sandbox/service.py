"""A throwaway Provisor service for benches: a scratch workspace served by ``provisor serve``
in its own process (so a load generator does not share its interpreter), an admin token, and a
threaded client that records each request's latency.

Does: start and stop the service, hand out its URL and token, send a list of requests from
keep-alive clients and time them, read the server's peak memory.
Does not: judge the figures (the benches print them).
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from provisor.engine import operators
from provisor.sandbox.workspaces import scratch_workspace

POLICY = """\
targets:
  - name: wiki
    class: manual
    owner: wiki-team@example.com
    leaver_action: disable
    entitlements: [{name: editor}]
rules:
  - name: staff
    when: {attr: employment_type, equals: employee}
    grant: [{target: wiki, entitlements: [editor]}]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(
    config: str, prepare: Callable[[Any], None] | None = None, policy: str = POLICY
) -> Iterator[tuple[str, str, int]]:
    """(url, admin token, server pid) of a service over a fresh workspace."""
    with tempfile.TemporaryDirectory(prefix="provisor-bench-") as tmp:
        folder = Path(tmp)
        (folder / "provisor.yaml").write_text(config)
        workspace = scratch_workspace(folder, policy)
        now = datetime.now(UTC)
        with workspace.sessions() as session, session.begin():
            operators.add_operator(session, "bench", roles=["admin"], by="bench", now=now)
            token, _ = operators.create_token(
                session, "bench", name="bench", scopes=["*"], expires_at=None, by="bench", now=now
            )
        if prepare is not None:
            prepare(workspace)
        workspace.close()
        port = free_port()
        env = {**os.environ, "PROVISOR_WORKSPACE": str(folder)}
        log = open(folder / "serve.log", "w")  # noqa: SIM115 (closed below)
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from provisor.cli import main; main()",
                "serve",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx2.get(url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
                    break
                except httpx2.TransportError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError((folder / "serve.log").read_text()) from None
                    time.sleep(0.1)
            yield url, token, process.pid
        finally:
            process.terminate()
            process.wait(60)
            log.close()


def peak_rss_mb(pid: int) -> float:
    """The server process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def load(
    url: str,
    token: str,
    requests: list[tuple[str, str, Any]],
    threads: int,
    expect: set[int],
    *,
    console: bool = False,
) -> tuple[float, list[float]]:
    """Send ``requests`` (method, path, JSON body) from ``threads`` keep-alive clients; the
    elapsed seconds and every latency (ms). A status not in ``expect`` stops the run. With
    ``console`` the token goes as the console's session cookie instead of a bearer token."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    chunks = [requests[i::threads] for i in range(threads)]

    def work(mine: list[tuple[str, str, Any]]) -> None:
        cookies = {"provisor_session": token} if console else None
        headers = None if console else {"Authorization": f"Bearer {token}"}
        with httpx2.Client(base_url=url, timeout=60, headers=headers, cookies=cookies) as client:
            for method, path, body in mine:
                started = time.perf_counter()
                answer = client.request(method, path, json=body)
                took = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(took)
                    if answer.status_code not in expect:
                        failures.append(
                            f"{method} {path}: {answer.status_code} {answer.text[:200]}"
                        )

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return elapsed, latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)
