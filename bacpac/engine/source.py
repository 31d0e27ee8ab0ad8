"""The local source of a dup or backup: a disk or an image file, opened read-only.

The facts themselves (size, holes, mounts) come from remote_helper.devices, which the helper
uses on the target: one implementation for both ends.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Optional

from remote_helper.target import devices

from ..errors import BacpacError, UsageError

_KIND_NAMES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class Source:
    """An open source disk or image; `rw_mount` is (device, mountpoint) when it, a partition of
    it or a loop device on it is mounted read-write."""

    path: str
    fd: int
    size: int
    identity: dict
    rw_mount: Optional[tuple[str, str]]


def _open_error(path: str, e: OSError) -> BacpacError:
    """One line naming the path: a wrong path is the user's to fix (exit 2), I/O is not."""
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ELOOP):
        return UsageError(f"{path}: {e.strerror}")
    return BacpacError(f"{path}: {e.strerror or e}")


def open_source(path: str) -> Source:
    """Open a regular file or block device read-only; refuse anything else with a UsageError."""
    try:
        # O_NONBLOCK so that a FIFO given by mistake is refused instead of blocking the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise _open_error(path, e) from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            what = _KIND_NAMES.get(stat.S_IFMT(mode), "a special file")
            raise UsageError(f"{path}: is {what}, not a disk or image")
        os.set_blocking(fd, True)
        return Source(
            path=path,
            fd=fd,
            size=devices.open_size(fd),
            identity=devices.identity(fd),
            rw_mount=devices.mounted_readwrite(path),
        )
    except OSError as e:
        os.close(fd)
        raise _open_error(path, e) from None
    except BaseException:
        os.close(fd)
        raise


def close_source(src: Source) -> None:
    """Close the source's file descriptor."""
    os.close(src.fd)
