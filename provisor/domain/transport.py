"""Credentials in clear: whether a target's connection would send a credential unencrypted.

Does: from a target's connection settings (resolved or not), say when a credential (a bearer
token, a password, a client secret) would go over plain ``http://``, or an LDAP bind password
over ``ldap://`` without StartTLS, to a host other than this machine (loopback traffic never
leaves it). The caller warns, or refuses when the workspace sets ``require_tls: true``.
Does not: open connections, or judge certificates (``tls_verify`` is the connector's).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from provisor.domain.policy import SECRET_SETTING

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials(connection: Mapping[str, Any]) -> list[str]:
    """The names of the credential settings that are set."""
    return sorted(
        key
        for key, value in connection.items()
        if SECRET_SETTING.search(str(key))
        and value not in (None, "")
        and not isinstance(value, bool)
    )


def cleartext_credentials(connection: Mapping[str, Any]) -> str | None:
    """Why this connection would send a credential unencrypted, or None when it would not."""
    url = connection.get("url")
    sent = _credentials(connection)
    if not isinstance(url, str) or not sent:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if _loopback(host):
        return None
    scheme = parts.scheme.lower()
    if scheme == "http":
        return (
            f"{', '.join(sent)} would be sent unencrypted to {host} (plain http://); use https://"
        )
    if scheme == "ldap" and not connection.get("start_tls"):
        return (
            f"the bind {', '.join(sent)} would be sent unencrypted to {host} (ldap:// without "
            "start_tls); use ldaps:// or start_tls: true"
        )
    return None
