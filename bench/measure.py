"""Running one timed command: wall time, CPU and peak memory on each side, the target's reads.

# Strategy: the client's figures come from the kernel, not from sampling: os.wait4 returns the
# child's rusage, whose ru_maxrss is the largest of the child and every descendant it reaped
# (for a shell pipeline, its largest stage) and whose CPU times sum them all. The target side
# runs under our sshd. Its CPU is exact too: the listening sshd reaps every session, and with
# it the session's whole CPU (the ciphers and whatever the session ran) lands in the
# listener's cutime and cstime, so the difference across the run, read once the sessions are
# gone, is the target side's CPU. Peak memory and disk reads are not inherited that way, so a
# thread polls /proc every 50 ms for the processes that sshd spawned (its own session
# processes, which do the ciphers, excluded) and keeps the largest VmHWM it sees and each
# one's last read_bytes from /proc/PID/io: the helper for bacpac (its argv carries the
# marker bacpac_stage1), `zstd -d` or `cat` or rsync's receiver for the stock tools.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

POLL_SECONDS = 0.05
SESSIONS_GONE_SECONDS = 20.0   # after the client ends, for the target's sessions to be reaped
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timed:
    """What one run of a command cost."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    client_rss: int   # bytes
    helper_rss: int   # bytes; 0 when no process was seen on the target side
    client_cpu: float   # seconds, user + system, the command and all it reaped
    target_cpu: float   # seconds, user + system, every session of the target's sshd
    target_read: int    # bytes the target side read from its disks (polled read_bytes)


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


def _read_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reaped_cpu(pid: int) -> float:
    """CPU seconds of the children `pid` has reaped so far (cutime + cstime)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode("utf-8", "replace")
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / TICK


def _sessions_gone(sshd_pid: int) -> None:
    """Wait until the listener has reaped every session, so that their CPU is counted."""
    deadline = time.monotonic() + SESSIONS_GONE_SECONDS
    while _children_map().get(sshd_pid) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


class HelperWatch:
    """Polls the target side of `sshd_pid` in a thread: `peak` is the largest VmHWM seen,
    `read` the sum of each process's last read_bytes."""

    def __init__(self, sshd_pid: int) -> None:
        self.sshd_pid = sshd_pid
        self.peak = 0
        self._reads: dict[int, int] = {}
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
                self._reads[pid] = max(self._reads.get(pid, 0), _read_bytes(pid))

    @property
    def read(self) -> int:
        return sum(self._reads.values())


def run_timed(argv: list[str], sshd_pid: int, out_dir: str) -> Timed:
    """Run argv to its end; stdout and stderr go through files, so no pipe can stall it."""
    out_path, err_path = os.path.join(out_dir, "stdout"), os.path.join(out_dir, "stderr")
    cpu_before = _reaped_cpu(sshd_pid)
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
        _sessions_gone(sshd_pid)
    target_cpu = _reaped_cpu(sshd_pid) - cpu_before
    with open(out_path) as out, open(err_path) as err:
        return Timed(seconds, proc.returncode, out.read(), err.read(),
                     usage.ru_maxrss * 1024, w.peak, usage.ru_utime + usage.ru_stime,
                     target_cpu, w.read)
