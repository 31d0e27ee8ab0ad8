"""Writing the image to the target on a thread of its own, in stream order, hashing as it goes.

# Strategy: the helper's main thread receives and decompresses; this thread writes. pwrite,
# sha256 and zstd all release the GIL, so receiving, decompressing and writing overlap instead
# of adding up. Blocks arrive strictly in order (the helper checks), so the sha256 of what is
# written is computed in one pass, holes hashed as zeros. On a truncated image file, zero runs
# inside blocks are not written either. The first MiB is held back: it is zeroed before
# anything else is written and written last, so a target cut off half way holds no partition
# table or file-system signature that would mount as if it were good.
"""
import hashlib
import threading
import time

import queue

from .devices import is_zero
from .target import HEAD

SPARSE_CHUNK = 128 << 10  # zero runs shorter than this inside a block are written anyway
ZEROS = memoryview(bytes(4 << 20))
PROGRESS_EVERY = 0.5  # seconds between PROGRESS frames


class ImageWriter(object):
    """Takes decompressed blocks and holes in stream order; finish() returns (bytes, sha256).

    With a saveset, each block's wire frame is appended to it as it is written to the target.
    """

    def __init__(self, target, on_progress, saveset=None, depth=4):
        # type: (object, object, object, int) -> None
        self._target = target
        self._saveset = saveset
        self._on_progress = on_progress
        self._queue = queue.Queue(depth)
        self._hash = hashlib.sha256()
        self._head = bytearray(min(HEAD, target.size))
        self._written = 0
        self._error = None
        self._last_progress = time.monotonic()
        target.zero(0, len(self._head))
        self._thread = threading.Thread(target=self._run, name="writer")
        self._thread.daemon = True
        self._thread.start()

    def put_data(self, offset, data, frame):
        # type: (int, bytes, bytes) -> None
        self._put((offset, data, len(data), frame))

    def put_hole(self, offset, length):
        # type: (int, int) -> None
        self._put((offset, None, length, None))

    def finish(self):
        # type: () -> tuple
        """Wait for every block, write the held-back head, fsync; (bytes, sha256 hex)."""
        self._put(None)
        self._thread.join()
        self._raise_error()
        head = self._head
        if not (self._target.sparse and is_zero(head)):
            self._target.pwrite(0, memoryview(head))
        self._target.sync()
        return self._written, self._hash.hexdigest()

    def _put(self, item):
        # type: (object) -> None
        while True:
            self._raise_error()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue  # the writer may have died meanwhile: check again

    def _raise_error(self):
        # type: () -> None
        if self._error is not None:
            raise self._error

    def _run(self):
        # type: () -> None
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                self._write(*item)
        except BaseException as e:  # handed to the main thread, which reports it
            self._error = e

    def _write(self, offset, data, length, frame):
        # type: (int, object, int, object) -> None
        if self._saveset is not None:
            if frame is None:
                self._saveset.add_zeros(offset, length)
            else:
                self._saveset.add(frame, length)
        if data is None:
            self._hash_zeros(length)
            self._target.zero(offset, length)
        else:
            self._hash.update(data)
            view = self._hold_head(offset, memoryview(data))
            start = offset + len(data) - len(view)
            if self._target.sparse:
                self._write_sparse(start, view)
            elif view:
                self._target.pwrite(start, view)
        self._written += length
        self._report()

    def _hold_head(self, offset, view):
        # type: (int, memoryview) -> memoryview
        """Keep the part of the block inside the first MiB for the end; return the rest."""
        if offset >= len(self._head):
            return view
        cut = min(len(view), len(self._head) - offset)
        self._head[offset:offset + cut] = view[:cut]
        return view[cut:]

    def _write_sparse(self, offset, view):
        # type: (int, memoryview) -> None
        """Write the block but for its zero chunks, coalescing data chunks into one pwrite."""
        run_start = None
        for pos in range(0, len(view), SPARSE_CHUNK):
            if is_zero(view[pos:pos + SPARSE_CHUNK]):
                if run_start is not None:
                    self._target.pwrite(offset + run_start, view[run_start:pos])
                    run_start = None
            elif run_start is None:
                run_start = pos
        if run_start is not None:
            self._target.pwrite(offset + run_start, view[run_start:])

    def _hash_zeros(self, length):
        # type: (int) -> None
        while length:
            n = min(length, len(ZEROS))
            self._hash.update(ZEROS[:n])
            length -= n

    def _report(self):
        # type: () -> None
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self._on_progress(self._written)
