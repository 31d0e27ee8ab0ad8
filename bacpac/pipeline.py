"""Read → compress (thread pool) → send, in order, in bounded memory.

# Strategy: a reader thread walks the source's data extents (SEEK_DATA/SEEK_HOLE, so holes are
# never read), reads each block into a buffer from a fixed pool, hashes it (sha256 of the whole
# image, holes hashed as zeros) and sorts it: an all-zero block joins the current zero run, any
# other goes to the compressor pool. Compressed blocks are taken back in stream order by the
# sending thread, which writes each as one DATA frame and gives its buffer back to the pool.
# Memory is the pool (a few blocks) plus the compressed blocks in flight: bounded by
# configuration, never by the disk. zstandard, zlib, hashlib and pread all release the GIL, so
# the two cores are both kept busy.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Union

import zstandard

from remote_helper import protocol
from remote_helper.devices import data_extents, is_zero

from .errors import TransferError

ZERO_RUN_HASH_CHUNK = memoryview(bytes(4 << 20))


@dataclass(frozen=True)
class StreamSettings:
    """How the image is cut and compressed."""

    block_size: int = 4 << 20
    level: int = 1
    threads: int = 2
    codec: str = "zstd"  # "zstd" | "zlib"


@dataclass
class StreamResult:
    sha256: str
    bytes_read: int


@dataclass(frozen=True)
class _Hole:
    offset: int
    size: int


@dataclass(frozen=True)
class _Block:
    offset: int
    size: int
    buffer: bytearray
    compressed: "Future[bytes]"


_Item = Union[_Hole, _Block, StreamResult, BaseException]


class Compressor:
    """Compresses blocks from any thread: one zstd context per thread (they are not shareable)."""

    def __init__(self, codec: str, level: int) -> None:
        self.codec = codec
        self.flags = protocol.CODECS[codec]
        self._level = level
        self._local = threading.local()

    def compress(self, data: memoryview) -> bytes:
        if self.codec == "zlib":
            return zlib.compress(data, max(1, min(self._level, 9)))
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            # Content size and checksum make every frame a valid saveset frame as it stands.
            cctx = zstandard.ZstdCompressor(level=self._level, write_checksum=True,
                                            write_content_size=True)
            self._local.cctx = cctx
        return cctx.compress(data)


class BlockReader:
    """The reader thread: extents → blocks and zero runs, queued in stream order."""

    def __init__(self, fd: int, size: int, settings: StreamSettings,
                 compress: Callable[[memoryview], bytes], pool: ThreadPoolExecutor) -> None:
        self._fd = fd
        self._size = size
        self._block = settings.block_size
        self._compress = compress
        self._pool = pool
        depth = 2 * settings.threads + 2
        self.items: queue.Queue[_Item] = queue.Queue(depth)
        self._buffers: queue.Queue[bytearray] = queue.Queue()
        for _ in range(depth + settings.threads + 1):
            self._buffers.put(bytearray(self._block))
        self._hash = hashlib.sha256()
        self._stop = threading.Event()
        self._hole: Optional[_Hole] = None
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def release(self, buffer: bytearray) -> None:
        self._buffers.put(buffer)

    def _run(self) -> None:
        try:
            for offset, length, is_data in data_extents(self._fd, 0, self._size):
                if is_data:
                    self._read_extent(offset, length)
                else:
                    self._zero_run(offset, length)
            self._flush_hole()
            self._put(StreamResult(self._hash.hexdigest(), self._size))
        except BaseException as e:  # handed to the sending thread, which raises it
            self._put(e)

    def _read_extent(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            # Blocks stay on the block-size grid, so a block never straddles two extents' worth
            # of reads and frames line up from run to run.
            size = min(end, (offset // self._block + 1) * self._block) - offset
            buffer = self._take_buffer()
            view = memoryview(buffer)[:size]
            self._pread(view, offset)
            self._hash.update(view)
            if is_zero(view):
                self.release(buffer)
                self._zero_run(offset, size, hashed=True)
            else:
                self._flush_hole()
                self._put(_Block(offset, size, buffer, self._pool.submit(self._compress, view)))
            offset += size

    def _pread(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise TransferError(f"source ended at byte {offset + done}, "
                                    f"before its size of {self._size} bytes (did it shrink?)")
            done += n

    def _zero_run(self, offset: int, length: int, hashed: bool = False) -> None:
        if not hashed:
            for pos in range(0, length, len(ZERO_RUN_HASH_CHUNK)):
                self._hash.update(ZERO_RUN_HASH_CHUNK[: min(len(ZERO_RUN_HASH_CHUNK), length - pos)])
        if self._hole is not None and self._hole.offset + self._hole.size == offset:
            self._hole = _Hole(self._hole.offset, self._hole.size + length)
        else:
            self._flush_hole()
            self._hole = _Hole(offset, length)

    def _flush_hole(self) -> None:
        if self._hole is not None:
            self._put(self._hole)
            self._hole = None

    def _take_buffer(self) -> bytearray:
        while not self._stop.is_set():
            try:
                return self._buffers.get(timeout=0.2)
            except queue.Empty:
                continue
        raise _Stopped()

    def _put(self, item: _Item) -> None:
        while not self._stop.is_set():
            try:
                self.items.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped()


class _Stopped(Exception):
    """The sender gave up; the reader unwinds quietly."""


def stream_image(fd: int, size: int, settings: StreamSettings,
                 send_block: Callable[[int, int, int, bytes], None],
                 send_hole: Callable[[int, int], None],
                 check: Callable[[], None]) -> StreamResult:
    """Send the whole image as DATA and HOLE frames, in order; returns its sha256.

    `check` is called between frames so that an error the helper reported stops the sending.
    """
    compressor = Compressor(settings.codec, settings.level)
    with ThreadPoolExecutor(settings.threads, thread_name_prefix="compress") as pool:
        reader = BlockReader(fd, size, settings, compressor.compress, pool)
        reader.start()
        try:
            while True:
                item = reader.items.get()
                if isinstance(item, StreamResult):
                    return item
                if isinstance(item, BaseException):
                    raise item
                check()
                if isinstance(item, _Hole):
                    send_hole(item.offset, item.size)
                    continue
                payload = item.compressed.result()
                reader.release(item.buffer)
                send_block(item.offset, item.size, compressor.flags, payload)
        finally:
            reader.stop()
