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
# also carry the sha256 of each 1 MiB piece of the target (docs/wire.md). Each piece of the
# source is hashed once, for the image digest; a piece equal to the target's is MATCHed whole,
# and only the blocks of a piece that differs are hashed, to find which to send: about one
# pass over the data plus the changed pieces, where one level hashed every byte twice.
# sha256 is collision-safe and, with the CPU's SHA extensions, the fastest digest
# hashlib has (docs/performance.md).
"""
from __future__ import annotations

import functools
import hashlib
import queue
from typing import Callable, Optional

from remote_helper.target import imagedigest
from remote_helper.target.devices import is_zero, zero_chunks
from remote_helper.target.hashing import hole_blocks

from ..errors import ProtocolError
from .frames import Data, Frame, Hole, Match
from .pipeline import BlockReader, Planned, StreamSettings


@functools.lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


class SegmentReader:
    """The Producer of a delta run (pipeline.BlockReader runs it): reads the source segment by
    segment and plans each against the target's digests, which `digests` brings in order."""

    def __init__(self, digests: "queue.Queue[tuple[int, bytes]]") -> None:
        self._digests = digests
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
                found: list[Optional[bytes]] = []
                lines = found
                split = -(-length // block) * 32
                plan = functools.partial(plan_pieces, offset, view, holes, theirs[:split],
                                         theirs[split:], block, reader.compressor.compress,
                                         found)
            else:
                pieces = block == imagedigest.PIECE and segment % block == 0  # blocks: pieces
                lines = [] if pieces else None
                plan = functools.partial(plan_segment, offset, view, holes, theirs, block,
                                         reader.compressor.compress, lines)
            reader.put(Planned(buffer, length, reader.submit(plan), lines))

    def _target_digests(self, reader: BlockReader, offset: int) -> bytes:
        their_offset, digests = reader.wait_for(self._digests)
        if their_offset != offset:
            raise ProtocolError(f"target digests for offset {their_offset}, expected {offset}")
        return digests


def _read_segment(reader: BlockReader, view: memoryview, offset: int,
                  dirty: set[int]) -> list[tuple[int, int]]:
    """Fill view from the source; holes are not read, but zeroed where its buffer (`dirty`
    names those that may hold data) held an earlier segment's. Returns the holes."""
    holes = []
    buffer = id(view.obj)
    was_dirty = buffer in dirty
    for start, run, is_data in reader.extents(offset, offset + len(view)):
        rel = start - offset
        if is_data:
            reader.read_into(view[rel:rel + run], start)
            dirty.add(buffer)
            continue
        holes.append((rel, run))
        if was_dirty:
            for chunk in zero_chunks(run):
                view[rel:rel + len(chunk)] = chunk
                rel += len(chunk)
    if holes == [(0, reader.settings.block_size)]:
        dirty.discard(buffer)  # all of it zeros now: clean again
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


def plan_pieces(offset: int, view: memoryview, holes: list[tuple[int, int]], theirs: bytes,
                their_pieces: bytes, block: int, compress: Compress,
                lines: list[Optional[bytes]]) -> list[Frame]:
    """plan_segment's frames, two levels down: each 1 MiB piece of the segment is hashed once
    (its image digest line, appended to `lines`) and MATCHed whole if the target's piece has
    its digest; only the blocks of a piece that differs are hashed. A piece of zeros (a hole,
    or a memcmp) hashes nothing, and is compared block by block, as plan_segment does."""
    kinds: list[type[Frame]] = []
    in_holes = hole_blocks(holes, block, len(view))
    piece_holes = hole_blocks(holes, imagedigest.PIECE, len(view))
    per = imagedigest.PIECE // block
    for index, pos in enumerate(range(0, len(view), imagedigest.PIECE)):
        piece = view[pos:pos + imagedigest.PIECE]
        first = index * per
        count = -(-len(piece) // block)
        if index in piece_holes or is_zero(piece):
            lines.append(imagedigest.zero_line(len(piece)))
            mine = None
        else:
            digest = hashlib.sha256(piece)
            lines.append(imagedigest.line(digest.hexdigest()))
            mine = digest.digest()
        if mine is not None and mine == their_pieces[index * 32:index * 32 + 32]:
            kinds.extend([Match] * count)
            continue
        for at in range(first, first + count):
            kinds.append(_kind(view[at * block:(at + 1) * block], at in in_holes,
                               theirs[at * 32:at * 32 + 32], None))
    return _runs_to_frames(offset, view, kinds, block, compress)


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
