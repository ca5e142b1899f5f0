"""Session counts on a REST target count only where the per-account session read is shown to
work: a real RabbitMQ behind a proxy whose per-user connection listing answers with nothing.
A user with an open AMQP connection must never be reported as having no session."""

from __future__ import annotations

import time

from provisor.connectors.rest import RestConnector
from tests.connectors.faulty_proxy import FaultyProxy
from tests.connectors.test_rest import (
    AmqpSession,
    Rabbit,
    grant_vhost,
    rabbit,  # noqa: F401
    set_password,
    spec,
)


def hide_user_connections(method: str, path: str, status: int, content: bytes) -> bytes:
    if method == "GET" and "/api/connections/username/" in path and status == 200:
        return b"[]"
    return content


def test_a_session_read_that_shows_nothing_is_not_trusted(rabbit: Rabbit) -> None:  # noqa: F811
    prefix = f"rp{int(time.time() * 1000) % 10**8}"
    direct = RestConnector("rabbit", rabbit.settings())
    account = direct.create(spec(prefix))
    grant_vhost(rabbit, account)
    set_password(rabbit, account, "known-password")
    session = AmqpSession(rabbit, account, "known-password")
    proxy = FaultyProxy(rabbit.url, on_response=hide_user_connections)
    hidden = RestConnector("rabbit", rabbit.settings(url=proxy.url))
    try:
        deadline = time.monotonic() + 15  # the full listing lags a few seconds behind
        while True:
            listed = {r.account: r.sessions for r in hidden.list_accounts()}
            if listed.get(account) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert listed[account] == 1  # from the full listing, which shows it
        paths = {p.path: p for p in hidden.read_paths()}
        assert paths["sessions"].status == "untrusted", paths
        record = hidden.read(account)
        assert record is not None and record.sessions is None  # unknown, never 0
        assert direct.read(account).sessions == 1  # type: ignore[union-attr]  # the truth
        trusting = {p.path: p.status for p in direct.read_paths()}
        assert trusting["sessions"] == "trusted"
    finally:
        session.close()
        hidden.close()
        proxy.close()
        direct.delete(account)
        direct.close()
