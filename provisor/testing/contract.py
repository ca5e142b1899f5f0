"""The connector contract: one test suite every connector runs against its own real server.

Does: check, against a live target, everything the engine relies on from a connector —
create (enabled and locked), read, find, a taken name answered with ``Conflict``, update and
rename, entitlements added and removed (idempotently; an unknown one refused), disable and
enable, delete (twice), sessions opened, counted, revoked and read back as none (or reported
as unknowable by a target without sessions), a paged list of thousands of accounts, and that
running the same operations again through the engine writes nothing.
Does not: start servers or clean the target before it starts; the test module that uses it
provides the fixtures below.

Use it from a pytest module::

    from provisor.testing import ConnectorContract

    class TestContract(ConnectorContract):
        @pytest.fixture
        def connector(self, my_server): ...          # a Connector on a clean namespace
        @pytest.fixture
        def entitlements(self): return ("dev", "ops")  # two entitlements that exist
        @pytest.fixture
        def open_session(self, my_server): ...       # (account, spec) -> close(), or None

Optional fixture ``seed_accounts``: ``(connector, specs) -> None`` creating many accounts
quickly (the default creates them one by one through the connector). Class attributes:
``paged_accounts`` (how many accounts the listing test creates), ``renames`` (True when
``update`` can change an account's user name) and ``maps_attributes`` (False for a target whose
accounts hold no attributes besides the user name, so ``update`` can only rename).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    Capability,
    Conflict,
    Connector,
    PermanentError,
    Unsupported,
)
from provisor.domain.plan import OpKind
from provisor.engine.runner import Job, execute

OpenSession = Callable[[str, AccountSpec], Callable[[], None]]
SeedAccounts = Callable[[Connector, list[AccountSpec]], None]
WRITES = (
    "create",
    "update",
    "set_enabled",
    "add_entitlement",
    "remove_entitlement",
    "revoke_sessions",
    "delete",
)


class CountingConnector:
    """A connector wrapper that counts the writes made through it."""

    def __init__(self, inner: Connector) -> None:
        self.inner = inner
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in WRITES:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.writes.append(name)
            return attribute(*args, **kwargs)

        return counted


def contract_spec(prefix: str, n: int = 0, *, enabled: bool = True) -> AccountSpec:
    """An account spec with a unique, portable user name (letters, digits, underscores)."""
    user = f"{prefix}_{n}"
    return AccountSpec(
        identity=f"ID-{prefix}-{n}",
        user_name=user,
        attributes={
            "name": f"Contract User {n}",
            "given_name": "Contract",
            "family_name": f"User {n}",
            "email": f"{user}@example.org",
            "department": "Engineering",
            "title": "Engineer",
        },
        enabled=enabled,
    )


def _job(spec: AccountSpec, target: str, kind: OpKind, account: str | None, ent: str | None) -> Job:
    return Job(0, uuid.uuid4().hex, spec.identity, target, account, kind, ent, None, None, 0)


def _until(read: Callable[[], AccountRecord | None], test: Callable[[AccountRecord], bool]) -> Any:
    """Read until ``test`` holds or five seconds pass; returns the last record read."""
    deadline = time.monotonic() + 5
    record = read()
    while record is not None and not test(record) and time.monotonic() < deadline:
        time.sleep(0.1)
        record = read()
    return record


class ConnectorContract:
    """Mixin for a pytest class; see the module docstring for the fixtures to provide."""

    paged_accounts = 2500
    renames = True
    maps_attributes = True

    @pytest.fixture
    def seed_accounts(self) -> SeedAccounts | None:
        return None

    @pytest.fixture
    def prefix(self) -> str:
        return f"ct{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def made(self, connector: Connector) -> Iterator[list[str]]:
        """Accounts a test created; deleted afterwards whatever the test's outcome."""
        accounts: list[str] = []
        yield accounts
        for account in accounts:
            with contextlib.suppress(Exception):  # cleanup tries every account
                connector.delete(account)

    def _create(self, connector: Connector, made: list[str], spec: AccountSpec) -> str:
        account = connector.create(spec)
        made.append(account)
        return account

    def test_capabilities(self, connector: Connector) -> None:
        capabilities = connector.capabilities()
        assert {Capability.READ, Capability.LIST, Capability.CREATE} <= capabilities

    def test_create_read_find(self, connector: Connector, made: list[str], prefix: str) -> None:
        spec = contract_spec(prefix)
        account = self._create(connector, made, spec)
        record = connector.read(account)
        assert record is not None
        assert record.account == account
        assert record.user_name == spec.user_name
        assert record.enabled
        assert record.entitlements == frozenset()
        assert record.external_id in (None, spec.identity)
        found = connector.find(spec)
        assert found is not None and found.account == account

    def test_create_locked(self, connector: Connector, made: list[str], prefix: str) -> None:
        spec = contract_spec(prefix, enabled=False)
        record = connector.read(self._create(connector, made, spec))
        assert record is not None and not record.enabled

    def test_taken_name_conflicts(self, connector: Connector, made: list[str], prefix: str) -> None:
        spec = contract_spec(prefix)
        self._create(connector, made, spec)
        with pytest.raises(Conflict):
            made.append(connector.create(spec))

    def test_update(self, connector: Connector, made: list[str], prefix: str) -> None:
        if Capability.UPDATE not in connector.capabilities():
            pytest.skip("the connector declares no update capability")
        spec = contract_spec(prefix)
        account = self._create(connector, made, spec)
        changed = AccountSpec(
            spec.identity,
            spec.user_name,
            {**spec.attributes, "name": "Renamed Person", "title": "Manager"},
        )
        assert connector.update(account, changed) == account
        record = connector.read(account)
        assert record is not None
        if self.maps_attributes:
            assert record.attributes, "an updatable connector reports the attributes it maps"
        else:
            assert record.attributes == {}
        for key, value in record.attributes.items():
            if key in ("name", "title"):
                assert str(value) == str(changed.attributes[key])
        if self.renames:
            renamed = AccountSpec(spec.identity, f"{spec.user_name}_r", changed.attributes)
            now = connector.update(account, renamed)
            if now != account:
                made.append(now)
            record = connector.read(now)
            assert record is not None and record.user_name == renamed.user_name
            if now != account:
                assert connector.read(account) is None, "the old name is gone after a rename"

    def test_entitlements(
        self,
        connector: Connector,
        made: list[str],
        prefix: str,
        entitlements: tuple[str, str],
    ) -> None:
        first, second = entitlements
        account = self._create(connector, made, contract_spec(prefix))
        connector.add_entitlement(account, first)
        connector.add_entitlement(account, second)
        connector.add_entitlement(account, first)  # already there: not an error
        record = connector.read(account)
        assert record is not None and {first, second} <= record.entitlements
        connector.remove_entitlement(account, first)
        connector.remove_entitlement(account, first)  # already gone: not an error
        record = connector.read(account)
        assert record is not None
        assert first not in record.entitlements and second in record.entitlements

    def test_unknown_entitlement_refused(
        self, connector: Connector, made: list[str], prefix: str
    ) -> None:
        account = self._create(connector, made, contract_spec(prefix))
        with pytest.raises(PermanentError):
            connector.add_entitlement(account, "no_such_entitlement_here")

    def test_disable_enable(self, connector: Connector, made: list[str], prefix: str) -> None:
        account = self._create(connector, made, contract_spec(prefix))
        connector.set_enabled(account, False)
        record = connector.read(account)
        assert record is not None and not record.enabled
        connector.set_enabled(account, True)
        record = connector.read(account)
        assert record is not None and record.enabled

    def test_delete_twice(self, connector: Connector, made: list[str], prefix: str) -> None:
        spec = contract_spec(prefix)
        account = self._create(connector, made, spec)
        connector.delete(account)
        assert connector.read(account) is None
        assert connector.find(spec) is None
        connector.delete(account)  # already gone: not an error

    def test_sessions(
        self,
        connector: Connector,
        made: list[str],
        prefix: str,
        open_session: OpenSession | None,
    ) -> None:
        spec = contract_spec(prefix)
        account = self._create(connector, made, spec)
        if Capability.SESSIONS not in connector.capabilities():
            record = connector.read(account)
            assert record is not None and record.sessions is None, (
                "a target without a session interface must report sessions as unknown"
            )
            with pytest.raises(Unsupported):
                connector.revoke_sessions(account)
            return
        assert open_session is not None, "a connector with sessions needs an open_session"
        close = open_session(account, spec)
        try:
            record = _until(lambda: connector.read(account), lambda r: (r.sessions or 0) > 0)
            assert record is not None and (record.sessions or 0) >= 1
            connector.revoke_sessions(account)
            record = connector.read(account)  # the engine reads back once, at once
            assert record is not None and record.sessions == 0
        finally:
            close()

    def test_paged_list(
        self,
        connector: Connector,
        prefix: str,
        seed_accounts: SeedAccounts | None,
    ) -> None:
        specs = [contract_spec(prefix, n) for n in range(self.paged_accounts)]
        try:
            if seed_accounts is not None:
                seed_accounts(connector, specs)
            else:
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(connector.create, specs))
            seen: dict[str, str] = {}
            for record in connector.list_accounts():
                if record.user_name.startswith(f"{prefix}_"):
                    assert record.account not in seen, f"{record.account} listed twice"
                    seen[record.account] = record.user_name
            assert sorted(seen.values()) == sorted(s.user_name for s in specs)
        finally:
            mine = [
                r.account for r in connector.list_accounts() if r.user_name.startswith(f"{prefix}_")
            ]
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(connector.delete, mine))

    def test_engine_rerun_writes_nothing(
        self,
        connector: Connector,
        made: list[str],
        prefix: str,
        entitlements: tuple[str, str],
    ) -> None:
        counting = CountingConnector(connector)
        spec = contract_spec(prefix)
        target = "contract"
        first = execute(_job(spec, target, OpKind.CREATE, None, None), counting, spec)
        assert first.status == "verified" and first.record is not None
        account = first.record.account
        made.append(account)
        steps = [
            (OpKind.ADD_ENTITLEMENT, entitlements[1]),
            (OpKind.DISABLE, None),
            (OpKind.REMOVE_ENTITLEMENT, entitlements[0]),
        ]
        for kind, ent in steps:
            outcome = execute(_job(spec, target, kind, account, ent), counting, spec)
            assert outcome.status == "verified", outcome.note
        assert counting.writes
        counting.writes.clear()
        again = [(OpKind.CREATE, None), *steps]
        for kind, ent in again:
            job = _job(spec, target, kind, None if kind is OpKind.CREATE else account, ent)
            outcome = execute(job, counting, spec)
            assert outcome.status == "verified", outcome.note
            assert not outcome.wrote, f"{kind.value} wrote again"
        assert counting.writes == [], f"a re-run wrote: {counting.writes}"
        execute(_job(spec, target, OpKind.DELETE, account, None), counting, spec)
        counting.writes.clear()
        outcome = execute(_job(spec, target, OpKind.DELETE, account, None), counting, spec)
        assert outcome.status == "verified" and counting.writes == []


__all__ = ["ConnectorContract", "CountingConnector", "contract_spec"]
