"""LDAP connector (RFC 4511): OpenLDAP, 389 Directory Server and Active Directory, over ``ldap3``.

Does: give the connector (``connector``), its typed settings (``settings``), the client seam
and its ``ldap3`` implementation (``client``) and DN handling (``dn``) one home; the names
connector authors and tests use are importable from here.
Does not: hold logic of its own.
"""

from __future__ import annotations

from provisor.connectors.ldap.client import Entry, Ldap3Client, LdapClient, LdapError
from provisor.connectors.ldap.connector import LdapConnector
from provisor.connectors.ldap.dn import (
    escape_filter,
    escape_rdn_value,
    norm_dn,
    parent_dn,
    rdn_value,
    split_dn,
    under,
)
from provisor.connectors.ldap.settings import (
    DEFAULT_ATTRIBUTES,
    DEFAULT_OBJECT_CLASSES,
    DISABLE_ATTRIBUTE,
    GROUP_STYLES,
    LdapSettings,
)

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "DEFAULT_OBJECT_CLASSES",
    "DISABLE_ATTRIBUTE",
    "GROUP_STYLES",
    "Entry",
    "Ldap3Client",
    "LdapClient",
    "LdapConnector",
    "LdapError",
    "LdapSettings",
    "escape_filter",
    "escape_rdn_value",
    "norm_dn",
    "parent_dn",
    "rdn_value",
    "split_dn",
    "under",
]
