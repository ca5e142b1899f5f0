"""The LDAP connector against a real OpenLDAP ``slapd`` (Debian's package), one per test worker.

Every test works in an organizational unit of its own (``ou=t<random>``) holding ``people``,
``groups`` and ``disabled``, so tests never see each other's entries. ``slapd`` runs with the
``memberof``, ``refint`` and ``ppolicy`` overlays, and with the definitions of 389-DS's
``nsAccountLock`` and Active Directory's ``userAccountControl``, so every disable flavour is
checked against a real server. If ``slapd`` cannot start, the tests fail and say why.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ldap3
import pytest

from provisor.connectors import ldap as ldap_module
from provisor.connectors.base import (
    AccountSpec,
    Capability,
    Conflict,
    NotFound,
    PermanentError,
    RetryableError,
    Unsupported,
)
from provisor.connectors.ldap import Ldap3Client, LdapConnector
from provisor.engine.workspace import Workspace
from provisor.errors import ProvisorError
from provisor.sandbox import slapd as slapd_module
from provisor.sandbox.slapd import Slapd
from provisor.sandbox.workspaces import scratch_workspace
from provisor.testing import ConnectorContract

# 389-DS's and Active Directory's lock attributes, as those servers define them (Debian's
# msuser.schema has userAccountControl too, but its memberOf clashes with the memberof overlay)
LOCK_SCHEMA = """
attributetype ( 2.16.840.1.113730.3.1.610 NAME 'nsAccountLock'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
"""
STYLES = ("groupOfNames", "groupOfUniqueNames", "posixGroup")
MEMBER = {"groupOfNames": "member", "groupOfUniqueNames": "uniqueMember", "posixGroup": "memberUid"}
WITH_LOCK_ATTRIBUTES = [*ldap_module.DEFAULT_OBJECT_CLASSES, "extensibleObject"]


@pytest.fixture(scope="session")
def slapd() -> Iterator[Slapd]:
    """One slapd per test worker (xdist runs each worker's session fixtures apart)."""
    try:
        server = Slapd(extra_schema=LOCK_SCHEMA).start()
    except ProvisorError as exc:
        pytest.fail(f"cannot start slapd for the LDAP tests: {exc}")
    yield server
    server.stop()


def admin(server: Slapd) -> Any:
    connection = ldap3.Connection(
        ldap3.Server(server.url, get_info=ldap3.NONE),
        server.bind_dn,
        server.password,
        auto_bind=True,
    )
    return connection


def raw_entry(server: Slapd, dn: str, *attributes: str) -> dict[str, list[str]] | None:
    """An entry as the server holds it, read with a plain ldap3 connection."""
    connection = admin(server)
    try:
        found = connection.search(
            dn, "(objectClass=*)", ldap3.BASE, attributes=list(attributes) or ["*", "+"]
        )
        if not found:
            return None
        return {k.lower(): list(v) for k, v in connection.response[0]["attributes"].items()}
    except ldap3.core.exceptions.LDAPNoSuchObjectResult:
        return None
    finally:
        connection.unbind()


class Namespace:
    """An OU of one test's own with people, groups and disabled below it."""

    def __init__(self, server: Slapd) -> None:
        self.server = server
        self.dn = server.add_ou(f"ou=t{uuid.uuid4().hex[:10]},{server.base_dn}")
        self.people = server.add_ou(f"ou=people,{self.dn}")
        self.groups = server.add_ou(f"ou=groups,{self.dn}")
        self.disabled = server.add_ou(f"ou=disabled,{self.dn}")

    def connector(
        self, style: str = "groupOfNames", groups: tuple[str, ...] = ("dev", "ops"), **extra: Any
    ) -> LdapConnector:
        if groups:
            self.server.create_groups(groups, style=style, parent=self.groups)
        settings = {
            "url": self.server.url,
            "bind_dn": self.server.bind_dn,
            "password": self.server.password,
            "base_dn": self.people,
            "groups_dn": self.groups,
            "group_style": style,
            "disabled_dn": self.disabled,
            "timeout": 5,
            **extra,
        }
        return LdapConnector("directory", settings)

    def target(self, groups: tuple[str, ...], extra: str = "") -> str:
        """A policy's ``targets:`` section with one LDAP target ``dir`` on this namespace,
        its ``groups`` made (password from TEST_DIRECTORY_PASSWORD); ``extra``: more lines
        of its settings, indented as they are."""
        self.server.create_groups(groups, style="groupOfNames", parent=self.groups)
        server = self.server
        return f"""\
targets:
  - name: dir
    class: ldap
    owner: identity-team
{extra}    connection: {{url: "{server.url}", bind_dn: "{server.bind_dn}",
                 password: {{env: TEST_DIRECTORY_PASSWORD}}, base_dn: "{self.people}",
                 groups_dn: "{self.groups}", timeout: 5}}
    entitlements: [{", ".join(f"{{name: {g}}}" for g in groups)}]
"""

    def members(self, group: str, style: str = "groupOfNames") -> list[str]:
        entry = raw_entry(self.server, f"cn={group},{self.groups}", MEMBER[style])
        assert entry is not None, f"group {group} is missing"
        return [v for v in entry.get(MEMBER[style].lower(), []) if v]


def directory_workspace(
    folder: Path,
    server: Slapd,
    monkeypatch: pytest.MonkeyPatch,
    groups: tuple[str, ...],
    rest: str,
    extra: str = "",
) -> tuple[Workspace, Namespace]:
    """A workspace on SQLite whose policy is one LDAP target ``dir`` on a namespace of its
    own (``Namespace.target``: ``groups``, ``extra`` settings) and ``rest`` (rules)."""
    monkeypatch.delenv("PROVISOR_DATABASE_URL", raising=False)
    monkeypatch.setenv("TEST_DIRECTORY_PASSWORD", server.password)
    space = Namespace(server)
    return scratch_workspace(folder, space.target(groups, extra) + rest), space


@pytest.fixture
def namespace(slapd: Slapd) -> Namespace:
    return Namespace(slapd)


@pytest.fixture
def connectors() -> Iterator[list[LdapConnector]]:
    made: list[LdapConnector] = []
    yield made
    for connector in made:
        connector.close()


@pytest.fixture
def make(namespace: Namespace, connectors: list[LdapConnector]) -> Callable[..., LdapConnector]:
    def build(*args: Any, **kwargs: Any) -> LdapConnector:
        connector = namespace.connector(*args, **kwargs)
        connectors.append(connector)
        return connector

    return build


def spec(n: int = 1, *, user: str | None = None, enabled: bool = True) -> AccountSpec:
    name = user or f"user{n}"
    return AccountSpec(
        f"E{n}",
        name,
        {
            "name": f"Person {n}",
            "given_name": "Person",
            "family_name": str(n),
            "email": f"{name}@example.org",
            "department": "Engineering",
            "title": "Engineer",
            "employment_type": "employee",
        },
        enabled=enabled,
    )


# --- users and groups, each group style ------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_user_lifecycle_with_each_group_style(
    style: str, make: Callable[..., LdapConnector], namespace: Namespace
) -> None:
    directory = make(style)
    assert Capability.ENTITLEMENTS in directory.capabilities()
    assert Capability.SESSIONS not in directory.capabilities()
    account = directory.create(spec())
    uuid.UUID(account)  # the entryUUID
    record = directory.read(account)
    assert record is not None and record.enabled and record.entitlements == frozenset()
    assert record.user_name == "user1" and record.external_id == "E1" and record.sessions is None
    assert record.attributes == {
        "name": "Person 1",
        "given_name": "Person",
        "family_name": "1",
        "email": "user1@example.org",
        "department": "Engineering",
        "title": "Engineer",
        "employment_type": "employee",
    }
    stored = raw_entry(namespace.server, f"uid=user1,{namespace.people}")
    assert stored is not None and stored["employeenumber"] == ["E1"] and stored["sn"] == ["1"]

    directory.add_entitlement(account, "dev")
    directory.add_entitlement(account, "dev")  # already a member: not an error
    directory.add_entitlement(account, "ops")
    record = directory.read(account)
    assert record is not None and record.entitlements == {"dev", "ops"}
    value = f"uid=user1,{namespace.people}" if style != "posixGroup" else "user1"
    assert namespace.members("dev", style) == [value]

    directory.remove_entitlement(account, "dev")  # the last member of dev leaves
    directory.remove_entitlement(account, "dev")  # already gone: not an error
    assert namespace.members("dev", style) == []
    record = directory.read(account)
    assert record is not None and record.entitlements == {"ops"}
    directory.add_entitlement(account, "dev")  # a group left with its placeholder takes members
    assert namespace.members("dev", style) == [value]

    listed = {r.account: r for r in directory.list_accounts()}
    assert listed[account].entitlements == {"dev", "ops"}
    found = directory.find(spec())
    assert found is not None and found.account == account
    by_name = directory.find(AccountSpec("E-unknown", "user1"))
    assert by_name is not None and by_name.account == account
    assert directory.find(AccountSpec("E-other", "nobody")) is None


def test_find_prefers_the_external_id(make: Callable[..., LdapConnector]) -> None:
    directory = make()
    mine = directory.create(spec(1, user="ann"))
    other = directory.create(spec(2, user="bob"))
    found = directory.find(AccountSpec("E2", "ann"))  # bob carries E2; ann has the name
    assert found is not None and found.account == other
    assert directory.find(AccountSpec("E9", "ann")).account == mine  # type: ignore[union-attr]


def test_memberof_membership(make: Callable[..., LdapConnector]) -> None:
    directory = make(membership="memberof")
    account = directory.create(spec())
    directory.add_entitlement(account, "dev")
    record = directory.read(account)
    assert record is not None and record.entitlements == {"dev"}
    assert {r.account: r.entitlements for r in directory.list_accounts()} == {account: {"dev"}}
    directory.remove_entitlement(account, "dev")
    assert directory.read(account).entitlements == frozenset()  # type: ignore[union-attr]


def test_unknown_group_conflict_and_missing_account(make: Callable[..., LdapConnector]) -> None:
    directory = make()
    account = directory.create(spec())
    with pytest.raises(Conflict, match="user1"):
        directory.create(spec(2, user="user1"))
    with pytest.raises(PermanentError, match="group 'nosuch' does not exist"):
        directory.add_entitlement(account, "nosuch")
    with pytest.raises(PermanentError, match="group 'nosuch' does not exist"):
        directory.remove_entitlement(account, "nosuch")
    gone = str(uuid.uuid4())
    assert directory.read(gone) is None
    with pytest.raises(NotFound):
        directory.set_enabled(gone, False)
    directory.delete(gone)  # never there: not an error
    with pytest.raises(Unsupported):
        directory.revoke_sessions(account)


# --- disable flavours --------------------------------------------------------------------------


def lock_state(namespace: Namespace, flavour: str, dn: str) -> str | None:
    """The value of the flavour's lock attribute, as stored."""
    attribute = ldap_module.DISABLE_ATTRIBUTE[flavour]
    entry = raw_entry(namespace.server, dn, attribute)
    assert entry is not None
    values = entry.get(attribute.lower(), [])
    return str(values[0]) if values else None


@pytest.mark.parametrize(
    ("flavour", "locked", "unlocked"),
    [
        ("ou", "disabled", "people"),
        ("ppolicy", "000001010000Z", None),
        ("nsaccountlock", "TRUE", None),
        ("ad", "514", "512"),
    ],
)
def test_disable_flavours(
    flavour: str,
    locked: str,
    unlocked: str | None,
    make: Callable[..., LdapConnector],
    namespace: Namespace,
) -> None:
    extra: dict[str, Any] = {"disable": flavour}
    if flavour in ("nsaccountlock", "ad"):
        extra["user_object_classes"] = WITH_LOCK_ATTRIBUTES
    directory = make(**extra)
    account = directory.create(spec())
    directory.add_entitlement(account, "dev")

    def where() -> tuple[bool, Any]:
        record = directory.read(account)
        assert record is not None and record.entitlements == {"dev"}
        if flavour == "ou":
            places = {"disabled": namespace.disabled, "people": namespace.people}
            found = [
                p for p, dn in places.items() if raw_entry(namespace.server, f"uid=user1,{dn}")
            ]
            return record.enabled, found[0] if len(found) == 1 else found
        return record.enabled, lock_state(namespace, flavour, f"uid=user1,{namespace.people}")

    assert where() == (True, unlocked)
    directory.set_enabled(account, False)
    directory.set_enabled(account, False)  # already disabled: nothing to do
    assert where() == (False, locked)
    if flavour == "ou":  # memberships follow the move, by DN
        assert namespace.members("dev") == [f"uid=user1,{namespace.disabled}"]
    listed = {r.account: r for r in directory.list_accounts()}
    assert not listed[account].enabled and listed[account].entitlements == {"dev"}
    directory.set_enabled(account, True)
    assert where() == (True, unlocked)

    locked_from_start = directory.create(spec(2, enabled=False))
    record = directory.read(locked_from_start)
    assert record is not None and not record.enabled
    assert directory.find(spec(2)).account == locked_from_start  # type: ignore[union-attr]


def test_ad_flavour_keeps_the_other_control_bits(
    make: Callable[..., LdapConnector], namespace: Namespace
) -> None:
    directory = make(disable="ad", user_object_classes=WITH_LOCK_ATTRIBUTES)
    account = directory.create(spec())
    dn = f"uid=user1,{namespace.people}"
    connection = admin(namespace.server)
    # DONT_EXPIRE_PASSWORD (0x10000) | NORMAL_ACCOUNT (0x200)
    connection.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, ["66048"])]})
    connection.unbind()
    directory.set_enabled(account, False)
    assert lock_state(namespace, "ad", dn) == "66050"
    directory.set_enabled(account, True)
    assert lock_state(namespace, "ad", dn) == "66048"


