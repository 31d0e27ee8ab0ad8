"""The digest cache: a delta run's block digests of the target, kept for the next run.

# Strategy: after a good --delta run the helper keeps the sha256 of every block of the target,
# as it stands proven, in a file of its own (`.NAME.bacpac-digests` beside an image file); the
# next --delta run sends those instead of reading and hashing the target, whenever it can prove
# the target unchanged since. For an image file the proof is its stat: device, inode, size and
# ctime, taken after the final fsync. ctime cannot be set from user space, and any write, chmod,
# truncate or rename sets it, but only to the clock's current tick: a write in the same tick as
# the stat the cache holds would not show. So the stat is taken only once the clock has moved
# SETTLE past the file's ctime (waiting if need be), and a cache whose stat was not is refused:
# any later write then gets a later ctime. A block device has no such witness (its node's
# ctime does not change when it is written), so its cache is used only when the user says
# nothing else writes it (--nothing-else-writes-target) and is keyed by the device number, its
# size, the boot and a generation that counts the runs it went through.
# Every run that opens a target forgets its cache before the first byte is written, and a new
# one is linked into place only after the run is proven: a run cut short leaves none.
# The file, written as the run goes (never all in memory: 1 TB of 64 KiB blocks has 512 MB of
# digests): the block digests, then the piece digests of a two-level run (header "pieces":
# one per 1 MiB piece, UNKNOWN for a piece the run changed in part; spooled to a temporary
# file as the run goes, 32 MB for 1 TB), then a JSON header, its length (8 bytes, big-endian),
# MAGIC, and the sha256 of everything before it. A file that fails any check is ignored with a
# warning; one of an older format (OLD_MAGICS), or made for another image size, block size or
# level count (its header says so), silently, and replaced after the run.
"""
import hashlib
import json
import os
import stat
import shutil
import struct
import tempfile
import time
from typing import Optional, Tuple  # for the type comments

from ..target import devices
from ..target.blockdigests import BlockDigests
from .atomic import AtomicFile

MAGIC = b"bacpac-digests-3"
# Same length: their tails are read as this one's. Format 3: a block's digest may be UNKNOWN
# (a piece a two-level run MATCHed whole, whose blocks it never hashed).
OLD_MAGICS = (b"bacpac-digests-1", b"bacpac-digests-2")
DIGEST = 32
SETTLE = 0.05  # seconds: several ticks of the coarse clock ctime is read from (HZ >= 100)
_TAIL = 8 + len(MAGIC) + DIGEST
_READ = 4 << 20


def cache_path(path, st):
    # type: (str, os.stat_result) -> str
    """Where the cache of the target `path` lives: beside an image file; for a block device,
    under ~/.cache/bacpac of the helper's user, by device number."""
    if stat.S_ISBLK(st.st_mode):
        directory = os.path.expanduser("~/.cache/bacpac")
        return os.path.join(directory, "dev-%d-%d.bacpac-digests"
                            % (os.major(st.st_rdev), os.minor(st.st_rdev)))
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, ".%s.bacpac-digests" % name)


