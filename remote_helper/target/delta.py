"""The target side of a delta dup: read the target once, send block digests, keep the data.

# Strategy: a thread reads the target segment by segment (holes not read: they are zeros),
# sends the sha256 of each block of the segment in one DIGESTS frame (hashed on every core while
# the next segment is read, holes not hashed: hashing.py), and queues the segment's bytes. The
# client compares, and answers each range with DATA (new bytes), HOLE (zeros) or
# MATCH (keep what is there). The writer takes the segments back in order: a MATCH range is
# hashed (and put in the saveset) from the bytes already read, so the run reads the target
# once. The queue is bounded, so the reader stays at most a few segments ahead of the writer
# and memory stays fixed whatever the disk's size. The client waits for each DIGESTS frame, so
# a reader that fails tells it at once (`fail`: the helper's ERROR frame), or both would wait.
# With a digest cache (saveset/digestcache.py) the digests come from it instead, and the target
# is read only where the writer needs old bytes (a MATCH in the held-back head, or one to hash
# or to put in a saveset). blockdigests.BlockDigests collects the digests of the target as the
# run leaves it, for the next run's cache.
# Two levels (OPEN's delta.pieces and delta.ask, docs/wire.md): a DIGESTS frame then carries
# the sha256 of each 1 MiB piece of the segment only (the image digest's pieces), hashed by
# the same threads, and the segment's block digests start UNKNOWN. The client compares pieces,
# and ASKs for the block digests of the pieces that differ (answer()): they are hashed from the
# segment's buffer, still held (the writer cannot pass a segment before the client's frames
# for it, which follow the answer), or, in a cached run, taken from the cache, or read and
# hashed where the cache does not know them. So each byte is hashed once, and the blocks of a
# changed piece once more.
# The segments' buffers are a fixed pool, given back once the writer has passed a segment (no
# view of it outlives the take() or skip() that passed it): a new 4 MiB bytearray for each
# segment cost the reader thread as much CPU as its reads, in page faults and zeroing
# (docs/performance.md, "delta-warm").
"""
import hashlib
import mmap
import queue
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple  # for the type comments

from ..wire import protocol
from . import directio
from .devices import data_extents, fill_segment
from .blockdigests import UNKNOWN
from .hashing import Hashers, block_digests, hole_blocks
from .imagedigest import PIECE
from ..errors import HelperError, IntegrityError, ProtocolError, as_helper_error

if TYPE_CHECKING:  # target.py is not needed to run this module
    from .target import Target

    from typing import Protocol

    class Cached(Protocol):  # saveset.digestcache.CachedDigests, from a layer above
        def digests(self, first, count):
            # type: (int, int) -> bytes
            ...

        def pieces(self, first, count):
            # type: (int, int) -> bytes
            ...

Send = Callable[[bytes], None]
# A segment of the target: offset, length, its block digests, its bytes (None if not read)
Segment = Tuple[int, int, bytearray, Optional[memoryview]]

DEPTH = 8  # segments read ahead of the writer
# Buffers in the pool: the queue's, the writer's, the one in hashing, the one being read.
BUFFERS = DEPTH + 3
STOP_WAIT = 10.0  # seconds stop() waits for a read under way to end, before the target closes


