"""Distinguished names and filter values, as RFC 4514 and RFC 4515 write them.

Does: escape a value for a search filter or an RDN, split a DN into its RDNs (escapes kept),
take an RDN's value or a DN's parent, compare DNs without regard to case and spacing, and say
whether one DN lies under another.
Does not: talk to a directory.
"""

from __future__ import annotations

import re

_HEX_PAIR = re.compile(r"\\([0-9A-Fa-f]{2})")


def escape_filter(value: str) -> str:
    """An assertion value for a search filter (RFC 4515 §3)."""
    out = []
    for char in value:
        if char in "*()\\\x00":
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def escape_rdn_value(value: str) -> str:
    """An attribute value for a DN (RFC 4514 §2.4)."""
    out = []
    for i, char in enumerate(value):
        if (
            char in ',+"\\<>;='
            or (char == "#" and i == 0)
            or (char == " " and i in (0, len(value) - 1))
        ):
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


def _strip(text: str) -> str:
    """``text`` without surrounding spaces, keeping an escaped trailing space (``\\ ``)."""
    text = text.lstrip()
    while text.endswith(" "):
        body = text[:-1]
        if (len(body) - len(body.rstrip("\\"))) % 2:
            break  # an odd run of backslashes escapes the space
        text = body
    return text


def split_dn(dn: str) -> list[str]:
    """The RDNs of ``dn``, split at unescaped commas, each stripped."""
    parts, current, escaped = [], [], False
    for char in dn:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            parts.append(_strip("".join(current)))
            current = []
        else:
            current.append(char)
    if current or parts:
        parts.append(_strip("".join(current)))
    return parts


def _unescape(value: str) -> str:
    """An RDN value as text: ``\\,`` and ``\\2C`` both become ``,``."""
    raw = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = _HEX_PAIR.match(value, i)
            if pair:
                raw.append(int(pair.group(1), 16))
                i += 3
                continue
            raw.extend(value[i + 1].encode())
            i += 2
            continue
        raw.extend(char.encode())
        i += 1
    return raw.decode("utf-8", errors="replace")


def rdn_value(dn: str) -> str:
    """The value of the first RDN of ``dn``, unescaped (``uid=a\\,b,ou=x`` -> ``a,b``)."""
    first = split_dn(dn)[0]
    return _unescape(_strip(first.split("=", 1)[1])) if "=" in first else ""


def parent_dn(dn: str) -> str:
    return ",".join(split_dn(dn)[1:])


def norm_dn(dn: str) -> str:
    """A DN for comparing: RDNs stripped, spaces around ``=`` dropped, lower case."""
    rdns = []
    for rdn in split_dn(dn):
        name, _, value = rdn.partition("=")
        rdns.append(f"{name.strip()}={_strip(value)}")
    return ",".join(rdns).lower()


def under(dn: str, container: str) -> bool:
    """Whether ``dn`` is ``container`` or below it."""
    entry, base = norm_dn(dn), norm_dn(container)
    return entry == base or entry.endswith("," + base)
