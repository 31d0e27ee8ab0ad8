"""The content of one file on its way into DEST: a temporary file, renamed when whole.

# Strategy: a FileSink holds its own descriptor of its directory (a dup, so the writer's
# descriptor chain may move on while content arrives) and of the temporary file
# `.NAME.bacpac-XXXXXXXX` the writer made there, or of an unnamed one (O_TMPFILE, no temporary
# name). Content is written at offsets; a hole is not written, so it stays a hole; unchanged
# ranges of a large file can be copied from the old file (a delta). commit() checks that
# exactly the promised bytes came, sets size and metadata on the descriptor and renames the
# file over its name (an unnamed one is linked there, through a temporary name only when the
# name is taken); abort() removes it.
"""
import binascii
import errno
import os
from typing import TYPE_CHECKING, Callable, Optional, Tuple  # for the type comments

from ..errors import HelperError, IntegrityError, Refused
from . import meta
from .entry import Entry
from .safepath import UnsafePath, show

if TYPE_CHECKING:
    from .writer import TreeWriter  # noqa: F401

COPY_CHUNK = 1 << 20


class FileSink(object):
    """The content of one file, written at offsets into a temporary file beside its name."""

    def __init__(self, writer, entry, dir_fd, name, tmp, fd, base, has=None):
        # type: (TreeWriter, Entry, int, bytes, Optional[bytes], int, Optional[int], Optional[Tuple[int, int, int]]) -> None
        self.writer = writer
        self._has = has  # (uid, gid, mode) the new inode has, where known
        self.entry = entry
        self._dir_fd = dir_fd
        self._name = name
        self._tmp = tmp
        self._fd = fd
        self._base = base
        self._copy_file_range = getattr(os, "copy_file_range", None)
        self.written = 0  # bytes of content received (data and base copies; holes excluded)
        self._end = 0  # the file's size so far: the end of the last byte written

    def write(self, offset, data):
        # type: (int, bytes) -> None
        self._check(offset, len(data))
        view = memoryview(data)
        while view and self._fd >= 0:
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done
        self.written += len(data)
        if data:  # an empty write at the end marks no size
            self._end = max(self._end, offset)

    def hole(self, offset, length):
        # type: (int, int) -> None
        """A range with no data: nothing is written, so it stays a hole."""
        self._check(offset, length)

    def copy_from_base(self, offset, length):
        # type: (int, int) -> None
        """Copy [offset, offset+length) from the old file (add(base=...)) unchanged."""
        if self._base is None:
            raise Refused("%s: no old file to copy from" % self._where())
        self._check(offset, length)
        end = offset + length
        while offset < end:
            done = self._copy_range(offset, end - offset)
            if done:
                self.written += done
                offset += done
                self._end = max(self._end, offset)
                continue
            data = os.pread(self._base, min(COPY_CHUNK, end - offset), offset)
            if not data:
                raise IntegrityError("%s: the old file ends at %d, before %d" % (
                    self._where(), offset, end))
            self.write(offset, data)
            offset += len(data)

    def _copy_range(self, offset, length):
        # type: (int, int) -> int
        """Bytes copied in the kernel (copy_file_range, Python 3.8+: no copy through Python,
        shared extents where the file system has them); 0 where it cannot, to read instead."""
        if self._copy_file_range is None or self._fd < 0:
            return 0
        try:
            return self._copy_file_range(self._base, self._fd, length, offset, offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                               errno.EBADF):
                raise
            self._copy_file_range = None
            return 0

    def base_stat(self):
        # type: () -> os.stat_result
        """The old file's stat (add(base=...)), to tell whether it was written meanwhile."""
        if self._base is None or self._base < 0:
            raise Refused("%s: no old file" % self._where())
        return os.fstat(self._base)

    def check(self, test):
        # type: (Callable[[int], bool]) -> bool
        """test(fd) on a read descriptor of the file as built so far (its own descriptor is
        write-only): a delta's check, before commit()."""
        if self._fd < 0:
            return True
        if self._tmp is None:  # an unnamed file (O_TMPFILE): reopened through its descriptor
            fd = os.open("/proc/self/fd/%d" % self._fd, os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open(self._tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self._dir_fd)
        try:  # the file was made by this sink (O_EXCL or unnamed)
            return test(fd)
        finally:
            os.close(fd)

    def _check(self, offset, length):
        # type: (int, int) -> None
        if offset < 0 or length < 0 or offset + length > self.entry.size:
            raise IntegrityError("%s: %d bytes at %d are beyond its size %d" % (
                self._where(), length, offset, self.entry.size))

    def _where(self):
        # type: () -> str
        return show(self.writer.dest, self.entry.path)

    def commit(self):
        # type: () -> None
        """Size, metadata, then the rename over the final name (the file is whole)."""
        if self._fd < 0:
            self._close()
            return
        writer = self.writer
        try:
            if self.written != self.entry.data_length():
                raise IntegrityError("%s: got %d bytes of content, expected %d" % (
                    self._where(), self.written, self.entry.data_length()))
            if self._end != self.entry.size:  # a hole at the end (or none written at all)
                os.ftruncate(self._fd, self.entry.size)
            meta.apply_fd(self._fd, self.entry, writer.owners, writer.xattrs, has=self._has)
            if self._tmp is not None or not self._link(self._name):
                if self._tmp is None:
                    self._tmp = temp_name(self._name)
                    if not self._link(self._tmp):
                        raise FileExistsError(errno.EEXIST, "temporary name taken")
                writer._clear_for(self._dir_fd, self._name, self.entry.path)
                os.rename(self._tmp, self._name, src_dir_fd=self._dir_fd,
                          dst_dir_fd=self._dir_fd)
        except OSError as e:
            self.abort()
            raise HelperError("%s: %s" % (self._where(), e.strerror), e.errno)
        except ValueError as e:  # a NUL in an attribute's name
            self.abort()
            raise UnsafePath("%s: %s" % (self._where(), e))
        except BaseException:
            self.abort()
            raise
        writer.wrote(self.written)
        self._close()

    def _link(self, name):
        # type: (bytes) -> bool
        """Name the unnamed file name (linkat by /proc/self/fd: no privilege needed); False
        when the name is taken (linkat never replaces)."""
        try:
            os.link("/proc/self/fd/%d" % self._fd, name, src_dir_fd=self._dir_fd,
                    dst_dir_fd=self._dir_fd, follow_symlinks=True)
            return True
        except FileExistsError:
            return False

    def abort(self):
        # type: () -> None
        """Drop the temporary file; nothing appears under the final name."""
        if self._fd >= 0 and self._tmp is not None:
            unlink_quietly(self._dir_fd, self._tmp)
        self._close()

    def _close(self):
        # type: () -> None
        for attr in ("_fd", "_dir_fd", "_base"):
            fd = getattr(self, attr)
            if fd is not None and fd >= 0:
                os.close(fd)
            setattr(self, attr, -1)


def temp_name(name):
    # type: (bytes) -> bytes
    """A fresh temporary name beside name (cut to stay under NAME_MAX)."""
    return b"." + name[:200] + b".bacpac-" + binascii.hexlify(os.urandom(4))


def unlink_quietly(dir_fd, name):
    # type: (int, bytes) -> None
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
