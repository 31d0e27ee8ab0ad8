"""The image digest: exactly what stock coreutils print, whatever the cut of its input."""
import hashlib
import random
import subprocess

import pytest

from clirun import MiB, digest_of, write_file
from remote_helper.target import imagedigest
from remote_helper.target.imagedigest import ImageDigest, PlainDigest

KiB = 1 << 10


@pytest.fixture
def sparse_image(tmp_path):
    """Holes, data straddling piece edges, a zero run inside data, a short last piece."""
    rng = random.Random(7)
    size = 5 * MiB + 123 * KiB
    return write_file(tmp_path / "img", size, {
        100 * KiB: rng.randbytes(300 * KiB),
        MiB - 4 * KiB: rng.randbytes(8 * KiB) + bytes(MiB) + rng.randbytes(KiB),
        4 * MiB: rng.randbytes(MiB + 10 * KiB)})


def stock_digest(path) -> str:
    out = subprocess.run(f"split -b 1M --filter=sha256sum '{path}' | sha256sum", shell=True,
                         check=True, capture_output=True).stdout
    return out.split()[0].decode()


def test_digest_is_what_split_and_sha256sum_print(sparse_image):
    assert digest_of(sparse_image) == stock_digest(sparse_image)
    digest = ImageDigest()
    digest.update(memoryview(sparse_image.read_bytes()))
    assert digest.hexdigest() == stock_digest(sparse_image)


@pytest.mark.parametrize("cut", [1, 4 * KiB, MiB - 1, MiB, 3 * MiB + 5])
def test_digest_is_the_same_whatever_the_cut_and_holes_given_as_zeros(sparse_image, cut):
    image = sparse_image.read_bytes()
    digest = ImageDigest()
    for start in range(0, len(image), cut):
        part = memoryview(image)[start:start + cut]
        if part == bytes(len(part)) and start % 3 == 0:
            digest.zeros(len(part))  # a hole: its length only
        else:
            digest.update(part)
    assert digest.hexdigest() == digest_of(sparse_image)


def test_whole_pieces_go_to_lines_and_zero_pieces_are_not_hashed(mocker):
    asked = []

    def lines(pieces):
        asked.append([len(p) for p in pieces])
        return imagedigest.serial_lines(pieces)

    digest = ImageDigest()
    digest.update(memoryview(b"x" * (MiB + 5)), lines)
    digest.zeros(64 * 1024 * MiB)  # 64 GiB of hole: constant lines only
    digest.update(memoryview(b"y" * (MiB - 5)), lines)
    assert asked == [[MiB]]
    sha = mocker.spy(hashlib, "sha256")
    digest.update(memoryview(bytes(2 * MiB)), lines)
    assert sha.call_count == 0  # zero pieces: a memcmp, then the constant line
    digest.hexdigest()


def test_empty_image_digest_is_the_sha256_of_nothing():
    assert ImageDigest().hexdigest() == hashlib.sha256(b"").hexdigest()


def test_plain_digest_is_sha256sum(sparse_image):
    plain = PlainDigest()
    plain.update(memoryview(sparse_image.read_bytes())[:MiB])
    plain.zeros(0)
    plain.update(memoryview(sparse_image.read_bytes())[MiB:])
    assert plain.hexdigest() == hashlib.sha256(sparse_image.read_bytes()).hexdigest()


@pytest.mark.parametrize("target_holds,pool_hashes", [("other data", 0), ("zeros", 3)])
def test_a_delta_of_1m_blocks_reuses_its_comparison_digests(tmp_path, mocker, target_holds,
                                                             pool_hashes):
    """A block compared by its sha256 is not hashed again for the image digest; one that the
    comparison did not need to hash (the target holds zeros there) is hashed on the pool."""
    import os
    import queue

    from bacpac.engine import pipeline
    from bacpac.engine.delta import SegmentReader
    from bacpac.engine.pipeline import ImageStream, StreamSettings
    from test_directio import Collect

    rng = random.Random(3)
    size = 6 * MiB + 100 * KiB
    source = write_file(tmp_path / "src.img", size, {
        0: rng.randbytes(MiB), 2 * MiB: rng.randbytes(MiB) + bytes(MiB) + rng.randbytes(MiB),
        6 * MiB: rng.randbytes(100 * KiB)})
    digests: queue.Queue = queue.Queue()
    for offset, blocks in ((0, 4), (4 * MiB, 3)):
        theirs = (bytes(32) if target_holds == "other data" else
                  hashlib.sha256(bytes(MiB)).digest())
        if target_holds == "zeros" and offset:  # the short last block's own zero digest
            theirs_last = hashlib.sha256(bytes(100 * KiB)).digest()
            digests.put((offset, theirs * 2 + theirs_last))
        else:
            digests.put((offset, theirs * blocks))
    class Sink(Collect):
        def match(self, offset, size, data=None):
            pass  # the target's zeros stay

    spy = mocker.spy(pipeline.imagedigest, "piece_line")
    fd = os.open(source, os.O_RDONLY)
    try:
        image = ImageStream(fd, size, StreamSettings(threads=2, delta_block=MiB),
                            SegmentReader(digests))
        try:
            result = image.send(Sink(size))
        finally:
            image.close()
    finally:
        os.close(fd)
    assert result.digest == digest_of(source) == stock_digest(source)
    assert spy.call_count == pool_hashes  # the data pieces 0, 2 and 4 when not compared
