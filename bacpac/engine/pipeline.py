"""Read → compress (thread pool) → send, in order, in bounded memory.

# Strategy: a reader thread walks the source's data extents (SEEK_DATA/SEEK_HOLE, so holes are
# never read), reads each block into a buffer from a fixed pool (by direct I/O where it can:
# remote_helper/target/directio.py) and sorts it: an all-zero block joins the current zero run, any
# other goes to the compressor pool. A hashing thread takes the blocks next, in stream order,
# for the image digest (remote_helper/target/imagedigest.py: a sha256 over the sha256 of each
# 1 MiB piece), while the pool compresses them; the sending thread then writes each as one
# DATA frame and gives its buffer back to the pool (at the fast levels, a block compressed
# small gives it back as soon as it is hashed, and waits as its payload alone: EARLY_BELOW).
# The pieces of a block are hashed on the compressor pool, side by side; a hole or a piece of
# zeros adds a constant line, unhashed, so the digest's cost follows the data, not the disk's
# size. The hashing thread only orders them, and hashes the plain sha256 of every byte (holes
# as zeros) when settings.sha256 asks for it (--sha256, or a saveset's trailer). It has a
# thread of its own because that plain sha256 is the longest serial step: between the
# reader's reads it left the disk idle, and in the sender it held up the sends. Memory is the
# pool (a few blocks) plus the compressed blocks in flight: bounded by configuration, never by
# the disk.
# What is read, and how it is planned, is the reader's Producer: ExtentReader here, for a full
# copy; delta.SegmentReader for a delta run. On a slow link ExtentReader also finds content the
# image already sent (dedup.py) and plans the block as COPY frames and the DATA frames between
# them. Planned frames are the typed values of frames.py, which the sender dispatches on.
# zstandard, zlib, hashlib and pread all release the GIL, so the two cores are both kept busy.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import mmap
import os
import queue
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, TypeVar, Union

import zstandard

from remote_helper.target import directio, imagedigest
from remote_helper.wire import protocol
from remote_helper.target.devices import data_extents, is_zero, zero_chunks

from . import dedup
from .. import threads
from ..errors import TransferError
from .frames import Copy, Data, Frame, Hole
from .pacing import LOCAL_LEVEL, START_LEVEL, Pacer

T = TypeVar("T")

# A block compressed RECOMPRESS_GAP levels or more below the current level is compressed again,
# once the level is RECOMPRESS_AT or more: a level the pacer reaches only on a slow link, where
# the CPU has time to spare (on a slow link the client's cores wait on the wire;
# docs/performance.md).
RECOMPRESS_AT = 6
RECOMPRESS_GAP = 3
# Below the start level (the CPU is short, or the target is on this host), a block compressed
# to half its size or less gives its 4 MiB buffer back as soon as it is hashed, and waits for
# the sender as its payload alone: up to BACKLOG blocks wait in all (at most 64 MiB of
# payloads). The reader and the hasher so run further ahead of the sender and reach the end of
# the image sooner: an image that ends in a long hole has its zeros hashed after its last block,
# and that hashing used to start with blocks still unsent (docs/performance.md). At the start
# level and above (a slow link) a buffer stays with its block until it is sent, for the blocks
# compressed again after a climb.
EARLY_BELOW = START_LEVEL
BACKLOG = 32


@dataclass(frozen=True)
class StreamSettings:
    """How the image is cut and compressed; delta_block is the unit a delta run compares."""

    block_size: int = 4 << 20
    level: int = 1
    threads: int = 2
    codec: str = "zstd"  # "zstd" | "zlib"
    delta_block: int = 64 << 10
    adaptive: bool = True  # False when --level fixed it
    bwlimit: Optional[float] = None  # bytes/s on the wire, as rsync's --bwlimit
    sha256: bool = False  # the plain sha256 of the image too (--sha256, a saveset's trailer)


class FrameSender(Protocol):
    """Where the stream's frames go, in order; check() raises once the helper has failed."""

    def block(self, offset: int, size: int, flags: int, payload: bytes) -> None: ...

    def hole(self, offset: int, size: int) -> None: ...

    def match(self, offset: int, size: int, data: memoryview) -> None:
        """The target holds these bytes already; `data` is them, for a sender that has a
        saveset on another host to feed (commands/dup.py's fan-out)."""

    def copy(self, offset: int, size: int, source: int, digest: bytes) -> None: ...

    def check(self) -> None: ...

    def helper_idle(self) -> Optional[float]:
        """The share of its latest PROGRESS interval the receiving helper spent waiting for
        input, once it has said."""


