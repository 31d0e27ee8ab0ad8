"""Hooks, as borgmatic users know them: shell commands run on the controller before and after
a job (or the whole run), and on its error, with what the job is in their environment.

A hook is the user's own command line, so it runs through the shell (that is its point: an
`lvcreate --snapshot ...; mount ...`), with a deadline: a hook that hangs is killed, and
counts as failed.
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional

from ...errors import BacpacError

KEEP_OUTPUT = 2000  # characters of a failed hook's output kept for its message


class HookFailed(BacpacError):
    """A hook exited non-zero, or outlived its deadline."""


@dataclass(frozen=True)
class HookEnv:
    """What a hook is told about its job (or the run), as BACPAC_* variables."""

    job: str
    type: str
    source: str
    targets: str
    dry_run: bool
    result: str = ""
    error: str = ""

    def variables(self) -> dict[str, str]:
        return {"BACPAC_JOB": self.job, "BACPAC_TYPE": self.type, "BACPAC_SOURCE": self.source,
                "BACPAC_TARGETS": self.targets, "BACPAC_RESULT": self.result,
                "BACPAC_ERROR": self.error, "BACPAC_DRY_RUN": "1" if self.dry_run else "0"}


Started = Callable[[subprocess.Popen], None]


def run_hooks(which: str, commands: tuple[str, ...], env: HookEnv, timeout: float,
              started: Optional[Started] = None) -> None:
    """Run each command in turn; the first that fails raises HookFailed with its last line.
    `started` is told each hook's process (so that a stopping run can end it: stop_hook)."""
    for command in commands:
        run_hook(which, command, env, timeout, started)


def run_hook(which: str, command: str, env: HookEnv, timeout: float,
             started: Optional[Started] = None) -> None:
    """Run one hook in a session of its own, so that a hook past its deadline is killed with
    everything it started (which would otherwise hold its output pipe open)."""
    try:
        proc = subprocess.Popen(command, shell=True, env={**os.environ, **env.variables()},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True,
                                errors="replace", start_new_session=True)
    except OSError as e:
        raise HookFailed(f"{which} hook {command!r}: {e.strerror}") from None
    if started is not None:
        started(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise HookFailed(f"{which} hook {command!r} still running after {timeout:g} s: "
                         "killed") from None
    except BaseException:  # interrupted: the hook goes with the run
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        said = _last_line(output)
        status = (f"status {proc.returncode}" if proc.returncode > 0
                  else f"signal {-proc.returncode}")
        raise HookFailed(f"{which} hook {command!r} failed ({status})"
                         + (f": {said}" if said else ""))


def stop_hook(proc: subprocess.Popen, signum: int) -> None:
    """Pass a run's signal to a hook still running, and to everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signum)
        except OSError:  # gone meanwhile
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # gone already
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a child in D state: leave it, but never wait forever
        pass


def _last_line(output: Optional[str]) -> str:
    lines = (output or "")[-KEEP_OUTPUT:].strip().splitlines()
    return lines[-1].strip() if lines else ""
