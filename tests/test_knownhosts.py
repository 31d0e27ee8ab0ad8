"""known_hosts lines read as OpenSSH reads them: patterns, hashes, markers, bad lines."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from bacpac.transport.ssh.knownhosts import CERT_AUTHORITY, REVOKED, lookup

BLOB = base64.b64encode(b"\0\0\0\x0bssh-ed25519" + b"k" * 36).decode()


def hashed(name: str, salt: bytes = b"s" * 20) -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize("field, name, names", [
    ("standby", "standby", True),
    ("Standby", "standby", True),
    ("alpha,standby", "standby", True),
    ("*.example.com", "db.example.com", True),
    ("*.example.com", "example.com", False),
    ("db?.example.com", "db1.example.com", True),
    ("*.example.com,!db.example.com", "db.example.com", False),
    ("[127.0.0.1]:2222", "[127.0.0.1]:2222", True),
    ("[127.0.0.1]:2222", "1", False),
    ("[127.0.0.1]:*", "[127.0.0.1]:2222", True),
    (hashed("[127.0.0.1]:2222"), "[127.0.0.1]:2222", True),
    (hashed("standby"), "other", False),
])
def test_lookup_matches_host_patterns_as_ssh_does(tmp_path, field, name, names) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"{field} ssh-ed25519 {BLOB} comment\n")
    assert [entry.line for entry in lookup((str(path),), name)] == ([1] if names else [])


def test_lookup_keeps_markers_and_skips_lines_it_cannot_read(tmp_path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("# a comment\n\n"
                    f"@cert-authority * ssh-ed25519 {BLOB}\n"
                    f"@revoked * ssh-ed25519 {BLOB}\n"
                    f"@bogus * ssh-ed25519 {BLOB}\n"
                    "h ssh-ed25519 not!base64\n"
                    "h ssh-ed25519\n"
                    f"h ssh-ed25519 {BLOB}\n")
    entries = lookup((str(path), str(tmp_path / "missing")), "h")
    assert [(e.marker, e.line) for e in entries] == [(CERT_AUTHORITY, 3), (REVOKED, 4), (None, 8)]
    assert entries[2].blob == base64.b64decode(BLOB) and entries[2].key_type == "ssh-ed25519"