def test_lock_values_and_object_guid_filters() -> None:
    """Requests for directories not run here: Active Directory's binary objectGUID as the
    account id, and the lock values of each flavour."""
    settings = {"url": "ldap://127.0.0.1:1", "bind_dn": "cn=x", "password": "p", "base_dn": "dc=x"}
    ad = LdapConnector("ad", {**settings, "disable": "ad", "id_attribute": "objectGUID"})
    guid = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    assert ad._id_filter(str(guid)) == (
        "(objectGUID=\\67\\45\\23\\01\\ab\\89\\ef\\cd\\01\\23\\45\\67\\89\\ab\\cd\\ef)"
    )
    entry = ldap_module.Entry("cn=a,dc=x", {"objectguid": [guid.bytes_le]})
    assert ad._id_of(entry) == str(guid)
    with pytest.raises(PermanentError, match="not an objectGUID"):
        ad._id_filter("not-a-guid")
    assert ad._lock_values(False, "512") == ["514"]
    assert ad._lock_values(True, "546") == ["544"]
    assert ad._lock_values(False, None) == ["514"]
    ds = LdapConnector("ds", {**settings, "disable": "nsaccountlock"})
    assert ds._lock_values(False) == ["TRUE"] and ds._lock_values(True) == []
    assert ds._enabled(ldap_module.Entry("cn=a,dc=x", {"nsaccountlock": [b"true"]})) is False
    ad.close()
    ds.close()


