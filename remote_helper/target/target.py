"""Opening, checking and writing a dup target (an image file or a block device).

# Strategy: every safety check runs in open_target(), before the first byte is written: the
# path's kind, the --force rule for block devices, its size, its users (mounts, swap, holders),
# and whether it is the source itself. Block devices are opened O_EXCL, which the kernel refuses
# while the device is mounted or held by another exclusive opener: a second guard against a
# mount that appeared after our check, and the lock that keeps two runs off one device. Image
# files are locked with flock and truncated to the source's size, so holes cost nothing.
# Aligned writes go by direct I/O, through a second descriptor (directio.py): the helper then
# spends no CPU copying the image into the page cache, and evicts nothing of the host's.
"""
import errno
import fcntl
import mmap  # for the type comments
import os
import stat
from typing import Optional  # for the type comments

from . import checks, devices, directio, libc
from ..errors import HelperError, Refused

HEAD = 1 << 20  # the first MiB: invalidated first, written last (see Target.hold_head)
SCRATCH = 4 << 20  # bytes copied into the aligned buffer per direct write


class Target(object):
    """An open target: positional writes, zeroing of holes, fsync, re-read for --verify."""

    readable = True  # what was written can be read back (for COPY frames)

    def __init__(self, path, fd, is_block, size, created):
        # type: (str, int, bool, int, bool) -> None
        self.path = path
        self.fd = fd
        self.is_block = is_block
        self.size = size  # the image size being written, not the device's
        self.created = created
        self.sparse = not is_block  # truncated file: unwritten ranges already read as zeros
        self._direct = directio.reopen(fd, os.O_WRONLY)
        self._writeback = libc.Writeback(fd)
        # the aligned buffer direct writes are copied into
        self._scratch = None  # type: Optional[mmap.mmap]

    def pwrite(self, offset, data):
        # type: (int, memoryview) -> None
        """Write all of data at offset: by direct I/O where offset and length are aligned."""
        view = memoryview(data)
        try:
            whole = len(view) - len(view) % directio.ALIGN  # an unaligned tail: buffered
            if self._direct is not None and directio.aligned(offset, whole):
                done = self._pwrite_direct(self._direct, offset, view[:whole])
                view, offset = view[done:], offset + done
            while view:
                done = os.pwrite(self.fd, view, offset)
                view = view[done:]
                offset += done
        except OSError as e:
            raise HelperError("%s: %s" % (self.path, e.strerror), e.errno)

    def _pwrite_direct(self, fd, offset, view):
        # type: (int, int, memoryview) -> int
        """Write view through the O_DIRECT descriptor, a scratch buffer's worth at a time;
        returns the bytes written (0 once the file system refuses direct I/O: the caller then
        writes them buffered, as it will everything after)."""
        if self._scratch is None:
            self._scratch = directio.buffer(SCRATCH)
        scratch = memoryview(self._scratch)
        done = 0
        try:
            while done < len(view):
                n = min(SCRATCH, len(view) - done)
                scratch[:n] = view[done:done + n]  # a memcpy: cheap beside the kernel's copy
                written = 0
                while written < n:
                    written += os.pwrite(fd, scratch[written:n], offset + done + written)
                done += n
        except OSError as e:
            if not directio.refused(e):
                raise
            directio.close(self._direct)
            self._direct = None
        return done

    def zero(self, offset, length):
        # type: (int, int) -> None
        """Make [offset, offset+length) read as zeros; free on a truncated image file."""
        if not self.sparse and length:
            devices.zero_range(self.fd, offset, length, self.is_block)

    def written_to(self, end):
        # type: (int) -> None
        """Everything up to `end` is written: on a slow link the disk idles, so start it on
        what went through the page cache, and fsync is short."""
        self._writeback.written_to(end)

    def sync(self):
        # type: () -> None
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise HelperError("%s: %s" % (self.path, e.strerror), e.errno)

    def read_back(self, offset, length):
        # type: (int, int) -> bytes
        return os.pread(self.fd, length, offset)

    def read_into(self, view, offset):
        # type: (memoryview, int) -> None
        """Fill view from offset; a short read (a file shorter than the image) leaves zeros."""
        done = 0
        try:
            while done < len(view):
                n = directio.pread_into(self.fd, view[done:], offset + done)
                if n == 0:
                    return
                done += n
        except OSError as e:
            raise HelperError("%s: read error at byte %d: %s"
                              % (self.path, offset + done, e.strerror), e.errno)

    def close(self):
        # type: () -> None
        directio.close(self._direct)
        self._direct = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NullTarget(object):
    """No disk at all: a backup writes only its saveset, but hashes the image all the same."""

    is_block = False
    sparse = True
    created = False
    readable = False
    path = None

    def __init__(self, size):
        # type: (int) -> None
        self.size = size

    def pwrite(self, offset, data):
        # type: (int, memoryview) -> None
        pass

    def zero(self, offset, length):
        # type: (int, int) -> None
        pass

    def written_to(self, end):
        # type: (int) -> None
        pass

    def sync(self):
        # type: () -> None
        pass

    def close(self):
        # type: () -> None
        pass


