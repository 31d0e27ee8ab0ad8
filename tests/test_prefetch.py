"""The reading side's read-ahead: files asked of the disk in order, never more than `ahead`
bytes in front of the reader, the descriptors it kept handed over for the right files in
order (whether the thread is ahead of the reader, at the same file, or behind it), a missing
file skipped, no thread and no descriptor left behind."""
from __future__ import annotations

import os
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


def _open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def test_it_stays_within_its_budget_ahead_of_the_reader(monkeypatch):
    advised: list = []
    monkeypatch.setattr(prefetch, "_advise", lambda disk, size, keep: advised.append(disk))
    ahead = Prefetcher(ahead=100)
    try:
        ahead.add([(b"f%d" % n, 60) for n in range(5)])
        assert _settled(advised, 2) == [b"f0", b"f1"]  # 120 asked: over 100, it waits
        assert ahead.take(60) is None  # _advise kept nothing
        assert _settled(advised, 3) == [b"f0", b"f1", b"f2"]
        ahead.take(60)
        assert _settled(advised, 4) == [b"f%d" % n for n in range(4)]
        ahead.take(60)
        assert _settled(advised, 5) == [b"f%d" % n for n in range(5)]
        for _ in range(3):
            ahead.take(60)
    finally:
        ahead.close()
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]


def _files(tmp_path, count: int) -> list:
    files = []
    for n in range(count):
        path = tmp_path / f"f{n}"
        path.write_bytes(b"%d" % n * (n + 1))
        files.append((bytes(path), path.stat().st_size))
    return files


def _check_taken(ahead: Prefetcher, files: list, pause=lambda n: None) -> int:
    """Take every file in order; each descriptor handed over must be that file's. Returns how
    many were handed over."""
    handed = 0
    for n, (disk, size) in enumerate(files):
        pause(n)
        fd = ahead.take(size)
        if fd is not None:
            handed += 1
            try:
                assert os.fstat(fd).st_ino == os.stat(disk).st_ino, (n, disk)
            finally:
                os.close(fd)
    return handed


def test_descriptors_go_to_their_own_files_in_order(tmp_path):
    files = _files(tmp_path, 200)
    before = _open_fds()
    ahead = Prefetcher(held=8)
    try:
        ahead.add(files)
        time.sleep(0.2)  # the thread gets ahead: the first 8 are held, the rest advised
        assert _check_taken(ahead, files) >= 8
    finally:
        ahead.close()
    assert _open_fds() == before


def test_a_reader_ahead_of_the_thread_gets_no_wrong_descriptor(tmp_path, monkeypatch):
    files = _files(tmp_path, 60)
    slow = prefetch._advise

    def advise(disk, size, keep):  # the thread lags: the reader overtakes it now and then
        time.sleep(0.002)
        return slow(disk, size, keep)

    monkeypatch.setattr(prefetch, "_advise", advise)
    before = _open_fds()
    for pause in (lambda n: None, lambda n: time.sleep(0.003 if n % 3 else 0),
                  lambda n: time.sleep(0.002 * (n % 2)), lambda n: time.sleep(0.001)):
        ahead = Prefetcher(held=4)
        try:
            ahead.add(files)
            _check_taken(ahead, files, pause)
        finally:
            ahead.close()
    assert _open_fds() == before


def test_descriptors_not_taken_are_closed(tmp_path):
    files = _files(tmp_path, 20)
    before = _open_fds()
    ahead = Prefetcher(held=16)
    ahead.add(files)
    time.sleep(0.2)
    ahead.close()
    assert _open_fds() == before


def test_a_file_gone_or_unreadable_is_left_to_the_reader(tmp_path):
    there = tmp_path / "there"
    there.write_bytes(b"x" * 10000)
    ahead = Prefetcher()
    try:
        ahead.add([(bytes(tmp_path / "missing"), 5), (bytes(there), 10000)])
        time.sleep(0.1)
        assert ahead.take(5) is None
        fd = ahead.take(10000)
        if fd is not None:
            assert os.read(fd, 3) == b"xxx"
            os.close(fd)
    finally:
        ahead.close()
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]