def test_dn_helpers() -> None:
    value = ' #a,b+c="d"\\e; '
    escaped = ldap_module.escape_rdn_value(value)
    assert ldap_module.rdn_value(f"uid={escaped},ou=people,dc=x") == value
    assert ldap_module.split_dn("uid=a\\,b, ou=People ,dc=x") == ["uid=a\\,b", "ou=People", "dc=x"]
    assert ldap_module.rdn_value("cn=caf\\C3\\A9,dc=x") == "café"
    assert ldap_module.norm_dn("UID=Ann , OU = People,dc=X") == "uid=ann,ou=people,dc=x"
    assert ldap_module.under("uid=a,ou=disabled,dc=x", "OU=Disabled, dc=x")
    assert not ldap_module.under("uid=a,ou=xdisabled,dc=x", "ou=disabled,dc=x")
    assert ldap_module.escape_filter("a*(b)\\") == "a\\2a\\28b\\29\\5c"


def test_awkward_user_names(make: Callable[..., LdapConnector], namespace: Namespace) -> None:
    directory = make()
    name = "Lee, Ann (*) #1+x"
    account = directory.create(AccountSpec("E7", name, {"name": name}))
    directory.add_entitlement(account, "dev")
    record = directory.read(account)
    assert record is not None and record.user_name == name and record.entitlements == {"dev"}
    assert directory.find(AccountSpec("E-x", name)).account == account  # type: ignore[union-attr]
    directory.delete(account)
    assert namespace.members("dev") == []