@dataclass
class StreamResult:
    digest: str  # the image digest (imagedigest.ALGORITHM), filled in by the hashing thread
    bytes_read: int
    sha256: Optional[str] = None  # the plain sha256, when settings.sha256 asked for it
    levels: dict[int, int] = field(default_factory=dict)  # blocks compressed at each level


@dataclass(frozen=True)
class _Block:
    offset: int
    size: int
    buffer: mmap.mmap
    compressed: "Future[tuple[int, bytes]]"  # (the level it was compressed at, the payload)
    again: bool = False  # compressed again at a higher level (ImageStream._recompressed)
    # Whoever takes this gives the buffer back: the sender, or, early, BlockReader._give_back.
    claim: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def take_buffer(self) -> bool:
        return self.claim.acquire(blocking=False)


@dataclass(frozen=True)
class Planned:
    """A buffer whose frames were worked out on the pool, in order. Its first `size` bytes are
    the segment's content, holes included."""

    buffer: mmap.mmap
    size: int
    frames: "Future[list[Frame]]"
    # The image digest's line of each piece, filled in by the planning (None: not hashed
    # there), when the plan hashes the digest's pieces anyway (delta.py).
    lines: Optional[list[Optional[bytes]]] = None
    # Done once `lines` is complete, when that is before `frames` (a two-level delta, whose
    # frames wait for the helper's answer: the hashing thread need not wait for it)
    hashed: "Optional[Future[Any]]" = None


_Item = Union[Hole, _Block, Planned, StreamResult, BaseException]


class Compressor:
    """Compresses blocks from any thread: a zstd context per thread (they are not shareable),
    remade when the Pacer changes the level between blocks."""

    def __init__(self, codec: str, level: int) -> None:
        self.codec = codec
        self.flags = protocol.CODECS[codec]
        self.level = level
        self._local = threading.local()

    def compress(self, data: memoryview) -> bytes:
        return self.compress_block(data)[1]

    def compress_block(self, data: memoryview) -> "tuple[int, bytes]":
        """(the level, the payload): the level may change while a block waits its turn."""
        level = self.level
        if self.codec == "zlib":
            return level, zlib.compress(data, max(1, min(level, 9)))
        # One context per thread, for the current level only: a level-9 context holds 15 MiB,
        # and keeping one for every level visited would grow with the climb.
        cctx = getattr(self._local, "cctx", None)
        if cctx is None or self._local.level != level:
            # Content size and checksum make every frame a valid saveset frame as it stands.
            cctx = self._local.cctx = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True)
            self._local.level = level
        return level, cctx.compress(data)


class Producer(Protocol):
    """What the reader thread runs: it walks the source and hands `reader.put` its holes,
    blocks and planned buffers, in stream order (ExtentReader, delta.SegmentReader)."""

    def produce(self, reader: "BlockReader") -> None: ...


