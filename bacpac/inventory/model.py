"""What an inventory says, validated: hosts, jobs, hooks. Frozen: nothing changes them after
load.py built them, and every part of `bacpac run` reads the same ones."""
from __future__ import annotations

import socket
import string
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

from ..spec import Endpoint

JOB_TYPES = ("dup", "backup", "copy")
PLACEHOLDERS = ("date", "time", "host", "job")


@dataclass(frozen=True)
class Host:
    """How to reach one host: the settings the inventory gives (None: ssh_config decides)."""

    name: str
    hostname: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    identity_file: Optional[str] = None
    known_hosts: Optional[str] = None
    password_env: Optional[str] = None
    sudo: bool = False
    ssh_config: Optional[str] = None


@dataclass(frozen=True)
class Hooks:
    """Shell commands run on the controller around a job or the whole run."""

    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    on_error: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One job of the inventory. `target` and `savesets` keep their placeholders; render()
    fills them in for one run."""

    name: str
    type: str
    sources: tuple[str, ...]
    target: Endpoint
    savesets: tuple[Endpoint, ...] = ()
    force: bool = False
    delta: bool = False
    verify: bool = False
    delete: bool = False
    keep: Optional[int] = None
    bwlimit: Optional[str] = None
    hooks: Hooks = field(default_factory=Hooks)
    line: int = 0

    @property
    def host(self) -> Optional[str]:
        """The host the job writes to (None: this one)."""
        return self.target.host

    def hosts(self) -> tuple[Optional[str], ...]:
        """Every host the job writes to, its target's first."""
        return tuple(dict.fromkeys([self.target.host] + [s.host for s in self.savesets]))


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: Mapping[str, Host]
    jobs: tuple[Job, ...]
    hooks: Hooks = field(default_factory=Hooks)
    hook_timeout: float = 600.0


def placeholders(text: str) -> list[str]:
    """The {names} in `text`; ValueError for a malformed one ("{date", "{}", "{0}")."""
    names = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"bad placeholder in {text!r}: {e}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or spec or conversion:
            raise ValueError(f"bad placeholder {{{name}}}")
        names.append(name)
    return names


@dataclass(frozen=True)
class Stamp:
    """The values of the placeholders for one run: one time for every job of it."""

    date: str
    time: str
    host: str

    @classmethod
    def now(cls) -> "Stamp":
        now = time.localtime()
        return cls(time.strftime("%Y-%m-%d", now), time.strftime("%H%M%S", now),
                   socket.gethostname().split(".")[0])

    def fill(self, text: str, job: str) -> str:
        return text.format(date=self.date, time=self.time, host=self.host, job=job)

    def pattern(self, text: str, job: str) -> str:
        """`text` as a glob: the job's name filled in, the run's values as "*" (for keep)."""
        return text.format(date="*", time="*", host=self.host, job=job)
