"""The source side of a delta dup: compare block digests, send only the blocks that differ.

# Strategy: the helper reads the target and sends the sha256 of each block, a segment (one
# pipeline buffer, 4 MiB) at a time; this reader reads the same segment of the source at the
# same moment, so the run takes one read of each disk, side by side. On the compressor pool,
# each block of the segment is hashed and compared; runs of equal blocks become MATCH frames,
# runs that are zero in the source HOLE frames, and the rest is compressed into DATA frames.
# Blocks that are holes in the source are never read and hashed from a cached zero digest.
# sha256 is collision-safe and, with this machine's SHA extensions, the fastest digest
# hashlib has (1.75 GB/s against blake2b's 0.9).
"""
from __future__ import annotations

import functools
import hashlib
import queue
from concurrent.futures import ThreadPoolExecutor

from remote_helper.target.devices import data_extents, is_zero, zero_chunks

from ..errors import ProtocolError
from .pipeline import BlockReader, Compressor, Planned, StreamResult, StreamSettings


@functools.lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


class SegmentReader(BlockReader):
    """Reads the source segment by segment and plans each against the target's digests."""

    def __init__(self, fd: int, size: int, settings: StreamSettings, compressor: Compressor,
                 pool: ThreadPoolExecutor, digests: "queue.Queue[tuple[int, bytes]]",
                 name: str = "source") -> None:
        super().__init__(fd, size, settings, compressor, pool, name)
        self._digests = digests
        self._delta_block = settings.delta_block
        self._compressor = compressor

    def _produce(self) -> None:
        for offset in range(0, self._size, self._block):
            length = min(self._block, self._size - offset)
            buffer = self._take_buffer()
            view = memoryview(buffer)[:length]
            holes = self._read_segment(view, offset)
            theirs = self._target_digests(offset)
            plan = functools.partial(plan_segment, offset, view, holes, theirs,
                                     self._delta_block, self._compressor.compress)
            self._put(Planned(buffer, length, self._pool.submit(plan)))
        self._put(StreamResult("", self._size))

    def _read_segment(self, view: memoryview, offset: int) -> list[tuple[int, int]]:
        """Fill view from the source; holes are zero-filled, not read. Returns the holes."""
        holes = []
        for start, run, is_data in data_extents(self._fd, offset, offset + len(view)):
            rel = start - offset
            if is_data:
                self._pread(view[rel:rel + run], start)
            else:
                holes.append((rel, run))
                pos = rel
                for chunk in zero_chunks(run):  # the buffer is reused: clear what it held
                    view[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
        return holes

    def _target_digests(self, offset: int) -> bytes:
        item = self._wait(self._digests)
        assert isinstance(item, tuple)
        their_offset, digests = item
        if their_offset != offset:
            raise ProtocolError(f"target digests for offset {their_offset}, expected {offset}")
        return digests


def plan_segment(offset: int, view: memoryview, holes: list[tuple[int, int]], theirs: bytes,
                 block: int, compress) -> list[tuple]:
    """The frames for one segment: ("match"|"hole", off, size) and ("data", off, size, payload)."""
    kinds = []
    for index, pos in enumerate(range(0, len(view), block)):
        piece = view[pos:pos + block]
        in_hole = any(h <= pos and pos + len(piece) <= h + n for h, n in holes)
        mine = zero_digest(len(piece)) if in_hole else hashlib.sha256(piece).digest()
        if mine == theirs[index * 32:index * 32 + 32]:
            kinds.append("match")
        elif in_hole or is_zero(piece):
            kinds.append("hole")
        else:
            kinds.append("data")
    return _runs_to_frames(offset, view, kinds, block, compress)


def _runs_to_frames(offset: int, view: memoryview, kinds: list[str], block: int,
                    compress) -> list[tuple]:
    frames: list[tuple] = []
    start = 0
    for index in range(1, len(kinds) + 1):
        if index < len(kinds) and kinds[index] == kinds[start]:
            continue
        lo, hi = start * block, min(index * block, len(view))
        if kinds[start] == "data":
            frames.append(("data", offset + lo, hi - lo, compress(view[lo:hi])))
        else:
            frames.append((kinds[start], offset + lo, hi - lo))
        start = index
    return frames
