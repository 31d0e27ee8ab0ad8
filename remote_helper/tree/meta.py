"""What a tree keeps besides content: owner, mode, mtime, extended attributes and ACLs.

# Strategy: metadata is applied in the one order that keeps it: owner first (chown clears the
# set-id bits), then the mode, then the extended attributes (a POSIX access ACL sets the group
# bits' mask, so it comes after chmod, and matches the source's mode because the source's mode
# was taken with the same ACL), and the mtime last (nothing after it touches the inode's
# data). Owners follow rsync: as root, by name when the name exists here, else by the numeric
# id; not root, the owner cannot be given away, and the group only to one the user is in.
# An existing inode is changed through an O_PATH descriptor opened with O_NOFOLLOW and reached
# again as /proc/self/fd/N, so a name swapped for a symlink in between is never followed; a
# symlink itself is changed with the follow_symlinks=False calls (it has no mode of its own).
"""
import errno
import grp
import os
import pwd
import stat
from typing import Dict, Optional, Tuple  # for the type comments

from .entry import DIR, SYMLINK, Entry
from .safepath import PATH_FLAGS, proc_path

# Not root, only these namespaces can be read and set (as rsync does).
USER_NAMESPACES = (b"user.", b"system.posix_acl_")


class Owners(object):
    """The uid and gid an entry gets here (-1: leave as is), with name lookups cached."""

    def __init__(self, keep):
        # type: (bool) -> None
        self.keep = keep
        self.root = os.geteuid() == 0
        self._groups = set(os.getgroups()) | {os.getegid()}
        self._uids = {}  # type: Dict[Tuple[str, int], int]
        self._gids = {}  # type: Dict[Tuple[str, int], int]
        self._ids = {}  # type: Dict[Tuple[str, int, str, int], Tuple[int, int]]

    def ids(self, entry):
        # type: (Entry) -> Tuple[int, int]
        """(uid, gid) for entry's owner and group (-1: leave it), one lookup per entry (a
        rerun compares every file's)."""
        key = (entry.uname, entry.uid, entry.gname, entry.gid)
        found = self._ids.get(key)
        if found is None:
            found = self._find(entry)
            if len(self._ids) < 4096:
                self._ids[key] = found
        return found

    def _find(self, entry):
        # type: (Entry) -> Tuple[int, int]
        if not self.keep:
            return -1, -1
        gid = self._lookup(self._gids, entry.gname, entry.gid, _gid_of)
        if not self.root:
            return -1, (gid if gid in self._groups else -1)
        return self._lookup(self._uids, entry.uname, entry.uid, _uid_of), gid

    @staticmethod
    def _lookup(cache, name, number, find):
        # type: (Dict[Tuple[str, int], int], str, int, object) -> int
        key = (name, number)
        if key not in cache:
            cache[key] = find(name, number)  # type: ignore[operator]
        return cache[key]


def _uid_of(name, number):
    # type: (str, int) -> int
    try:
        return pwd.getpwnam(name).pw_uid if name else number
    except KeyError:
        return number


def _gid_of(name, number):
    # type: (str, int) -> int
    try:
        return grp.getgrnam(name).gr_gid if name else number
    except KeyError:
        return number


def xattr_allowed(name):
    # type: (bytes) -> bool
    return os.geteuid() == 0 or name.startswith(USER_NAMESPACES)


def read_xattrs(target, follow=True):
    # type: (object, bool) -> Tuple[Tuple[bytes, bytes], ...]
    """The (name, value) pairs of target (a path or descriptor) that can be kept, sorted."""
    try:
        names = os.listxattr(target, follow_symlinks=follow)  # type: ignore[arg-type]
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    found = []
    for name in names:
        raw = os.fsencode(name)
        if not xattr_allowed(raw):
            continue
        try:
            found.append((raw, os.getxattr(target, raw, follow_symlinks=follow)))  # type: ignore[arg-type]
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    return tuple(sorted(found))


