"""Content this image already sent: COPY frames instead of data, on a slow link.

# Strategy: a disk often holds the same files more than once (several Python or kernel trees,
# VM and container images, backups of a file beside the file), which independent 4 MiB frames
# cannot see. The reader, which sees the blocks in stream order, cuts each block into 4 KiB
# chunks (a file system's own grid, so a file that is there twice is the same chunks twice) and
# looks each up by its sha256 in a table of the chunks already sent. A run of at least MIN_RUN
# whose earlier bytes are also one run becomes a COPY frame: the helper reads those bytes back
# from the target and checks them against the run's sha256 before it writes them. The rest of
# the block is compressed as before, a DATA frame for each stretch between copies. A sha256 a
# chunk costs the reader time: on loopback, where the CPU is the limit, it would cost more than
# the bytes it saves (docs/performance.md), so the reader only looks once the level is LEVEL or
# more: the pacer climbs there when the link is the limit, or --level asked for bytes over CPU.
# The table is bounded: once it holds TABLE_CAP chunks, later chunks are looked up but not added.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

from remote_helper.target.devices import is_zero

from .frames import Copy, Data, Frame, Hole

CHUNK = 4 << 10
MIN_RUN = 16 << 10  # shorter runs cost their frames more than they save (measured: 4-64 KiB)
LEVEL = 6
TABLE_CAP = 1 << 18  # chunks: 1 GiB of distinct content, about 35 MB of table
KEY = 16  # bytes of a chunk's sha256 the table keys on: collisions are 2^-64 at the cap
ZERO_KEY = hashlib.sha256(bytes(CHUNK)).digest()[:KEY]


@dataclass(frozen=True)
class Segment:
    """Bytes lo to hi of a block: new data, or, with a source, a run the image already sent
    from there on."""

    lo: int
    hi: int
    source: Optional[int] = None


class SeenChunks:
    """Where in the image each chunk sent so far went, by its digest."""

    def __init__(self, cap: int = TABLE_CAP) -> None:
        self._where: dict[bytes, int] = {}
        self._cap = cap

    def plan(self, offset: int, view: memoryview) -> list[Segment]:
        """The block at offset as segments, in order, covering it; its new chunks are added
        to the table."""
        segments: list[Segment] = []
        data_from = 0  # start of the data not yet in a segment
        run_lo = run_source = -1  # the current run of seen chunks, if any
        whole = len(view) - len(view) % CHUNK
        for pos in range(0, whole + CHUNK, CHUNK):
            source = self._look_up(offset + pos, view[pos:pos + CHUNK]) if pos < whole else None
            if run_lo >= 0 and source == run_source + pos - run_lo:
                continue  # the run goes on
            if run_lo >= 0 and pos - run_lo >= MIN_RUN:
                if run_lo > data_from:
                    segments.append(Segment(data_from, run_lo))
                segments.append(Segment(run_lo, pos, run_source))
                data_from = pos
            run_lo, run_source = (pos, source) if source is not None else (-1, -1)
        if data_from < len(view):
            segments.append(Segment(data_from, len(view)))
        return segments

    def _look_up(self, at: int, chunk: memoryview) -> Optional[int]:
        """Where an earlier copy of chunk went; else None, and chunk is remembered at `at`."""
        key = hashlib.sha256(chunk).digest()[:KEY]
        if key == ZERO_KEY:
            return None  # zeros cost nothing compressed, and may be holes on the target
        source = self._where.get(key)
        if source is None and len(self._where) < self._cap:
            self._where[key] = at
        return source


def frames(offset: int, view: memoryview, segments: list[Segment],
           compress: Callable[[memoryview], bytes]) -> list[Frame]:
    """The planned block's frames: a Copy for each repeated run, with its sha256, and a Data
    for each new stretch, or a Hole for one that is all zeros."""
    out: list[Frame] = []
    for segment in segments:
        at, size = offset + segment.lo, segment.hi - segment.lo
        piece = view[segment.lo:segment.hi]
        if segment.source is not None:
            out.append(Copy(at, size, segment.source, hashlib.sha256(piece).digest()))
        elif is_zero(piece):
            out.append(Hole(at, size))
        else:
            out.append(Data(at, size, compress(piece)))
    return out
