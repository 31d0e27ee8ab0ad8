"""Writing the image to the target on a thread of its own, in stream order, hashing as it goes.

# Strategy: the helper's main thread receives and decompresses; this thread writes. pwrite,
# sha256 and zstd all release the GIL, so receiving, decompressing and writing overlap instead
# of adding up. Blocks arrive strictly in order (the helper checks). When the job asks for the
# stream's digests (a restore, whose saveset trailer's sha256 must be proven, or zlib frames,
# which carry no strong checksum), they are computed here in one pass (imagedigest.py: the
# image digest takes holes as constant lines, the plain sha256 as zeros); otherwise every
# zstd frame was proven by its own content checksum and nothing is hashed twice. On a
# truncated image file, zero runs
# inside blocks are not written either. The first MiB is held back: it is zeroed before
# anything else is written and written last, so a target cut off half way holds no partition
# table or file-system signature that would mount as if it were good. In a delta run, MATCH
# ranges are hashed from the target's own bytes, read once by delta.TargetSegments; a run that
# changes nothing writes nothing at all. A COPY is served from what this thread already wrote
# (the held-back head from memory), and its bytes must have the sha256 the client sent: a copy
# is proven as a DATA frame's content checksum proves its block. In a delta run it also records
# the target's block digests as it leaves it (blockdigests.BlockDigests), for the next run's
# digest cache: MATCHed blocks' as compared, written ones hashed here, and no old bytes are read
# that neither the head, the stream's hash nor the saveset needs.
"""
import hashlib
import threading
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple,  # for the
                    Union)  # type comments

import queue

from ..errors import IntegrityError
from ..wire.protocol import COPY, DATA, HOLE, MATCH
from . import imagedigest
from .devices import is_zero
from ..wire.zstdframe import compress_frame
from .target import HEAD

if TYPE_CHECKING:  # the types of what the helper hands in, not needed to run this module
    from .blockdigests import BlockDigests
    from .delta import TargetSegments
    from ..saveset.output import SavesetOutput
    from .target import NullTarget, Target
    AnyTarget = Union[Target, NullTarget]
    OnError = Callable[[BaseException], None]
    OnProgress = Callable[[int], None]
    Saveset = Optional[SavesetOutput]
    Segments = Optional[TargetSegments]
    Record = Optional[BlockDigests]

SPARSE_CHUNK = 128 << 10  # zero runs shorter than this inside a block are written anyway
PROGRESS_EVERY = 0.25  # seconds between PROGRESS frames (the client's pacing reads them)
# The first comes sooner, so that the client's first level decision, 0.3 s into the stream,
# already knows whether this helper waits on the link.
FIRST_PROGRESS = 0.1
# Decompressed blocks waiting for the writing thread (4 MiB each). A direct write ends in the
# storage's cache, and now and then one waits for it, far longer than usual. With 4 waiting,
# such a wait stopped the whole stream back to the client's reader; 16 let it run on, and the
# writer catches up after, for up to 48 MiB more here (docs/performance.md).
QUEUE_DEPTH = 16


