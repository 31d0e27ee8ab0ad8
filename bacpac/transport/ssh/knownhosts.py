"""known_hosts files read as OpenSSH reads them (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT").

# Strategy: a line is [@marker] patterns keytype base64 [comment]. The patterns are a comma
# list of names with * and ? wildcards, "!" negations and "[host]:port" forms, or one hashed
# name (|1|salt|hmac). A line with a marker (@revoked, @cert-authority) is as valid as any
# other, and a line that cannot be read (an unknown marker, a key that is not base64) is
# skipped, as ssh skips it: one bad line never makes every host unreachable. Keys are compared
# as the server's wire blob, so nothing here needs Paramiko.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Iterator, Optional

REVOKED = "@revoked"
CERT_AUTHORITY = "@cert-authority"
_MARKERS = (REVOKED, CERT_AUTHORITY)


@dataclass(frozen=True)
class KnownKey:
    """One usable known_hosts line that names the host asked about."""

    marker: Optional[str]  # None for a plain host key, else REVOKED or CERT_AUTHORITY
    key_type: str
    blob: bytes            # the key as the server sends it (its base64 field, decoded)
    path: str
    line: int


def lookup(paths: tuple[str, ...], name: str) -> list[KnownKey]:
    """Every line of `paths` (missing or unreadable files know nothing) that names `name`,
    as known_hosts_name spells it: "host" or "[host]:port"."""
    found = []
    for path in paths:
        for number, text in _lines(path):
            entry = _parse(text, path, number)
            if entry is not None and _names(entry[0], name):
                found.append(entry[1])
    return found


def _lines(path: str) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from enumerate(f, start=1)
    except OSError:
        return


def _parse(text: str, path: str, number: int) -> Optional[tuple[str, KnownKey]]:
    """(patterns, key) of one line, or None for a comment, a blank or an unreadable line."""
    fields = text.split()
    marker = fields.pop(0) if fields and fields[0].startswith("@") else None
    if len(fields) < 3 or fields[0].startswith("#") or (marker and marker not in _MARKERS):
        return None
    try:
        blob = base64.b64decode(fields[2], validate=True)
    except (binascii.Error, ValueError):
        return None
    return fields[0], KnownKey(marker, fields[1], blob, path, number)


def _names(patterns: str, name: str) -> bool:
    """Whether a line's host field names `name`: a hashed name, or a pattern list in which a
    pattern matches and no negated one does."""
    if patterns.startswith("|1|"):
        return _hashed(patterns, name)
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _glob(pattern.lstrip("!"), name):
            if negated:
                return False
            matched = True
    return matched


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's match_pattern: * and ? only ("[host]:port" has no character classes)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE | re.DOTALL) is not None


def _hashed(field: str, name: str) -> bool:
    try:
        salt, digest = (base64.b64decode(part) for part in field[3:].split("|", 1))
    except (binascii.Error, ValueError):
        return False
    mine = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(mine, digest)
