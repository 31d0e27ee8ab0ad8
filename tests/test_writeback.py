"""The writeback thread of the tree writer: it syncs while a copy goes on, and ends."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from remote_helper.tree import writeback
from remote_helper.tree.writeback import Writeback


def test_writeback_syncs_once_enough_is_written_and_its_thread_ends(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flusher = Writeback(fd, every=1 << 20)
        flusher.wrote(100)
        assert flusher.flushes == 0  # under `every`: nothing asked for yet
        flusher.wrote(1 << 20)
        deadline = time.monotonic() + 60
        while flusher.flushes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flusher.flushes == 1
        flusher.close()
        assert not [t for t in threading.enumerate() if t.name == "writeback"]
        os.fstat(fd)  # the caller's descriptor stays open: the thread used its own
    finally:
        os.close(fd)


def test_writeback_without_syncfs_starts_no_thread(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(writeback, "_SYNCFS", [None])
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flusher = Writeback(fd, every=1)
        flusher.wrote(10)
        flusher.close()
        assert flusher.flushes == 0
        assert not [t for t in threading.enumerate() if t.name == "writeback"]
    finally:
        os.close(fd)


def test_finish_says_how_long_the_final_sync_took(tmp_path: Path) -> None:
    from remote_helper.tree.writer import TreeWriter
    writer = TreeWriter(os.fsencode(str(tmp_path / "dest")), False, False, False)
    try:
        finished = writer.finish()
    finally:
        writer.close()
    assert finished["sync_ms"] >= 0 and finished["writeback_syncs"] == 0
    assert not [t for t in threading.enumerate() if t.name == "writeback"]