# --- rename, delete, referential integrity -----------------------------------------------------


@pytest.mark.parametrize("overlays", [None, ()], ids=["refint", "no-overlays"])
@pytest.mark.parametrize("style", ["groupOfNames", "posixGroup"])
def test_rename_and_delete_keep_groups_right(
    style: str, overlays: tuple[str, ...] | None, slapd: Slapd
) -> None:
    server = slapd if overlays is None else Slapd(overlays=overlays).start()
    try:
        if overlays is not None:
            assert server.overlays == ()
        namespace = Namespace(server)
        directory = namespace.connector(style, disable="ou")
        account = directory.create(spec())
        other = directory.create(spec(2))
        for who in (account, other):
            directory.add_entitlement(who, "dev")
        directory.add_entitlement(account, "ops")

        renamed = AccountSpec("E1", "ann.lee", {**spec().attributes, "name": "Ann Lee"})
        assert directory.update(account, renamed) == account  # the entryUUID stays
        assert raw_entry(server, f"uid=user1,{namespace.people}") is None
        entry = raw_entry(server, f"uid=ann.lee,{namespace.people}", "uid", "cn")
        assert entry is not None and entry["uid"] == ["ann.lee"] and entry["cn"] == ["Ann Lee"]
        record = directory.read(account)
        assert record is not None and record.user_name == "ann.lee"
        assert record.attributes["name"] == "Ann Lee" and record.entitlements == {"dev", "ops"}
        new_value = f"uid=ann.lee,{namespace.people}" if style != "posixGroup" else "ann.lee"
        assert new_value in namespace.members("ops", style)
        assert len(namespace.members("dev", style)) == 2
        with pytest.raises(Conflict):
            directory.update(account, AccountSpec("E1", "user2", renamed.attributes))

        directory.set_enabled(account, False)  # a move to the disabled OU (a new DN)
        assert directory.read(account).entitlements == {"dev", "ops"}  # type: ignore[union-attr]
        directory.delete(account)
        assert directory.read(account) is None
        directory.delete(account)  # already gone: not an error
        assert namespace.members("ops", style) == []
        remaining = [f"uid=user2,{namespace.people}" if style != "posixGroup" else "user2"]
        assert namespace.members("dev", style) == remaining
        directory.close()
    finally:
        if overlays is not None:
            server.stop()


