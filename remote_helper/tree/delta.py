"""A large file that changed crosses as its changed blocks only: both ends of a copy's delta.

# Strategy: dup's --delta, per file. The writing side, for a file it wants whose old version
# DEST holds (large enough, quick check failed), sends the sha256 of each BLOCK of the old file
# (BaseDigests: a thread, the blocks of each segment hashed on target/hashing.py's threads,
# frames sent as they are hashed, never a round trip per file). The reading side compares the
# source file's blocks at the same offsets (plan()): the blocks that differ are its literal
# runs, and the sha256 of the whole source file is taken in the same read. It sends the file
# as a tar member whose sparse map (GNU 1.0) lists the literal runs; the ranges outside them
# are "copy from the old file", not holes. Two pax records mark the member: the file's sha256
# (DELTA_KEY) and, for a file that could not be read, the cause (FAILED_KEY, no data). They
# ride as SCHILY.xattr records, which the tar decoder hands over in the member's xattrs; the
# writer takes them out (marks()) and never applies them. The writer builds the new file under
# its temporary name from the old file (copy_file_range) and the literals, hashes the result
# and renames it only if the sha256 is the one sent: an old file changed meanwhile gives a
# different sha256, and the file is reported as not copied, never written wrong.
"""
import hashlib
import os
import queue
import struct
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple, Union  # for the type comments

from ..errors import HelperError
from ..target.hashing import Hashers
from .entry import Entry

BLOCK = 64 << 10  # bytes per digest, as dup's delta
SEGMENT = 4 << 20  # bytes read and hashed at a time
MIN_SIZE = 1 << 20  # files smaller than this are sent whole
MAX_RUNS = 65536  # literal runs beyond this: the file is sent whole (the map would be huge)
MAX_PENDING = 64  # old files queued for hashing (each holds a descriptor); beyond: whole
DIGEST = 32
FRAME_DIGESTS = 16384  # digests per BLOCKS frame (512 KiB, under the control cap)
FIRST = struct.Struct(">Q")  # a BLOCKS payload: the index of its first block, then digests

DELTA_KEY = b"bacpac.delta.sha256"
FAILED_KEY = b"bacpac.failed"
JOIN_WITHIN = 30.0  # seconds
RECENT = 2  # seconds: an old file written this recently is read again to check a delta
WAIT = 0.5  # seconds between looks at the stop flag

Send = Callable[[int, int, bytes], None]  # (entry index, old size, payload)


def blocks_payload(first, digests):
    # type: (int, bytes) -> bytes
    return FIRST.pack(first) + digests


def parse_blocks(payload):
    # type: (bytes) -> Tuple[int, bytes]
    """(first block index, digests) of a BLOCKS payload; ValueError when malformed."""
    if len(payload) < FIRST.size or (len(payload) - FIRST.size) % DIGEST:
        raise ValueError("a BLOCKS payload of %d bytes" % len(payload))
    return FIRST.unpack_from(payload)[0], payload[FIRST.size:]


