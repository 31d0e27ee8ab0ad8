"""Read-ahead of the files a tree copy sends: their pages asked of the disk before the reader
gets to them, and the first of them opened for it.

# Strategy: the reading side reads the wanted files one after another, in the manifest's order
# (the writer expects them so). With a cold page cache each small file is a disk round trip
# (0.55 ms a file measured here), one at a time, while the disk could serve many. A thread of
# its own opens each wanted file ahead of the reader and asks the kernel to read it in
# (posix_fadvise WILLNEED queues the reads and returns), so the disk has many requests at once
# and orders them itself. It stays at most `ahead` bytes in front of what the reader has taken,
# so what it brings in is still cached when the reader comes. The descriptors of the next
# `held` files are kept and handed to the reader (take()), which then neither opens nor the
# thread closes them: two system calls a file fewer, and fewer turns of the GIL between the
# two threads (with a warm cache the read-ahead cost more CPU than it saved; docs/
# performance.md, copy-reader). Best effort: a file it cannot open is left to the reader, which
# reports it; where posix_fadvise is missing it does nothing, and take() always says None.
"""
import os
import threading
from collections import deque
from typing import Deque, List, Optional, Tuple  # for the type comments

AHEAD = 64 << 20  # bytes asked for ahead of the reader
HELD = 32  # descriptors kept open for the reader at most
JOIN_WITHIN = 30  # seconds for the thread to end once told to
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class Prefetcher(object):
    """add([(disk path, size)...]) in the order the reader will read them; take(size) as it
    comes to each, in that order; close() ends the thread and closes what it still holds."""

    def __init__(self, ahead=AHEAD, held=HELD):
        # type: (int, int) -> None
        self._ahead = ahead
        self._held_max = held
        self._files = deque()  # type: Deque[Tuple[bytes, int]]  # not yet come to
        self._ready = deque()  # type: Deque[Optional[int]]  # come to, not taken: fd or None
        self._held = 0  # descriptors in _ready
        self._busy = False  # the thread is at the file after those in _ready
        self._claimed = False  # ... which the reader has taken meanwhile
        self._skip = 0  # files at the head of _files the reader took before the thread came
        self._cond = threading.Condition()
        self._asked = 0
        self._taken = 0
        self._stop = False
        self._thread = None  # type: Optional[threading.Thread]
        if hasattr(os, "posix_fadvise"):
            self._thread = threading.Thread(target=self._run, name="prefetch")
            self._thread.daemon = True
            self._thread.start()

    def add(self, files):
        # type: (List[Tuple[bytes, int]]) -> None
        if self._thread is None:
            return
        with self._cond:
            self._files.extend(files)
            self._cond.notify()

    def take(self, size):
        # type: (int) -> Optional[int]
        """The reader comes to the next file (one that was add()ed, in order), of size bytes: a
        descriptor open on it (read-only, O_NOFOLLOW, O_NONBLOCK; the caller closes it), or
        None: the caller opens it."""
        if self._thread is None:
            return None
        with self._cond:
            self._taken += size
            if self._ready:
                fd = self._ready.popleft()
                if fd is not None:
                    self._held -= 1
            else:
                fd = None
                if self._busy and not self._claimed:
                    self._claimed = True  # the file the thread is at: it closes what it opens
                else:
                    self._skip += 1  # one it has not come to: it passes it over
                    self._asked += size
            if self._asked - self._taken <= self._ahead:
                self._cond.notify()
        return fd

    def _run(self):
        # type: () -> None
        while True:
            with self._cond:
                while not self._stop and (not self._files
                                          or self._asked - self._taken > self._ahead):
                    self._cond.wait(0.5)
                if self._stop:
                    return
                disk, size = self._files.popleft()
                if self._skip:
                    self._skip -= 1
                    continue
                self._asked += size
                keep = self._held < self._held_max
                self._busy = True
            fd = _advise(disk, min(size, self._ahead), keep)
            with self._cond:
                self._busy = False
                if self._claimed or self._stop:
                    self._claimed = False
                    if fd is not None:
                        os.close(fd)
                    continue
                self._ready.append(fd)
                if fd is not None:
                    self._held += 1

    def close(self):
        # type: () -> None
        if self._thread is None:
            return
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(JOIN_WITHIN)
        with self._cond:
            while self._ready:
                fd = self._ready.popleft()
                if fd is not None:
                    os.close(fd)
            self._held = 0


def _advise(disk, size, keep):
    # type: (bytes, int, bool) -> Optional[int]
    """Ask the kernel to read the file in; its descriptor when `keep`, else None."""
    if not size and not keep:
        return None
    try:
        fd = os.open(disk, FLAGS)
    except OSError:
        return None
    try:
        if size:
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    if keep:
        return fd
    os.close(fd)
    return None
