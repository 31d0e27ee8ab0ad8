"""The source side of a delta dup: compare block digests, send only the blocks that differ.

# Strategy: the helper reads the target and sends the sha256 of each block, a segment (one
# pipeline buffer, 4 MiB) at a time; this reader reads the same segment of the source at the
# same moment, so the run takes one read of each disk, side by side. On the compressor pool,
# each block of the segment is hashed and compared; runs of equal blocks become MATCH frames,
# runs that are zero in the source HOLE frames, and the rest is compressed into DATA frames.
# Blocks that are holes in the source are never read and hashed from a cached zero digest;
# blocks of zeros, and blocks where the target holds zeros, need no hash at all. When a block
# is the image digest's piece (1 MiB), the plan keeps each block's digest line, so the image
# digest hashes none of them again (imagedigest.py).
# Two levels (smaller blocks that divide the piece, the default 64 KiB): the helper's DIGESTS
# carry the sha256 of each 1 MiB piece of the target only (docs/wire.md). Each piece of the
# source is hashed once, for the image digest; a piece equal to the target's is MATCHed whole.
# For the pieces that differ, the plan ASKs the helper for their block digests (Asks), and
# goes on when the answer comes (on the receiver's thread, which hands it to the pool): the
# reader and the pool go on with the next segments meanwhile, within the buffers' pool, so the
# round trips overlap. Only the blocks of a piece that differs are hashed, on each side: about
# one pass over the data plus the changed pieces, on either side.
# sha256 is collision-safe and, with the CPU's SHA extensions, the fastest digest
# hashlib has (docs/performance.md).
"""
from __future__ import annotations

import functools
import hashlib
import mmap
import queue
import struct
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Callable, Optional, TypeVar

from remote_helper.target import imagedigest
from remote_helper.target.devices import fill_segment, is_zero
from remote_helper.target.hashing import hole_blocks
from remote_helper.wire import protocol

from ..errors import ProtocolError
from .frames import Data, Frame, Hole, Match
from .pipeline import BlockReader, Planned, StreamSettings

T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


class SegmentReader:
    """The Producer of a delta run (pipeline.BlockReader runs it): reads the source segment by
    segment and plans each against the target's digests, which `digests` brings in order."""

    def __init__(self, digests: "queue.Queue[tuple[int, bytes]]",
                 asks: Optional["Asks"] = None) -> None:
        self._digests = digests
        self._asks = asks or Asks()
        # id() of the pool's buffers that may hold bytes other than zeros: only those have
        # their holes cleared (a disk of holes costs no zeroing; docs/performance.md)
        self._dirty: set[int] = set()

    def produce(self, reader: BlockReader) -> None:
        segment, size = reader.settings.block_size, reader.size
        for offset in range(0, size, segment):
            length = min(segment, size - offset)
            buffer = reader.take_buffer()
            view = memoryview(buffer)[:length]
            holes = _read_segment(reader, view, offset, self._dirty)
            theirs = self._target_digests(reader, offset)
            block = reader.settings.delta_block
            lines: Lines
            if two_levels(reader.settings):
                reader.put(self._two_levels(reader, buffer, offset, view, holes, theirs))
                continue
            else:
                pieces = block == imagedigest.PIECE and segment % block == 0  # blocks: pieces
                lines = [] if pieces else None
                plan = functools.partial(plan_segment, offset, view, holes, theirs, block,
                                         reader.compressor.compress, lines)
            reader.put(Planned(buffer, length, reader.submit(plan), lines))

    def _two_levels(self, reader: BlockReader, buffer: mmap.mmap, offset: int,
                    view: memoryview, holes: list[tuple[int, int]],
                    their_pieces: bytes) -> Planned:
        """The segment planned in two steps: its pieces compared on the pool, then, once the
        helper has answered the ASK for the blocks of those that differ, its frames."""
        block, compress = reader.settings.delta_block, reader.compressor.compress
        found: list[Optional[bytes]] = []
        frames: "Future[list[Frame]]" = Future()
        compared = reader.submit(compare_pieces, offset, view, holes, their_pieces, block,
                                 found)

        def finish(kinds: Kinds, answer: bytes) -> None:
            try:
                _chain(reader.submit(plan_blocks, offset, view, holes, kinds, answer, block,
                                     compress), frames)
            except BaseException as e:  # a pool shut down: the stream is closing
                _fail(frames, e)

        def then(done: "Future[tuple[Kinds, list[int]]]") -> None:
            try:
                kinds, asked = done.result()
                if asked:
                    self._asks.ask(offset, asked, functools.partial(finish, kinds))
                else:
                    finish(kinds, b"")
            except BaseException as e:  # the stream's sender raises it, in its turn
                _fail(frames, e)
        compared.add_done_callback(then)
        return Planned(buffer, len(view), frames, found, compared)

    def _target_digests(self, reader: BlockReader, offset: int) -> bytes:
        their_offset, digests = reader.wait_for(self._digests)
        if their_offset != offset:
            raise ProtocolError(f"target digests for offset {their_offset}, expected {offset}")
        return digests


