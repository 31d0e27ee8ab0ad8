"""Two Linux calls the os module lacks, through ctypes: fallocate and sync_file_range.

Each is None where it cannot be had safely (no ctypes, no such symbol), and callers fall back.
Writeback paces sync_file_range over a file written front to back (the target, the saveset).
"""
from typing import Any, Callable, Optional  # for the type comments

try:
    import ctypes
except ImportError:  # some minimal Pythons are built without _ctypes
    ctypes = None  # type: ignore

SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages; do not wait for it
WRITEBACK_EVERY = 32 << 20  # bytes written, then the kernel is asked to start writing them


def _libc():
    # type: () -> Optional[ctypes.CDLL]
    if ctypes is None:
        return None
    try:
        # dlopen(NULL): the interpreter's own libc, with no ldconfig run as find_library does.
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _function(libc, names, argtypes):
    # type: (Optional[ctypes.CDLL], tuple, list) -> Optional[Callable[..., int]]
    """The first of `names` libc has, typed; 64-bit offsets only where off_t is 64-bit."""
    if libc is None:
        return None
    for name in names:
        func = getattr(libc, name, None)
        if func is not None and (name.endswith("64") or ctypes.sizeof(ctypes.c_long) == 8):
            func.argtypes = argtypes
            func.restype = ctypes.c_int
            return func
    return None


_LIBC = _libc()
_I64 = ctypes.c_int64 if ctypes is not None else None
fallocate = _function(_LIBC, ("fallocate64", "fallocate"),
                      [ctypes.c_int, ctypes.c_int, _I64, _I64] if ctypes else [])
_sync_file_range = _function(_LIBC, ("sync_file_range",),
                             [ctypes.c_int, _I64, _I64, ctypes.c_uint] if ctypes else [])


def start_writeback(fd, offset, length):
    # type: (int, int, int) -> None
    """Have the kernel start writing this range to disk now, without waiting for it: the
    final fsync then finds little left to do. Quietly nothing where the call is missing."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


class Writeback(object):
    """A file written front to back, whose pages the kernel is asked to start writing every
    WRITEBACK_EVERY bytes: the disk works while the stream goes on, and the final fsync finds
    little left to do. `flush`, if given, empties a user-space buffer first."""

    def __init__(self, fd, flush=None):
        # type: (int, Optional[Callable[[], Any]]) -> None
        self._fd = fd
        self._flush = flush
        self._from = 0  # start of the range written since the last writeback

    def written_to(self, end):
        # type: (int) -> None
        if end - self._from >= WRITEBACK_EVERY:
            if self._flush is not None:
                self._flush()
            start_writeback(self._fd, self._from, end - self._from)
            self._from = end
