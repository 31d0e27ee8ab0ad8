"""Paths that cannot leave DEST: every name checked, every directory opened without following.

# Strategy: a path in a tree comes from the peer (or a tar stream) and is never trusted. It is
# split into components, each checked (no empty one, no "." or "..", no NUL; "/" cannot occur
# inside a component, so a path that starts with "/" or holds "//" fails as an empty one), and
# then walked from a descriptor of DEST one component at a time with O_NOFOLLOW|O_DIRECTORY,
# each open relative to the descriptor of the directory before it. A symlink or a file where a
# directory should be stops the walk with an error instead of being followed, so nothing can
# redirect a write out of DEST, whatever was planted there or races with us. Every call that
# makes or changes something (mkdir, symlink, link, rename, utime, chown, mknod, unlink) takes
# the parent's descriptor and a single name, and never follows a symlink in that last name:
# what a name is gets decided by lstat, and what is changed through a name is either opened
# O_NOFOLLOW first or changed with follow_symlinks=False.
#
# The walker of a tree visits directories in depth-first order, so DirStack keeps the chain of
# descriptors of the directory last used: the next entry, usually in the same directory or a
# neighbour, costs at most the opens of the components that differ.
"""
import errno
import os
import stat
from typing import List, Optional, Tuple  # for the type comments

from ..errors import Refused
from .entry import ROOT

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A descriptor that names an inode without opening it (no side effect on a device or a FIFO):
# chmod, chown, utime and setxattr go through /proc/self/fd/N, which reaches that very inode.
PATH_FLAGS = getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | os.O_CLOEXEC


_NOT_NAMES = (b"", b".", b"..")


class UnsafePath(Refused):
    """A name that would lead out of DEST, or through something that is not a directory."""


class NotADirectory(Refused):
    """A component on the way is a symlink, a file or a node, not a directory."""


def split(path):
    # type: (bytes) -> List[bytes]
    """The components of a tree path, each checked; [] for ROOT. Raises UnsafePath."""
    if path == ROOT:
        return []
    if not isinstance(path, bytes):
        raise UnsafePath("unsafe path %r: not bytes" % (path,))
    if b"\0" in path:
        raise UnsafePath("unsafe path %r: holds a NUL byte" % (path,))
    if path.startswith(b"/"):
        raise UnsafePath("unsafe path %r: absolute" % (path,))
    parts = path.split(b"/")
    for part in parts:
        if part in (b"", b".", b".."):
            raise UnsafePath("unsafe path %r: has a %r component" % (path, part.decode()))
    return parts


def show(dest, path):
    # type: (bytes, bytes) -> str
    """DEST/path for a message, with bytes that are not UTF-8 escaped."""
    full = dest if path == ROOT else dest.rstrip(b"/") + b"/" + path
    return full.decode("utf-8", "backslashreplace")


def lstat_at(dir_fd, name):
    # type: (int, bytes) -> Optional[os.stat_result]
    """lstat of name in dir_fd, or None when there is nothing by that name."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(dir_fd, name):
    # type: (int, bytes) -> int
    """A descriptor of the directory name in dir_fd; OSError (ELOOP, ENOTDIR) if it is not
    a real directory: a symlink is never followed."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def listdir_at(fd):
    # type: (int) -> List[bytes]
    """The names in the directory fd, as bytes (listdir of a descriptor gives str)."""
    return [os.fsencode(name) for name in os.listdir(fd)]


def proc_path(fd):
    # type: (int) -> str
    return "/proc/self/fd/%d" % fd


def remove_at(dir_fd, name):
    # type: (int, bytes) -> None
    """Remove name from dir_fd: unlink it, or rmdir it if it is an (empty) directory."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


class DirStack(object):
    """Descriptors of DEST and of the directories on the way to the one last used.

    dest itself is opened following symlinks (the user named it, as rsync does); nothing
    below it ever is.
    """

    def __init__(self, dest):
        # type: (bytes) -> None
        self.dest = dest
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._parts = []  # type: List[bytes]
        self._fds = []  # type: List[int]
        self._head = b""  # the path of the directory last opened: b"/".join(self._parts)

    def open(self, parts):
        # type: (List[bytes]) -> int
        """The descriptor of the directory DEST/parts (the stack keeps it: do not close it).

        Raises NotADirectory when a component is a symlink, a file or a node, and
        OSError otherwise (FileNotFoundError when one is missing)."""
        keep = 0
        while keep < min(len(parts), len(self._parts)) and parts[keep] == self._parts[keep]:
            keep += 1
        self._drop(keep)
        while len(self._parts) < len(parts):
            fd = self._fds[-1] if self._fds else self.root_fd
            name = parts[len(self._parts)]
            try:
                new = open_dir_at(fd, name)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise NotADirectory("%s: not a directory (%s), not followed" % (
                    show(self.dest, b"/".join(parts[:len(self._parts) + 1])),
                    "a symlink" if _is_link(fd, name) else e.strerror))
            self._parts.append(name)
            self._fds.append(new)
            self._head = b"/".join(self._parts)  # kept right should the next open fail
        return self._fds[-1] if self._fds else self.root_fd

    def parent(self, path):
        # type: (bytes) -> Tuple[int, bytes]
        """(descriptor of the parent directory, last name) of a non-ROOT path."""
        head, slash, name = path.rpartition(b"/")
        if head == self._head and (head or not slash) and name not in _NOT_NAMES \
                and b"\0" not in name and type(path) is bytes:
            # in the directory last used (a checked path): only the last name is new
            return (self._fds[-1] if self._fds else self.root_fd), name
        parts = split(path)
        if not parts:
            raise UnsafePath("the top of the copy has no parent")
        return self.open(parts[:-1]), parts[-1]

    def forget(self, path):
        # type: (bytes) -> None
        """Close what is held of path and below it (it is about to be removed or replaced)."""
        parts = split(path)
        if self._parts[:len(parts)] == parts:
            self._drop(len(parts) - 1 if parts else 0)

    def _drop(self, keep):
        # type: (int) -> None
        while len(self._fds) > keep:
            os.close(self._fds.pop())
            self._parts.pop()
        self._head = b"/".join(self._parts)

    def close(self):
        # type: () -> None
        self._drop(0)
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


def _is_link(dir_fd, name):
    # type: (int, bytes) -> bool
    st = lstat_at(dir_fd, name)
    return st is not None and stat.S_ISLNK(st.st_mode)