def _read_segment(reader: BlockReader, view: memoryview, offset: int,
                  dirty: set[int]) -> list[tuple[int, int]]:
    """Fill view from the source; holes are not read, but zeroed where its buffer (`dirty`
    names those that may hold data) held an earlier segment's. Returns the holes."""
    holes, _ = fill_segment(view, offset, reader.extents(offset, offset + len(view)),
                            reader.read_into, dirty, reader.settings.block_size)
    return holes


Compress = Callable[[memoryview], bytes]


Lines = Optional[list[Optional[bytes]]]


def plan_segment(offset: int, view: memoryview, holes: list[tuple[int, int]], theirs: bytes,
                 block: int, compress: Compress, lines: Lines = None) -> list[Frame]:
    """The frames for one segment: a Match for each run of blocks the target holds already,
    a Hole for each run of zeros, and a Data, compressed, for each run of the others.

    With `lines`, each block's image digest line is appended to it (None where the block was
    not hashed): the blocks must then be the digest's pieces."""
    kinds: list[type[Frame]] = []
    in_holes = hole_blocks(holes, block, len(view))
    for index, pos in enumerate(range(0, len(view), block)):
        piece = view[pos:pos + block]
        kinds.append(_kind(piece, index in in_holes, theirs[index * 32:index * 32 + 32],
                           lines))
    return _runs_to_frames(offset, view, kinds, block, compress)


def two_levels(settings: StreamSettings) -> bool:
    """Whether a delta run with these settings compares pieces, then blocks (OPEN's
    delta.pieces): blocks that divide the image digest's piece, in segments it divides."""
    block, piece = settings.delta_block, imagedigest.PIECE
    return block < piece and piece % block == 0 and settings.block_size % piece == 0


Kinds = list[Optional[type[Frame]]]  # each block's frame; None: its piece's blocks are asked


