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


def _credentials(connection: Mapping[str, Any], where: str = "") -> list[str]:
    """The credential settings that are set, at any depth (a REST header's, an OAuth2 client
    secret under ``auth``), by their path."""
    found: list[str] = []
    for key, value in connection.items():
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, Mapping):
            found += _credentials(value, path)
        elif (
            SECRET_SETTING.search(str(key))
            and value not in (None, "")
            and not isinstance(value, bool)
        ):
            found.append(path)
    return sorted(found)


def _urls(connection: Mapping[str, Any]) -> list[str]:
    """The connection's URL and any nested ``url``/``endpoint`` given as a full URL."""
    found = [connection["url"]] if isinstance(connection.get("url"), str) else []
    for value in connection.values():
        if isinstance(value, Mapping):
            found += [
                v
                for k, v in value.items()
                if isinstance(v, str) and "://" in v and str(k).endswith(("url", "endpoint"))
            ]
    return found


def cleartext_credentials(connection: Mapping[str, Any]) -> str | None:
    """Why this connection would send a credential unencrypted, or None when it would not."""
    sent = _credentials(connection)
    if not sent:
        return None
    for url in _urls(connection):
        why = _cleartext(url, sent, connection)
        if why:
            return why
    return None


def _cleartext(url: str, sent: list[str], connection: Mapping[str, Any]) -> str | None:
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