def test_update_writes_only_what_differs(make: Callable[..., LdapConnector]) -> None:
    directory = make()
    account = directory.create(spec())
    attributes = {k: v for k, v in spec().attributes.items() if k != "title"}
    directory.update(account, AccountSpec("E1", "user1", {**attributes, "department": "Sales"}))
    record = directory.read(account)
    assert record is not None and record.attributes["department"] == "Sales"
    assert "title" not in record.attributes  # gone from the spec: removed from the entry


# --- listing -------------------------------------------------------------------------------------


class PageCounter(Ldap3Client):
    """The real client, counting the pages the server answers."""

    pages = 0

    def _entries(self, response: Any) -> list[ldap_module.Entry]:
        self.pages += 1
        return super()._entries(response)


def test_paged_list_of_thousands(namespace: Namespace, connectors: list[LdapConnector]) -> None:
    server = namespace.server
    client = PageCounter(server.url, server.bind_dn, server.password)
    settings = {
        "url": server.url,
        "bind_dn": server.bind_dn,
        "password": server.password,
        "base_dn": namespace.people,
        "groups_dn": namespace.groups,
        "page_size": 250,
    }
    directory = LdapConnector("directory", settings, client=client)
    connectors.append(directory)
    server.create_groups(["dev"], parent=namespace.groups)
    total = 2600
    connection = admin(server)
    for i in range(total):
        connection.add(
            f"uid=bulk{i},{namespace.people}",
            ["inetOrgPerson"],
            {"uid": f"bulk{i}", "cn": f"Bulk {i}", "sn": "Bulk", "employeeNumber": f"B{i}"},
        )
    connection.modify(
        f"cn=dev,{namespace.groups}",
        {
            "member": [
                (ldap3.MODIFY_ADD, [f"uid=bulk{i},{namespace.people}" for i in range(0, 2600, 7)])
            ]
        },
    )
    connection.unbind()
    client.pages = 0
    records = list(directory.list_accounts())
    assert len(records) == total == len({r.account for r in records})
    assert client.pages >= total // 250 + 1  # the users' pages, and the groups' one
    members = {r.user_name for r in records if r.entitlements == {"dev"}}
    assert members == {f"bulk{i}" for i in range(0, 2600, 7)}
    assert {r.external_id for r in records} == {f"B{i}" for i in range(total)}


