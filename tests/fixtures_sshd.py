"""Fixtures: a real OpenSSH server on 127.0.0.1, and a check that no helper is left behind.

`sshd` (session scope) is tools/loopback_sshd.py's server: `Host testhost` in its ssh_config
reaches it with a throwaway key, and its own known_hosts holds the server's key.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))

from loopback_sshd import SshdError, SshServer, sshd_available, start_sshd  # noqa: E402

__all__ = ["SshServer", "sshd", "helper_processes", "no_helper_left", "HELPER_MARKER"]

HELPER_MARKER = "bacpac_stage1"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 for the whole session."""
    why_not = sshd_available()
    if why_not:
        pytest.skip(why_not)
    try:
        with start_sshd(str(tmp_path_factory.mktemp("sshd"))) as server:
            yield server
    except SshdError as e:
        pytest.fail(str(e))


def helper_processes() -> list[str]:
    """Command lines of live processes that carry the helper's marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue  # gone while we looked
        if HELPER_MARKER in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


@pytest.fixture
def no_helper_left() -> Iterator[None]:
    """Fail the test if a helper it started is still alive 10 s after it.

    Helpers alive before the test are not its doing (another test session on this machine).
    """
    before = set(helper_processes())
    yield
    deadline = time.monotonic() + 10
    while left := [p for p in helper_processes() if p not in before]:
        if time.monotonic() > deadline:
            pytest.fail("helper processes left behind: " + "; ".join(left))
        time.sleep(0.1)