class BlockReader:
    """The reader thread, which runs a Producer over the source, and the hashing thread, which
    passes what it queued on to `items` once hashed.

    The Producer decides what is read and how it is planned, through the public methods
    below; this owns the threads, the queues, the buffers and the reads. A read error is a
    TransferError naming the source (`name`), the offset and the cause.
    """

    def __init__(self, fd: int, size: int, settings: StreamSettings, compressor: "Compressor",
                 pool: ThreadPoolExecutor, producer: Producer, name: str = "source") -> None:
        self._fd = fd
        self._name = name
        self.size = size
        self.settings = settings
        self.compressor = compressor
        self._pool = pool
        self._producer = producer
        depth = 2 * settings.threads + 2
        self._read: queue.Queue[_Item] = queue.Queue(2)  # read, not yet hashed
        # Hashed, for the sender. Those still holding their buffers are bounded by the buffers.
        self.items: queue.Queue[_Item] = queue.Queue(BACKLOG)
        self._buffers: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(depth + settings.threads + 3):
            self._buffers.put(directio.buffer(settings.block_size))
        # Aligned reads go through this O_DIRECT twin of fd: no page-cache copy (directio.py).
        self._direct = directio.reopen(fd, os.O_RDONLY)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)
        self._hasher = threading.Thread(target=self._hash_all, name="hasher", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._hasher.start()

    def stop(self) -> bool:
        """Stop both threads and join them; whether they stopped within threads.STOP_WITHIN
        (each polls the flag while it waits; a read under way ends first). The reader closes
        its O_DIRECT descriptor as it ends; the caller may close `fd` once this is true."""
        self._stop.set()
        return threads.join((self._thread, self._hasher), self._name)

    def release(self, buffer: mmap.mmap) -> None:
        """Give a buffer back to the pool the reads take theirs from."""
        self._buffers.put(buffer)

    def take_buffer(self) -> mmap.mmap:
        """A free buffer of settings.block_size bytes, once one is given back."""
        return self.wait_for(self._buffers)

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, is_data) runs of the source between start and end."""
        return data_extents(self._fd, start, end)

    def submit(self, work: Callable[..., T], *args: object) -> "Future[T]":
        """Run work(*args) on the compressor pool."""
        return self._pool.submit(work, *args)

    def put(self, item: _Item) -> None:
        """Queue the producer's next item for the hashing thread, unless the sender gives up
        first."""
        self._put(item, self._read)

    def _run(self) -> None:
        try:
            self._producer.produce(self)
            self.put(StreamResult("", self.size))
        except _Stopped:
            return  # the sender gave up first and knows why
        except BaseException as e:  # handed on to the sending thread, which raises it
            try:
                self.put(self._read_error(e) if isinstance(e, OSError) else e)
            except _Stopped:
                return
        finally:
            directio.close(self._direct)

    def _hash_all(self) -> None:
        """The hashing thread: every item, in stream order, into the digests, then on."""
        digest = imagedigest.ImageDigest()
        plain = hashlib.sha256() if self.settings.sha256 else None
        try:
            while True:
                item = self.wait_for(self._read)
                if isinstance(item, Hole):
                    # Its frame needs nothing of the hash: sent at once, hashed after. An
                    # image's long trailing hole is a long plain sha256, which the helper's
                    # final fsync now runs under instead of after.
                    self._put(item, self.items)
                    digest.zeros(item.size)
                    if plain is not None:
                        for chunk in zero_chunks(item.size):
                            plain.update(chunk)
                    continue
                if isinstance(item, (_Block, Planned)):
                    view = memoryview(item.buffer)[:item.size]
                    digest.update(view, self._lines_for(item))
                    if plain is not None:
                        plain.update(view)
                    if isinstance(item, _Block):
                        # Not the block itself: a future holding a callback that holds the
                        # block holding the future is a cycle, and each would keep its payload
                        # until the garbage collector ran (client peak RSS 115 -> 250 MB).
                        item.compressed.add_done_callback(functools.partial(
                            self._give_back, item.buffer, item.claim, item.size))
                elif isinstance(item, StreamResult):
                    item.digest = digest.hexdigest()
                    item.sha256 = plain.hexdigest() if plain is not None else None
                self._put(item, self.items)
                if isinstance(item, (StreamResult, BaseException)):
                    return
        except _Stopped:
            return
        except BaseException as e:
            try:
                self._put(e, self.items)
            except _Stopped:
                return

    def _lines_for(self, item: Union[_Block, Planned]) -> imagedigest.Lines:
        """How the item's whole pieces get their lines: from its plan, where it hashed them
        (once planned: the hashing thread waits for it), the others on the pool."""
        if not isinstance(item, Planned) or item.lines is None:
            return self._pool_lines
        self._result(item.hashed if item.hashed is not None else item.frames)
        known = item.lines

        def lines(pieces: list[memoryview]) -> list[bytes]:
            hashed = iter(self._pool_lines([piece for piece, line in zip(pieces, known)
                                            if line is None]))
            return [next(hashed) if line is None else line for line in known[:len(pieces)]]
        return lines

    def _pool_lines(self, pieces: list[memoryview]) -> list[bytes]:
        """The digest lines of whole pieces, hashed on the compressor pool side by side; the
        pieces' buffer is not given back before they are done."""
        futures = [self._pool.submit(imagedigest.piece_line, piece) for piece in pieces]
        return [self._result(future) for future in futures]

    def _result(self, future: "Future[T]") -> T:
        """The future's result, unless the sender gives up first."""
        while not self._stop.is_set():
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                continue
        raise _Stopped()

    def _give_back(self, buffer: mmap.mmap, claim: threading.Lock, size: int,
                   compressed: "Future[tuple[int, bytes]]") -> None:
        """The buffer of a hashed block, compressed small at a level below EARLY_BELOW, back
        to the reader before the block is sent (on the pool's thread, or the hasher's)."""
        if compressed.cancelled() or compressed.exception() is not None:
            return
        level, payload = compressed.result()
        if level < EARLY_BELOW and 2 * len(payload) <= size and claim.acquire(blocking=False):
            self.release(buffer)

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill view from the source at offset: directly where aligned, else buffered."""
        done = 0
        try:
            done = self._pread_aligned(view, offset)
            while done < len(view):
                n = os.preadv(self._fd, [view[done:]], offset + done)
                if n == 0:
                    raise TransferError(f"{self._name}: ended at byte {offset + done}, before "
                                        f"its size of {self.size} bytes (did it shrink?)")
                done += n
        except OSError as e:
            raise self._read_error(e, offset + done) from None

    def _pread_aligned(self, view: memoryview, offset: int) -> int:
        """Read the aligned part of view by direct I/O, if the source allows; the bytes read."""
        whole = len(view) - len(view) % directio.ALIGN  # an image's unaligned tail: buffered
        if self._direct is None or not directio.aligned(offset, whole):
            return 0
        try:
            return self._pread_direct(self._direct, view[:whole], offset)
        except OSError as e:
            if not directio.refused(e):
                raise
            directio.close(self._direct)  # this file system will not: buffered from now on
            self._direct = None
            return 0

    def _read_error(self, error: OSError, offset: Optional[int] = None) -> TransferError:
        at = f" at byte {offset}" if offset is not None else ""
        return TransferError(f"{self._name}: read error{at}: {error.strerror or error}")

    def _pread_direct(self, fd: int, view: memoryview, offset: int) -> int:
        """Read what direct I/O can of view; returns the bytes read (short at the end of the
        source: the buffered loop then says what is missing)."""
        done = 0
        while done < len(view) and done % directio.ALIGN == 0:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                break
            done += n
        return done

    def wait_for(self, source: "queue.Queue[T]") -> T:
        """The next item of `source`, unless the sender gives up first."""
        while not self._stop.is_set():
            try:
                return source.get(timeout=0.2)
            except queue.Empty:
                continue
        raise _Stopped()

    def _put(self, item: _Item, to: "queue.Queue[_Item]") -> None:
        """Queue item on `to`, unless the sender gives up first."""
        while not self._stop.is_set():
            try:
                to.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped()


class ExtentReader:
    """The Producer of a full copy: the source's data extents, read as blocks on the
    block-size grid, and its holes and all-zero blocks as zero runs.

    With `seen`, blocks read while the level is dedup.LEVEL or more are planned against the
    content already sent. One is made for each stream: it keeps the zero run under way.
    """

    def __init__(self, seen: Optional[dedup.SeenChunks] = None) -> None:
        self._seen = seen
        self._hole: Optional[Hole] = None

    def produce(self, reader: BlockReader) -> None:
        for offset, length, is_data in reader.extents(0, reader.size):
            if is_data:
                self._read_extent(reader, offset, length)
            else:
                self._zero_run(reader, offset, length)
        self._flush_hole(reader)

    def _read_extent(self, reader: BlockReader, offset: int, length: int) -> None:
        block, end = reader.settings.block_size, offset + length
        while offset < end:
            # Blocks stay on the block-size grid, so a block never straddles two extents' worth
            # of reads and frames line up from run to run.
            size = min(end, (offset // block + 1) * block) - offset
            buffer = reader.take_buffer()
            view = memoryview(buffer)[:size]
            reader.read_into(view, offset)
            if is_zero(view):
                reader.release(buffer)
                self._zero_run(reader, offset, size)
            else:
                self._flush_hole(reader)
                reader.put(self._compress(reader, offset, buffer, view))
            offset += size

    def _compress(self, reader: BlockReader, offset: int, buffer: mmap.mmap,
                  view: memoryview) -> _Item:
        """The block on its way to the pool: as copies and data where it repeats the image."""
        compressor = reader.compressor
        if self._seen is not None and compressor.level >= dedup.LEVEL:
            segments = self._seen.plan(offset, view)
            if any(segment.source is not None for segment in segments):
                return Planned(buffer, len(view), reader.submit(
                    dedup.frames, offset, view, segments, compressor.compress))
        return _Block(offset, len(view), buffer, reader.submit(compressor.compress_block, view))

    def _zero_run(self, reader: BlockReader, offset: int, length: int) -> None:
        if self._hole is not None and self._hole.offset + self._hole.size == offset:
            self._hole = Hole(self._hole.offset, self._hole.size + length)
        else:
            self._flush_hole(reader)
            self._hole = Hole(offset, length)

    def _flush_hole(self, reader: BlockReader) -> None:
        if self._hole is not None:
            reader.put(self._hole)
            self._hole = None


class _Stopped(Exception):
    """The sender gave up; the reader unwinds quietly."""


class ImageStream:
    """One image's reader and compressor pool, started as soon as the source is open.

    The client starts it before it connects: the first blocks are read and compressed while
    the SSH handshake runs and the helper starts, time the CPU would otherwise idle through.
    Only the queue's few blocks are done ahead, at the start level, so a slow link, whose level
    climbs once sending shows it slow, pays for no more than before. With here (the target is
    known to be on this host from the start), they are done at pacing.LOCAL_LEVEL. `name`
    is the source's, for messages; `producer` reads and plans it (an ExtentReader by default).
    """

    def __init__(self, fd: int, size: int, settings: StreamSettings,
                 producer: Optional[Producer] = None, here: bool = False,
                 name: str = "source") -> None:
        self.settings = settings
        self._compressor = Compressor(settings.codec, settings.level)
        if here:
            self.to_this_host()
        self._workers: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="compress",
                                        initializer=_enlist, initargs=(self._workers,))
        self._reader = BlockReader(fd, size, settings, self._compressor, self._pool,
                                   producer or ExtentReader(), name)
        self._reader.start()

    def to_this_host(self) -> None:
        """The target is on this host: unless --level or --bwlimit says otherwise, compress
        from here on at pacing.LOCAL_LEVEL, where the Pacer goes on from."""
        if self.settings.adaptive and not self.settings.bwlimit:
            self._compressor.level = LOCAL_LEVEL

    def send(self, sender: FrameSender) -> StreamResult:
        """Send the whole image as frames, in order, through `sender`; returns its digests."""
        settings = self.settings
        pacer = Pacer(self._compressor, settings.adaptive, settings.bwlimit, sender.helper_idle)
        ahead: collections.deque[_Item] = collections.deque()
        while True:
            item = ahead.popleft() if ahead else _next_item(self._reader, sender)
            if isinstance(item, StreamResult):
                item.levels = pacer.blocks_at
                return item
            if self._compressor.level >= RECOMPRESS_AT:
                item = self._recompressed(item)
                self._look_ahead(ahead)
            _send(item, self._reader, self._compressor, sender, pacer)

    def _look_ahead(self, ahead: "collections.deque[_Item]") -> None:
        """Take the next blocks already queued, so that those to compress again are all at it
        on the pool while the sender waits on the link."""
        while len(ahead) < self.settings.threads:
            try:
                item = self._reader.items.get_nowait()
            except queue.Empty:
                return
            ahead.append(self._recompressed(item))

    def _recompressed(self, item: _Item) -> _Item:
        """A block compressed at a level the pacer has since climbed well above, compressed
        again at the current one. The pool compresses ahead of a slow link: without this, the
        blocks it finished before the first climb (about 20 on the benchmark's 100 Mbit/s
        link, all at the start level) would cross it at that level, 2 MiB more than at 9."""
        if (not isinstance(item, _Block) or not item.compressed.done()
                or item.compressed.exception() is not None
                or item.compressed.result()[0] > self._compressor.level - RECOMPRESS_GAP
                or not item.take_buffer()):  # its buffer went back, early: it goes as it is
            return item
        view = memoryview(item.buffer)[:item.size]
        return dataclasses.replace(item, again=True, claim=threading.Lock(),
                                   compressed=self._pool.submit(
                                       self._compressor.compress_block, view))

    def close(self) -> bool:
        """Stop reading and join every thread: blocks queued for compression are dropped, the
        one each pool thread is at is finished. Whether all stopped within the deadline: until
        then the source's descriptor must stay open."""
        stopped = self._reader.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        return threads.join(self._workers, "the compressor pool") and stopped


