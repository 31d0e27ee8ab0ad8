"""The client's stream: what reaches the sender, in what order, and when."""
import gc
import hashlib
import os
import threading

import pytest

from bacpac.engine import pipeline
from bacpac.engine.pipeline import ImageStream, StreamSettings
from clirun import MiB, digest_of, wait_until, write_file
from test_directio import Collect, stream


def test_a_hole_is_sent_before_its_zeros_are_hashed(tmp_path, mocker):
    """The hole's frame needs nothing of the image's sha256: the sender has it while the hasher
    is still at its zeros. (A disk half empty ends in a long hole: the helper's final fsync
    then runs under that hashing instead of after it.) The digest is the same."""
    data = bytes(range(256)) * 4096  # 1 MiB
    path = write_file(tmp_path / "src.img", 64 * MiB, {0: data})
    sent = threading.Event()
    real = pipeline.zero_chunks

    def zeros_once_sent(size):
        assert sent.wait(10), "the hole was held back until its zeros were hashed"
        return real(size)

    mocker.patch("bacpac.engine.pipeline.zero_chunks", side_effect=zeros_once_sent)

    class Sink(Collect):
        def hole(self, offset, size):
            super().hole(offset, size)
            sent.set()

    sink, result = stream(str(path), sink=Sink)
    assert sink.holes == [(MiB, 63 * MiB)]
    assert bytes(sink.image[:MiB]) == data
    assert result.sha256 == hashlib.sha256(data + bytes(63 * MiB)).hexdigest()
    assert result.digest == digest_of(path)


def low_entropy(size):
    """Bytes from a four-letter alphabet: they compress to about a quarter at any level."""
    return os.urandom(size).translate(bytes(b"acgt"[i % 4] for i in range(256)))


def reader_stopped(reader) -> bool:
    """The reader can go no further: its queue is full, or each of its 11 buffers (2 threads)
    holds a block queued and compressed that keeps it (no early release) until it is sent."""
    items = list(reader.items.queue)
    return reader.items.full() or (
        reader._buffers.empty() and reader._read.empty() and len(items) == 11
        and all(item.compressed.done() for item in items))


@pytest.mark.parametrize("level,make,ahead", [
    (-3, low_entropy, True),  # a fast level, small payloads: buffers go back once hashed
    (3, low_entropy, False),  # the start level: a buffer stays, for a climb's recompression
    (-3, os.urandom, False),  # payloads near the block's size: letting go would save nothing
])
def test_small_payloads_at_fast_levels_let_the_reader_run_ahead(tmp_path, level, make, ahead):
    """A sender held up on its first block: how many blocks the reader and the hasher queue
    for it meanwhile. Without early release, no more than the reader's 11 buffers."""
    data = make(40 * 4 * MiB)
    path = write_file(tmp_path / "src.img", len(data), {0: data})
    queued = []
    fd = os.open(path, os.O_RDONLY)
    try:
        image = ImageStream(fd, len(data), StreamSettings(threads=2, level=level,
                                                          adaptive=False))

        class HeldUp(Collect):
            def block(self, offset, size, flags, payload):
                if not queued:
                    reader = image._reader
                    wait_until(lambda: reader_stopped(reader), 20, "the reader stopped")
                    queued.append(reader.items.qsize())
                super().block(offset, size, flags, payload)

        try:
            sink = HeldUp(len(data))
            result = image.send(sink)
        finally:
            image.close()
    finally:
        os.close(fd)
    assert bytes(sink.image) == data
    assert result.sha256 is None  # not asked for
    assert result.digest == digest_of(path)
    if ahead:
        assert queued[0] > 11, queued
    else:
        assert queued[0] <= 11, queued


def test_a_stream_frees_what_it_is_done_with_without_the_garbage_collector(tmp_path):
    """No reference cycles: each payload goes as soon as it is sent. A cycle through the
    early release's callback kept them all until the collector ran: the client's peak RSS on
    the benchmark went from 115 to 250 MB."""
    path = write_file(tmp_path / "src.img", 16 * 4 * MiB, {0: low_entropy(16 * 4 * MiB)})
    gc.collect()
    gc.disable()
    try:
        sink, result = stream(str(path), StreamSettings(threads=2, level=-3, adaptive=False))
        del sink, result
        assert gc.collect() == 0
    finally:
        gc.enable()
