"""An LDAP target's ``connection`` settings, typed and checked.

Does: name every setting with its default — where users live (``base_dn``, ``rdn_attribute``,
``user_object_classes``, ``user_filter``), how they map to identity attributes (``attributes``),
which attribute carries the identity id and which the stable id, how groups keep members
(``group_style``, ``member_attribute``, ``membership``), how accounts are disabled
(``disable``, ``disabled_dn``), paging, timeouts and TLS — and refuse what cannot work together.
Does not: connect or read anything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from provisor.connectors.base import ConnectorSettings

DEFAULT_OBJECT_CLASSES = ("inetOrgPerson", "organizationalPerson", "person", "top")
# target attribute -> identity attribute, or a list of them (the first with a value wins);
# "user_name" stands for the account's user name
DEFAULT_ATTRIBUTES: dict[str, str | list[str]] = {
    "cn": ["name", "user_name"],
    "sn": ["family_name", "name", "user_name"],
    "givenName": "given_name",
    "mail": "email",
    "ou": "department",
    "title": "title",
    "employeeType": "employment_type",
}
GROUP_STYLES = {
    # group_style -> (group object class, member attribute, whether members are DNs)
    "groupOfNames": ("groupOfNames", "member", True),
    "groupOfUniqueNames": ("groupOfUniqueNames", "uniqueMember", True),
    "posixGroup": ("posixGroup", "memberUid", False),
}
DISABLE_FLAVOURS = ("ppolicy", "ou", "nsaccountlock", "ad")
DISABLE_ATTRIBUTE = {
    "ppolicy": "pwdAccountLockedTime",
    "nsaccountlock": "nsAccountLock",
    "ad": "userAccountControl",
}


class LdapSettings(ConnectorSettings):
    """See ``LdapConnector`` for what each setting means."""

    url: str = Field(min_length=1)
    bind_dn: str = Field(min_length=1)
    password: SecretStr
    base_dn: str = Field(min_length=1)
    groups_dn: str | None = None
    user_object_classes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OBJECT_CLASSES), min_length=1
    )
    user_filter: str | None = None
    rdn_attribute: str = "uid"
    attributes: dict[str, str | list[str] | None] | None = None
    external_id_attribute: str | None = "employeeNumber"
    id_attribute: str = "entryUUID"
    group_style: Literal["groupOfNames", "groupOfUniqueNames", "posixGroup"] = "groupOfNames"
    group_object_class: str | None = None
    member_attribute: str | None = None
    membership: Literal["groups", "memberof"] = "groups"
    placeholder_member: str = ""
    disable: Literal["ppolicy", "ou", "nsaccountlock", "ad"] = "ppolicy"
    disabled_dn: str | None = None
    page_size: int = Field(default=500, ge=1)
    timeout: float = Field(default=10.0, gt=0)
    start_tls: bool = False
    tls_verify: bool = True
    ca_file: str | None = None

    @field_validator("membership", "disable", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("(") and value.endswith(")")):
            raise ValueError("must be an LDAP filter in parentheses")
        return value

    @field_validator("attributes")
    @classmethod
    def _attribute_sources(
        cls, value: dict[str, str | list[str] | None] | None
    ) -> dict[str, str | list[str] | None] | None:
        for target, source in (value or {}).items():
            sources = [source] if isinstance(source, str) or source is None else source
            if not all(isinstance(s, str) for s in sources if s is not None):
                raise ValueError(f"{target} must name an identity attribute or a list of them")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LdapSettings:
        if self.disable == "ou" and not self.disabled_dn:
            raise ValueError("connection.disabled_dn is required with disable: ou")
        if self.membership == "memberof" and not GROUP_STYLES[self.group_style][2]:
            raise ValueError(
                f"membership 'memberof' needs DN members; group_style {self.group_style} keeps "
                "user names"
            )
        return self

    def mapping(self) -> dict[str, list[str]]:
        """The ``attributes`` setting merged over the defaults (a null value drops a default),
        without the RDN attribute: target attribute -> identity attributes, first with a value
        wins."""
        merged: dict[str, str | list[str] | None] = dict(DEFAULT_ATTRIBUTES)
        merged.update(self.attributes or {})
        out: dict[str, list[str]] = {}
        for target, source in merged.items():
            listed = [source] if isinstance(source, str) else source or []
            sources = [s for s in listed if s]
            if sources and target.lower() != self.rdn_attribute.lower():
                out[target] = sources
        return out