def block_count(size):
    # type: (int) -> int
    return -(-size // BLOCK)


class BaseDigests(object):
    """The writer's thread that hashes old files and sends their BLOCKS frames, in order."""

    def __init__(self, send, fail):
        # type: (Send, Callable[[BaseException], None]) -> None
        self._send = send
        self._fail = fail  # the reader waits for these digests: a failure must end the job
        self._queue = queue.Queue()  # type: queue.Queue
        self._stop = threading.Event()
        self._hashers = None  # type: Optional[Hashers]
        self.pending = 0  # files queued and not yet hashed
        self._results = {}  # type: Dict[bytes, Tuple[bytes, tuple]]  # path: digests, stat
        self.error = None  # type: Optional[BaseException]
        self._thread = threading.Thread(target=self._run, name="base-digests")
        self._thread.daemon = True
        self._thread.start()

    def add(self, index, path, fd):
        # type: (int, bytes, int) -> None
        """Hash the old file at fd (closed here) for the copy's entry `index` at `path`."""
        if self.error is not None:
            os.close(fd)
            raise self.error
        self.pending += 1
        self._queue.put((index, path, fd, stat_key(os.fstat(fd))))

    def take(self, path):
        # type: (bytes) -> Optional[Tuple[bytes, tuple]]
        """The old file's digests and its stat_key() when they were taken (None if not
        hashed); each is taken once, when the file's member comes."""
        return self._results.pop(path, None)

    def _run(self):
        # type: () -> None
        try:
            while not self._stop.is_set():
                try:
                    job = self._queue.get(timeout=WAIT)
                except queue.Empty:
                    continue
                if job is None:
                    return
                index, path, fd, key = job
                try:
                    self._hash(index, path, fd, key)
                except OSError as e:
                    raise HelperError("%s: reading the old file for a delta: %s"
                                      % (path.decode("utf-8", "replace"), e.strerror), e.errno)
                finally:
                    os.close(fd)
                    self.pending -= 1
        except BaseException as e:
            self.error = e
            self._fail(e)
        finally:
            self._drain()

    def _drain(self):
        # type: () -> None
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                os.close(job[2])

    def _hash(self, index, path, fd, key):
        # type: (int, bytes, int, tuple) -> None
        size = key[2]
        if self._hashers is None:
            self._hashers = Hashers()
        first = 0
        held = []  # type: List[bytes]
        self._sent = []  # type: List[bytes]
        pos = 0
        while pos < size and not self._stop.is_set():
            data = os.pread(fd, min(SEGMENT, size - pos), pos)
            if not data:  # the old file shrank since its stat: the rest is what it holds
                size = pos
                break
            for share in self._hashers.submit(memoryview(data), BLOCK, set()):
                digests = share.result(self._stop)
                if digests is None:
                    return
                held.append(digests)
            pos += len(data)
            if pos < size and sum(len(d) for d in held) >= FRAME_DIGESTS * DIGEST:
                first = self._flush(index, size, first, b"".join(held))
                self._sent.extend(held)
                held = []
        if not self._stop.is_set():  # the last frame says the size: the reader then has all
            self._results[path] = (b"".join(self._sent) + b"".join(held), key)
            self._sent = []
            self._flush(index, size, first, b"".join(held))

    def _flush(self, index, size, first, data):
        # type: (int, int, int, bytes) -> int
        for start in range(0, max(len(data), 1), FRAME_DIGESTS * DIGEST):
            piece = data[start:start + FRAME_DIGESTS * DIGEST]
            self._send(index, size, blocks_payload(first, piece))
            first += len(piece) // DIGEST
        return first

    def close(self):
        # type: () -> None
        """Stop, within a deadline; descriptors still queued are closed."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(JOIN_WITHIN)
        if self._hashers is not None:
            self._hashers.stop(JOIN_WITHIN)


def plan(fd, size, theirs):
    # type: (int, int, Union[bytes, Callable[[], bytes]]) -> Optional[Tuple[List[Tuple[int, int]], str]]
    """The literal runs of the source file at fd ((offset, length), in order) against the old
    file's block digests `theirs`, and the file's check: the sha256 of its block digests in
    order; None when a delta does not pay (too many runs, or nothing of the old file
    matches). `theirs` may be a function that waits for them: the source is hashed first
    (one read, each segment's blocks on Hashers' threads), so both sides hash at once."""
    ours = own_digests(fd, size)
    theirs = theirs() if callable(theirs) else theirs
    runs = []  # type: List[Tuple[int, int]]
    matched = 0
    for index in range(len(ours) // DIGEST):
        at = index * DIGEST
        if theirs[at:at + DIGEST] == ours[at:at + DIGEST]:
            matched += 1
        else:
            _extend(runs, index * BLOCK, min(BLOCK, size - index * BLOCK))
            if len(runs) > MAX_RUNS:
                return None
    if not matched:
        return None
    return runs, hashlib.sha256(ours).hexdigest()


def own_digests(fd, size):
    # type: (int, int) -> bytes
    """The sha256 of each BLOCK of the file at fd, concatenated (a file that shrank since
    the walk reads as zeros past its end: the writer's check tells)."""
    hashers = Hashers()
    never = threading.Event()
    digests = []  # type: List[bytes]
    try:
        pos = 0
        while pos < size:
            data = os.pread(fd, min(SEGMENT, size - pos), pos)
            if not data:
                data = bytes(min(SEGMENT, size - pos))
            for share in hashers.submit(memoryview(data), BLOCK, set()):
                digests.append(share.result(never) or b"")
            pos += len(data)
    finally:
        hashers.stop(JOIN_WITHIN)
    return b"".join(digests)


def _extend(runs, offset, length):
    # type: (List[Tuple[int, int]], int, int) -> None
    if runs and runs[-1][0] + runs[-1][1] == offset:
        runs[-1] = (runs[-1][0], runs[-1][1] + length)
    else:
        runs.append((offset, length))


def gaps(runs, size):
    # type: (Tuple[Tuple[int, int], ...], int) -> List[Tuple[int, int]]
    """The ranges of [0, size) outside the literal runs: those the old file gives."""
    out = []  # type: List[Tuple[int, int]]
    pos = 0
    for offset, length in runs:
        if offset > pos:
            out.append((pos, offset - pos))
        pos = offset + length
    if pos < size:
        out.append((pos, size - pos))
    return out


def marks(xattrs):
    # type: (tuple) -> Tuple[Optional[str], Optional[str]]
    """(sha256 of a delta member, cause of a failed one) from a decoded member's xattrs."""
    found = dict(xattrs)
    sha = found.get(DELTA_KEY)
    failed = found.get(FAILED_KEY)
    return (None if sha is None else sha.decode("ascii", "replace"),
            None if failed is None else failed.decode("utf-8", "replace"))


def delta_entry(fd, item, theirs):
    # type: (int, Entry, Union[bytes, Callable[[], bytes]]) -> Entry
    """The member to send for a FILE against its old file's digests: sparse-mapped literal
    runs and the sha256 mark, or the entry as it is when a delta does not pay."""
    planned = plan(fd, item.size, theirs)
    if planned is None:
        return item
    runs, sha = planned
    if not runs or runs[-1][0] + runs[-1][1] < item.size:
        runs.append((item.size, 0))  # as a sparse map ending in a hole says so
    return item._replace(extents=tuple(runs), xattrs=((DELTA_KEY, sha.encode("ascii")),))


def failed_entry(item, cause):
    # type: (Entry, str) -> Entry
    """The member that stands for a FILE that could not be read: no data, and why."""
    return item._replace(size=0, extents=None,
                         xattrs=((FAILED_KEY, cause.encode("utf-8", "replace")),))


def stat_key(st):
    # type: (os.stat_result) -> tuple
    """What tells that a file was not written since: identity, size, mtime, ctime (ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def unchanged(before, after):
    # type: (tuple, tuple) -> bool
    """Whether an old file's stat_key() still says that its digests hold. One written in
    the RECENT seconds before its digests were taken is not trusted: a write in the same
    tick of the file system's clock would leave mtime and ctime as they were."""
    return before == after and time.time() - max(before[3], before[4]) / 1e9 > RECENT


def rebuilt(fd, size, runs, theirs):
    # type: (int, int, Tuple[Tuple[int, int], ...], bytes) -> str
    """The check of a file rebuilt from an old file (plan()'s: the sha256 of its block
    digests): blocks of the literal runs are hashed from fd, the others are the old file's
    digests `theirs` (b"" when the old file is not trusted: then every block is hashed)."""
    literal = set()  # type: set
    for offset, length in runs:
        if length:
            literal.update(range(offset // BLOCK, -(-(offset + length) // BLOCK)))
    listed = hashlib.sha256()
    for index in range(block_count(size)):
        known = theirs[index * DIGEST:(index + 1) * DIGEST]
        if index in literal or len(known) != DIGEST:
            known = hashlib.sha256(os.pread(fd, BLOCK, index * BLOCK)).digest()
        listed.update(known)
    return listed.hexdigest()