class TargetSegments(object):
    """Reads the target ahead of the writer, announcing each segment's block digests."""

    def __init__(self, target, block, segment, send, fail, cached=None, pieces=False):
        # type: (Target, int, int, Send, Callable[[BaseException], None], Optional[Cached], bool) -> None
        """With `pieces`, each DIGESTS carries the segment's piece digests alone, and the
        client asks for the blocks of those that differ (two levels: the caller checked that
        block divides PIECE and PIECE divides segment)."""
        self._target = target
        self._pieces = pieces
        # the segments announced and not yet passed by the writer, by offset, with their holes:
        # answer() hashes the blocks of asked pieces from them (the input thread)
        self._held = {}  # type: dict
        self._held_lock = threading.Lock()
        self._piece_digests = b""  # the current segment's piece digests
        self.kept_pieces = {}  # type: dict  # piece index -> digest, of the last take()
        self._cached = cached
        self._block = block
        self._segment = segment
        self._send = send
        self._fail = fail
        # each segment with its piece digests
        self._queue = queue.Queue(DEPTH)  # type: queue.Queue[Optional[Tuple[Segment, bytes]]]
        self._current = None  # type: Optional[Segment]  # the writer's segment
        self._passed = []  # type: list  # buffers of segments the writer left, to give back
        self._free = queue.Queue()  # type: queue.Queue[mmap.mmap]
        self._made = 0  # buffers allocated so far, up to BUFFERS
        # id() of the buffers that may hold bytes other than zeros (the reader thread's alone):
        # only those have their holes cleared, so a disk of holes costs no zeroing
        self._dirty = set()  # type: set
        self._read_bytes = 0  # of the target, by the reader thread or the writer's
        self._answer_bytes = 0  # read by answer() (the input thread): a count of its own
        self._stop = threading.Event()
        self.error = None  # type: Optional[HelperError]
        self._hashers = Hashers() if cached is None else None
        self._thread = threading.Thread(target=self._run, name="delta-reader")
        self._thread.daemon = True
        self._thread.start()

    @property
    def read_bytes(self):
        # type: () -> int
        """Bytes read of the target so far, by every thread."""
        return self._read_bytes + self._answer_bytes

    def stop(self):
        # type: () -> bool
        """Stop reading, and let a read under way end; whether it did within STOP_WAIT: the
        caller closes the target only then."""
        deadline = time.monotonic() + STOP_WAIT
        self._stop.set()
        self._thread.join(STOP_WAIT)
        hashed = self._hashers is None or self._hashers.stop(
            max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive() and hashed

    def _run(self):
        # type: () -> None
        offset = 0
        hashing = None  # type: Optional[Tuple[int, int, list, memoryview, list]]
        try:
            size = self._target.size
            for offset in range(0, size, self._segment):
                length = min(self._segment, size - offset)
                if self._hashers is None:  # a digest cache: nothing read, nothing hashed
                    cached = self._cached.digests(  # type: ignore[union-attr]
                        offset // self._block, -(-length // self._block))
                    pieces = self._cached.pieces(  # type: ignore[union-attr]
                        offset // PIECE, -(-length // PIECE)) if self._pieces else b""
                    if not self._announce((offset, length, bytearray(cached), None), pieces):
                        return
                    continue
                data = self._buffer(length)
                if data is None:
                    return
                holes = self._read(data, offset)
                level = PIECE if self._pieces else self._block  # pieces: blocks when asked
                shares = self._hashers.submit(data, level, hole_blocks(holes, level, length))
                if hashing is not None and not self._hashed(hashing):
                    return
                hashing = (offset, length, shares, data, holes)
            if hashing is not None:
                self._hashed(hashing)
        except BaseException as e:
            self.error = as_helper_error(e, "%s: reading the target's segment at byte %d"
                                         % (self._target.path, offset))
            self._fail(self.error)
            self._put(None)  # the writer raises self.error when it next needs a segment

    def _hashed(self, hashing):
        # type: (Tuple[int, int, list, memoryview, list]) -> bool
        """Announce a segment once its shares are hashed; whether it was, before stop()."""
        offset, length, shares, data, holes = hashing
        digests = [share.result(self._stop) for share in shares]
        if None in digests:
            return False
        if not self._pieces:
            return self._announce((offset, length, bytearray(b"".join(digests)), data))
        blocks = bytearray(UNKNOWN * -(-length // self._block))  # until the client asks
        return self._announce((offset, length, blocks, data), b"".join(digests), holes)

    def _announce(self, segment, pieces=b"", holes=()):
        # type: (Segment, bytes, Any) -> bool
        """Send the segment's DIGESTS (its piece digests with two levels, else its block
        digests) and queue it for the writer; False once stopped."""
        if self._pieces:
            with self._held_lock:  # before the DIGESTS: the client's ASK may follow at once
                self._held[segment[0]] = (segment, holes)
        payload = pieces if self._pieces else bytes(segment[2])
        self._send(protocol.encode(protocol.DIGESTS, payload, segment[0]))
        return self._put((segment, pieces))

    def answer(self, offset, payload):
        # type: (int, bytes) -> None
        """An ASK for the block digests of some pieces of the segment at `offset` (4-byte
        indexes of pieces in the image): hashed from the segment's bytes, or from the cache
        where it knows them, else read; recorded in the segment and sent back in order."""
        with self._held_lock:
            held = self._held.pop(offset, None)
        if held is None or len(payload) % 4 or not payload:
            raise ProtocolError("ASK for the segment at offset %d, which is not awaiting one"
                                % offset)
        (seg_offset, length, blocks, data), holes = held
        answer = []
        for (index,) in struct.iter_unpack(">I", payload):
            start = index * PIECE - seg_offset
            if not 0 <= start < length:
                raise ProtocolError("ASK for piece %d, not in the segment at offset %d"
                                    % (index, offset))
            n = min(PIECE, length - start)
            first, count = start // self._block, -(-n // self._block)
            known = bytes(blocks[first * 32:(first + count) * 32])
            if data is not None or UNKNOWN in _split(known):
                known = self._piece_blocks(data, seg_offset + start, start, n, holes)
                blocks[first * 32:(first + count) * 32] = known
            answer.append(known)
        self._send(protocol.encode(protocol.DIGESTS, b"".join(answer), offset,
                                   protocol.ANSWER))

    def _piece_blocks(self, data, offset, start, n, holes):
        # type: (Optional[memoryview], int, int, int, Any) -> bytes
        """The block digests of the n bytes at `offset` (`start` in its segment): hashed
        from the segment's buffer, or read first (a cached run that does not know them)."""
        if data is not None:
            view = data[start:start + n]
            inside = hole_blocks([(s - start, r) for s, r in holes], self._block, n)
            return block_digests(view, self._block, inside)
        view = memoryview(bytearray(n))
        self._target.read_into(view, offset)
        self._answer_bytes += n
        return block_digests(view, self._block)

    def _put(self, item):
        # type: (Optional[Tuple[Segment, bytes]]) -> bool
        """Queue item for the writer, unless stop() comes first; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _buffer(self, length):
        # type: (int) -> Optional[memoryview]
        """A buffer of the pool for `length` bytes, once one is free; None once stopped."""
        while not self._stop.is_set():
            try:
                return memoryview(self._free.get_nowait())[:length]
            except queue.Empty:
                pass
            if self._made < BUFFERS:
                self._made += 1
                # an anonymous mapping: its pages are zeros and cost nothing until written
                return memoryview(directio.buffer(self._segment))[:length]
            try:
                return memoryview(self._free.get(timeout=0.2))[:length]
            except queue.Empty:
                continue
        return None

    def _read(self, view, offset):
        # type: (memoryview, int) -> list
        """Fill view with the segment's bytes; its holes ((start, length), relative to offset)
        are not read, but zeroed where the buffer held an earlier segment's data; returned."""
        holes, nread = fill_segment(view, offset,
                                    data_extents(self._target.fd, offset, offset + len(view)),
                                    self._target.read_into, self._dirty, self._segment)
        self._read_bytes += nread
        return holes

    def take(self, offset, length, need):
        # type: (int, int, int) -> Tuple[Optional[memoryview], Optional[bytes]]
        """For a MATCH of [offset, offset+length): the target's first `need` bytes there, as
        they were before anything was written (None if need is 0), and its block digests (None
        unless the range is on the block grid)."""
        pieces, digests = [], []  # type: list, list
        self.kept_pieces = {}
        while length:
            seg_offset, seg_length, seg_digests, data = self._segment_at(offset)
            start = offset - seg_offset
            n = min(length, seg_length - start)
            self._keep_pieces(seg_offset, seg_length, start, n)
            if need > 0:
                pieces.append(self._bytes(data, offset, start, min(n, need), seg_digests))
                need -= n
            last = offset + n == self._target.size
            digests.append(self._digests_of(seg_digests, start, n, last))
            offset += n
            length -= n
        view = None  # type: Optional[memoryview]
        if pieces:
            view = pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))
        self._give_back()  # after the join: no view of a passed segment is left
        return view, None if None in digests else b"".join(digests)

    def _keep_pieces(self, seg_offset, seg_length, start, n):
        # type: (int, int, int, int) -> None
        """Into kept_pieces: the digests of the pieces wholly inside [start, start+n) of the
        current segment (pieces never straddle segments)."""
        if not self._piece_digests:
            return
        end = start + n
        last = seg_length if end == seg_length else end // PIECE * PIECE
        for pos in range(-(-start // PIECE) * PIECE, last, PIECE):
            index = pos // PIECE
            self.kept_pieces[(seg_offset + pos) // PIECE] = \
                self._piece_digests[index * 32:index * 32 + 32]

    def _bytes(self, data, offset, start, n, digests):
        # type: (Optional[memoryview], int, int, int, bytearray) -> memoryview
        if data is not None:
            return data[start:start + n]
        # Not read ahead (a cached run): MATCHed ranges are never written in this run, and
        # the head, which is zeroed once a byte beyond it is, comes first in stream order.
        view = memoryview(bytearray(n))
        self._target.read_into(view, offset)
        self._read_bytes += n
        self._check_cached(view, offset, start, digests)
        return view

    def _check_cached(self, view, offset, start, digests):
        # type: (memoryview, int, int, bytearray) -> None
        """Bytes read in a cached run must have the cache's digests: the first MiB, which
        every cached run reads, holds the partition table and the file system's superblock,
        which a mount writes. Each block is held against its digest where the cache knows it,
        each whole piece against its own where it knows that. A mismatch fails the run before
        anything beyond the head is written (the cache is already gone: the next run reads the
        target)."""
        block = self._block
        whole = len(view) // block * block if offset + len(view) < self._target.size \
            else len(view)
        if start % block or not whole:
            return
        first = start // block
        cached = _split(bytes(digests[first * 32:first * 32 + -(-whole // block) * 32]))
        held = [(at, digest) for at, digest in enumerate(cached) if digest != UNKNOWN]
        ok = all(hashlib.sha256(view[at * block:(at + 1) * block]).digest() == digest
                 for at, digest in held)
        if self._piece_digests and ok:
            ok = self._check_pieces(view[:whole], start)
        if not ok:
            raise IntegrityError("%s: the target's bytes at offset %d differ from its digest "
                                 "cache: something else wrote it since the last run; the cache "
                                 "is removed, run the same command again" % (self._target.path,
                                                                           offset))

    def _check_pieces(self, view, start):
        # type: (memoryview, int) -> bool
        """Whether each whole piece of view (at `start` in the current segment) has the
        cache's piece digest, where the cache knows it."""
        current = self._current
        assert current is not None  # the segment the bytes were read for
        for pos in range(-(-start // PIECE) * PIECE - start, len(view), PIECE):
            piece = view[pos:pos + PIECE]
            index = (start + pos) // PIECE
            digest = self._piece_digests[index * 32:index * 32 + 32]
            if len(piece) == min(PIECE, current[1] - start - pos) and \
                    digest != UNKNOWN and hashlib.sha256(piece).digest() != digest:
                return False
        return True

    def _digests_of(self, digests, start, n, last):
        # type: (bytes, int, int, bool) -> Optional[bytes]
        block = self._block
        if start % block or (n % block and not last):
            return None
        return digests[start // block * 32:-(-(start + n) // block) * 32]

    def skip(self, offset, length):
        # type: (int, int) -> None
        """The writer has passed [offset, offset+length) without needing its old bytes."""
        if length:
            self._segment_at(offset + length - 1)
            self._give_back()

    def _segment_at(self, offset):
        # type: (int) -> Segment
        while self._current is None or offset >= self._current[0] + self._current[1]:
            item = self._queue.get()
            if item is None:
                assert self.error is not None  # _run sets it before it queues the None
                raise self.error
            if self._current is not None:
                with self._held_lock:  # no ASK for it can come any more
                    self._held.pop(self._current[0], None)
                if self._current[3] is not None:
                    self._passed.append(self._current[3].obj)
            self._current, self._piece_digests = item
        return self._current

    def _give_back(self):
        # type: () -> None
        """The buffers of the segments the writer has passed, back to the reader's pool."""
        for buffer in self._passed:
            self._free.put(buffer)
        self._passed = []


def _split(digests):
    # type: (bytes) -> list
    """Concatenated digests, one by one."""
    return [digests[at:at + 32] for at in range(0, len(digests), 32)]
