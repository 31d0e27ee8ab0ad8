"""The readers of a delta run reuse their buffers: the helper's target reader
(remote_helper/target/delta.py, TargetSegments) a pool it gets back once the writer has passed
a segment, the client's source reader (bacpac/engine/delta.py) the pipeline's. A reused buffer
must hold exactly its new segment's bytes (zeros where the file has holes, never the bytes of
the segment it held before); holes are cleared only in a buffer that held data."""
from __future__ import annotations

import hashlib
import os
import queue
import random
import struct
import time
from typing import Optional

import pytest
import zstandard

from bacpac.engine.delta import SegmentReader
from bacpac.engine.pipeline import ImageStream, StreamSettings
from remote_helper.target import delta, imagedigest
from remote_helper.target.target import Target

SEGMENT = 64 << 10
BLOCK = 16 << 10


def _sparse_target(path, segments: int) -> bytes:
    """A file of `segments` segments: data, then holes, then data ending in a hole, in turn,
    so that most holes land in buffers that held data. Returns its content."""
    rng = random.Random(segments)
    content = bytearray(segments * SEGMENT)
    with open(path, "wb") as f:
        f.truncate(len(content))
        for index in range(segments):
            kind = index % 3
            if kind == 1:
                continue  # a whole segment of hole
            length = SEGMENT if kind == 0 else SEGMENT // 2  # the rest of it a hole
            data = rng.randbytes(length)
            content[index * SEGMENT:index * SEGMENT + length] = data
            f.seek(index * SEGMENT)
            f.write(data)
    return bytes(content)


def _digests(data: bytes) -> bytes:
    return b"".join(hashlib.sha256(data[at:at + BLOCK]).digest()
                    for at in range(0, len(data), BLOCK))


def test_reused_segment_buffers_hold_each_segments_own_bytes(tmp_path) -> None:
    segments = 3 * delta.BUFFERS + 2  # every buffer is reused at least twice
    path = tmp_path / "target.img"
    content = _sparse_target(path, segments)
    fd = os.open(path, os.O_RDWR)
    sent: list[bytes] = []
    reader = None
    try:
        target = Target(str(path), fd, False, len(content), False)
        reader = delta.TargetSegments(target, BLOCK, SEGMENT, sent.append, _fail)
        for index in range(segments):
            offset = index * SEGMENT
            if index % 4 == 3:  # a segment the writer passes without its old bytes
                reader.skip(offset, SEGMENT)
                continue
            old, digests = reader.take(offset, SEGMENT, SEGMENT)
            assert old is not None
            assert bytes(old) == content[offset:offset + SEGMENT], index
            assert digests == _digests(content[offset:offset + SEGMENT]), index
        assert reader.stop()
    finally:
        if reader is not None:
            reader.stop()
        os.close(fd)
    assert len(sent) == segments  # one DIGESTS frame a segment
    assert reader._made <= delta.BUFFERS  # the pool, not a buffer a segment


