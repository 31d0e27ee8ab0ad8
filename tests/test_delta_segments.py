"""The helper's target reader in a delta run (remote_helper/target/delta.py, TargetSegments):
its segments' buffers are a pool, reused once the writer has passed them. A reused buffer must
hold exactly the target's bytes of its new segment (zeros where the target has holes, never
the bytes of the segment it held before), and its digests must be those of those bytes."""
from __future__ import annotations

import hashlib
import os
import random

from remote_helper.target import delta
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


def _fail(error: BaseException) -> None:
    raise AssertionError(f"the reader failed: {error}")
