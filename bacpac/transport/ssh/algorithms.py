"""The SSH transport's algorithms: the standard name of curve25519, and what each side offered
when a handshake finds none in common.

# Strategy: Paramiko knows curve25519-sha256 by its pre-standard name alone,
# curve25519-sha256@libssh.org; RFC 8731 gave the very same exchange the name that OpenSSH
# lists first, and a server set to `KexAlgorithms curve25519-sha256` offers nothing else.
# Transport registers the standard name with the same implementation. It also keeps the lists of
# the server's KEXINIT, which Paramiko parses and drops when it finds no match, so that a failed
# negotiation can be told with both sides' algorithms (no_match).
"""
from __future__ import annotations

from typing import Optional

import paramiko
from paramiko.message import Message

CURVE25519 = "curve25519-sha256"  # RFC 8731
CURVE25519_LIBSSH = "curve25519-sha256@libssh.org"


def _with_standard_curve25519(preferred: tuple[str, ...]) -> tuple[str, ...]:
    """`preferred` with the standard name just before the libssh one, where only that is known."""
    if CURVE25519 in preferred or CURVE25519_LIBSSH not in preferred:
        return preferred
    at = preferred.index(CURVE25519_LIBSSH)
    return preferred[:at] + (CURVE25519,) + preferred[at:]


class Transport(paramiko.Transport):
    """Paramiko's client transport, with curve25519-sha256 and the server's offer kept."""

    _kex_info = dict(paramiko.Transport._kex_info)
    if CURVE25519_LIBSSH in _kex_info:
        _kex_info.setdefault(CURVE25519, _kex_info[CURVE25519_LIBSSH])
    _preferred_kex = _with_standard_curve25519(paramiko.Transport._preferred_kex)

    offered: Optional[dict] = None  # the server's KEXINIT lists, by Paramiko's names

    def _parse_kex_init(self, m: Message) -> None:
        # Read from a copy: Paramiko's own parse must start where m stands.
        self.offered = self._really_parse_kex_init(Message(m.asbytes()))
        super()._parse_kex_init(m)


# What a client must find in the server's lists: (what it is called, the server's list, ours).
_NEGOTIATED = (
    ("key exchange", "kex_algo_list", "preferred_kex"),
    ("host key type", "server_key_algo_list", "preferred_keys"),
    ("cipher", "client_encrypt_algo_list", "preferred_ciphers"),
    ("cipher", "server_encrypt_algo_list", "preferred_ciphers"),
    ("MAC", "client_mac_algo_list", "preferred_macs"),
    ("MAC", "server_mac_algo_list", "preferred_macs"),
)
# Markers in the kex list that name no algorithm (RFC 8308 and OpenSSH's strict kex).
_NOT_ALGORITHMS = ("ext-info-", "kex-strict-")


def no_match(transport: paramiko.Transport) -> Optional[str]:
    """Which kind of algorithm the server and this client have none of in common, naming both
    sides' lists; None if the server's offer was never seen or every kind has a match."""
    offered = getattr(transport, "offered", None)
    if not offered:
        return None
    for kind, theirs, ours in _NEGOTIATED:
        server = [a for a in offered[theirs] if a and not a.startswith(_NOT_ALGORITHMS)]
        client = list(getattr(transport, ours))
        if not set(server) & set(client):
            return (f"no {kind} in common: the server offers {', '.join(server) or 'none'}; "
                    f"bacpac supports {', '.join(client)}")
    return None
