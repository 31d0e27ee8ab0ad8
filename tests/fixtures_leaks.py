"""Fixture: a test fails if it leaves a thread, a file descriptor or a child process behind.

After mitogen's test suite, which checks the same three after every test. A command run in
this process (bacpac.cli.run, not `python -m bacpac`, whose exit would hide any leak) must end
with the threads, the descriptors and the children it found: every component joins its
threads and closes their descriptors on close, so nothing is waited for here. Helpers on the
target are checked as before (no_helper_left).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Iterator

import pytest

__all__ = ["Leftovers", "no_leaks"]


def _descriptors() -> dict[int, str]:
    """This process's open descriptors and what each is open on."""
    found = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            found[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:  # the directory's own descriptor, closed once listed
            continue
    return found


def _children() -> dict[int, str]:
    """This process's child processes (zombies too) and their command names."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # gone while we looked
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if int(rest.split()[1]) == os.getpid():
            found[int(entry)] = name
    return found


@dataclass
class Leftovers:
    """What the process holds at one moment; leftovers() says what was added since."""

    threads: set[threading.Thread]
    descriptors: dict[int, str]
    children: dict[int, str]

    @classmethod
    def now(cls) -> "Leftovers":
        return cls(set(threading.enumerate()), _descriptors(), _children())

    def leftovers(self) -> list[str]:
        """Threads, descriptors and children that were not there at the snapshot."""
        later = Leftovers.now()
        return ([f"thread {t.name}" for t in later.threads - self.threads]
                + [f"descriptor {fd} on {target}" for fd, target in later.descriptors.items()
                   if self.descriptors.get(fd) != target]
                + [f"child process {pid} ({name})" for pid, name in later.children.items()
                   if pid not in self.children])


@pytest.fixture
def no_leaks(request: pytest.FixtureRequest, no_helper_left) -> Iterator[Leftovers]:
    """Fail the test if it leaves a thread, a descriptor or a child process in this process
    (or a helper on the target). Every other fixture of the test is set up first, the
    session's sshd among them: only what the test's body starts is its own."""
    for name in request.fixturenames:
        if name != request.fixturename:
            request.getfixturevalue(name)
    before = Leftovers.now()
    yield before
    left = before.leftovers()
    if left:
        pytest.fail(f"left behind: {'; '.join(left)}")