# --- threads and errors ------------------------------------------------------------------------


def test_threads_share_one_connector(
    make: Callable[..., LdapConnector], namespace: Namespace
) -> None:
    directory = make()
    seen_threads: set[int] = set()

    def hire(n: int) -> str:
        seen_threads.add(threading.get_ident())
        account = directory.create(spec(n))
        directory.add_entitlement(account, "dev")
        directory.add_entitlement(account, "ops" if n % 2 else "dev")
        return account

    with ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(hire, range(120)))
    assert len(seen_threads) > 1
    assert len(namespace.members("dev")) == 120 and len(namespace.members("ops")) == 60
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(directory.delete, accounts[:60]))
    assert len(namespace.members("dev")) == 60


def test_connections_of_ended_threads_are_closed(make: Callable[..., LdapConnector]) -> None:
    directory = make()
    account = directory.create(spec())
    for _ in range(3):  # the runner starts new worker threads for every pass
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: directory.read(account), range(40)))
    directory.read(account)
    client = directory._client
    assert isinstance(client, Ldap3Client)
    assert len(client._open) <= 5  # this thread's, and at most the last pass's four


def test_stopped_server_is_retryable_and_recovery_reconnects() -> None:
    server = Slapd().start()
    port, password = server.port, server.password
    settings = {
        "url": server.url,
        "bind_dn": server.bind_dn,
        "password": password,
        "base_dn": server.people_dn,
        "groups_dn": server.groups_dn,
        "timeout": 2,
    }
    directory = LdapConnector("directory", settings)
    try:
        account = directory.create(spec())
        server.stop()
        started = time.monotonic()
        for attempt in (lambda: directory.read(account), lambda: directory.create(spec(2))):
            with pytest.raises(RetryableError, match="directory: ") as caught:
                attempt()
            assert password not in str(caught.value)
        assert time.monotonic() - started < 10
        server = Slapd(port=port, password=password).start()  # back, empty, on the same port
        assert directory.read(account) is None
        account = directory.create(spec(3))
        server.stop()  # every connection dies while idle ...
        server = Slapd(port=port, password=password).start()
        assert directory.read(account) is None  # ... and the next request opens a new one
    finally:
        directory.close()
        server.stop()


def test_wrong_password_is_permanent_and_not_shown(slapd: Slapd) -> None:
    directory = LdapConnector(
        "directory",
        {
            "url": slapd.url,
            "bind_dn": slapd.bind_dn,
            "password": "wrong-pw",
            "base_dn": slapd.base_dn,
        },
    )
    with pytest.raises(PermanentError, match="invalidCredentials") as caught:
        directory.read(str(uuid.uuid4()))
    assert not isinstance(caught.value, RetryableError) and "wrong-pw" not in str(caught.value)
    directory.close()


