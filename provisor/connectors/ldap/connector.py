"""The LDAP connector itself: users, groups and their membership in one directory.

Does: create user entries (``rdn_attribute`` = the user name, the identity id in
``external_id_attribute``, mapped attributes, created locked when asked), read them by a stable
id (``entryUUID``, ``nsUniqueId`` or ``objectGUID``, so a rename keeps the id), find them by
external id then by user name, update attributes and rename (modrdn), disable and enable in one
of four flavours (move to a disabled OU, ppolicy ``pwdAccountLockedTime``, 389-DS
``nsAccountLock``, Active Directory ``userAccountControl``), manage group membership as
entitlements (``groupOfNames``/``member``, ``groupOfUniqueNames``/``uniqueMember``,
``posixGroup``/``memberUid``; read from the groups or from ``memberOf``), keep group references
right on rename, move and delete whether or not the server runs ``refint``, list every account
with RFC 2696 paged results, and map LDAP failures to retryable or permanent errors. One
connection per thread, so the runner's worker threads never share a socket.
Does not: set or reset passwords, create groups or organizational units, or decide what to
change. LDAP has no sessions: revoking them is unsupported, and ``sessions`` reads as unknown.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from provisor.connectors.base import (
    AccountRecord,
    AccountSpec,
    BaseConnector,
    Capability,
    Conflict,
    NotFound,
    PermanentError,
    ReadPath,
    RetryableError,
)
from provisor.connectors.ldap.client import (
    ATTRIBUTE_OR_VALUE_EXISTS,
    NO_SUCH_ATTRIBUTE,
    OBJECT_CLASS_VIOLATION,
    Change,
    Entry,
    Ldap3Client,
    LdapClient,
    LdapEntryExists,
    LdapError,
    LdapNoSuchObject,
)
from provisor.connectors.ldap.dn import (
    escape_filter,
    escape_rdn_value,
    norm_dn,
    parent_dn,
    rdn_value,
    split_dn,
    under,
)
from provisor.connectors.ldap.settings import DISABLE_ATTRIBUTE, GROUP_STYLES, LdapSettings

T = TypeVar("T")
MEMBEROF_CHECKS = 3  # members of each group whose memberOf is checked against the group
LOCKED_FOREVER = "000001010000Z"  # ppolicy: locked until an administrator unlocks
AD_ACCOUNTDISABLE = 0x2
AD_NORMAL_ACCOUNT = 0x200


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _generalized(when: datetime) -> str:
    """An LDAP GeneralizedTime (UTC, whole seconds) for a filter."""
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


class LdapConnector(BaseConnector):
    """One LDAP directory. Settings (``connection`` in the policy, secrets already resolved):

    - ``url``: ``ldap://host:389`` or ``ldaps://host:636`` (required);
    - ``bind_dn`` and ``password``: the service account (required);
    - ``base_dn``: where users live, searched with subtree scope; new users go right below it
      (required);
    - ``groups_dn``: where the groups that are entitlements live (without it: no entitlements);
    - ``user_object_classes``: object classes of new users (default inetOrgPerson,
      organizationalPerson, person, top);
    - ``user_filter``: what a user entry is (default ``(objectClass=<first of those>)``);
    - ``rdn_attribute``: the naming attribute, holding the user name (default ``uid``);
    - ``attributes``: LDAP attribute -> identity attribute, or a list of them (the first with a
      value wins; ``user_name`` is the account's user name), merged over the defaults (cn <- name,
      sn <- family_name|name, givenName <- given_name, mail <- email, ou <- department,
      title <- title, employeeType <- employment_type); null drops a default;
    - ``external_id_attribute``: where the identity id is kept (default ``employeeNumber``;
      null: not kept);
    - ``id_attribute``: the stable account id (default ``entryUUID``; ``nsUniqueId`` for 389-DS,
      ``objectGUID`` for Active Directory);
    - ``group_style``: ``groupOfNames`` (default), ``groupOfUniqueNames`` or ``posixGroup``;
      ``group_object_class`` and ``member_attribute`` override the style's (e.g. ``group`` for
      Active Directory);
    - ``membership``: ``groups`` (read the groups' member attribute, the default) or ``memberof``
      (read the users' ``memberOf``);
    - ``placeholder_member``: the value left in a ``groupOfNames``/``groupOfUniqueNames`` whose
      last member leaves, since the schema needs one (default: the empty DN);
    - ``disable``: ``ppolicy`` (default; ``pwdAccountLockedTime: 000001010000Z``), ``ou`` (move
      to ``disabled_dn``), ``nsaccountlock`` (389-DS ``nsAccountLock: TRUE``) or ``ad``
      (``userAccountControl`` bit 0x2);
    - ``disabled_dn``: where disabled users go with ``disable: ou``;
    - ``page_size``: entries per page when listing (default 500);
    - ``timeout``: seconds to connect and per request (default 10);
    - ``start_tls``, ``tls_verify`` (default true) and ``ca_file`` for TLS.

    ``client`` replaces the LDAP client library (any ``LdapClient``; default ``ldap3``).
    """

    # membership reads count only once shown to work (coverage asks)
    proves_membership = True

    Settings = LdapSettings
    settings: LdapSettings
    reads_entitlements = True  # from the groups, or memberOf once shown (``unread`` otherwise)

    def __init__(
        self, name: str, settings: Mapping[str, Any], client: LdapClient | None = None
    ) -> None:
        super().__init__(name, settings)
        given = self.settings
        self.base_dn = given.base_dn
        self.groups_dn: str | None = given.groups_dn or None
        self.object_classes = list(given.user_object_classes)
        self.user_filter = given.user_filter or f"(objectClass={self.object_classes[0]})"
        self.rdn = given.rdn_attribute
        self.mapping = given.mapping()
        self.external_attr: str | None = given.external_id_attribute or None
        self.carries_identity = self.external_attr is not None
        self.id_attr = given.id_attribute
        self._binary_id = self.id_attr.lower() == "objectguid"
        object_class, member, by_dn = GROUP_STYLES[given.group_style]
        self.group_class = given.group_object_class or object_class
        self.member_attr = given.member_attribute or member
        self.members_are_dns = by_dn
        self.membership = given.membership
        self.placeholder = given.placeholder_member
        self.disable = given.disable
        self.disabled_dn: str | None = given.disabled_dn or None
        self.page_size = given.page_size
        self.bases = [self.base_dn]
        if self.disable == "ou" and self.disabled_dn and not under(self.disabled_dn, self.base_dn):
            self.bases.append(self.disabled_dn)
        self._read_attrs = self._attributes_read()
        # memberOf (an overlay's, maintained by the server) counts only once shown: None until
        # probed; with a verdict, why
        self._memberof: tuple[bool, str] | None = None
        self._record_paths: Callable[[list[ReadPath]], None] | None = None
        self._client: LdapClient = client or Ldap3Client(
            given.url,
            given.bind_dn,
            given.password.get_secret_value(),
            timeout=given.timeout,
            start_tls=given.start_tls,
            tls_verify=given.tls_verify,
            ca_file=given.ca_file,
        )
        self._groups: dict[str, str] = {}  # entitlement -> group DN
        self._group_names: dict[str, str] = {}  # normalised group DN -> entitlement
        self._groups_lock = threading.Lock()

    def _attributes_read(self) -> list[str]:
        read = [self.rdn, self.id_attr, *self.mapping]
        if self.external_attr:
            read.append(self.external_attr)
        if self.disable in DISABLE_ATTRIBUTE:
            read.append(DISABLE_ATTRIBUTE[self.disable])
        if self.membership == "memberof":
            read.append("memberOf")
        return list(dict.fromkeys(read))

    def unavailable(self) -> frozenset[Capability]:
        return frozenset() if self.groups_dn else frozenset({Capability.ENTITLEMENTS})

    def check(self) -> None:
        """Bind with the configured credentials and read the base entry."""
        base = self.base_dn
        read = self._client.search
        self._call("check", lambda: read(base, "(objectClass=*)", ["objectClass"], scope="base"))

    # --- plumbing ---------------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one client call; failures name the target and the operation."""
        try:
            return action()
        except LdapError as exc:
            raise exc.again(f"{self.name}: {what}: {exc}") from exc
        except RetryableError as exc:  # Unavailable stays Unavailable
            raise type(exc)(f"{self.name}: {what}: {exc}", exc.retry_after) from exc

    def _id_filter(self, account: str) -> str:
        if self._binary_id:
            try:
                raw = uuid.UUID(account.strip("{}")).bytes_le
            except ValueError:
                raise PermanentError(
                    f"{self.name}: {account!r} is not an objectGUID this target issued"
                ) from None
            escaped = "".join(f"\\{b:02x}" for b in raw)
            return f"({self.id_attr}={escaped})"
        return f"({self.id_attr}={escape_filter(account)})"

    def _id_of(self, entry: Entry) -> str:
        raw = entry.raw.get(self.id_attr.lower())
        if not raw:
            raise PermanentError(
                f"{self.name}: {entry.dn} has no {self.id_attr}; set connection.id_attribute to "
                "an attribute every user entry has"
            )
        if self._binary_id and len(raw[0]) == 16:
            return str(uuid.UUID(bytes_le=bytes(raw[0])))
        return raw[0].decode("utf-8", errors="replace")

    def _user_filter(self, inner: str) -> str:
        return f"(&{self.user_filter}{inner})"

    def _search_users(self, what: str, inner: str) -> list[Entry]:
        found: list[Entry] = []
        flt = self._user_filter(inner)
        for base in self.bases:

            def search(base: str = base) -> list[Entry]:
                return self._client.search(base, flt, self._read_attrs)

            found += self._call(what, search)
        return found

    def _lookup(self, account: str) -> Entry | None:
        found = self._search_users(f"read {account}", self._id_filter(account))
        return found[0] if found else None

    def _entry(self, account: str, what: str) -> Entry:
        entry = self._lookup(account)
        if entry is None:
            raise NotFound(f"{self.name}: {what}: account {account} does not exist")
        return entry

    def _member_value(self, entry_dn: str, user_name: str) -> str:
        return entry_dn if self.members_are_dns else user_name

    def _enabled(self, entry: Entry) -> bool:
        if self.disable == "ou":
            return not (self.disabled_dn and under(entry.dn, self.disabled_dn))
        if self.disable == "ppolicy":
            return entry.first("pwdAccountLockedTime") != LOCKED_FOREVER
        if self.disable == "nsaccountlock":
            return (entry.first("nsAccountLock") or "").strip().lower() != "true"
        control = entry.first("userAccountControl")
        return not (int(control) & AD_ACCOUNTDISABLE) if control else True

    def _record(self, entry: Entry, entitlements: frozenset[str]) -> AccountRecord:
        attributes: dict[str, Any] = {}
        for target, sources in self.mapping.items():
            values = entry.values(target)
            if values and sources[0] != "user_name":
                attributes[sources[0]] = values[0] if len(values) == 1 else values
        return AccountRecord(
            account=self._id_of(entry),
            user_name=rdn_value(entry.dn),
            enabled=self._enabled(entry),
            entitlements=entitlements,
            external_id=entry.first(self.external_attr) if self.external_attr else None,
            sessions=None,
            attributes=attributes,
        )

    # --- groups -------------------------------------------------------------------------------

    def _groups_base(self, what: str) -> str:
        if not self.groups_dn:
            raise PermanentError(
                f"{self.name}: {what}: connection.groups_dn is not set, so this target has no "
                "entitlements"
            )
        return self.groups_dn

    def _group_filter(self, inner: str = "") -> str:
        return f"(&(objectClass={self.group_class}){inner})"

    def _group_dn(self, entitlement: str, what: str, fresh: bool = False) -> str:
        with self._groups_lock:
            known = None if fresh else self._groups.get(entitlement)
        if known:
            return known
        base = self._groups_base(what)
        found = self._call(
            f"find group {entitlement}",
            lambda: self._client.search(
                base, self._group_filter(f"(cn={escape_filter(entitlement)})"), ["cn"]
            ),
        )
        if not found:
            raise PermanentError(
                f"{self.name}: group {entitlement!r} does not exist under {base}; create it "
                "there or remove it from the policy"
            )
        with self._groups_lock:
            self._groups[entitlement] = found[0].dn
            self._group_names[norm_dn(found[0].dn)] = entitlement
        return found[0].dn

    def _groups_holding(self, value: str, what: str) -> list[Entry]:
        """The groups under ``groups_dn`` whose member attribute holds ``value``."""
        if not self.groups_dn:
            return []
        base = self.groups_dn
        flt = self._group_filter(f"({self.member_attr}={escape_filter(value)})")
        return self._call(what, lambda: self._client.search(base, flt, ["cn"]))

    def _group_name(self, group: Entry) -> str:
        return group.first("cn") or rdn_value(group.dn)

    def _memberof_shown(self) -> bool:
        """Whether users' ``memberOf`` is shown to work here: a member a group entry lists
        (read directly, the control) has that group in its ``memberOf``. A directory without
        the memberof overlay has no such values, and an empty ``memberOf`` would then pass for
        "in no group": until shown, membership is read from the groups' own member attribute."""
        if self.membership != "memberof" or not self.groups_dn:
            return False
        if self._memberof is None:
            self._memberof = self._probe_memberof()
            if self._record_paths is not None:
                self._record_paths(self._known_paths())
        return self._memberof[0]

    def _probe_memberof(self) -> tuple[bool, str]:
        base = self._groups_base("probe memberOf")
        groups = self._call(
            "probe memberOf",
            lambda: list(
                self._client.paged_search(
                    base, self._group_filter(), ["cn", self.member_attr], self.page_size
                )
            ),
        )
        checked = 0
        for group in groups:  # a few members of every group: memberOf may be partial
            for member in group.values(self.member_attr)[:MEMBEROF_CHECKS]:
                dn = member.split("#", 1)[0]
                if not dn or (self.placeholder and norm_dn(dn) == norm_dn(self.placeholder)):
                    continue

                def read(dn: str = dn) -> list[Entry]:
                    return self._client.search(dn, "(objectClass=*)", ["memberOf"], scope="base")

                try:
                    found = self._call(f"read {dn}", read)
                except NotFound:
                    continue
                if not found:
                    continue
                listed = {norm_dn(v) for v in found[0].values("memberOf")}
                if norm_dn(group.dn) not in listed:
                    return False, f"{dn} is a member of {group.dn} but its memberOf does not say so"
                checked += 1
        if checked:
            return True, f"{checked} member(s) of the groups list them in memberOf"
        return False, "no group lists a member yet to check memberOf against"

    def read_paths(self) -> list[ReadPath]:
        """How membership is read here, probed now: the groups' own member attribute (read
        directly, always trusted) and, with ``membership: memberof``, users' ``memberOf``."""
        if self.membership == "memberof" and self.groups_dn:
            self._memberof = self._probe_memberof()
        return self._known_paths()

    def _known_paths(self) -> list[ReadPath]:
        paths = [ReadPath("group-members", "trusted", f"groups' {self.member_attr} read directly")]
        if self._memberof is not None:
            shown, why = self._memberof
            paths.append(ReadPath("member-of", "trusted" if shown else "untrusted", why))
        return paths

    def remember(
        self, earlier: list[ReadPath], record: Callable[[list[ReadPath]], None] | None
    ) -> None:
        """Earlier probes are not needed here (the group side is always there to fall back
        to); what is known now is recorded, and again once memberOf is probed."""
        self._record_paths = record
        if record is not None:
            record(self._known_paths())

    def _entitlements(self, entry: Entry) -> frozenset[str]:
        if not self.groups_dn:
            return frozenset()
        if self._memberof_shown():
            return self._names_of(entry.values("memberOf"))
        value = self._member_value(entry.dn, rdn_value(entry.dn))
        groups = self._groups_holding(value, f"read groups of {entry.dn}")
        return frozenset(self._group_name(g) for g in groups)

    def _names_of(self, group_dns: list[str]) -> frozenset[str]:
        """Entitlement names for ``memberOf`` values (groups outside ``groups_dn`` ignored)."""
        assert self.groups_dn is not None
        wanted = [norm_dn(d) for d in group_dns if under(d, self.groups_dn)]
        with self._groups_lock:
            missing = [d for d in wanted if d not in self._group_names]
        if missing:
            self._load_groups()
        with self._groups_lock:
            return frozenset(self._group_names[d] for d in wanted if d in self._group_names)

    def _load_groups(self) -> list[Entry]:
        """Every group under ``groups_dn`` with its members; refreshes the name cache."""
        base = self._groups_base("list groups")
        attrs = ["cn", self.member_attr]  # memberOf may yet prove untrustworthy here
        groups = self._call(
            "list groups",
            lambda: list(
                self._client.paged_search(base, self._group_filter(), attrs, self.page_size)
            ),
        )
        with self._groups_lock:
            for group in groups:
                name = self._group_name(group)
                self._groups[name] = group.dn
                self._group_names[norm_dn(group.dn)] = name
        return groups

    def _change_member(self, group: str, entitlement: str, value: str, add: bool) -> None:
        """Add or remove one member value; idempotent either way."""
        verb = "add" if add else "remove"
        what = f"{verb} {value} {'to' if add else 'from'} group {entitlement}"
        op = "add" if add else "delete"
        try:
            self._call(
                what, lambda: self._client.modify(group, {self.member_attr: [(op, [value])]})
            )
        except LdapError as exc:
            if exc.code == (ATTRIBUTE_OR_VALUE_EXISTS if add else NO_SUCH_ATTRIBUTE):
                return  # already as intended
            if not add and exc.code == OBJECT_CLASS_VIOLATION and self.members_are_dns:
                # the last member of a group whose schema needs one: leave the placeholder
                changes = {self.member_attr: [("add", [self.placeholder]), ("delete", [value])]}
                try:
                    self._call(what, lambda: self._client.modify(group, changes))
                except LdapError as again:
                    if again.code != NO_SUCH_ATTRIBUTE:
                        raise
                return
            raise

    def _membership(self, account: str, entitlement: str, add: bool) -> None:
        verb = "add" if add else "remove"
        what = f"{verb} {account} {'to' if add else 'from'} group {entitlement}"
        self._groups_base(what)
        group = self._group_dn(entitlement, what)
        entry = self._entry(account, what)
        value = self._member_value(entry.dn, rdn_value(entry.dn))
        try:
            self._change_member(group, entitlement, value, add)
        except LdapNoSuchObject:
            # the group moved or went away since it was looked up: look again, once
            group = self._group_dn(entitlement, what, fresh=True)
            self._change_member(group, entitlement, value, add)

    def _repoint(self, old_dn: str, new_dn: str, old_name: str, new_name: str) -> None:
        """Make groups that name the user by its old DN (or old user name) name the new one.

        The ``refint`` overlay does this for DNs too, but in the background and only where it
        runs; doing it here makes the change whole before the read-back."""
        if self.members_are_dns:
            old, new = old_dn, new_dn
            if norm_dn(old) == norm_dn(new):
                return
        else:
            old, new = old_name, new_name
            if old == new:
                return
        for group in self._groups_holding(old, f"find groups of {old}"):
            name = self._group_name(group)
            self._change_member(group.dn, name, new, add=True)
            self._change_member(group.dn, name, old, add=False)

    # --- reading ------------------------------------------------------------------------------

    def read(self, account: str) -> AccountRecord | None:
        entry = self._lookup(account)
        return None if entry is None else self._record(entry, self._entitlements(entry))

    def find(self, spec: AccountSpec) -> AccountRecord | None:
        """By external id first, else by user name; one search per base."""
        by_name = f"({self.rdn}={escape_filter(spec.user_name)})"
        inner = (
            f"(|({self.external_attr}={escape_filter(spec.identity)}){by_name})"
            if self.external_attr
            else by_name
        )
        found = self._search_users(f"find {spec.user_name}", inner)
        if not found:
            return None
        if self.external_attr:
            found.sort(key=lambda e: e.first(self.external_attr or "") != spec.identity)
        return self._record(found[0], self._entitlements(found[0]))

    def list_accounts(self) -> Iterator[AccountRecord]:
        """Every user under the user bases, page by page; group memberships read once."""
        members: dict[str, set[str]] = {}
        self._memberof = None  # checked afresh on every full listing
        by_memberof = self._memberof_shown()
        if self.groups_dn and not by_memberof:
            for group in self._load_groups():
                name = self._group_name(group)
                for value in group.values(self.member_attr):
                    if value:
                        key = norm_dn(value.split("#", 1)[0]) if self.members_are_dns else value
                        members.setdefault(key, set()).add(name)
        elif self.groups_dn:
            self._load_groups()
        for base in self.bases:
            pages = self._client.paged_search(
                base, self.user_filter, self._read_attrs, self.page_size
            )

            def step(pages: Iterator[Entry] = pages) -> Entry | None:
                return next(pages, None)

            while True:
                try:
                    entry = self._call(f"list users under {base}", step)
                except LdapNoSuchObject:
                    if base == self.base_dn:
                        raise
                    break  # the disabled OU does not exist yet: nobody is disabled
                if entry is None:
                    break
                if not self.groups_dn:
                    groups: frozenset[str] = frozenset()
                elif by_memberof:
                    groups = self._names_of(entry.values("memberOf"))
                else:
                    key = norm_dn(entry.dn) if self.members_are_dns else rdn_value(entry.dn)
                    groups = frozenset(members.get(key, ()))
                yield self._record(entry, groups)

    def list_changed(self, since: datetime) -> Iterator[AccountRecord]:
        """Users whose entry changed at or after ``since`` (``modifyTimestamp``; a rename or a
        move counts), with their groups now. Group changes show in ``changed_memberships``."""
        inner = f"(modifyTimestamp>={_generalized(since)})"
        for entry in self._search_users("list changed users", inner):
            yield self._record(entry, self._entitlements(entry))

    def changed_memberships(self, since: datetime) -> dict[str, frozenset[str]]:
        """For every group changed at or after ``since``: all its members now, as account ids.
        With ``membership: memberof`` the users' own entries change instead: nothing here."""
        if not self.groups_dn or self.membership == "memberof":
            return {}
        base = self.groups_dn
        flt = self._group_filter(f"(modifyTimestamp>={_generalized(since)})")
        attrs = ["cn", self.member_attr]
        groups = self._call(
            "list changed groups",
            lambda: list(self._client.paged_search(base, flt, attrs, self.page_size)),
        )
        if not groups:
            return {}
        # member values are DNs (or user names for posixGroup): one paged read of the users'
        # ids turns them into account ids
        ids: dict[str, str] = {}
        for base_dn in self.bases:
            pages = self._client.paged_search(
                base_dn, self.user_filter, [self.id_attr], self.page_size
            )

            def step(pages: Iterator[Entry] = pages) -> Entry | None:
                return next(pages, None)

            while (entry := self._call("list user ids", step)) is not None:
                key = norm_dn(entry.dn) if self.members_are_dns else rdn_value(entry.dn)
                ids[key] = self._id_of(entry)
        changed: dict[str, frozenset[str]] = {}
        for group in groups:
            members = set()
            for value in group.values(self.member_attr):
                if value:
                    key = norm_dn(value.split("#", 1)[0]) if self.members_are_dns else value
                    if key in ids:
                        members.add(ids[key])
            changed[self._group_name(group)] = frozenset(members)
        return changed

    # --- writing ------------------------------------------------------------------------------

    def _wanted(self, spec: AccountSpec) -> dict[str, str | None]:
        """The mapped LDAP attributes' values for ``spec`` (None: should be absent)."""
        wanted: dict[str, str | None] = {}
        for target, sources in self.mapping.items():
            value = None
            for source in sources:
                value = _text(
                    spec.user_name if source == "user_name" else spec.attributes.get(source)
                )
                if value is not None:
                    break
            wanted[target] = value
        if self.external_attr:
            wanted[self.external_attr] = spec.identity
        return wanted

    def _lock_values(self, enabled: bool, current: str | None = None) -> list[str]:
        """The disable attribute's values for ``enabled`` (an empty list removes it)."""
        if self.disable == "ppolicy":
            return [] if enabled else [LOCKED_FOREVER]
        if self.disable == "nsaccountlock":
            return [] if enabled else ["TRUE"]
        control = int(current) if current else AD_NORMAL_ACCOUNT
        control = control & ~AD_ACCOUNTDISABLE if enabled else control | AD_ACCOUNTDISABLE
        return [str(control)]

    def create(self, spec: AccountSpec) -> str:
        what = f"create {spec.user_name}"
        if not spec.user_name:
            raise PermanentError(f"{self.name}: {what}: the user name is empty")
        taken = self._search_users(what, f"({self.rdn}={escape_filter(spec.user_name)})")
        if taken:
            raise Conflict(f"{self.name}: {what}: the user name is taken by {taken[0].dn}")
        parent = self.base_dn
        if self.disable == "ou" and not spec.enabled:
            assert self.disabled_dn is not None
            parent = self.disabled_dn
        dn = f"{self.rdn}={escape_rdn_value(spec.user_name)},{parent}"
        attributes: dict[str, list[str]] = {
            "objectClass": list(self.object_classes),
            self.rdn: [spec.user_name],
        }
        for target, value in self._wanted(spec).items():
            if value is not None:
                attributes[target] = [value]
        if self.disable in DISABLE_ATTRIBUTE:
            values = self._lock_values(spec.enabled)
            if values:
                attributes[DISABLE_ATTRIBUTE[self.disable]] = values
        try:
            self._call(what, lambda: self._client.add(dn, attributes))
        except LdapEntryExists as exc:
            raise Conflict(f"{exc}: the user name is taken") from exc
        found = self._call(
            what, lambda: self._client.search(dn, "(objectClass=*)", [self.id_attr], scope="base")
        )
        if not found:
            raise RetryableError(f"{self.name}: {what}: {dn} was added but cannot be read back")
        return self._id_of(found[0])

    def update(self, account: str, spec: AccountSpec) -> str:
        what = f"update {account}"
        entry = self._entry(account, what)
        dn, name = entry.dn, rdn_value(entry.dn)
        if name != spec.user_name:
            if not spec.user_name:
                raise PermanentError(f"{self.name}: {what}: the user name is empty")
            new_rdn = f"{self.rdn}={escape_rdn_value(spec.user_name)}"
            try:
                self._call(f"rename {dn} to {new_rdn}", lambda: self._client.rename(dn, new_rdn))
            except LdapEntryExists as exc:
                raise Conflict(f"{exc}: the user name {spec.user_name!r} is taken") from exc
            new_dn = f"{new_rdn},{parent_dn(dn)}"
            self._repoint(dn, new_dn, name, spec.user_name)
            dn = new_dn
        changes: dict[str, list[Change]] = {}
        for target, value in self._wanted(spec).items():
            have = entry.values(target)
            if value is None and have:
                changes[target] = [("replace", [])]
            elif value is not None and have != [value]:
                changes[target] = [("replace", [value])]
        if changes:
            self._call(what, lambda: self._client.modify(dn, changes))
        return account

    def set_enabled(self, account: str, enabled: bool) -> None:
        what = f"{'enable' if enabled else 'disable'} {account}"
        entry = self._entry(account, what)
        if self._enabled(entry) == enabled:
            return
        if self.disable == "ou":
            assert self.disabled_dn is not None
            parent = self.base_dn if enabled else self.disabled_dn
            first = split_dn(entry.dn)[0]
            try:
                self._call(what, lambda: self._client.rename(entry.dn, first, parent))
            except LdapEntryExists as exc:
                raise Conflict(f"{exc}: {first} already exists under {parent}") from exc
            self._repoint(entry.dn, f"{first},{parent}", "", "")
            return
        attribute = DISABLE_ATTRIBUTE[self.disable]
        values = self._lock_values(enabled, entry.first(attribute))
        self._call(what, lambda: self._client.modify(entry.dn, {attribute: [("replace", values)]}))

    def add_entitlement(self, account: str, entitlement: str) -> None:
        self._membership(account, entitlement, add=True)

    def remove_entitlement(self, account: str, entitlement: str) -> None:
        self._membership(account, entitlement, add=False)

    def _leave_groups(self, entry: Entry) -> None:
        value = self._member_value(entry.dn, rdn_value(entry.dn))
        for group in self._groups_holding(value, f"find groups of {entry.dn}"):
            self._change_member(group.dn, self._group_name(group), value, add=False)

    def delete(self, account: str) -> None:
        """Leave every group, then delete the entry: group references stay right with or
        without the ``refint`` overlay. Groups first, so that a delete retried after a failure
        still finds the entry and finishes the cleanup."""
        entry = self._lookup(account)
        if entry is None:
            return
        self._leave_groups(entry)
        with contextlib.suppress(LdapNoSuchObject):  # gone meanwhile: as intended
            self._call(f"delete {entry.dn}", lambda: self._client.delete(entry.dn))

    def close(self) -> None:
        self._client.close()
