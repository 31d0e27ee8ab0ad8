"""Running one timed command: wall time, the client's peak RSS, and the target side's.

# Strategy: the client's peak comes from the kernel, not from sampling: os.wait4 returns the
# child's rusage, whose ru_maxrss is the largest of the child and every descendant it reaped
# (for a shell pipeline, its largest stage). The target side runs under our sshd, so a thread
# polls /proc every 50 ms for the processes that sshd spawned (its own session processes,
# which do the ciphers, excluded) and keeps the largest VmHWM it sees: the helper for bacpac,
# `zstd -d` or `cat` or rsync's receiver for the stock tools.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Timed:
    """What one run of a command cost."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    client_rss: int   # bytes
    helper_rss: int   # bytes; 0 when no process was seen on the target side


def _children_map() -> dict[int, list[tuple[int, str]]]:
    """ppid → [(pid, comm)] for every live process."""
    tree: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue  # gone while we looked
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append((int(entry), comm))
    return tree


def _spawned_by(root: int) -> list[int]:
    """Processes below `root` that are not sshd itself: what the remote command runs."""
    tree, found, todo = _children_map(), [], [root]
    while todo:
        for pid, comm in tree.get(todo.pop(), []):
            todo.append(pid)
            if comm != "sshd":
                found.append(pid)
    return found


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class HelperWatch:
    """Polls the target side of `sshd_pid` in a thread; `peak` is the largest VmHWM seen."""

    def __init__(self, sshd_pid: int) -> None:
        self.sshd_pid = sshd_pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HelperWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            for pid in _spawned_by(self.sshd_pid):
                self.peak = max(self.peak, _vm_hwm(pid))


def run_timed(argv: list[str], sshd_pid: int, out_dir: str) -> Timed:
    """Run argv to its end; stdout and stderr go through files, so no pipe can stall it."""
    out_path, err_path = os.path.join(out_dir, "stdout"), os.path.join(out_dir, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err, HelperWatch(sshd_pid) as w:
        start = time.monotonic()
        # a group of its own, so that an interrupted pipeline goes down whole, ssh and all
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        seconds = time.monotonic() - start
    with open(out_path) as out, open(err_path) as err:
        return Timed(seconds, proc.returncode, out.read(), err.read(),
                     usage.ru_maxrss * 1024, w.peak)
