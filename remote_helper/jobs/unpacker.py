"""The writing side of a tree copy: DATA frames decompressed and hashed on a thread of its own.

# Strategy: zstd decompression and sha256 release the GIL and take a few large calls per 4 MiB
# frame, so they overlap well with the main thread's decoding and writing of the frame before
# (many small system calls, which a second writing thread did not speed up: docs/performance.md,
# tree-copy). One frame is in flight: put() hands frame k to the thread and returns the content
# of frame k-1, which the thread has (nearly always) finished meanwhile; drain() returns the last
# one. So the frames' order and the memory held (two frames) stay what they were, and a failure
# on the thread is raised by the next put() or drain(). Every wait has a deadline.
"""
import hashlib
import queue
import threading
from typing import Any, Optional  # for the type comments

from ..errors import HelperError
from ..wire import codecs

FRAME_WITHIN = 600  # seconds: one frame's decompression (a loaded host, a 4 MiB frame)
JOIN_WITHIN = 30  # seconds for the thread to end once told to


class Unpacker(object):
    """put(flags, payload, size) -> the previous frame's content (or None); drain() -> the last
    one's; hexdigest() the sha256 of all the content, once drained; close() ends the thread."""

    def __init__(self):
        # type: () -> None
        self._decompressor = codecs.Decompressor()
        self._sha = hashlib.sha256()
        self._in = queue.Queue(1)  # type: queue.Queue
        self._out = queue.Queue(1)  # type: queue.Queue
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="unpacker")
        self._thread.daemon = True
        self._thread.start()

    def put(self, flags, payload, size):
        # type: (int, bytes, int) -> Optional[bytes]
        """Start on this frame; the content of the one before it, if any."""
        previous = self.drain()
        self._in.put((flags, payload, size), timeout=FRAME_WITHIN)
        self._busy = True
        return previous

    def drain(self):
        # type: () -> Optional[bytes]
        """The content of the frame in flight (None if there is none), once it is done."""
        if not self._busy:
            return None
        self._busy = False
        try:
            done = self._out.get(timeout=FRAME_WITHIN)  # type: Any
        except queue.Empty:
            raise HelperError("a DATA frame was not decompressed within %d s" % FRAME_WITHIN)
        if isinstance(done, BaseException):
            raise done
        return done

    def hexdigest(self):
        # type: () -> str
        return self._sha.hexdigest()

    def _run(self):
        # type: () -> None
        while not self._stop:
            try:
                job = self._in.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                return
            try:
                done = self._decompressor.decompress(*job)  # type: Any
                self._sha.update(done)
            except BaseException as e:
                done = e
            self._out.put(done)

    def close(self):
        # type: () -> None
        """End the thread, within a deadline (whatever is in flight is dropped)."""
        if self._busy:
            try:
                self._out.get(timeout=FRAME_WITHIN)
            except queue.Empty:
                pass
            self._busy = False
        self._stop = True
        try:
            self._in.put_nowait(None)  # wakes it at once
        except queue.Full:
            pass
        self._thread.join(JOIN_WITHIN)
