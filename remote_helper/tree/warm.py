"""A tree's directories and inodes read ahead of a walk of it, into the page cache.

# Strategy: a copy's two helpers each walk a tree: the reader its sources, the writer DEST (an
# lstat per entry of the manifest, to compare). With a cold cache each lstat is a disk read
# (a directory's blocks, an inode table's), one at a time, and Python's work per entry waits
# for it. A Warmer walks the same tree on a thread of its own, in the same order, with the
# walker itself (same excludes, same one-file-system rule; the names the roots most likely
# get), its lstats and listings alone, and keeps nothing: the reads it causes fill the page cache, where the real walk then
# finds them, so disk and CPU overlap (docs/performance.md, copy-rerun). The reader's runs
# while it waits to begin (its READY: the connection to the writer's host and the writer's
# start, 0.3-0.5 s of a rerun) and stops when the walk begins, so the two never compete; the
# writer's runs ahead of the compare from OPEN to the end. Either stops by itself where the
# cache is warm already: when its last PROBE entries caused no read of the disk (its
# thread's read_bytes in /proc), or, without that file, took as much CPU as wall time.
"""
import os
import stat
import threading
import time
from typing import Any, List, Optional, Tuple  # for the type comments

from .entry import DIR, FILE, Entry, entry
from .walk import Walker

JOIN_WITHIN = 10.0  # seconds: the thread ends within this once told (one lstat at most)
PROBE = 2048  # entries between two looks at whether the cache is cold
WARM = 0.7  # CPU time over wall time above which the walk is not waiting for the disk


class Warmer(object):
    """Walks `roots` ((disk path, likely name) pairs, as Walker.walk takes them) on a thread
    until stop(); what it reads stays in the page cache, nothing else is kept."""

    def __init__(self, roots, one_file_system, excludes):
        # type: (List[Tuple[bytes, bytes]], bool, Any) -> None
        self._walker = _Lister(one_file_system, excludes)
        self._roots = roots
        self._stop = False
        self.entries = 0
        self.cold = True  # False once it stopped by itself: the cache was warm
        self._thread = threading.Thread(target=self._run, name="tree-warm")
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        # type: () -> None
        try:
            probe = _Probe()
            for _ in self._walker.walk(self._roots):
                self.entries += 1
                if self._stop:
                    return
                if self.entries % PROBE == 0 and not probe.cold():
                    self.cold = False
                    return
        except Exception:  # the real walk meets it again, and says so in its place
            return

    def stop(self):
        # type: () -> None
        self._stop = True
        self._thread.join(JOIN_WITHIN)


class _Lister(Walker):
    """The walk of a tree, its lstats and listings alone: nothing else is read (no file is
    opened for its extents, no link's target), no entry made."""

    DIRECTORY = entry(b"", DIR)
    OTHER = entry(b"", FILE)

    def _entry(self, disk, path, st):
        # type: (bytes, bytes, os.stat_result) -> Entry
        return self.DIRECTORY if stat.S_ISDIR(st.st_mode) else self.OTHER


class _Probe(object):
    """Whether the calling thread's walk waited for the disk since the last look."""

    def __init__(self):
        # type: () -> None
        self._clock = getattr(time, "thread_time", None)  # Python 3.7+
        self._last = self._now()

    def _now(self):
        # type: () -> Tuple[Optional[int], float, float]
        return (_read_bytes(), time.monotonic(), self._clock() if self._clock else 0.0)

    def cold(self):
        # type: () -> bool
        now = self._now()
        last, self._last = self._last, now
        if now[0] is not None and last[0] is not None:
            return now[0] > last[0]
        if self._clock is None:
            return True  # no way to tell: warm on to the end
        return now[2] - last[2] < WARM * (now[1] - last[1])


def _read_bytes():
    # type: () -> Optional[int]
    """Bytes this thread has caused to be read from disk (Linux 3.17+), None where unknown."""
    try:
        with open("/proc/thread-self/io", "rb") as f:
            for line in f:
                if line.startswith(b"read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
