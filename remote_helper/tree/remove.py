"""--delete: removing from DEST what the source does not have, never outside DEST.

# Strategy: removal works on (directory descriptor, name) pairs only, like the writer: a
# directory is opened with O_NOFOLLOW|O_DIRECTORY before its contents are removed, so a
# symlink in DEST is removed as a link and never followed, and a name that changes under us
# fails instead of leading elsewhere. The walk is iterative (no recursion limit on a deep
# tree) and removes deepest first. As rsync does without --delete-excluded, what the excludes
# match is kept, and a directory that still holds something kept is kept too. A dry run walks
# the same way and only reports, through on_delete(path, kind).
"""
import os
import stat
from typing import Callable, List, Optional  # for the type comments

from .entry import BLOCK, CHAR, DIR, FIFO, FILE, ROOT, SOCKET, SYMLINK
from ..errors import HelperError
from .safepath import listdir_at, lstat_at, open_dir_at, show

_KINDS = ((stat.S_ISDIR, DIR), (stat.S_ISLNK, SYMLINK), (stat.S_ISREG, FILE),
          (stat.S_ISCHR, CHAR), (stat.S_ISBLK, BLOCK), (stat.S_ISFIFO, FIFO),
          (stat.S_ISSOCK, SOCKET))


def kind_of(mode):
    # type: (int) -> str
    """The entry kind of an lstat mode."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return FILE


def join(parent, name):
    # type: (bytes, bytes) -> bytes
    return name if parent == ROOT else parent + b"/" + name


class Remover(object):
    """Removes trees below a directory descriptor; counts and reports what it removes."""

    def __init__(self, excludes=None, on_delete=None, dry_run=False, dest=b"DEST"):
        # type: (object, Optional[Callable[[bytes, str], None]], bool, bytes) -> None
        self.dest = dest
        self.excludes = excludes
        self.on_delete = on_delete
        self.dry_run = dry_run
        self.removed = 0
        self._at = b""  # the path being removed, for a message

    def extraneous(self, dir_fd, dir_path, keep):
        # type: (int, bytes, Callable[[bytes], bool]) -> None
        """Remove every name in dir_fd whose path (below dir_path) keep() refuses."""
        for name in sorted(listdir_at(dir_fd)):
            path = join(dir_path, name)
            if not keep(path):
                self.tree(dir_fd, name, path)

    def tree(self, parent_fd, name, path):
        # type: (int, bytes, bytes) -> bool
        """Remove name in parent_fd and all below it; False if something was kept."""
        try:
            return self._tree(parent_fd, name, path)
        except OSError as e:  # where, below path, is in self._at
            raise HelperError("%s: cannot delete: %s" % (show(self.dest, self._at), e.strerror),
                              e.errno)

    def _tree(self, parent_fd, name, path):
        # type: (int, bytes, bytes) -> bool
        self._at = path
        st = lstat_at(parent_fd, name)
        if st is None:
            return True
        if self._protected(path, st.st_mode):
            return False
        if not stat.S_ISDIR(st.st_mode):
            self._remove(parent_fd, name, path, kind_of(st.st_mode))
            return True
        return self._directory(parent_fd, name, path)

    def _directory(self, parent_fd, name, path):
        # type: (int, bytes, bytes) -> bool
        # Each frame: [descriptor, names left, path, parent descriptor, name, all removed].
        top = open_dir_at(parent_fd, name)
        frames = [[top, sorted(listdir_at(top)), path, parent_fd, name, True]]  # type: List[list]
        try:
            while frames:
                frame = frames[-1]
                fd, names = frame[0], frame[1]
                if names:
                    child = names.pop()
                    child_path = self._at = frame[2] + b"/" + child
                    st = lstat_at(fd, child)
                    if st is None:
                        continue
                    if self._protected(child_path, st.st_mode):
                        frame[5] = False
                    elif stat.S_ISDIR(st.st_mode):
                        sub = open_dir_at(fd, child)
                        frames.append([sub, sorted(listdir_at(sub)), child_path, fd, child, True])
                    else:
                        self._remove(fd, child, child_path, kind_of(st.st_mode))
                    continue
                frames.pop()
                os.close(fd)
                if frame[5]:
                    self._remove(frame[3], frame[4], frame[2], DIR)
                elif frames:
                    frames[-1][5] = False
            return frame[5]
        finally:
            for frame in frames:
                os.close(frame[0])

    def _protected(self, path, mode):
        # type: (bytes, int) -> bool
        return self.excludes is not None and self.excludes.excluded(  # type: ignore[attr-defined]
            path, stat.S_ISDIR(mode))

    def _remove(self, dir_fd, name, path, kind):
        # type: (int, bytes, bytes, str) -> None
        self._at = path
        if not self.dry_run:
            if kind == DIR:
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        self.removed += 1
        if self.on_delete is not None:
            self.on_delete(path, kind)
