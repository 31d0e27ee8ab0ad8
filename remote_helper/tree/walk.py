"""The walker: the entries of one or more source trees, in the order a copy sends them.

# Strategy: a depth-first walk that yields each entry as it is read (a directory before what it
# holds, names in byte order, so two walks of the same tree agree), with nothing listed ahead
# but the children of the directories on the current path: their names, and their lstat, taken
# when the directory is listed, in inode order (a cold tree's inode table read forward; up to
# STAT_AHEAD children, beyond which each is taken as it comes). Memory stays bounded whatever the
# tree's size: the only map kept is of files with more than one link ((dev, ino) -> the path
# of its first occurrence, across every root), so a later occurrence becomes a HARDLINK to it.
# A file whose blocks do not cover its size is asked for its data extents (SEEK_DATA /
# SEEK_HOLE), so its holes are never read nor sent. Symlinks are never followed, except that a
# root named by the user is taken as it is given (as rsync and cp take a root).
"""
import errno
import grp
import os
import pwd
import stat
from typing import Any, Dict, Iterator, List, Optional, Tuple  # for the type comments

from .entry import (BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, ROOT, SOCKET, SYMLINK, Entry)

SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)

_KIND = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFCHR: CHAR,
         stat.S_IFBLK: BLOCK, stat.S_IFIFO: FIFO, stat.S_IFSOCK: SOCKET}


STAT_AHEAD = 4096  # a directory's children whose lstat is taken when it is listed, at most


def _first(item):
    # type: (tuple) -> Any
    return item[0]


class WalkError(Exception):
    """A root that cannot be read at all (missing, not permitted): the copy cannot start."""

    def __init__(self, path, cause, errno_=0):
        # type: (bytes, str, int) -> None
        Exception.__init__(self, "%s: %s" % (path.decode("utf-8", "replace"), cause))
        self.path = path
        self.errno = errno_


class Names(object):
    """uid -> user name, gid -> group name, cached ("" when an id has no name)."""

    def __init__(self):
        # type: () -> None
        self._users = {}  # type: Dict[int, str]
        self._groups = {}  # type: Dict[int, str]

    def user(self, uid):
        # type: (int) -> str
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = ""
            self._users[uid] = name
        return name

    def group(self, gid):
        # type: (int) -> str
        name = self._groups.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = ""
            self._groups[gid] = name
        return name


def join(parent, name):
    # type: (bytes, bytes) -> bytes
    return name if parent == ROOT else parent + b"/" + name


def extents(fd, size):
    # type: (int, int) -> Optional[Tuple[Tuple[int, int], ...]]
    """The data extents of a file that has holes, as Entry.extents says; None when it has none
    (or the file system cannot say)."""
    found = []  # type: List[Tuple[int, int]]
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos: a hole to the end
                    break
                raise
            end = min(os.lseek(fd, start, SEEK_HOLE), size)
            if end > start:
                found.append((start, end - start))
            pos = end
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    if len(found) == 1 and found[0] == (0, size):
        return None
    if not found or found[-1][0] + found[-1][1] < size:
        found.append((size, 0))
    return tuple(found)


