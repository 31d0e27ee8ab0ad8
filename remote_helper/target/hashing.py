"""Block digests of a delta run's target, hashed on every core, holes not hashed at all.

# Strategy: a delta run's helper hashes each block of the target it reads. hashlib releases
# the GIL on buffers of more than 2 KiB, so the blocks of one segment are split into one
# share per thread and hashed side by side, while the reader thread reads the next segment
# (TargetSegments keeps one segment in hashing). A block that lies wholly in a hole of the
# target is zeros by definition: its digest is a constant, computed once per length.
"""
import hashlib
import os
import queue
import threading
import time
from typing import AbstractSet, Iterable, List, Optional, Set, Tuple  # for the type comments

WAIT = 0.2  # seconds between looks at the stop flag while waiting for a share
MAX_THREADS = 4

_ZERO_DIGESTS = {}  # type: dict


def zero_digest(length):
    # type: (int) -> bytes
    """The sha256 of `length` zero bytes, computed once per length."""
    digest = _ZERO_DIGESTS.get(length)
    if digest is None:
        digest = _ZERO_DIGESTS[length] = hashlib.sha256(bytes(length)).digest()
    return digest


def hole_blocks(holes, block, length):
    # type: (Iterable[Tuple[int, int]], int, int) -> Set[int]
    """The indexes of the `block`-sized pieces of [0, length) that lie wholly in `holes`
    ((start, length) pairs, relative to the same 0)."""
    inside = set()  # type: Set[int]
    for start, run in holes:
        end = start + run
        first = -(-start // block)
        last = end // block if end < length else -(-length // block)
        inside.update(range(first, last))
    return inside


def block_digests(view, block, holes=frozenset(), first=0, last=None):
    # type: (memoryview, int, AbstractSet[int], int, Optional[int]) -> bytes
    """The concatenated sha256 of each `block`-sized piece of view (the last may be short),
    from piece `first` up to `last`; pieces in `holes` (indexes) are zeros, not hashed."""
    if last is None:
        last = -(-len(view) // block)
    digests = []
    for index in range(first, last):
        piece = view[index * block:(index + 1) * block]
        digests.append(zero_digest(len(piece)) if index in holes
                       else hashlib.sha256(piece).digest())
    return b"".join(digests)


class _Share(object):
    """Some consecutive blocks of a segment, hashed on one thread."""

    def __init__(self, view, block, holes, first, last):
        # type: (memoryview, int, Set[int], int, int) -> None
        self._args = (view, block, holes, first, last)
        self._done = threading.Event()
        self._result = b""
        self._error = None  # type: Optional[BaseException]

    def run(self):
        # type: () -> None
        try:
            self._result = block_digests(*self._args)
        except BaseException as e:
            self._error = e
        self._done.set()

    def result(self, stopped):
        # type: (threading.Event) -> Optional[bytes]
        """The digests, once hashed; None if `stopped` is set first."""
        while not self._done.wait(WAIT):
            if stopped.is_set():
                return None
        if self._error is not None:
            raise self._error
        return self._result


class Hashers(object):
    """A few threads that hash the blocks of a segment side by side."""

    def __init__(self, count=None):
        # type: (Optional[int]) -> None
        count = count or min(MAX_THREADS, os.cpu_count() or 1)
        self._jobs = queue.Queue()  # type: queue.Queue[Optional[_Share]]
        self._threads = [threading.Thread(target=self._work, name="delta-hash")
                         for _ in range(count)]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def submit(self, view, block, holes):
        # type: (memoryview, int, Set[int]) -> List[_Share]
        """Start hashing view's blocks; the shares, in order, whose results are the digests."""
        blocks = -(-len(view) // block)
        step = -(-blocks // len(self._threads))
        shares = [_Share(view, block, holes, first, min(first + step, blocks))
                  for first in range(0, blocks, step)]
        for share in shares:
            self._jobs.put(share)
        return shares

    def _work(self):
        # type: () -> None
        while True:
            share = self._jobs.get()
            if share is None:
                return
            share.run()

    def stop(self, timeout):
        # type: (float) -> bool
        """End the threads once the shares queued are hashed; whether they ended in time."""
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)
