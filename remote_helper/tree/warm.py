"""The sources' inodes read ahead of the walk, while the copy waits to begin.

# Strategy: the reading helper knows its roots at OPEN, but walks them only once the writer
# has said what they are called under DEST (READY): the connection to the writer's host and
# the writer's start come between, 0.3-0.5 s of a rerun (docs/performance.md, copy-rerun).
# With a cold cache the walk is disk reads (each directory's blocks, then its children's
# inodes), so a thread walks meanwhile with the walker itself (same order, same excludes for
# the names the roots most likely get, same one-file-system rule) and keeps nothing: the real
# walk then finds that part in the page cache. It stops when the real walk begins, so the two
# never compete, and sooner where the cache is warm already (the walk then costs CPU only:
# measured on the thread's own clock, it stops once its first few thousand entries took no
# more wall time than CPU time).
"""
import threading
import time
from typing import Any, List, Tuple  # for the type comments

from .walk import Walker

JOIN_WITHIN = 10.0  # seconds: the thread ends within this once told (one lstat at most)
PROBE = 2048  # entries between two looks at whether the cache is cold
WARM = 0.7  # CPU time over wall time above which the walk is not waiting for the disk


class Warmer(object):
    """Walks `roots` ((disk path, likely name) pairs, as Walker.walk takes them) on a thread
    until stop(); what it reads stays in the page cache, nothing else is kept."""

    def __init__(self, roots, one_file_system, excludes):
        # type: (List[Tuple[bytes, bytes]], bool, Any) -> None
        self._walker = Walker(one_file_system, excludes)
        self._roots = roots
        self._stop = False
        self.entries = 0
        self.cold = True  # False once the walk ran at CPU speed: the cache was warm
        self._thread = threading.Thread(target=self._run, name="tree-warm")
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        # type: () -> None
        clock = getattr(time, "thread_time", None)  # Python 3.7+
        try:
            started = (time.monotonic(), clock() if clock else 0.0)
            for _ in self._walker.walk(self._roots):
                self.entries += 1
                if self._stop:
                    return
                if clock is not None and self.entries % PROBE == 0:
                    wall = time.monotonic() - started[0]
                    if clock() - started[1] >= WARM * wall:
                        self.cold = False
                        return
                    started = (time.monotonic(), clock())
        except Exception:  # the real walk meets it again, and says so in its place
            return

    def stop(self):
        # type: () -> None
        self._stop = True
        self._thread.join(JOIN_WITHIN)
