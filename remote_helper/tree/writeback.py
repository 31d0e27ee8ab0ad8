"""Writeback started while a tree is still being written, so that the final sync finds little.

# Strategy: a copy is durable when it returns: TreeWriter.finish() ends with syncfs() of DEST's
# file system. Left to the kernel, a GiB of new files stays dirty in the page cache (the
# background threshold is a tenth of memory, the expiry 30 s) until that syncfs, which then
# writes all of it while the clock runs, after the last byte has come. Here a thread calls
# syncfs() each time FLUSH_BYTES more have been written (a file counts its content and
# PER_FILE for its inode and directory entry), so the writeback runs alongside the copy and
# the final syncfs writes the last FLUSH_BYTES or so. syncfs is called through ctypes, which
# releases the GIL: the writing thread loses nothing while the kernel writes and waits. The
# final syncfs stays where it was; durability does not change. Where libc has no syncfs there
# is no thread, and the final sync is os.sync() as before.
"""
import os
import threading
import time
from typing import Any, Optional  # for the type comments

FLUSH_BYTES = 64 << 20  # content written between two syncfs() of the thread
PER_FILE = 4096  # what a new file costs the writeback besides its content
WAIT_STEP = 1.0  # seconds: the thread looks at its stop flag at least this often
JOIN_WITHIN = 120  # seconds for a syncfs in progress to end when the writer finishes

_SYNCFS = []  # type: list  # [libc's syncfs or None], looked up once


def _libc_syncfs():
    # type: () -> Any
    """libc's syncfs (a ctypes function, GIL released while it runs), or None."""
    if not _SYNCFS:
        try:
            import ctypes
            _SYNCFS.append(ctypes.CDLL(None, use_errno=True).syncfs)
        except (ImportError, OSError, AttributeError):
            _SYNCFS.append(None)
    return _SYNCFS[0]


def sync_fs(fd):
    # type: (int) -> None
    """Make what was written durable: syncfs() of fd's file system, else sync()."""
    syncfs = _libc_syncfs()
    if syncfs is not None and syncfs(fd) == 0:
        return
    os.sync()


class Writeback(object):
    """wrote(n) after each file; a thread syncs the file system of fd every FLUSH_BYTES.
    close() ends the thread (within JOIN_WITHIN); `flushes` and `seconds` say what it did."""

    def __init__(self, fd, every=FLUSH_BYTES):
        # type: (int, int) -> None
        self._syncfs = _libc_syncfs()
        self._fd = os.dup(fd)
        self._every = every
        self._pending = 0  # bytes since the last syncfs was asked for (the writer's thread)
        self._due = False
        self._stop = False
        self._cond = threading.Condition()
        self.flushes = 0
        self.seconds = 0.0
        self._thread = None  # type: Optional[threading.Thread]
        if self._syncfs is not None:
            self._thread = threading.Thread(target=self._run, name="writeback")
            self._thread.daemon = True
            self._thread.start()

    def wrote(self, size):
        # type: (int) -> None
        """A file of `size` content bytes is written (called from the writer's thread)."""
        self._pending += size + PER_FILE
        if self._pending >= self._every and self._thread is not None:
            self._pending = 0
            with self._cond:
                self._due = True
                self._cond.notify()

    def _run(self):
        # type: () -> None
        while True:
            with self._cond:
                while not self._due and not self._stop:
                    self._cond.wait(WAIT_STEP)
                if self._stop:
                    return
                self._due = False
            started = time.monotonic()
            self._syncfs(self._fd)  # a failure shows in the final sync, which is checked
            self.seconds += time.monotonic() - started
            self.flushes += 1

    def close(self):
        # type: () -> None
        """Stop the thread; a syncfs in progress is waited for, within JOIN_WITHIN."""
        if self._thread is not None:
            with self._cond:
                self._stop = True
                self._cond.notify()
            self._thread.join(JOIN_WITHIN)
            if self._thread.is_alive():
                return  # still in syncfs on the descriptor: it is left open (one, rare)
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