def read_xattrs(path):
    # type: (bytes) -> tuple
    """(name, value) pairs of a file's extended attributes (ACLs among them), sorted."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return ()
        raise
    pairs = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.EPERM, errno.ENOTSUP):
                continue
            raise
        pairs.append((os.fsencode(name), value))
    return tuple(sorted(pairs))


class Walker(object):
    """One walk of several roots, sharing the hard-link map and the name caches.

    `problems` counts what could not be read below a root (a directory that vanished or may
    not be listed): the walk goes on, as rsync's does, and the copy reports them.
    """

    def __init__(self, one_file_system=False, excludes=None, xattrs=False):
        # type: (bool, Any, bool) -> None
        self.one_file_system = one_file_system
        self.excludes = excludes
        self.xattrs = xattrs
        self.names = Names()
        self._owners = {}  # type: Dict[Tuple[int, int], Tuple[str, str]]  # (uid, gid): names
        self.links = {}  # type: Dict[Tuple[int, int], bytes]
        self.problems = []  # type: List[str]

    def walk(self, roots):
        # type: (List[Tuple[bytes, bytes]]) -> Iterator[Tuple[bytes, Entry]]
        """(disk path, entry) of the entries of every (disk path, name in the copy) root, in order. A root's name is
        ROOT when its contents go to the copy's top (a SRC ending in "/", or one SRC becoming
        DEST), else the name it gets under DEST."""
        for disk, name in roots:
            try:
                st = os.stat(disk) if disk.endswith(b"/") else os.lstat(disk)
            except OSError as e:
                raise WalkError(disk, e.strerror or str(e), e.errno or 0)
            for item in self._tree(disk, name, st):
                yield item

    def _tree(self, disk, name, st):
        # type: (bytes, bytes, os.stat_result) -> Iterator[Tuple[bytes, Entry]]
        top = self._entry(disk, name, st)
        if top is None:
            raise WalkError(disk, "not a file, directory, link or node a copy can make")
        yield disk, top
        if top.kind != DIR:
            return
        device = st.st_dev
        # a stack of (disk path + "/", copy path + "/" (b"" for ROOT), sorted (name, lstat)
        # left to visit): a directory's children are listed when it is entered, and only
        # those of the current path are held
        stack = [(disk.rstrip(b"/") + b"/", join(name, b""), self._list(disk))]
        while stack:
            here, path, names = stack[-1]
            if not names:
                stack.pop()
                continue
            child, cst = names.pop()
            child_disk = here + child
            child_path = path + child
            if cst is None:
                try:
                    cst = os.lstat(child_disk)
                except OSError as e:
                    if e.errno != errno.ENOENT:  # vanished since listed: as if never there
                        self.problems.append("%s: %s" % (os.fsdecode(child_disk), e.strerror))
                    continue
            is_dir = stat.S_ISDIR(cst.st_mode)
            if self.excludes is not None and self.excludes.excluded(child_path, is_dir):
                continue
            try:
                item = self._entry(child_disk, child_path, cst)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    self.problems.append("%s: %s" % (os.fsdecode(child_disk), e.strerror))
                continue
            if item is None:
                continue
            yield child_disk, item
            if is_dir and not (self.one_file_system and cst.st_dev != device):
                stack.append((child_disk + b"/", child_path + b"/", self._list(child_disk)))

    def _list(self, disk):
        # type: (bytes) -> List[Tuple[bytes, Optional[os.stat_result]]]
        """A directory's children as (name, lstat), in reverse byte order (popped from the end:
        in order). Their lstat is taken here, in inode order: with a cold cache the inode
        table is read forward, not in the names' order, which jumps about it. A directory of
        more than STAT_AHEAD names holds its names alone (lstat None), and each is taken as
        the walk comes to it, so memory stays bounded whatever a directory holds."""
        try:
            with os.scandir(disk) as listing:
                found = [(child.inode(), child.name, child) for child in listing]
        except OSError as e:
            self.problems.append("%s: %s" % (os.fsdecode(disk), e.strerror))
            return []
        if len(found) > STAT_AHEAD:
            return sorted(((name, None) for _, name, _ in found), reverse=True)
        found.sort(key=_first)
        listed = []  # type: List[Tuple[bytes, Optional[os.stat_result]]]
        for _, name, child in found:
            try:
                listed.append((name, child.stat(follow_symlinks=False)))
            except OSError as e:
                if e.errno != errno.ENOENT:  # vanished since listed: as if never there
                    self.problems.append("%s: %s" % (os.fsdecode(child.path), e.strerror))
        listed.sort(key=_first, reverse=True)
        return listed

    def _entry(self, disk, path, st):
        # type: (bytes, bytes, os.stat_result) -> Optional[Entry]
        kind = _KIND.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return None  # a door or a whiteout: nothing a copy can make
        target = b""
        size = 0
        ext = None
        if kind != DIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                kind, target = HARDLINK, first
            else:
                self.links[key] = path
        if kind == SYMLINK:
            target = os.readlink(disk)
        elif kind == FILE:
            size = st.st_size
            if size and st.st_blocks * 512 < size:
                fd = os.open(disk, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
                try:
                    ext = extents(fd, size)
                finally:
                    os.close(fd)
        xattrs = read_xattrs(disk) if self.xattrs and kind != HARDLINK else ()
        rdev = st.st_rdev if kind in (CHAR, BLOCK) else 0
        uid, gid = st.st_uid, st.st_gid
        names = self._owners.get((uid, gid))
        if names is None:
            names = (self.names.user(uid), self.names.group(gid))
            if len(self._owners) < 4096:
                self._owners[(uid, gid)] = names
        return Entry(path, kind, st.st_mode & 0o7777, uid, gid, names[0], names[1], size,
                     st.st_mtime_ns, target, rdev, xattrs, ext)


def walk(roots, one_file_system=False, excludes=None, xattrs=False):
    # type: (List[Tuple[bytes, bytes]], bool, Any, bool) -> Iterator[Entry]
    """Entries of the roots in order (see Walker.walk)."""
    for _, item in Walker(one_file_system, excludes, xattrs).walk(roots):
        yield item
