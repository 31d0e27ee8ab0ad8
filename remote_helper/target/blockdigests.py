"""The target's digests as a delta run leaves it, recorded for the next run's digest cache.

# Strategy: the writer tells BlockDigests what it did with each range, in order: kept it (a
# MATCH: the digests the run compared, UNKNOWN where it never hashed them), wrote it (hashed
# here, as written) or zeroed it (a constant). The block digests go to a sink as they come; the
# piece digests, with two levels, are the target's where a piece was kept whole, hashed as
# written where it was written whole, and UNKNOWN where it was kept in part.
"""
import hashlib
from typing import TYPE_CHECKING, Any, Callable, Optional  # for the type comments

from .hashing import block_digests, zero_digest
from .imagedigest import PIECE

if TYPE_CHECKING:
    from .delta import TargetSegments

# A piece or block whose digest is not known (the digest cache's, for a piece a run changed in
# part, or a block of a piece it MATCHed whole): no sha256 is all zeros, so the client asks
# for the piece's blocks, and the helper reads what it does not know.
UNKNOWN = bytes(32)


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