class ImageWriter(object):
    """Takes decompressed blocks and holes in stream order; finish() returns (bytes, digests):
    the hex digest of the stream for each algorithm of `hashes` (imagedigest.DIGESTS's names;
    none: every zstd frame is proven by its own checksum).

    With a saveset, each block's wire frame is appended to it as it is written to the target.
    A failure is handed to on_error at once (the helper's ERROR frame: the client may be
    waiting for this thread, in a delta run) and raised in the main thread at its next call.
    """

    def __init__(self, target, on_progress, on_error, saveset=None, segments=None,
                 depth=QUEUE_DEPTH, hashes=(imagedigest.PLAIN,), record=None):
        # type: (AnyTarget, OnProgress, OnError, Saveset, Segments, int, Sequence[str], Record) -> None
        self._target = target
        self._record = record  # the target's block digests as written, for the digest cache
        self._saveset = saveset
        self._segments = segments  # delta.TargetSegments in a delta run
        self._on_progress = on_progress
        self._on_error = on_error
        self._queue = queue.Queue(depth)  # type: queue.Queue[Optional[tuple]]
        self._hashes = [imagedigest.DIGESTS[name]() for name in hashes]
        self._head = bytearray(min(HEAD, target.size))
        self._written = 0
        self._error = None  # type: Optional[BaseException]
        self._next_progress = time.monotonic() + FIRST_PROGRESS
        self._head_zeroed = False
        self._head_changed = False  # new bytes (not MATCHed ones) went into the held-back head
        self._drained = None  # type: Optional[Tuple[int, Dict[str, str]]]  # drain()'s, once done
        self._finished = False  # the head is written and the target synced
        self._thread = threading.Thread(target=self._run, name="writer")
        self._thread.daemon = True
        self._thread.start()

    @property
    def delta(self):
        # type: () -> bool
        return self._segments is not None

    def put_data(self, offset, data, frame):
        # type: (int, bytes, bytes) -> None
        self._put((DATA, offset, data, len(data), frame))

    def put_hole(self, offset, length):
        # type: (int, int) -> None
        self._put((HOLE, offset, None, length, None))

    def put_match(self, offset, length):
        # type: (int, int) -> None
        self._put((MATCH, offset, None, length, None))

    def put_copy(self, offset, length, source, digest):
        # type: (int, int, int, bytes) -> None
        self._put((COPY, offset, (source, digest), length, None))

    def drain(self):
        # type: () -> Tuple[int, Dict[str, str]]
        """Wait for every block to be written (not the held-back head); (bytes, digests)."""
        if self._drained is None:
            self._put(None)
            self._thread.join()
            self._raise_error()
            self._drained = (self._written,
                             dict((h.algorithm, h.hexdigest()) for h in self._hashes))
        return self._drained

    def finish(self):
        # type: () -> Tuple[int, Dict[str, str]]
        """drain(), then write the held-back head and fsync, once: the image is proven whole.
        Returns drain()'s (bytes, digests)."""
        drained = self.drain()
        if not self._finished:
            self._finished = True
            changed = self._head_zeroed or self._head_changed
            if changed and not (self._target.sparse and is_zero(self._head)):
                self._target.pwrite(0, memoryview(self._head))
            self._target.sync()
        return drained

    def abandon(self, timeout=30.0):
        # type: (float) -> bool
        """Stop the thread, after a drain() or when the job failed or the client is gone:
        write out the blocks already received, for a later --delta to keep, but not the
        held-back head, so the target still will not mount. Whether the thread ended within
        the deadline (a writer that failed has ended, or is telling why)."""
        deadline = time.monotonic() + timeout
        if self._thread.is_alive():
            try:
                self._put(None, deadline)
            except Exception:  # its failure, already told, or queue.Full at the deadline
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _put(self, item, deadline=None):
        # type: (Optional[tuple], Optional[float]) -> None
        while True:
            self._raise_error()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                # else the writer may have died meanwhile: check again

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
        except BaseException as e:
            self._error = e
            self._on_error(e)

    def _write(self, kind, offset, data, length, frame):
        # type: (int, int, Any, int, Optional[bytes]) -> None
        if kind == MATCH:
            # Old bytes are read only where needed: with a digest cache, they were not read yet
            need = length if self._hashes or self._saveset is not None else max(
                0, min(length, len(self._head) - offset))  # the held-back head's part
            # receive_image refuses MATCH outside a delta run: there are segments here
            old, digests = self._segments.take(offset, length, need)  # type: ignore[union-attr]
            if old is not None:
                self._keep(offset, old)
            if self._record is not None:
                self._record.kept(offset, length, digests)
        else:
            if self._segments is not None:
                self._segments.skip(offset, length)
            if kind == HOLE:
                self._zero(offset, length)
                if self._record is not None:
                    self._record.zeroed(offset, length)
            else:
                view = (self._copied(offset, length, *data) if kind == COPY
                        else memoryview(data))
                self._replace(offset, view, frame)
                if self._record is not None:
                    self._record.wrote(offset, view)
        self._written += length
        self._target.written_to(offset + length)
        self._report()

    def _keep(self, offset, old):
        # type: (int, memoryview) -> None
        """A MATCH: the target already holds these bytes; hash them, and save them if asked."""
        self._digest(old)
        self._hold_head(offset, old)
        self._save(offset, old, None)

    def _save(self, offset, view, frame):
        # type: (int, memoryview, Optional[bytes]) -> None
        """Into the saveset, if any: the block's wire frame, or, for bytes that crossed the wire
        as no frame (a MATCH, a COPY), one made here."""
        if self._saveset is None:
            return
        if frame is not None:
            self._saveset.add(frame, len(view))
        elif is_zero(view):
            self._saveset.add_zeros(offset, len(view))
        else:
            self._saveset.add(compress_frame(view, 1), len(view))

    def _copied(self, offset, length, source, digest):
        # type: (int, int, int, bytes) -> memoryview
        """The bytes written at source, for offset: the held-back head's from memory."""
        view = memoryview(bytearray(length))
        cut = max(0, min(length, len(self._head) - source))
        view[:cut] = self._head[source:source + cut]
        if cut < length:
            # receive_image refuses COPY unless target.readable: a Target, not a NullTarget
            self._target.read_into(view[cut:], source + cut)  # type: ignore[union-attr]
        if hashlib.sha256(view).digest() != digest:
            raise IntegrityError("%s: the %d bytes at offset %d, copied for offset %d, differ "
                                 "from the source's" % (self._target.path, length, source, offset))
        return view

    def _zero(self, offset, length):
        # type: (int, int) -> None
        if self._saveset is not None:
            self._saveset.add_zeros(offset, length)
        self._hash_zeros(length)
        start = min(offset + length, max(offset, len(self._head)))
        if start > offset:
            self._head[offset:start] = bytes(start - offset)
            self._head_changed = True
        if offset + length > start:
            self._zero_head_once()
            self._target.zero(start, offset + length - start)

    def _replace(self, offset, view, frame):
        # type: (int, memoryview, Optional[bytes]) -> None
        self._save(offset, view, frame)
        self._digest(view)
        rest = self._hold_head(offset, view)
        self._head_changed |= len(rest) < len(view)
        if not rest:
            return
        self._zero_head_once()
        start = offset + len(view) - len(rest)
        if self._target.sparse:
            self._write_sparse(start, rest)
        else:
            self._target.pwrite(start, rest)

    def _zero_head_once(self):
        # type: () -> None
        """Before the first byte beyond the head is written, invalidate the head."""
        if not self._head_zeroed:
            self._head_zeroed = True
            self._target.zero(0, len(self._head))

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

    def _digest(self, view):
        # type: (memoryview) -> None
        for digest in self._hashes:
            digest.update(view)

    def _hash_zeros(self, length):
        # type: (int) -> None
        for digest in self._hashes:
            digest.zeros(length)

    def _report(self):
        # type: () -> None
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY
            self._on_progress(self._written)