def forget(path):
    # type: (str) -> None
    """Remove the cache at `path`, before anything is written to its target."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _key(fd, st, size, block, pieces=0):
    # type: (int, os.stat_result, int, int, int) -> dict
    """What binds a cache to its target open at fd, as `st` saw it: all but the generation
    and when that stat was taken. `pieces`: the piece size of a two-level cache, else 0."""
    if stat.S_ISBLK(st.st_mode):
        return {"kind": "block", "rdev": st.st_rdev, "size": size, "block": block,
                "pieces": pieces, "device_size": devices.open_size(fd),
                "boot_id": devices.boot_id()}
    return {"kind": "file", "dev": st.st_dev, "ino": st.st_ino, "size": size, "block": block,
            "pieces": pieces, "st_size": st.st_size, "ctime_ns": st.st_ctime_ns}


def _count(size, unit):
    # type: (int, int) -> int
    return -(-size // unit) if unit else 0


class CachedDigests(object):
    """A cache found valid for the target: digests(first, count) reads them from its file."""

    def __init__(self, fd, header):
        # type: (int, dict) -> None
        self._fd = fd
        self.generation = int(header.get("generation", 0))
        self._pieces_at = _count(int(header["size"]), int(header["block"])) * DIGEST

    def digests(self, first, count):
        # type: (int, int) -> bytes
        data = os.pread(self._fd, count * DIGEST, first * DIGEST)
        if len(data) != count * DIGEST:
            raise OSError("the digest cache ended early")
        return data

    def pieces(self, first, count):
        # type: (int, int) -> bytes
        """The digests of `count` pieces from piece `first` (a two-level cache)."""
        return self.digests(self._pieces_at // DIGEST + first, count)

    def close(self):
        # type: () -> None
        os.close(self._fd)


def load(path, fd, size, block, trusted, pieces=0):
    # type: (str, int, int, int, bool, int) -> Tuple[Optional[CachedDigests], Optional[str]]
    """The cache at `path` if it holds for the target open at fd, else None; and a warning,
    if a cache was there but broken (a cache that is merely out of date is no surprise)."""
    try:
        cache_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        header, why = _read_header(cache_fd, size, block, pieces)
        if header is None:
            os.close(cache_fd)
            if why in ("older", "other parameters"):  # no surprise: an upgrade, a new -b
                return None, None
            return None, "%s: digest cache ignored (%s); the target is read instead" % (path, why)
        if not _holds(header, fd, size, block, trusted, pieces):
            os.close(cache_fd)
            return None, None
        return CachedDigests(cache_fd, header), None
    except BaseException:
        os.close(cache_fd)
        raise


def _read_header(fd, size, block, pieces=0):
    # type: (int, int, int, int) -> Tuple[Optional[dict], str]
    """The header of a well-formed cache of a `size`-byte image in blocks of `block` (and
    pieces of `pieces`), or None and why not: "older" (a cache of an older format) and "other
    parameters" (one made for another image size, block size or level count: out of date,
    not broken) are no surprise. The header says what its cache was made for, so it is read
    first: a cache of other parameters is not read further, and never held against this
    run's length (which would call a good one broken); the checksum is checked only when the
    cache is one this run could use."""
    length = os.fstat(fd).st_size
    if length < _TAIL:
        return None, "truncated"
    tail = os.pread(fd, _TAIL, length - _TAIL)
    (header_length,) = struct.unpack(">Q", tail[:8])
    if tail[8:8 + len(MAGIC)] in OLD_MAGICS:
        return None, "older"
    if tail[8:8 + len(MAGIC)] != MAGIC:
        return None, "not a digest cache"
    if header_length > length - _TAIL:
        return None, "truncated"
    header = _parse_header(os.pread(fd, header_length, length - _TAIL - header_length))
    if header is None:
        return None, "unreadable header"
    if (header.get("size"), header.get("block"), header.get("pieces")) != (size, block, pieces):
        return None, "other parameters"
    blocks = -(-size // block) + _count(size, pieces)  # digests in all
    if length != blocks * DIGEST + header_length + _TAIL:
        return None, "truncated"
    digest = hashlib.sha256()
    done, end = 0, length - DIGEST
    while done < end:
        chunk = os.pread(fd, min(_READ, end - done), done)
        if not chunk:
            return None, "truncated"
        digest.update(chunk)
        done += len(chunk)
    if digest.digest() != tail[-DIGEST:]:
        return None, "its checksum does not match"
    return header, ""


def _parse_header(payload):
    # type: (bytes) -> Optional[dict]
    """The JSON header of a cache, if it is one (a generation among its fields)."""
    try:
        header = json.loads(payload.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError too
        return None
    if not isinstance(header, dict) or not isinstance(header.get("generation"), int):
        return None
    return header


def _holds(header, fd, size, block, trusted, pieces=0):
    # type: (dict, int, int, int, bool, int) -> bool
    """Whether the target open at fd is provably what the cache describes."""
    key = _key(fd, os.fstat(fd), size, block, pieces)
    if key["kind"] == "block" and not trusted:
        return False
    if any(header.get(name) != value for name, value in key.items()):
        return False
    if key["kind"] == "file":
        return int(header.get("stat_ns", 0)) - key["ctime_ns"] >= SETTLE * 1e9
    return True


class NewCache(object):
    """The cache a run writes as it goes: add() the digests in order, commit() once proven."""

    def __init__(self, path, size, block, generation, pieces=0):
        # type: (str, int, int, int, int) -> None
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        self._file = AtomicFile(path)
        self._hash = hashlib.sha256()
        self._expected = -(-size // block) * DIGEST
        self._added = 0
        self.pieces = pieces
        # the piece digests, appended after the blocks' at commit()
        self._spool = tempfile.SpooledTemporaryFile(1 << 20, dir=directory) if pieces \
            else None
        self._pieces_added = 0
        self.error = None  # type: Optional[str]  # why the cache could not be written
        self.size = size
        self.block = block
        self.generation = generation

    def add(self, digests):
        # type: (bytes) -> None
        """The next blocks' digests; a failure to write them only spoils the cache."""
        if self.error is None:
            try:
                self._file.fileobj.write(digests)
            except OSError as e:
                self.error = "%s: %s" % (self._file.path, e.strerror or e)
                return
            self._hash.update(digests)
            self._added += len(digests)

    def add_pieces(self, digests):
        # type: (bytes) -> None
        """The next pieces' digests (a two-level cache)."""
        if self.error is None and self._spool is not None:
            try:
                self._spool.write(digests)
            except OSError as e:
                self.error = "%s: %s" % (self._file.path, e.strerror or e)
                return
            self._pieces_added += len(digests)

    def _append_pieces(self):
        # type: () -> bool
        """The piece digests after the blocks'; whether there were all of them."""
        if self._spool is None:
            return True
        if self._pieces_added != _count(self.size, self.pieces) * DIGEST:
            return False
        self._spool.seek(0)
        while True:
            chunk = self._spool.read(_READ)
            if not chunk:
                return True
            self._file.fileobj.write(chunk)
            self._hash.update(chunk)

    def commit(self, fd):
        # type: (int) -> bool
        """Link the cache into place, bound to the target open at fd as it stands now (synced
        by the caller); False, and nothing kept, if it cannot be bound safely."""
        try:
            settled = _settled(fd)
            if settled is None or self.error is not None or self._added != self._expected:
                return False
            if not self._append_pieces():
                return False
            stat_ns, st = settled
            header = _key(fd, st, self.size, self.block, self.pieces)
            header.update(stat_ns=stat_ns, generation=self.generation + 1)
            payload = json.dumps(header, sort_keys=True).encode("utf-8")
            tail = payload + struct.pack(">Q", len(payload)) + MAGIC
            self._hash.update(tail)
            self._file.fileobj.write(tail + self._hash.digest())
            self._file.commit()
            return True
        finally:
            self.discard()

    def discard(self):
        # type: () -> None
        self._file.discard()
        if self._spool is not None:
            self._spool.close()