def open_target(path, size, force, source, keep=False):
    # type: (str, int, bool, dict, bool) -> Target
    """Check everything about `path` as a target for a `size`-byte image, then open it.

    `source` holds the client's boot_id and the source's identity, so that a target that
    would change the source (see checks.refuse_source) is refused. With `keep` (a delta run),
    an image file keeps its content and only its size is set to the image's.
    """
    st = _checked_stat(path, source)
    if st is None:
        return _create_file(path, size)
    if stat.S_ISBLK(st.st_mode):
        return _open_block(path, size, force)
    if stat.S_ISREG(st.st_mode):
        return _open_file(path, size, keep, force)
    raise _wrong_kind(path, st)


def _checked_stat(path, source):
    # type: (str, dict) -> Optional[os.stat_result]
    """The target's stat, None when it is to be made (in a directory that exists), once it
    is known not to be the source."""
    try:
        st = os.stat(path)  # type: Optional[os.stat_result]
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise HelperError("%s: %s" % (path, e.strerror), e.errno)
        checks.require_directory(path)
        st = None
    checks.refuse_source(path, source, "target")
    return st


def _wrong_kind(path, st):
    # type: (str, os.stat_result) -> Refused
    if stat.S_ISDIR(st.st_mode):
        return Refused("%s: is a directory; name the image file or device to write" % path)
    return Refused("%s: not a regular file or block device" % path)


def check_target(path, size, force, source):
    # type: (str, int, bool, dict) -> str
    """Every check open_target makes, with nothing created, truncated or written (a dry run):
    what the target is, "new file", "image file" or "block device", or Refused."""
    st = _checked_stat(path, source)
    if st is None:
        if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            raise HelperError("%s: Permission denied" % path, errno.EACCES)
        return "new file"
    if stat.S_ISBLK(st.st_mode):
        _open_block(path, size, force).close()  # opened for writing, and closed unwritten
        return "block device"
    if stat.S_ISREG(st.st_mode):
        _refuse_busy(path)
        _refuse_loop_backing(path, force)
        os.close(_open_locked(path, os.O_RDWR))
        return "image file"
    raise _wrong_kind(path, st)


def _refuse_busy(path):
    # type: (str) -> None
    reasons = devices.busy_reasons(path)
    if reasons:
        raise Refused("%s: refusing to write: %s" % (path, "; ".join(reasons)))


def _open_block(path, size, force):
    # type: (str, int, bool) -> Target
    _refuse_busy(path)
    if not force:
        raise Refused("%s: is an existing block device; add --force to overwrite it" % path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise Refused("%s: device is busy (mounted, or in use by another bacpac run)" % path)
        raise HelperError("%s: %s" % (path, e.strerror), e.errno)
    device_size = devices.open_size(fd)
    if device_size < size:
        os.close(fd)
        raise Refused("%s: target is %d bytes, smaller than the source's %d bytes"
                      % (path, device_size, size))
    return Target(path, fd, True, size, False)


def _refuse_loop_backing(path, force):
    # type: (str, bool) -> None
    """An image behind a loop device, even one nobody mounted, changes under that device's
    readers when written (truncating it gives them I/O errors): only with --force."""
    loops = devices.loops_backed_by(path)
    if loops and not force:
        raise Refused("%s: is the backing file of the loop device %s; detach it (losetup -d) "
                      "or add --force to overwrite it" % (path, ", ".join(loops)))


def _open_file(path, size, keep, force):
    # type: (str, int, bool, bool) -> Target
    _refuse_busy(path)
    _refuse_loop_backing(path, force)
    fd = _open_locked(path, os.O_RDWR)
    if not keep:
        _truncate(fd, path, size)
        return Target(path, fd, False, size, False)
    try:
        if os.fstat(fd).st_size != size:  # even a same-size ftruncate would touch the mtime
            os.ftruncate(fd, size)
    except OSError as e:
        os.close(fd)
        raise HelperError("%s: %s" % (path, e.strerror), e.errno)
    target = Target(path, fd, False, size, False)
    target.sparse = False  # old data may stand anywhere: zeros must really be written
    return target


def _create_file(path, size):
    # type: (str, int) -> Target
    # 0600: a disk image holds everything the disk held, secrets included.
    fd = _open_locked(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _truncate(fd, path, size)
    except HelperError:
        os.close(fd)
        os.unlink(path)
        raise
    return Target(path, fd, False, size, True)


def _open_locked(path, flags, mode=0o600):
    # type: (str, int, int) -> int
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, mode)
    except OSError as e:
        raise HelperError("%s: %s" % (path, e.strerror), e.errno)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise Refused("%s: target is in use by another bacpac run" % path, errno.EBUSY)
    return fd


def _truncate(fd, path, size):
    # type: (int, str, int) -> None
    """Empty the file, then set its exact size: every range not written stays a hole."""
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    except OSError as e:
        raise HelperError("%s: %s" % (path, e.strerror), e.errno)
