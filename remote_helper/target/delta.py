"""The target side of a delta dup: read the target once, send block digests, keep the data.

# Strategy: a thread reads the target segment by segment (holes not read: they are zeros),
# sends the sha256 of each block of the segment in one DIGESTS frame, and queues the segment's
# bytes. The client compares, and answers each range with DATA (new bytes), HOLE (zeros) or
# MATCH (keep what is there). The writer takes the segments back in order: a MATCH range is
# hashed (and put in the saveset) from the bytes already read, so the run reads the target
# once. The queue is bounded, so the reader stays at most a few segments ahead of the writer
# and memory stays fixed whatever the disk's size. The client waits for each DIGESTS frame, so
# a reader that fails tells it at once (`fail`: the helper's ERROR frame), or both would wait.
"""
import hashlib
import queue
import threading
from typing import TYPE_CHECKING, Callable, Optional, Tuple  # for the type comments

from ..wire import protocol
from .devices import data_extents
from ..errors import HelperError, as_helper_error

if TYPE_CHECKING:  # target.py is not needed to run this module
    from .target import Target

DEPTH = 8  # segments read ahead of the writer
STOP_WAIT = 10.0  # seconds stop() waits for a read under way to end, before the target closes


def block_digests(view, block):
    # type: (memoryview, int) -> bytes
    """The concatenated sha256 digests of each `block`-sized piece of view (the last may be short)."""
    return b"".join(hashlib.sha256(view[pos:pos + block]).digest()
                    for pos in range(0, len(view), block))


class TargetSegments(object):
    """Reads the target ahead of the writer, announcing each segment's block digests."""

    def __init__(self, target, block, segment, send, fail):
        # type: (Target, int, int, Callable[[bytes], None], Callable[[BaseException], None]) -> None
        self._target = target
        self._block = block
        self._segment = segment
        self._send = send
        self._fail = fail
        self._queue = queue.Queue(DEPTH)  # type: queue.Queue[Optional[Tuple[int, bytearray]]]
        self._current = None  # type: Optional[Tuple[int, bytearray]]  # the writer's segment
        self._stop = threading.Event()
        self.error = None  # type: Optional[HelperError]
        self._thread = threading.Thread(target=self._run, name="delta-reader")
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        # type: () -> bool
        """Stop reading, and let a read under way end; whether it did within STOP_WAIT: the
        caller closes the target only then."""
        self._stop.set()
        self._thread.join(STOP_WAIT)
        return not self._thread.is_alive()

    def _run(self):
        # type: () -> None
        offset = 0
        try:
            size = self._target.size
            for offset in range(0, size, self._segment):
                data = self._read(offset, min(self._segment, size - offset))
                payload = block_digests(memoryview(data), self._block)
                self._send(protocol.encode(protocol.DIGESTS, payload, offset))
                if not self._put((offset, data)):
                    return
        except BaseException as e:
            self.error = as_helper_error(e, "%s: reading the target's segment at byte %d"
                                         % (self._target.path, offset))
            self._fail(self.error)
            self._put(None)  # the writer raises self.error when it next needs a segment

    def _put(self, item):
        # type: (Optional[Tuple[int, bytearray]]) -> bool
        """Queue item for the writer, unless stop() comes first; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, offset, length):
        # type: (int, int) -> bytearray
        data = bytearray(length)
        view = memoryview(data)
        for start, run, is_data in data_extents(self._target.fd, offset, offset + length):
            if is_data:
                self._target.read_into(view[start - offset:start - offset + run], start)
        return data

    def take(self, offset, length):
        # type: (int, int) -> memoryview
        """The target's bytes at [offset, offset+length), read before anything was written."""
        pieces = []
        while length:
            seg_offset, data = self._segment_at(offset)
            start = offset - seg_offset
            piece = memoryview(data)[start:start + length]
            pieces.append(piece)
            offset += len(piece)
            length -= len(piece)
        return pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))

    def skip(self, offset, length):
        # type: (int, int) -> None
        """The writer has passed [offset, offset+length) without needing its old bytes."""
        if length:
            self._segment_at(offset + length - 1)

    def _segment_at(self, offset):
        # type: (int) -> Tuple[int, bytearray]
        while self._current is None or offset >= self._current[0] + len(self._current[1]):
            item = self._queue.get()
            if item is None:
                assert self.error is not None  # _run sets it before it queues the None
                raise self.error
            self._current = item
        return self._current
