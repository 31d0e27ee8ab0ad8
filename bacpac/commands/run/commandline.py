"""What a job of the inventory becomes: the command line of a child `bacpac`, and the
temporary ssh_config that carries the inventory's connection settings to it.

# Strategy: each job runs as a child process (`bacpac dup|backup|copy ... --events`), so a job
# that crashes cannot take the others down and a signal reaches each one; the child is the very
# command a user types, so `run` adds no second path through dup or copy. The inventory's hosts
# reach the child as an ssh_config given with -F: one Host block per inventory host with what
# the inventory sets, then the ssh_config files the hosts name (OpenSSH keeps the first value
# of each option, so the inventory's win, and an alias defined there still resolves). Nothing
# of a job goes through a shell, and no password goes on a command line or in a file: a host's
# password, read from the variable its `password_env` names, is put for the run in that host's
# own variable (BACPAC_PASSWORD_<HOST>, which the connection code reads for that host alone),
# so the children inherit it, and a fan-out's saveset host gets its own as its target does.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

from ...errors import UsageError
from ...inventory.model import Host, Inventory, Job, Stamp
from ...spec import Endpoint
from ...transport.ssh.config import password_variable

DEFAULT_SSH_CONFIG = "~/.ssh/config"


def ssh_config_text(hosts: list[Host]) -> str:
    """An ssh_config with a Host block per inventory host, then the files they name."""
    blocks = []
    includes: list[str] = []
    for host in hosts:
        lines = [f"Host {host.name}"]
        for key, value in (("HostName", host.hostname), ("Port", host.port),
                           ("User", host.user), ("IdentityFile", host.identity_file),
                           ("UserKnownHostsFile", host.known_hosts)):
            if value is not None:
                lines.append(f"    {key} {_quoted(str(value))}")
        if host.identity_file is not None:
            lines.append("    IdentitiesOnly yes")
        blocks.append("\n".join(lines) + "\n")
        config = os.path.expanduser(host.ssh_config or DEFAULT_SSH_CONFIG)
        if config not in includes and os.path.exists(config):
            includes.append(config)
    tail = "".join(f"    Include {_quoted(path)}\n" for path in includes)
    return "".join(blocks) + (f"Host *\n{tail}" if tail else "")


def _quoted(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def write_ssh_config(directory: str, inventory: Inventory) -> str:
    """The ssh_config for this run's children, 0600 in `directory` (the caller's temporary
    directory, removed when the run ends)."""
    path = os.path.join(directory, "ssh_config")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ssh_config_text(list(inventory.hosts.values())))
    return path


@contextlib.contextmanager
def host_passwords(inventory: Inventory) -> Iterator[None]:
    """For the run: each host's password_env in that host's own variable (password_variable)
    in this process's environment, where the children (each connection reading its host's
    alone) and this process (keep's pruning) find it; the environment as it was afterwards."""
    wanted: dict[str, tuple[str, str]] = {}
    for host in inventory.hosts.values():
        if host.password_env is None:
            continue
        name = password_variable(host.name)
        if name in wanted and wanted[name][1] != host.password_env:
            raise UsageError(f"{inventory.path}: hosts {wanted[name][0]!r} and {host.name!r} "
                             f"would share {name} for their passwords: rename one")
        wanted[name] = (host.name, host.password_env)
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        for name, (_, source) in wanted.items():
            os.environ[name] = os.environ[source]
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Planned:
    """One job made concrete for this run: its placeholders filled, its command line built."""

    job: Job
    target: Endpoint
    savesets: tuple[Endpoint, ...]
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.job.name


def plan(job: Job, inventory: Inventory, stamp: Stamp, ssh_config: str,
         dry_run: bool = False) -> Planned:
    """The job with this run's placeholders filled in, and its child's command line."""
    target = Endpoint(stamp.fill(job.target.path, job.name), job.target.host)
    savesets = tuple(Endpoint(stamp.fill(s.path, job.name), s.host) for s in job.savesets)
    host = inventory.hosts.get(job.target.host or "")
    argv = [sys.executable, "-m", "bacpac", job.type, "-F", ssh_config, "--events"]
    if host is not None and host.sudo:
        argv.append("--sudo")
    argv += _job_options(job, target, savesets, dry_run)
    argv += ["--", *job.sources, str(target)]
    return Planned(job, target, savesets, tuple(argv))


def _job_options(job: Job, target: Endpoint, savesets: tuple[Endpoint, ...],
                 dry_run: bool) -> list[str]:
    options = []
    for saveset in savesets:
        # On the target's own host a saveset is a plain path; elsewhere HOST:PATH (fan-out).
        same = saveset.host == target.host
        options += ["--saveset", saveset.path if same else str(saveset)]
    flags = {"dup": (("--force", job.force), ("--delta", job.delta), ("--verify", job.verify),
                     ("--dry-run", dry_run)),
             "backup": (("--dry-run", dry_run),),
             "copy": (("--delete", job.delete), ("-n", dry_run))}[job.type]
    options += [flag for flag, wanted in flags if wanted]
    if job.bwlimit is not None:
        options += ["--bwlimit", job.bwlimit]
    return options