def write_xattrs(target, wanted, follow=True):
    # type: (object, Tuple[Tuple[bytes, bytes], ...], bool) -> None
    """Make target's keepable attributes exactly `wanted`."""
    have = dict(read_xattrs(target, follow))
    want = dict((n, v) for n, v in wanted if xattr_allowed(n))
    for name in have:
        if name not in want:
            os.removexattr(target, name, follow_symlinks=follow)  # type: ignore[arg-type]
    for name, value in sorted(want.items()):
        if have.get(name) != value:
            os.setxattr(target, name, value, follow_symlinks=follow)  # type: ignore[arg-type]


def mode_of(entry, interim):
    # type: (Entry, bool) -> int
    """The mode to set: a directory still being filled keeps its owner's rwx (its final,
    perhaps read-only, mode comes in finish())."""
    return entry.mode | 0o700 if interim and entry.kind == DIR else entry.mode


def apply_fd(fd, entry, owners, xattrs, interim=False, has=None):
    # type: (int, Entry, Owners, bool, bool, Optional[Tuple[int, int, int]]) -> None
    """Owner, mode, xattrs and mtime onto an open descriptor (a file being written). has:
    the (uid, gid, mode) the inode is known to have (a new one), to leave alone what is
    right already."""
    uid, gid = owners.ids(entry)
    mode = mode_of(entry, interim)
    if has is not None and uid in (-1, has[0]) and gid in (-1, has[1]):
        uid = gid = -1  # the owner is right; the mode stays as it is (no chown cleared it)
    else:
        has = None
    if uid != -1 or gid != -1:
        os.fchown(fd, uid, gid)
    if has is None or has[2] != mode:
        os.fchmod(fd, mode)
    if xattrs:
        write_xattrs(fd, entry.xattrs)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def apply_at(dir_fd, name, entry, owners, xattrs, interim=False):
    # type: (int, bytes, Entry, Owners, bool, bool) -> None
    """Owner, mode, xattrs and mtime onto name in dir_fd, never following a symlink there."""
    if entry.kind == SYMLINK:
        _apply_symlink(dir_fd, name, entry, owners, xattrs)
        return
    fd = os.open(name, PATH_FLAGS, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "a symlink is in the way, not followed")
        path = proc_path(fd)
        uid, gid = owners.ids(entry)
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)
        os.chmod(path, mode_of(entry, interim))
        if xattrs:
            write_xattrs(path, entry.xattrs)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def _apply_symlink(dir_fd, name, entry, owners, xattrs):
    # type: (int, bytes, Entry, Owners, bool) -> None
    uid, gid = owners.ids(entry)
    if uid != -1 or gid != -1:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    if xattrs and entry.xattrs:
        # Linux refuses user.* attributes on a symlink; what it takes (trusted.*, security.*)
        # goes through the parent's descriptor, the last name not followed.
        write_xattrs(os.fsencode(proc_path(dir_fd)) + b"/" + name, entry.xattrs, follow=False)
    os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def differs(st, entry, owners, xattrs, target=None):
    # type: (os.stat_result, Entry, Owners, bool, Optional[object]) -> bool
    """Whether an existing inode's metadata differs from entry's (content aside)."""
    if entry.kind != SYMLINK and stat.S_IMODE(st.st_mode) != entry.mode:
        return True
    if st.st_mtime_ns != entry.mtime_ns:
        return True
    uid, gid = owners.ids(entry)
    if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
        return True
    if xattrs and target is not None:
        wanted = tuple(sorted((n, v) for n, v in entry.xattrs if xattr_allowed(n)))
        return read_xattrs(target, follow=entry.kind != SYMLINK) != wanted
    return False


def umask():
    # type: () -> int
    """The process's umask: from /proc (Linux 4.7+), else read by setting it and setting it
    back (a moment in which another thread's new file would get 022)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def new_inode_gid(dir_fd):
    # type: (int) -> Optional[Tuple[int]]
    """(gid,) a new file in dir_fd gets (the directory's own where it is set-group-id), or
    None where the directory has a default ACL (the mode is then not mode & ~umask)."""
    try:
        os.getxattr(dir_fd, "system.posix_acl_default")
        return None
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
    st = os.fstat(dir_fd)
    return (st.st_gid if st.st_mode & stat.S_ISGID else os.getegid(),)
