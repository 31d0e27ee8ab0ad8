"""The tree copy's unpacker: DATA frames decompressed and hashed on a thread, one in flight,
handed back in order; a corrupt frame is an error at the next call; no thread is left."""
from __future__ import annotations

import hashlib
import threading
import zlib

import pytest

from remote_helper.errors import ProtocolError
from remote_helper.jobs.unpacker import Unpacker
from remote_helper.wire.protocol import CODEC_ZLIB

FRAMES = [bytes([n]) * (1000 + n) + b"frame %d" % n for n in range(5)]


def _unpackers() -> list:
    return [t for t in threading.enumerate() if t.name == "unpacker"]


def test_frames_come_back_in_order_one_behind_and_the_stream_is_hashed():
    unpacker = Unpacker()
    try:
        got = []
        for data in FRAMES:
            previous = unpacker.put(CODEC_ZLIB, zlib.compress(data), len(data))
            if previous is not None:
                got.append(bytes(previous))
        assert len(got) == len(FRAMES) - 1  # the last one is still in flight
        got.append(bytes(unpacker.drain()))
        assert unpacker.drain() is None
        assert got == FRAMES
        assert unpacker.hexdigest() == hashlib.sha256(b"".join(FRAMES)).hexdigest()
    finally:
        unpacker.close()
    assert not _unpackers()


def test_a_corrupt_frame_is_raised_by_the_next_call_and_close_ends_the_thread():
    unpacker = Unpacker()
    try:
        assert unpacker.put(CODEC_ZLIB, b"not zlib at all", 100) is None
        with pytest.raises(ProtocolError, match="corrupt compressed block"):
            unpacker.drain()
        unpacker.put(CODEC_ZLIB, zlib.compress(b"short"), 6)
        with pytest.raises(ProtocolError, match="decompressed to 5 bytes, 6 expected"):
            unpacker.put(CODEC_ZLIB, zlib.compress(b"next"), 4)
    finally:
        unpacker.close()
    assert not _unpackers()


def test_close_with_a_frame_in_flight_leaves_no_thread():
    unpacker = Unpacker()
    unpacker.put(CODEC_ZLIB, zlib.compress(FRAMES[0]), len(FRAMES[0]))
    unpacker.close()
    assert not _unpackers()
