"""LDAP membership read through ``memberOf`` counts only where memberOf is shown to work: a
real slapd *without* the memberof overlay, where users carry no ``memberOf`` at all. The
directory's real state (the groups' own member attribute, read with plain ldap3) is set against
what the connector claims: a user still in a group is never reported in no group."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from provisor.connectors.base import AccountSpec
from provisor.errors import ProvisorError
from provisor.sandbox.slapd import Slapd
from tests.connectors.test_ldap import LOCK_SCHEMA, Namespace


def directory_server(overlays: tuple[str, ...] | None) -> Iterator[Slapd]:
    try:
        server = Slapd(extra_schema=LOCK_SCHEMA, overlays=overlays).start()
    except ProvisorError as exc:
        pytest.fail(f"cannot start slapd: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bare() -> Iterator[Slapd]:
    """A directory without the memberof overlay."""
    yield from directory_server(("refint",))


@pytest.fixture(scope="module")
def full() -> Iterator[Slapd]:
    """A directory with the memberof overlay (and the others installed)."""
    yield from directory_server(None)


def test_memberof_without_the_overlay_is_not_trusted(bare: Slapd) -> None:
    space = Namespace(bare)
    directory = space.connector(membership="memberof")
    try:
        ann = directory.create(AccountSpec("E1", "ann", {"name": "Ann"}))
        bob = directory.create(AccountSpec("E2", "bob", {"name": "Bob"}))
        directory.add_entitlement(ann, "dev")
        directory.add_entitlement(bob, "ops")
        paths = {p.path: p for p in directory.read_paths()}
        assert paths["member-of"].status == "untrusted"
        assert "memberOf does not say so" in paths["member-of"].detail
        assert any(ann in m or "uid=ann" in m for m in space.members("dev"))  # the truth
        record = directory.read(ann)
        assert record is not None and record.entitlements == {"dev"}  # from the group side
        listed = {r.account: r.entitlements for r in directory.list_accounts()}
        assert listed == {ann: {"dev"}, bob: {"ops"}}
        directory.remove_entitlement(ann, "dev")
        assert directory.read(ann).entitlements == frozenset()  # type: ignore[union-attr]
    finally:
        directory.close()


def test_memberof_with_the_overlay_is_trusted_and_used(full: Slapd) -> None:
    space = Namespace(full)
    directory = space.connector(membership="memberof")
    try:
        ann = directory.create(AccountSpec("E1", "ann", {"name": "Ann"}))
        directory.add_entitlement(ann, "dev")
        paths = {p.path: p for p in directory.read_paths()}
        assert paths["member-of"].status == "trusted", paths["member-of"]
        record = directory.read(ann)
        assert record is not None and record.entitlements == {"dev"}
    finally:
        directory.close()
