"""A file that gets its final name only when it is complete: for savesets.

# Strategy: a saveset must never stand under its final name unless it is whole. Where the file
# system allows it, the file is made with O_TMPFILE in the final directory: it has no name at
# all while it is written, so even a writer killed with SIGKILL leaves nothing behind, and
# commit() links it into place once it is fsynced. Elsewhere it is written under a hidden
# temporary name beside the final one and renamed into place.
"""
import binascii
import errno
import os
from typing import Optional, Tuple  # for the type comments


class MissingDirectory(FileNotFoundError):
    """The directory that should hold the file does not exist."""


class AtomicFile(object):
    """A file that gets its final name only when complete, by commit().

    Where the file system allows it (ext4, xfs, btrfs, tmpfs), the file is made with O_TMPFILE:
    it has no name at all until commit() links it into place, so a writer killed with SIGKILL
    leaves nothing behind. Elsewhere it is written under a temporary name beside `path`
    (temp_path), which discard() removes.
    """

    def __init__(self, path):
        # type: (str) -> None
        self.path = os.path.abspath(path)
        self._directory, self._name = os.path.split(self.path)
        if not os.path.isdir(self._directory):
            raise MissingDirectory(errno.ENOENT, "directory does not exist", self._directory)
        self._committed = False
        self.temp_path = None  # type: Optional[str]
        fd = self._open_unnamed()
        if fd is None:
            self.temp_path, fd = self._open_named()
        self.fileobj = os.fdopen(fd, "wb")

    def _open_unnamed(self):
        # type: () -> Optional[int]
        flag = getattr(os, "O_TMPFILE", 0)
        if not flag:
            return None
        try:
            return os.open(self._directory, flag | os.O_WRONLY, 0o600)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                return None  # this file system has no O_TMPFILE
            raise

    def _open_named(self):
        # type: () -> Tuple[str, int]
        for _ in range(100):
            temp_path = self._temp_name()
            try:
                return temp_path, os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", self._directory)

    def _temp_name(self):
        # type: () -> str
        suffix = binascii.hexlify(os.urandom(4)).decode("ascii")
        return os.path.join(self._directory, ".%s.bacpac-tmp-%s" % (self._name, suffix))

    def sync(self):
        # type: () -> None
        """Make the content durable, still under no final name (commit() then only names it)."""
        self.fileobj.flush()
        os.fsync(self.fileobj.fileno())

    def commit(self):
        # type: () -> None
        """Make the content durable, then give it its final name, then make the name durable."""
        self.fileobj.flush()
        os.fsync(self.fileobj.fileno())
        if self.temp_path is None:
            self._link_into_place()
        self.fileobj.close()
        if self.temp_path is not None:
            os.rename(self.temp_path, self.path)
        self._committed = True
        dir_fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _link_into_place(self):
        # type: () -> None
        """Name the O_TMPFILE file: linkat cannot replace, so an existing file is renamed over."""
        fd_path = "/proc/self/fd/%d" % self.fileobj.fileno()
        # Giving dir fds makes CPython call linkat(AT_SYMLINK_FOLLOW), not link(), which would
        # try to link the /proc symlink itself.
        dir_fd = os.open(self._directory, os.O_RDONLY)
        try:
            try:
                os.link(fd_path, self._name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=True)
                return
            except FileExistsError:
                pass
            temp_name = os.path.basename(self._temp_name())
            os.link(fd_path, temp_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=True)
            os.rename(temp_name, self._name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self):
        # type: () -> None
        """Close and remove the temporary file; harmless after commit() or a second time.

        Never raises for the close: on a full disk, closing flushes the buffer and fails again,
        and that must neither keep the file nor hide the error that brought us here.
        """
        try:
            self.fileobj.close()
        except OSError:
            pass
        if not self._committed and self.temp_path is not None:
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.discard()