def _settled(fd):
    # type: (int) -> Optional[Tuple[int, os.stat_result]]
    """(when, stat) of the target, taken at least SETTLE after its ctime, so that any later
    change gives it a later ctime; None if its ctime keeps moving, or lies in the future."""
    for _ in range(3):
        now = int(time.time() * 1e9)
        st = os.fstat(fd)
        wait = (st.st_ctime_ns + SETTLE * 1e9 - now) / 1e9
        if wait <= 0:
            return now, st
        if wait > SETTLE:  # a ctime ahead of our clock: the clock was set back
            return None
        time.sleep(wait)
    return None


class CacheRun(object):
    """The digest cache in one dup: the cache found for the target (`cached`, for its
    TargetSegments), forgotten before the first byte is written, and the one this run writes
    (`record`, for its ImageWriter), kept by commit() once the run is proven.

    Never fails the job: a cache that cannot be read or written is a warning, and the target
    is read, as with no cache."""

    def __init__(self, target_path, fd, size, delta, trusted):
        # type: (str, int, int, Optional[dict], bool) -> None
        self.warnings = []  # type: list
        self.cached = None  # type: Optional[CachedDigests]
        self.record = None  # type: Optional[BlockDigests]
        self._new = None  # type: Optional[NewCache]
        st = os.fstat(fd)
        path = cache_path(target_path, st)
        block = int(delta["block"]) if delta else 0
        pieces = int(delta.get("pieces") or 0) if delta else 0
        try:
            if delta:
                self.cached, warning = load(path, fd, size, block, trusted, pieces)
                if warning:
                    self.warnings.append(warning)
            forget(path)
            if delta and (trusted or not stat.S_ISBLK(st.st_mode)):
                generation = self.cached.generation if self.cached is not None else 0
                self._new = NewCache(path, size, block, generation, pieces)
                self.record = BlockDigests(block, size, self._new.add,
                                           self._new.add_pieces if pieces else None)
        except OSError as e:
            self.warnings.append("%s: digest cache: %s" % (path, e.strerror or e))

    def commit(self, fd, proven=True):
        # type: (int, bool) -> dict
        """Keep the new cache, once the run is proven; what the RESULT says of the cache."""
        kept = False
        if self._new is not None and self.record is not None:
            if proven and self.record.complete():
                try:
                    kept = self._new.commit(fd)
                except OSError as e:
                    self.warnings.append("digest cache not kept: %s" % (e.strerror or e))
            if self._new.error:
                self.warnings.append("digest cache not kept: %s" % self._new.error)
        return {"digest_cache": "used" if self.cached is not None else "none",
                "digest_cache_kept": kept}

    def close(self):
        # type: () -> None
        if self.cached is not None:
            self.cached.close()
            self.cached = None
        if self._new is not None:
            self._new.discard()
