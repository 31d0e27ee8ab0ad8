"""The reading side's read-ahead: files asked of the disk in order, never more than `ahead`
bytes in front of the reader, a missing file skipped, no thread left behind."""
from __future__ import annotations

import threading
import time

from remote_helper.tree import prefetch
from remote_helper.tree.prefetch import Prefetcher


def _settled(advised: list, count: int) -> list:
    deadline = time.monotonic() + 10
    while len(advised) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # and no more than that comes
    return list(advised)


def test_it_stays_within_its_budget_ahead_of_the_reader(monkeypatch):
    advised: list = []
    monkeypatch.setattr(prefetch, "_advise", lambda disk, size: advised.append(disk))
    ahead = Prefetcher(ahead=100)
    try:
        ahead.add([(b"f%d" % n, 60) for n in range(5)])
        assert _settled(advised, 2) == [b"f0", b"f1"]  # 120 asked: over 100, it waits
        ahead.taken(60)
        assert _settled(advised, 3) == [b"f0", b"f1", b"f2"]
        for _ in range(4):
            ahead.taken(60)
        assert _settled(advised, 5) == [b"f%d" % n for n in range(5)]
    finally:
        ahead.close()
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]


def test_a_file_gone_or_unreadable_is_left_to_the_reader(tmp_path):
    there = tmp_path / "there"
    there.write_bytes(b"x" * 10000)
    ahead = Prefetcher()
    try:
        ahead.add([(bytes(tmp_path / "missing"), 5), (bytes(there), 10000)])
        ahead.taken(5)
        ahead.taken(10000)
    finally:
        ahead.close()
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]
