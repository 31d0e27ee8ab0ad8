"""Pacing the sender: an adaptive compression level, and --bwlimit.

# Strategy: every 0.3 seconds the sender looks at where the time went. Waiting for the
# compressor pool means the CPU is short: a lower level, down into zstd's fast (negative)
# levels. Sends that were blocked (their wall time beyond their CPU time, which thread_time
# gives: the encryption and packet work done in this thread) while the helper, by its own
# account in its PROGRESS frames, sat idle waiting for input, on a wire moving under 32 MB/s,
# mean the link is the limit: a higher level, three steps at a time, trading spare CPU for fewer
# bytes on the wire. (Faster than that, the "link" is the SSH layer's own CPU on a busy
# machine, and a higher level would only take CPU from it: loopback shows exactly that.) A
# blocked sender and a busy helper mean the receiver is the limit, and a higher level would
# not help it, so the level holds; so it does when nothing waits. Level 0 is skipped: to zstd
# it means "the default" (3). So one command finds its level on loopback and on a slow link.
# A target on this very host (a local path, or a connection through the loopback device)
# starts at the lowest level instead: its link is memory, and the helper, sshd and the
# compressors share the same cores, so any CPU the compressor spends is taken from the
# receiving end. Coming down from 3 to there took the pacer a large share of a loopback dup
# (docs/performance.md).
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

DECIDE_EVERY = 0.3  # seconds between decisions
# zstd's own default. The blocks compressed before the first decision (the queue's depth, 7
# on 2 cores) go out at this level: from 1, a slow link carried more bytes of the
# benchmark's disk than from 3, while loopback, which settles at -3..1, loses only a little
# of faster levels on the way down (docs/performance.md).
START_LEVEL = 3
# Above 9, zstd's contexts grow past 40 MiB and its speed falls, for a few % fewer bytes.
LOWEST, HIGHEST = -3, 9
LOCAL_LEVEL = LOWEST  # where a stream to this very host starts
CPU_SHORT = 0.25  # share of the window spent waiting for the compressor
LINK_BOUND = 0.5  # share of the window blocked in sends, and idle in the helper
SLOW_WIRE = 32e6  # bytes/s: below this, fewer bytes pay for more compression CPU


class Pacer:
    """Wraps the sender's two waits; adapts the compressor's level unless fixed; caps the rate."""

    def __init__(self, compressor: "object", adaptive: bool, bwlimit: Optional[float] = None,
                 helper_idle: Callable[[], Optional[float]] = lambda: None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._compressor = compressor
        self._adaptive = adaptive
        self._rate = RateLimit(bwlimit, clock, sleep)
        self._helper_idle = helper_idle
        self._clock = clock
        self.blocks_at: dict[int, int] = {}  # blocks sent, by the level each was compressed at
        self._reset()

    def _reset(self) -> None:
        self._compress_wait = self._send_wall = self._send_cpu = 0.0
        self._window_bytes = 0
        self._window_start = self._clock()

    def compressed(self, get: Callable[[], T]) -> T:
        """get() the next compressed result, counting the time spent waiting for it."""
        start = self._clock()
        value = get()
        self._compress_wait += self._clock() - start
        return value

    def send(self, put: Callable[[], None], nbytes: int, level: Optional[int] = None) -> None:
        """put() nbytes, compressed at `level` (by default the current one), on the channel,
        timing it; then keep to --bwlimit, and adapt."""
        wall, cpu = self._clock(), time.thread_time()
        put()
        self._send_wall += self._clock() - wall
        self._send_cpu += time.thread_time() - cpu
        self._window_bytes += nbytes
        if level is None:
            level = getattr(self._compressor, "level")
        self.blocks_at[level] = self.blocks_at.get(level, 0) + 1
        self._rate.sent(nbytes)
        if self._adaptive and self._clock() - self._window_start >= DECIDE_EVERY:
            self._adapt()

    def _adapt(self) -> None:
        elapsed = max(self._clock() - self._window_start, 1e-6)
        waiting = self._compress_wait / elapsed
        blocked = max(0.0, self._send_wall - self._send_cpu) / elapsed
        idle = self._helper_idle()  # None until the helper's first PROGRESS
        level = getattr(self._compressor, "level")
        if waiting > CPU_SHORT:
            level = _step(level, -1)
        elif (blocked > LINK_BOUND and idle is not None and idle > LINK_BOUND
              and self._window_bytes / elapsed < SLOW_WIRE):
            level = _step(level, +3)
        setattr(self._compressor, "level", level)
        self._reset()


def _step(level: int, by: int) -> int:
    """`by` levels on, skipping 0 (zstd's "default"), within [LOWEST, HIGHEST]."""
    moved = level + by
    if moved == 0 or (level > 0) != (moved > 0):
        moved += 1 if by > 0 else -1
    return max(LOWEST, min(HIGHEST, moved))


def parse_rate(text: str) -> float:
    """rsync's --bwlimit: a number of KiB/s, or with a suffix K, M or G (bytes per second)."""
    units = {"": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("/S").removesuffix("B")
    suffix = text[-1:] if text[-1:] in "KMG" else ""
    number = float(text[: len(text) - len(suffix)])
    if number <= 0:
        raise ValueError(text)
    return number * units[suffix]


class RateLimit:
    """--bwlimit: sent() sleeps while the bytes sent so far are ahead of `rate` bytes per
    second (the Pacer's cap, and alone a copy's, whose relayed frames have no level to pace)."""

    def __init__(self, rate: Optional[float], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self._total = 0

    def sent(self, nbytes: int) -> None:
        self._total += nbytes
        if self._rate:
            ahead = self._total / self._rate - (self._clock() - self._started)
            if ahead > 0:
                self._sleep(ahead)