def compare_pieces(offset: int, view: memoryview, holes: list[tuple[int, int]],
                   their_pieces: bytes, block: int,
                   lines: list[Optional[bytes]]) -> tuple[Kinds, list[int]]:
    """The first of two levels: each 1 MiB piece of the segment hashed once (its image digest
    line, appended to `lines`; a piece of zeros, a hole or a memcmp, is not hashed) and
    compared with the target's. Returns each block's kind (Match, for the blocks of an equal
    piece; None for the others) and the indexes, in the image, of the pieces that differ,
    whose blocks the helper is to be asked for."""
    kinds: Kinds = []
    asked: list[int] = []
    piece_holes = hole_blocks(holes, imagedigest.PIECE, len(view))
    for index, pos in enumerate(range(0, len(view), imagedigest.PIECE)):
        piece = view[pos:pos + imagedigest.PIECE]
        if index in piece_holes or is_zero(piece):
            lines.append(imagedigest.zero_line(len(piece)))
            mine = zero_digest(len(piece))
        else:
            digest = hashlib.sha256(piece)
            lines.append(imagedigest.line(digest.hexdigest()))
            mine = digest.digest()
        count = -(-len(piece) // block)
        if mine == their_pieces[index * 32:index * 32 + 32]:
            kinds.extend([Match] * count)
        else:
            kinds.extend([None] * count)
            asked.append((offset + pos) // imagedigest.PIECE)
    return kinds, asked


def plan_blocks(offset: int, view: memoryview, holes: list[tuple[int, int]], kinds: Kinds,
                answer: bytes, block: int, compress: Compress) -> list[Frame]:
    """The second level: each block of the asked pieces compared with its digest in the
    helper's `answer` (in order), as plan_segment does, then the segment's frames."""
    asked = kinds.count(None)
    if len(answer) != 32 * asked:
        raise ProtocolError(f"the helper answered {len(answer)} bytes of block digests for the "
                            f"segment at offset {offset}, expected {32 * asked}")
    in_holes = hole_blocks(holes, block, len(view))
    planned: list[type[Frame]] = []
    at = 0
    for index, kind in enumerate(kinds):
        if kind is None:
            kind = _kind(view[index * block:(index + 1) * block], index in in_holes,
                         answer[at:at + 32], None)
            at += 32
        planned.append(kind)
    return _runs_to_frames(offset, view, planned, block, compress)


class Asks:
    """A delta run's questions to the helper: the pieces of a segment whose block digests the
    plan needs (an ASK frame), and where each answer goes (a DIGESTS frame with flags ANSWER,
    which the receiver hands to answer())."""

    def __init__(self) -> None:
        self._send: Optional[Callable[[bytes], None]] = None
        self._waiting: dict[int, Callable[[bytes], None]] = {}
        self._lock = threading.Lock()

    def connect(self, send: Callable[[bytes], None]) -> None:
        """Where ASK frames go: the target's helper (any thread may send through it)."""
        self._send = send

    def ask(self, offset: int, pieces: list[int], answered: Callable[[bytes], None]) -> None:
        """Ask for the block digests of `pieces` of the segment at `offset`; answered(digests)
        once they come."""
        if self._send is None:
            raise ProtocolError("an ASK with no helper to send it to")
        with self._lock:
            self._waiting[offset] = answered
        self._send(protocol.encode(protocol.ASK, struct.pack(f">{len(pieces)}I", *pieces),
                                   offset))

    def answer(self, offset: int, digests: bytes) -> None:
        """The helper's answer for the segment at `offset` (the receiver's thread)."""
        with self._lock:
            answered = self._waiting.pop(offset, None)
        if answered is None:
            raise ProtocolError(f"the helper answered an ASK for offset {offset}, which was "
                                "not asked")
        answered(digests)


def _chain(source: "Future[T]", to: "Future[T]") -> None:
    """source's outcome, once it has one, into `to`."""
    def done(future: "Future[T]") -> None:
        if future.cancelled():
            to.cancel()
            return
        error = future.exception()
        if error is not None:
            _fail(to, error)
        else:
            try:
                to.set_result(future.result())
            except InvalidStateError:
                pass  # cancelled meanwhile: the stream is closing
    source.add_done_callback(done)


def _fail(future: "Future[T]", error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass  # it has an outcome already


def _kind(piece: memoryview, in_hole: bool, theirs: bytes, lines: Lines) -> type[Frame]:
    """Match, Hole or Data for one block, hashing it only when the answer needs it: zeros
    (a hole, or a memcmp) need no hash, nor does data where the target holds zeros."""
    zeros = zero_digest(len(piece))
    line: Optional[bytes] = None
    if in_hole or is_zero(piece):
        kind: type[Frame] = Match if theirs == zeros else Hole
        line = imagedigest.zero_line(len(piece))
    elif theirs == zeros:
        kind = Data
    else:
        digest = hashlib.sha256(piece)
        kind = Match if digest.digest() == theirs else Data
        line = imagedigest.line(digest.hexdigest())
    if lines is not None:
        lines.append(line)
    return kind


def _runs_to_frames(offset: int, view: memoryview, kinds: list[type[Frame]], block: int,
                    compress: Compress) -> list[Frame]:
    frames: list[Frame] = []
    start = 0
    for index in range(1, len(kinds) + 1):
        if index < len(kinds) and kinds[index] is kinds[start]:
            continue
        lo, hi = start * block, min(index * block, len(view))
        kind = kinds[start]
        if kind is Data:
            frames.append(Data(offset + lo, hi - lo, compress(view[lo:hi])))
        elif kind is Hole:
            frames.append(Hole(offset + lo, hi - lo))
        else:
            frames.append(Match(offset + lo, hi - lo))
        start = index
    return frames
