"""Direct I/O: disk blocks moved to and from our own buffers, not through the page cache.

# Strategy: a buffered read or write of a disk copies every byte between the page cache and the
# process, and on a 2-core machine that copy is not free: kernel time for every GiB read and
# more for every GiB written (allocation, LRU and writeback included), the same order as
# compressing it (docs/performance.md). O_DIRECT lets the device move the bytes itself, as `dd
# iflag=direct oflag=direct` does, and a copy of a whole disk has no use for the cache anyway:
# it would only push out what the host's real work keeps there. Direct I/O wants offset, length
# and memory address aligned, so the caller's ordinary descriptor stays, and a second descriptor
# of the same file, opened with O_DIRECT, takes every aligned transfer. The rest (an image's
# unaligned tail), and everything on a file system that refuses O_DIRECT (EINVAL at open or at
# the first transfer), goes the buffered way: slower, never wrong. The kernel keeps the two
# descriptors coherent: a direct transfer first writes out and drops cached pages of its range.
"""
import errno
import mmap
import os
from typing import Optional

ALIGN = 4096  # every device's logical block size divides this; page-aligned buffers meet it
O_DIRECT = getattr(os, "O_DIRECT", 0)


def buffer(size):
    # type: (int) -> mmap.mmap
    """A zero-filled, page-aligned buffer: every offset in it that is a multiple of ALIGN
    is a valid address for direct I/O."""
    return mmap.mmap(-1, size)


def aligned(offset, length):
    # type: (int, int) -> bool
    return offset % ALIGN == 0 and length % ALIGN == 0 and length > 0


def reopen(fd, flags):
    # type: (int, int) -> Optional[int]
    """A second descriptor of fd's file, with O_DIRECT, or None where the platform or the
    file system has no direct I/O."""
    if not O_DIRECT:
        return None
    try:
        return os.open("/proc/self/fd/%d" % fd, flags | O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def pread_into(fd, view, offset):
    # type: (int, memoryview, int) -> int
    """Read into view from offset; returns the bytes read, 0 at the end of the file. Where
    the os module has no preadv (Python 3.6), os.pread and one copy."""
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[:len(data)] = data
    return len(data)


def refused(error):
    # type: (OSError) -> bool
    """Whether a direct transfer failed for want of alignment or support, not for a fault of
    the disk: then the caller goes on with buffered I/O."""
    return error.errno in (errno.EINVAL, errno.EOPNOTSUPP)


def close(fd):
    # type: (Optional[int]) -> None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
