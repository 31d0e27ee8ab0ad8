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
# or to put in a saveset). BlockDigests collects the digests of the target as the run leaves
# it, for the next run's cache.
# Two levels (OPEN's delta.pieces, docs/wire.md): a DIGESTS frame then also carries the sha256
# of each whole 1 MiB piece of the segment (the image digest's pieces), hashed by the same
# threads, so that the client hashes a piece that equals the target's once, for the image
# digest, and none of its blocks. The helper so hashes each byte twice (blocks and pieces).
# The segments' buffers are a fixed pool, given back once the writer has passed a segment (no
# view of it outlives the take() or skip() that passed it): a new 4 MiB bytearray for each
# segment cost the reader thread as much CPU as its reads, in page faults and zeroing
# (docs/performance.md, "delta-warm").
"""
import hashlib
import mmap
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple  # for the type comments

from ..wire import protocol
from . import directio
from .devices import data_extents, zero_chunks
from .hashing import Hashers, block_digests, hole_blocks, zero_digest
from .imagedigest import PIECE
from ..errors import HelperError, IntegrityError, as_helper_error

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
Segment = Tuple[int, int, bytes, Optional[memoryview]]
# A piece whose digest is not known (the digest cache's, for a piece a run changed in part):
# no sha256 is all zeros, so the client compares its blocks one by one.
UNKNOWN = bytes(32)

DEPTH = 8  # segments read ahead of the writer
# Buffers in the pool: the queue's, the writer's, the one in hashing, the one being read.
BUFFERS = DEPTH + 3
STOP_WAIT = 10.0  # seconds stop() waits for a read under way to end, before the target closes


class TargetSegments(object):
    """Reads the target ahead of the writer, announcing each segment's block digests."""

    def __init__(self, target, block, segment, send, fail, cached=None, pieces=False):
        # type: (Target, int, int, Send, Callable[[BaseException], None], Optional[Cached], bool) -> None
        """With `pieces`, each DIGESTS also carries the segment's piece digests (two levels:
        the caller checked that block divides PIECE and PIECE divides segment)."""
        self._target = target
        self._pieces = pieces
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
        self.read_bytes = 0  # of the target, by either thread
        self._stop = threading.Event()
        self.error = None  # type: Optional[HelperError]
        self._hashers = Hashers() if cached is None else None
        self._thread = threading.Thread(target=self._run, name="delta-reader")
        self._thread.daemon = True
        self._thread.start()

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
        hashing = None  # type: Optional[Tuple[int, int, list, memoryview]]
        try:
            size = self._target.size
            for offset in range(0, size, self._segment):
                length = min(self._segment, size - offset)
                if self._hashers is None:  # a digest cache: nothing read, nothing hashed
                    cached = self._cached.digests(  # type: ignore[union-attr]
                        offset // self._block, -(-length // self._block))
                    pieces = self._cached.pieces(  # type: ignore[union-attr]
                        offset // PIECE, -(-length // PIECE)) if self._pieces else b""
                    if not self._announce((offset, length, cached, None), pieces):
                        return
                    continue
                data = self._buffer(length)
                if data is None:
                    return
                holes = self._read(data, offset)
                shares = self._hashers.submit(data, self._block,
                                              hole_blocks(holes, self._block, length))
                if self._pieces:  # after the blocks': the DIGESTS payload's order
                    shares += self._hashers.submit(data, PIECE,
                                                   hole_blocks(holes, PIECE, length))
                if hashing is not None and not self._hashed(hashing):
                    return
                hashing = (offset, length, shares, data)
            if hashing is not None:
                self._hashed(hashing)
        except BaseException as e:
            self.error = as_helper_error(e, "%s: reading the target's segment at byte %d"
                                         % (self._target.path, offset))
            self._fail(self.error)
            self._put(None)  # the writer raises self.error when it next needs a segment

    def _hashed(self, hashing):
        # type: (Tuple[int, int, list, memoryview]) -> bool
        """Announce a segment once its shares are hashed; whether it was, before stop()."""
        offset, length, shares, data = hashing
        digests = [share.result(self._stop) for share in shares]
        if None in digests:
            return False
        both = b"".join(digests)
        split = -(-length // self._block) * 32
        return self._announce((offset, length, both[:split], data), both[split:])

    def _announce(self, segment, pieces=b""):
        # type: (Segment, bytes) -> bool
        """Send the segment's DIGESTS (its block digests, then its piece digests, if any) and
        queue it for the writer; False once stopped."""
        self._send(protocol.encode(protocol.DIGESTS, segment[2] + pieces, segment[0]))
        return self._put((segment, pieces))

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
        holes = []
        buffer = id(view.obj)
        dirty = buffer in self._dirty
        for start, run, is_data in data_extents(self._target.fd, offset, offset + len(view)):
            rel = start - offset
            if is_data:
                self._target.read_into(view[rel:rel + run], start)
                self.read_bytes += run
                self._dirty.add(buffer)
                continue
            holes.append((rel, run))
            if dirty:
                for chunk in zero_chunks(run):
                    view[rel:rel + len(chunk)] = chunk
                    rel += len(chunk)
        if holes == [(0, self._segment)]:
            self._dirty.discard(buffer)  # all of it zeros now: clean again
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
        # type: (Optional[memoryview], int, int, int, bytes) -> memoryview
        if data is not None:
            return data[start:start + n]
        # Not read ahead (a cached run): MATCHed ranges are never written in this run, and
        # the head, which is zeroed once a byte beyond it is, comes first in stream order.
        view = memoryview(bytearray(n))
        self._target.read_into(view, offset)
        self.read_bytes += n
        self._check_cached(view, offset, start, digests)
        return view

    def _check_cached(self, view, offset, start, digests):
        # type: (memoryview, int, int, bytes) -> None
        """Bytes read in a cached run must have the cache's digests: the first MiB, which
        every cached run reads, holds the partition table and the file system's superblock,
        which a mount writes. A mismatch fails the run before anything beyond the head is
        written (the cache is already gone: the next run reads the target)."""
        block = self._block
        whole = len(view) // block * block if offset + len(view) < self._target.size \
            else len(view)
        if start % block or not whole:
            return
        first = start // block
        cached = digests[first * 32:first * 32 + -(-whole // block) * 32]
        if block_digests(view[:whole], block) != cached:
            raise IntegrityError("%s: the target's bytes at offset %d differ from its digest "
                                 "cache: something else wrote it since the last run; the cache "
                                 "is removed, run the same command again" % (self._target.path,
                                                                           offset))

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
            if self._current is not None and self._current[3] is not None:
                self._passed.append(self._current[3].obj)
            self._current, self._piece_digests = item
        return self._current

    def _give_back(self):
        # type: () -> None
        """The buffers of the segments the writer has passed, back to the reader's pool."""
        for buffer in self._passed:
            self._free.put(buffer)
        self._passed = []



class BlockDigests(object):
    """The target's block digests as a delta run leaves it, in order, for the next run's cache:
    those of MATCHed blocks as the run found them, of written ones hashed as written. Any
    range off the block grid spoils it (`ok` False): the run then keeps no cache.

    With `pieces` (a sink), also the digest of each 1 MiB piece: a piece MATCHed whole keeps
    the digest `segments` had for it (TargetSegments.kept_pieces), one written whole (DATA,
    COPY, HOLE) is hashed as written, and one partly kept, partly written is UNKNOWN (its
    kept bytes may not have been read: a cached run)."""

    def __init__(self, block, size, sink, pieces=None):
        # type: (int, int, Callable[[bytes], None], Optional[Callable[[bytes], None]]) -> None
        self._block = block
        self._size = size
        self._sink = sink
        self._next = 0
        self.ok = True
        self._pieces = pieces
        self.segments = None  # type: Optional[TargetSegments]  # set by the job, for kept_pieces
        self._hash = None  # type: Optional[hashlib._Hash]  # the piece under way, while known
        self._filled = 0  # bytes of the piece under way
        self._known = True  # whether the piece under way was written whole so far

    def complete(self):
        # type: () -> bool
        """Whether every block of the image has its digest, in order."""
        return self.ok and self._next == self._size

    def kept(self, offset, length, digests):
        # type: (int, int, Optional[bytes]) -> None
        """A MATCH: `digests` are the target's, None if the range was off the grid."""
        if digests is None:
            self.ok = False
        elif self._aligned(offset, length):
            kept = self.segments.kept_pieces if self.segments is not None else {}
            self._add(length, digests, lambda start, n: kept.get(
                (offset + start) // PIECE, UNKNOWN) if n == self._piece_length(
                    offset + start) else None)

    def wrote(self, offset, view):
        # type: (int, memoryview) -> None
        """Bytes written (a DATA or COPY): hashed here, on the writer's thread."""
        if self._aligned(offset, len(view)):
            self._add(len(view), block_digests(view, self._block),
                      lambda start, n: view[start:start + n])

    def zeroed(self, offset, length):
        # type: (int, int) -> None
        if self._aligned(offset, length):
            block, whole = self._block, length // self._block
            tail = length - whole * block
            self._add(length, zero_digest(block) * whole + (zero_digest(tail) if tail else b""),
                      lambda start, n: zero_digest(n) if n == self._piece_length(
                          offset + start) else memoryview(bytes(n)))

    def _aligned(self, offset, length):
        # type: (int, int) -> bool
        end = offset + length
        self.ok = self.ok and offset == self._next and offset % self._block == 0 and (
            end % self._block == 0 or end == self._size)
        return self.ok

    def _add(self, length, digests, part):
        # type: (int, bytes, Callable[[int, int], Any]) -> None
        """The next `length` bytes' block digests; part(start, n) says what is known of the
        n bytes at `start` within them, for the piece digests: a digest (the whole piece's),
        bytes (to hash), or None (kept: unknown unless the piece was kept whole)."""
        self._sink(digests)
        if self._pieces is not None:
            start = 0
            while start < length:
                pos = self._next + start
                n = min(length - start, self._piece_length(pos) - pos % PIECE)
                self._piece(part(start, n), n, pos)
                start += n
        self._next += length

    def _piece_length(self, pos):
        # type: (int) -> int
        """The length of the piece that holds byte `pos` (the image's last may be short)."""
        first = pos // PIECE * PIECE
        return min(PIECE, self._size - first)

    def _piece(self, known, n, pos):
        # type: (Any, int, int) -> None
        assert self._pieces is not None
        if isinstance(known, bytes) and n == self._piece_length(pos) and not self._filled:
            self._pieces(known)  # a whole piece's digest
            return
        if known is None or isinstance(known, bytes):
            self._known = False
        elif self._known:
            if self._hash is None:
                self._hash = hashlib.sha256()
            self._hash.update(known)
        self._filled += n
        if self._filled == self._piece_length(pos):
            self._pieces(self._hash.digest() if self._known and self._hash is not None
                         else UNKNOWN)
            self._hash, self._filled, self._known = None, 0, True