def test_settings_are_checked() -> None:
    good = {"url": "ldap://127.0.0.1:1", "bind_dn": "cn=x", "password": "p", "base_dn": "dc=x"}
    for missing in ("url", "bind_dn", "password", "base_dn"):
        with pytest.raises(PermanentError, match=f"target t: connection.{missing} is required"):
            LdapConnector("t", {k: v for k, v in good.items() if k != missing})
    with pytest.raises(PermanentError, match="disabled_dn is required"):
        LdapConnector("t", {**good, "disable": "ou"})
    with pytest.raises(PermanentError, match="group_style: Input should be 'groupOfNames'"):
        LdapConnector("t", {**good, "group_style": "roles"})
    with pytest.raises(PermanentError, match=r"connection\.disable: Input should be 'ppolicy'"):
        LdapConnector("t", {**good, "disable": "nologin"})
    typo = r"unknown connection setting grops_dn \(did you mean groups_dn\?\)"
    with pytest.raises(PermanentError, match=typo):
        LdapConnector("t", {**good, "grops_dn": "ou=groups,dc=x"})
    with pytest.raises(PermanentError, match="page_size: Input should be greater than"):
        LdapConnector("t", {**good, "page_size": 0})
    with pytest.raises(PermanentError, match="memberof"):
        LdapConnector("t", {**good, "group_style": "posixGroup", "membership": "memberof"})
    no_groups = LdapConnector("t", good)
    assert Capability.ENTITLEMENTS not in no_groups.capabilities()
    with pytest.raises(PermanentError, match="groups_dn is not set"):
        no_groups.add_entitlement("x", "dev")


def test_missing_slapd_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slapd_module, "SLAPD", slapd_module.Path("/nonexistent/slapd"))
    with pytest.raises(ProvisorError, match="apt-get install -y slapd ldap-utils"):
        Slapd().start()


# --- the connector contract ------------------------------------------------------------------


class TestContract(ConnectorContract):
    @pytest.fixture
    def connector(self, namespace: Namespace) -> Iterator[LdapConnector]:
        connector = namespace.connector(disable="ppolicy")
        yield connector
        connector.close()

    @pytest.fixture
    def entitlements(self) -> tuple[str, str]:
        return ("dev", "ops")

    @pytest.fixture
    def open_session(self) -> None:
        return None  # LDAP keeps no sessions

    @pytest.fixture
    def seed_accounts(self, namespace: Namespace) -> Callable[[Any, list[AccountSpec]], None]:
        """Entries as the connector writes them, added over one plain connection: several
        times faster than creates that each check the name and read the new id back."""

        def seed(connector: Any, specs: list[AccountSpec]) -> None:
            connection = admin(namespace.server)
            try:
                for one in specs:
                    attributes = {k: [v] for k, v in connector._wanted(one).items() if v}
                    attributes["objectClass"] = list(connector.object_classes)
                    attributes["uid"] = [one.user_name]
                    dn = f"uid={one.user_name},{namespace.people}"
                    assert connection.add(dn, attributes=attributes), connection.result
            finally:
                connection.unbind()

        return seed


@pytest.mark.parametrize("style", ["groupOfNames", "posixGroup"])
def test_changes_since_a_moment(make: Callable[..., LdapConnector], style: str) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    directory = make(style)
    first = directory.create(spec(1))
    third = directory.create(spec(3))
    directory.add_entitlement(third, "ops")
    time.sleep(1.1)  # modifyTimestamp has whole seconds
    since = datetime.now(UTC)
    second = directory.create(spec(2))
    directory.add_entitlement(first, "dev")
    directory.remove_entitlement(third, "ops")
    assert {r.account for r in directory.list_changed(since)} == {second}
    assert directory.changed_memberships(since) == {
        "dev": frozenset({first}),
        "ops": frozenset(),
    }
    assert directory.changed_memberships(since + timedelta(hours=1)) == {}