def _enlist(workers: list[threading.Thread]) -> None:
    """Run by each pool thread as it starts, so that ImageStream.close() can join it (a
    function, not a method: the pool holding the stream would be a reference cycle)."""
    workers.append(threading.current_thread())


def _next_item(reader: BlockReader, sender: FrameSender) -> _Item:
    while True:
        sender.check()  # a helper that failed says why, instead of leaving us waiting
        try:
            item = reader.items.get(timeout=0.2)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            raise item
        return item


def _result(future: "Future[T]", sender: FrameSender) -> T:
    """The future's result; meanwhile a helper that failed stops the wait at once."""
    while True:
        try:
            return future.result(timeout=0.2)
        except FutureTimeout:
            sender.check()


def _send(item: _Item, reader: BlockReader, compressor: "Compressor", sender: FrameSender,
          pacer: Pacer) -> None:
    if isinstance(item, Hole):
        sender.hole(item.offset, item.size)
    elif isinstance(item, _Block):
        if item.again:  # a wait chosen for fewer bytes on a slow link, not a CPU short of time
            level, payload = _result(item.compressed, sender)
        else:
            level, payload = pacer.compressed(lambda: _result(item.compressed, sender))
        if item.take_buffer():
            reader.release(item.buffer)
        pacer.send(lambda: sender.block(item.offset, item.size, compressor.flags, payload),
                   len(payload), level)
    elif isinstance(item, Planned):
        frames = pacer.compressed(lambda: _result(item.frames, sender))
        segment = memoryview(item.buffer)[:item.size]  # given back once its frames are sent
        try:
            for frame in frames:
                _send_planned(frame, compressor, sender, pacer,
                              segment[frame.offset - frames[0].offset:][:frame.size])
        finally:
            reader.release(item.buffer)


def _send_planned(frame: Frame, compressor: "Compressor", sender: FrameSender,
                  pacer: Pacer, data: memoryview) -> None:
    if isinstance(frame, Data):
        pacer.send(lambda: sender.block(frame.offset, frame.size, compressor.flags,
                                        frame.payload), len(frame.payload))
    elif isinstance(frame, Hole):
        sender.hole(frame.offset, frame.size)
    elif isinstance(frame, Copy):
        sender.copy(frame.offset, frame.size, frame.source, frame.digest)
    else:
        sender.match(frame.offset, frame.size, data)