def test_two_levels_hash_each_byte_once_and_the_asked_pieces_blocks_once_more(
        tmp_path, monkeypatch) -> None:
    """With pieces, the target reader hashes each byte once, per piece, and sends the piece
    digests alone; an ASK for a piece hashes its blocks from the segment it still holds and
    answers them, and the writer's take() then has them; a piece not asked has UNKNOWN
    blocks. An ASK for a segment not held is refused."""
    from remote_helper.errors import ProtocolError
    from remote_helper.target import hashing
    from remote_helper.wire import protocol
    piece, segment = imagedigest.PIECE, 2 * imagedigest.PIECE
    content = random.Random(7).randbytes(2 * segment)
    path = tmp_path / "target.img"
    path.write_bytes(content)
    hashed: list[int] = []

    class Counting:
        @staticmethod
        def sha256(data):
            hashed.append(len(data))
            return hashlib.sha256(data)

    monkeypatch.setattr(hashing, "hashlib", Counting)
    fd = os.open(path, os.O_RDWR)
    sent: list[bytes] = []
    reader = None
    try:
        target = Target(str(path), fd, False, len(content), False)
        reader = delta.TargetSegments(target, BLOCK, segment, sent.append, _fail, pieces=True)
        deadline = time.monotonic() + 10  # both segments read ahead, with no writer yet
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        frames = [frame for data in sent for frame in _decode(data)]
        assert [(f.type, f.offset) for f in frames] == [(protocol.DIGESTS, 0),
                                                         (protocol.DIGESTS, segment)]
        assert [bytes(f.payload) for f in frames] == [
            b"".join(hashlib.sha256(content[at:at + piece]).digest()
                     for at in range(start, start + segment, piece))
            for start in (0, segment)]
        assert hashed == [piece] * 4  # each byte once
        reader.answer(segment, struct.pack(">I", 3))  # the second piece of the second segment
        answer, = _decode(sent[2])
        assert (answer.type, answer.offset, answer.flags) == (protocol.DIGESTS, segment,
                                                              protocol.ANSWER)
        assert bytes(answer.payload) == _digests(content[3 * piece:4 * piece])
        assert hashed == [piece] * 4 + [BLOCK] * (piece // BLOCK)
        with pytest.raises(ProtocolError):
            reader.answer(segment, struct.pack(">I", 2))  # asked once already
        reader.skip(0, segment)
        _, digests = reader.take(segment, segment, 0)
        assert digests == delta.UNKNOWN * (piece // BLOCK) + _digests(content[3 * piece:])
        assert reader.stop()
    finally:
        if reader is not None:
            reader.stop()
        os.close(fd)


def _decode(data: bytes) -> list:
    from remote_helper.wire.protocol import Decoder
    decoder = Decoder()
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def _fail(error: BaseException) -> None:
    raise AssertionError(f"the reader failed: {error}")


class _Image:
    """A FrameSender that rebuilds the image the frames describe, onto a target of zeros."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def block(self, offset: int, size: int, flags: int, payload: bytes) -> None:
        self.data[offset:offset + size] = zstandard.ZstdDecompressor().decompress(payload)

    def hole(self, offset: int, size: int) -> None:
        self.data[offset:offset + size] = bytes(size)

    def match(self, offset: int, size: int, data: memoryview) -> None:
        pass  # the target's zeros stay

    def copy(self, offset: int, size: int, source: int, digest: bytes) -> None:
        raise AssertionError("no COPY frames in a delta run")

    def check(self) -> None:
        pass

    def helper_idle(self) -> Optional[float]:
        return None


def test_the_source_reader_clears_a_reused_buffers_holes(tmp_path) -> None:
    """The client's side: more segments than the pipeline has buffers, onto a target of
    zeros; a hole read into a buffer that held data must be zeros in what is sent and in the
    image digest."""
    segment = 64 << 10
    settings = StreamSettings(block_size=segment, delta_block=BLOCK, threads=1, level=1,
                              adaptive=False)
    segments = 40  # the pipeline holds 2 * threads + 2 + threads + 3 buffers
    path = tmp_path / "source.img"
    rng = random.Random(7)
    content = bytearray(segments * segment)
    with open(path, "wb") as f:
        f.truncate(len(content))
        for index in range(0, segments, 3):  # one of three segments data, the rest holes
            data = rng.randbytes(segment // 2)
            at = index * segment + (segment // 4 if index % 2 else 0)
            content[at:at + len(data)] = data
            f.seek(at)
            f.write(data)
    digests: queue.Queue[tuple[int, bytes]] = queue.Queue()
    zero = hashlib.sha256(bytes(BLOCK)).digest()
    for index in range(segments):
        digests.put((index * segment, zero * (segment // BLOCK)))
    fd = os.open(path, os.O_RDONLY)
    stream = ImageStream(fd, len(content), settings, SegmentReader(digests))
    try:
        image = _Image(len(content))
        result = stream.send(image)
    finally:
        assert stream.close()
        os.close(fd)
    assert bytes(image.data) == bytes(content)
    expected = imagedigest.ImageDigest()
    expected.update(memoryview(bytes(content)))
    assert result.digest == expected.hexdigest()


def test_an_answer_not_asked_for_or_of_the_wrong_length_is_a_protocol_error() -> None:
    """The client's side of ASK: an answer goes to the one who asked, once; an answer for a
    segment not asked, or with another count of digests than the blocks asked, is the
    helper breaking the protocol."""
    from bacpac.engine.delta import Asks, compare_pieces, plan_blocks
    from bacpac.errors import ProtocolError
    from remote_helper.wire import protocol
    sent: list[bytes] = []
    answers: list[bytes] = []
    asks = Asks()
    asks.connect(sent.append)
    asks.ask(4 << 20, [4, 6], answers.append)
    frame, = _decode(sent[0])
    assert (frame.type, frame.offset, bytes(frame.payload)) == (protocol.ASK, 4 << 20,
                                                                struct.pack(">2I", 4, 6))
    asks.answer(4 << 20, b"digests")
    assert answers == [b"digests"]
    with pytest.raises(ProtocolError):
        asks.answer(4 << 20, b"digests")  # answered already
    piece = imagedigest.PIECE
    data = memoryview(random.Random(8).randbytes(piece))
    kinds, asked = compare_pieces(0, data, [], bytes(32), BLOCK, [])
    assert asked == [0]
    with pytest.raises(ProtocolError):
        plan_blocks(0, data, [], kinds, bytes(32), BLOCK, bytes)  # one digest for 64 blocks
