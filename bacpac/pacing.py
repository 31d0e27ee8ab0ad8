"""Pacing the sender: an adaptive compression level, and --bwlimit.

# Strategy: the level is tuned by hill climbing on what matters, source bytes moved per second,
# measured over windows of a few blocks: keep moving the level the same way while the rate
# improves, turn back when it drops. The first step's direction comes from where the sending
# thread waits: wall time of the sends minus their CPU time (thread_time: encryption and packet
# work done in this thread) is time blocked on the link (the SSH window, a slow receiver);
# time spent waiting for the compressor pool is the CPU being short. Blocked on the link: try a
# higher level, trading spare CPU for fewer wire bytes; short of CPU: try a lower one, down
# into zstd's fast (negative) levels. Level 0 is skipped: to zstd it means "the default" (3).
# So one command finds its level on loopback and on a slow link alike.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

WINDOW = 4  # blocks between decisions (16 MiB of source at the default block size)
LOWEST, HIGHEST = -5, 9


class Pacer:
    """Wraps the sender's two waits; adapts the compressor's level unless fixed; caps the rate."""

    def __init__(self, compressor: "object", adaptive: bool, bwlimit: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._compressor = compressor
        self._adaptive = adaptive
        self._bwlimit = bwlimit
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self._total = 0
        self._direction = 0  # +1 or -1 once the first window has spoken
        self._last_rate = 0.0
        self.blocks_at: dict[int, int] = {}  # blocks compressed at each level, for the summary
        self._reset()

    def _reset(self) -> None:
        self._blocks = 0
        self._compress_wait = self._send_wall = self._send_cpu = 0.0
        self._source = 0
        self._window_start = self._clock()

    def compressed(self, get: Callable[[], T]) -> T:
        """get() the next compressed result, counting the time spent waiting for it."""
        start = self._clock()
        value = get()
        self._compress_wait += self._clock() - start
        return value

    def send(self, put: Callable[[], None], nbytes: int, source: int) -> None:
        """put() nbytes (of `source` image bytes) on the channel, timing it; pace and adapt."""
        wall, cpu = self._clock(), time.thread_time()
        put()
        self._send_wall += self._clock() - wall
        self._send_cpu += time.thread_time() - cpu
        self._source += source
        self._total += nbytes
        level = getattr(self._compressor, "level")
        self.blocks_at[level] = self.blocks_at.get(level, 0) + 1
        self._limit()
        self._blocks += 1
        if self._adaptive and self._blocks >= WINDOW:
            self._adapt()

    def _limit(self) -> None:
        if self._bwlimit:
            ahead = self._total / self._bwlimit - (self._clock() - self._started)
            if ahead > 0:
                self._sleep(ahead)

    def _adapt(self) -> None:
        rate = self._source / max(self._clock() - self._window_start, 1e-6)
        if not self._direction:
            blocked = max(0.0, self._send_wall - self._send_cpu)
            self._direction = 1 if blocked > 2 * self._compress_wait else -1
        elif rate < self._last_rate:
            self._direction = -self._direction
        self._last_rate = rate
        setattr(self._compressor, "level", _step(getattr(self._compressor, "level"),
                                                  self._direction))
        self._reset()


def _step(level: int, direction: int) -> int:
    """The next level that way, skipping 0 (zstd's "default"), within [LOWEST, HIGHEST]."""
    level += direction
    if level == 0:
        level += direction
    return max(LOWEST, min(HIGHEST, level))


def parse_rate(text: str) -> float:
    """rsync's --bwlimit: a number of KiB/s, or with a suffix K, M or G (bytes per second)."""
    units = {"": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("/S")
    suffix = text[-1:] if text[-1:] in "KMG" else ""
    number = float(text[: len(text) - len(suffix)])
    if number <= 0:
        raise ValueError(text)
    return number * units[suffix]
