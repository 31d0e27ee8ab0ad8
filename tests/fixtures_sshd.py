"""Fixtures: a real OpenSSH server on 127.0.0.1, and a check that no helper is left behind.

`sshd` (session scope) is tools/loopback_sshd.py's server: `Host testhost` in its ssh_config
reaches it with a throwaway key, and its own known_hosts holds the server's key.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))

from loopback_sshd import SshdError, SshServer, sshd_available, start_sshd  # noqa: E402

__all__ = ["SshServer", "sshd", "sshd_with", "start_sshd", "helper_pids", "no_helper_left",
           "HELPER_MARKER"]

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


@pytest.fixture(scope="session")
def sshd_with(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SshServer]]:
    """sshd_with(*LINES): a real OpenSSH server like `sshd`, with LINES added to its
    sshd_config (ForceCommand, KexAlgorithms, Ciphers...); one server per set of lines, kept
    for the session."""
    why_not = sshd_available()
    if why_not:
        pytest.skip(why_not)
    servers: dict[tuple[str, ...], SshServer] = {}
    with contextlib.ExitStack() as stack:
        def server(*settings: str) -> SshServer:
            if settings not in servers:
                try:
                    servers[settings] = stack.enter_context(
                        start_sshd(str(tmp_path_factory.mktemp("sshd-with")), settings=settings))
                except SshdError as e:
                    pytest.fail(str(e))
            return servers[settings]
        yield server


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone while we looked
    return parents


def _descends(pid: int, roots: set[int], parents: dict[int, int]) -> bool:
    while pid > 1:
        if pid in roots:
            return True
        pid = parents.get(pid, 0)
    return False


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def sshd_pid(sshd) -> int:
    return int(Path(sshd.tmpdir, "sshd.pid").read_text())


def helper_pids(sshd=None) -> list[int]:
    """Live helpers started by this test session: under its sshd, or under this process.

    Other test sessions on this machine run helpers of their own; they are not counted.
    """
    roots = {os.getpid()} | ({sshd_pid(sshd)} if sshd is not None else set())
    parents = _parents()
    return [pid for pid in parents if pid != os.getpid() and _descends(pid, roots, parents)
            and HELPER_MARKER.encode() in _cmdline(pid)]


@pytest.fixture
def no_helper_left(request) -> Iterator[None]:
    """Fail the test if a helper it started is still alive 10 s after it.

    Only this session's helpers count (under its sshd or this process): other test sessions
    on this machine run helpers of their own.
    """
    server = request.getfixturevalue("sshd") if "sshd" in request.fixturenames else None
    yield
    deadline = time.monotonic() + 10
    while left := helper_pids(server):
        if time.monotonic() > deadline:
            pytest.fail(f"helper processes left behind: {left}")
        time.sleep(0.1)
