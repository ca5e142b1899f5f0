"""A target's limits hold across three workers: its rate limit, counted by the target itself
per second, and its concurrency, counted as requests in flight at once."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from provisor.engine.runner.dispatch import Queue
from provisor.sandbox.cluster import start_workers, stop_workers, wait_until_done
from provisor.sandbox.workspaces import hire_employees, scratch_workspace
from tests.connectors.faulty_proxy import FaultyProxy
from tests.engine.test_workers import SETTINGS

PEOPLE = 60
RATE = 40  # requests a second to the target, from all workers together

POLICY = """\
targets:
  - name: app
    class: scim
    owner: app-team
    concurrency: {concurrency}
    rate_limit: {rate}
    connection: {{url: "{url}", timeout: 10}}
rules:
  - name: staff
    when: {{attr: employment_type, equals: employee}}
    grant: [{{target: app}}]
"""


class Counting:
    """What the target sees: when each request arrived, and how many requests for accounts
    were in flight at once (a worker's first look at the server's configuration aside)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.most_in_flight = 0

    def request(self, _method: str, path: str, body: bytes) -> bytes:
        with self.lock:
            self.arrivals.append(time.time())
            if "/Users" in path:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)  # a slow application: requests overlap if they may
        return body

    def response(self, _method: str, path: str, _status: int, body: bytes) -> bytes:
        if "/Users" in path:
            with self.lock:
                self.in_flight -= 1
        return body


def _run(tmp_path: Path, policy: str, counting: Counting, env: dict[str, str]) -> None:
    (tmp_path / "provisor.yaml").write_text(SETTINGS, encoding="utf-8")
    workspace = scratch_workspace(tmp_path, policy)
    workers = start_workers(tmp_path, 3, env)
    queue = Queue(workspace)
    try:
        hire_employees(workspace, PEOPLE, datetime.now(UTC))
        queue.cycle()
        statuses = wait_until_done(workspace, 120)
    finally:
        errors = stop_workers(workers, tmp_path)
        queue.close()
        workspace.close()
    assert statuses == {"verified": PEOPLE}, errors


def test_a_rate_limit_holds_across_three_workers(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    counting = Counting()
    proxy = FaultyProxy(scim_url, on_request=counting.request, on_response=counting.response)
    try:
        policy = POLICY.format(url=proxy.url, concurrency=8, rate=RATE)
        _run(tmp_path, policy, counting, dict(os.environ))
    finally:
        proxy.close()
    per_second = Counter(int(at) for at in counting.arrivals)
    busiest = max(per_second.values())
    assert len(counting.arrivals) >= 3 * PEOPLE  # find, create, read back at least
    assert busiest <= RATE * 1.1, sorted(per_second.items())


def test_concurrency_holds_across_three_workers(
    tmp_path: Path, scim_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISOR_DATABASE_URL", postgres_url)
    counting = Counting(delay=0.02)
    proxy = FaultyProxy(scim_url, on_request=counting.request, on_response=counting.response)
    try:
        policy = POLICY.format(url=proxy.url, concurrency=3, rate=1000)
        _run(tmp_path, policy, counting, dict(os.environ))
    finally:
        proxy.close()
    # three slots over all workers, one of them kept for removals: joiners take two accounts
    # at a time, and each account's requests go one after another
    assert counting.most_in_flight == 2
