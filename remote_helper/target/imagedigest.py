"""The image digest both ends report and compare: sha256 over the sha256 of each 1 MiB piece.

# Strategy: the digest of an image is what `split -b 1M --filter=sha256sum IMG | sha256sum`
# prints: the sha256 of the text lines `HEX  -\n`, one for the sha256 of each 1 MiB piece of
# the image in order (the last may be short). Stock coreutils recompute it, and it is as strong
# as a sha256 of every byte (each piece's sha256, chained), but its cost follows the data: a
# piece of zeros (a hole, or a memcmp) adds its constant line without hashing, and the pieces
# are independent, so a caller may hash them on several threads (`update`'s `lines`) and feed
# only the short outer sha256 in order. ImageDigest takes the image's bytes in stream order,
# as views of data and lengths of zeros, in any cut: a piece split across two of them is
# finished here, serially; whole pieces go to `lines` in one call.
"""
import hashlib
from typing import Any, Callable, Dict, List, Optional  # for the type comments

from .devices import is_zero, zero_chunks

PIECE = 1 << 20
ALGORITHM = "sha256-1m"
# How a user recomputes it (README): one sha256sum forked per piece.
COMMAND = "split -b 1M --filter=sha256sum IMAGE | sha256sum"

_ZERO_LINES = {}  # type: Dict[int, bytes]


def line(hex_digest):
    # type: (str) -> bytes
    """sha256sum's line for a piece read from its stdin."""
    return hex_digest.encode("ascii") + b"  -\n"


def zero_line(length):
    # type: (int) -> bytes
    """The line of a piece of `length` zero bytes, computed once per length."""
    found = _ZERO_LINES.get(length)
    if found is None:
        found = _ZERO_LINES[length] = line(hashlib.sha256(bytes(length)).hexdigest())
    return found


def piece_line(view):
    # type: (memoryview) -> bytes
    """The line of one piece: zeros by a memcmp, anything else by its sha256 (the GIL is
    released while it hashes, so several threads may run this at once)."""
    if is_zero(view):
        return zero_line(len(view))
    return line(hashlib.sha256(view).hexdigest())


def serial_lines(pieces):
    # type: (List[memoryview]) -> List[bytes]
    return [piece_line(piece) for piece in pieces]


Lines = Callable[[List[memoryview]], List[bytes]]


class ImageDigest(object):
    """The digest of an image fed in stream order (update, zeros), then hexdigest()."""

    algorithm = ALGORITHM

    def __init__(self):
        # type: () -> None
        self._outer = hashlib.sha256()
        self._partial = None  # type: Optional[hashlib._Hash]
        self._filled = 0  # bytes of the piece begun

    def update(self, view, lines=serial_lines):
        # type: (memoryview, Lines) -> None
        """The next bytes of the image; `lines` gives the lines of whole pieces, in order
        (the compressor pool's threads on the client)."""
        view = memoryview(view).cast("B")
        start = self._fill(view)
        whole = (len(view) - start) // PIECE
        if whole:
            pieces = [view[start + i * PIECE:start + (i + 1) * PIECE] for i in range(whole)]
            for found in lines(pieces):
                self._outer.update(found)
            start += whole * PIECE
        if start < len(view):
            self._fill(view[start:])

    def zeros(self, length):
        # type: (int) -> None
        """The next `length` bytes of the image are zeros (a hole): no hashing but a piece
        begun or ended inside it."""
        if self._filled:
            take = min(length, PIECE - self._filled)
            for chunk in zero_chunks(take):
                self._add(chunk)
            length -= take
        whole = length // PIECE
        if whole:
            self._outer.update(zero_line(PIECE) * whole)
        for chunk in zero_chunks(length - whole * PIECE):
            self._add(chunk)

    def hexdigest(self):
        # type: () -> str
        """The digest, once the whole image was fed (a short last piece is ended here)."""
        if self._filled:
            self._end_piece()
        return self._outer.hexdigest()

    def _fill(self, view):
        # type: (memoryview) -> int
        """Feed the piece begun (if any) from the start of view; how many bytes it took."""
        if not self._filled:
            return 0 if len(view) >= PIECE else self._add(view)
        return self._add(view[:PIECE - self._filled])

    def _add(self, part):
        # type: (memoryview) -> int
        """Part of a piece split across two updates (or a hole's edge), hashed here."""
        if self._partial is None:
            self._partial = hashlib.sha256()
        self._partial.update(part)
        self._filled += len(part)
        if self._filled == PIECE:
            self._end_piece()
        return len(part)

    def _end_piece(self):
        # type: () -> None
        assert self._partial is not None
        self._outer.update(line(self._partial.hexdigest()))
        self._partial = None
        self._filled = 0


class PlainDigest(object):
    """The plain sha256 of the image (what sha256sum prints), with ImageDigest's interface."""

    algorithm = "sha256"

    def __init__(self):
        # type: () -> None
        self._hash = hashlib.sha256()

    def update(self, view, lines=serial_lines):
        # type: (memoryview, Lines) -> None
        self._hash.update(view)

    def zeros(self, length):
        # type: (int) -> None
        for chunk in zero_chunks(length):
            self._hash.update(chunk)

    def hexdigest(self):
        # type: () -> str
        return self._hash.hexdigest()


PLAIN = PlainDigest.algorithm
# The digests a helper computes by name, as the OPEN's "hash" asks (the stream, --verify).
DIGESTS = {ALGORITHM: ImageDigest, PLAIN: PlainDigest}  # type: Dict[str, Callable[[], Any]]
# Their keys in END, RESULT and the client's report.
KEYS = {ALGORITHM: "digest", PLAIN: "sha256"}
