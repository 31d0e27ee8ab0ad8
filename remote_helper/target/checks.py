"""Checks on every path a job writes, run before its first byte.

# Strategy: a path is compared with the source and with the job's other output by what it is,
# never by its spelling alone: the same file or device (device and inode, or device number), a
# device that shares its blocks (a loop device on an image file, a partition of a disk, a
# volume built on it), a file on a file system that lives on the source, and, for a file not
# made yet, the same resolved path. The source can be recognised only on the machine it is
# read on: the client sends that machine's boot id with the source's identity. Symlinks are
# followed, so a link to any of these is refused as what it points to.
"""
import errno
import os
import stat
from typing import Optional  # for the type comments

from . import devices
from ..errors import Refused

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFBLK: "a block device",
          stat.S_IFCHR: "a character device", stat.S_IFIFO: "a FIFO",
          stat.S_IFSOCK: "a socket"}


def absolute(path):
    # type: (str) -> str
    """path made absolute, keeping a trailing slash: it says the user named a directory."""
    resolved = os.path.abspath(path)
    return resolved + "/" if path.endswith("/") and resolved != "/" else resolved


def refuse_source(path, source, role):
    # type: (str, dict, str) -> None
    """Refuse `path` (the job's "target" or "saveset", its `role`) when writing it would
    change the source: the source itself, a device sharing its blocks, a file stored on it."""
    ident = source.get("identity") or {}
    if not ident or source.get("boot_id") != devices.boot_id():
        return
    here = _identity(path)
    if here is not None and devices.same_object(ident, here):
        raise Refused("%s: the %s is the source itself" % (path, role))
    held = devices.sharing_devices(ident)
    shared = set(held) & set(devices.sharing_devices(here or {}))
    if shared:
        raise Refused("%s: the %s shares its blocks with the source itself (through %s)"
                      % (path, role, held[min(shared)]))
    if here is None or here["kind"] == "file":
        under = set(held) & devices.file_system_devices(path)
        if under:
            raise Refused("%s: the %s would be a file on the source itself (on %s)"
                          % (path, role, held[min(under)]))


def require_directory(path):
    # type: (str) -> None
    """Refuse a path whose directory is missing or cannot be written in."""
    parent = os.path.dirname(path) or "."
    if not os.path.lexists(parent):
        raise Refused("%s: No such file or directory (the directory %s does not exist)"
                      % (path, parent), errno.ENOENT)
    if not os.path.isdir(parent):
        raise Refused("%s: Not a directory (%s is not a directory)" % (path, parent),
                      errno.ENOTDIR)
    try:
        read_only = os.statvfs(parent).f_flag & os.ST_RDONLY
    except OSError as e:
        raise Refused("%s: cannot write in %s: %s" % (path, parent, e.strerror), e.errno)
    if read_only:
        raise Refused("%s: cannot write in %s: Read-only file system" % (path, parent),
                      errno.EROFS)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Refused("%s: cannot write in %s: Permission denied" % (path, parent),
                      errno.EACCES)


def check_saveset(path, target, source):
    # type: (str, Optional[str], dict) -> None
    """Refuse a saveset path that is not a file the saveset may replace: a directory, a device
    or other special file, a file behind a loop device or swap, the source, the target."""
    if path.endswith("/"):
        raise Refused("%s: names a directory; name the saveset file to write in it" % path)
    require_directory(path)
    mode = _mode(path)
    if mode is not None and not stat.S_ISREG(mode):
        raise Refused("%s: is %s; a saveset is written as a regular file"
                      % (path, _KINDS.get(stat.S_IFMT(mode), "a special file")))
    if mode is not None:
        _refuse_in_use(path)
    refuse_source(path, source, "saveset")
    if target is not None and _same_path(path, target):
        raise Refused("%s: the saveset is the target itself" % path)


def _refuse_in_use(path):
    # type: (str) -> None
    loops = devices.loops_backed_by(path)
    if loops:
        raise Refused("%s: is the backing file of the loop device %s; a saveset written there "
                      "would take its data away" % (path, ", ".join(loops)))
    reasons = devices.busy_reasons(path)  # only an active swap file is left to find
    if reasons:
        raise Refused("%s: refusing to write: %s" % (path, "; ".join(reasons)))


def _same_path(a, b):
    # type: (str, str) -> bool
    """The same file: one inode under two names, or one resolved path (made or not yet)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    here, there = _identity(a), _identity(b)
    return here is not None and there is not None and devices.same_object(here, there)


def _mode(path):
    # type: (str) -> Optional[int]
    """The st_mode of what path names, following symlinks, or None when nothing is there."""
    try:
        return os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise Refused("%s: %s" % (path, e.strerror), e.errno)


def _identity(path):
    # type: (str) -> Optional[dict]
    """devices.identity(path), or None when nothing is there."""
    return devices.identity(path) if _mode(path) is not None else None
