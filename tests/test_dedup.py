"""Content an image already sent goes as COPY frames: the plan of a block, the frames it makes,
the reader's rule for when to look, and whole dups whose target and saveset must come out
byte for byte, locally, over ssh and onto a block device."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from bacpac.engine import dedup
from bacpac.engine.dedup import CHUNK, MIN_RUN, SeenChunks, Segment
from bacpac.engine.frames import Copy, Data, Hole
from bacpac.engine.pipeline import ExtentReader, StreamSettings
from clirun import MiB, bacpac, digest_of, random_bytes, sha256_of, write_file
from clirun import transport  # noqa: F401  (a fixture: each test locally and over ssh)
from fixtures_disk import requires_root
from test_directio import Collect, stream

KiB = 1 << 10


def block_of(*pieces: bytes) -> memoryview:
    return memoryview(b"".join(pieces))


def test_a_repeated_run_in_a_later_block_becomes_one_copy_of_where_it_first_went() -> None:
    seen = SeenChunks()
    a, b, c = random_bytes(64 * KiB, 1), random_bytes(32 * KiB, 2), random_bytes(32 * KiB, 3)
    assert seen.plan(4 * MiB, block_of(a, b)) == [Segment(0, 96 * KiB)]
    assert seen.plan(8 * MiB, block_of(c, a[16 * KiB:], c)) == [
        Segment(0, 32 * KiB), Segment(32 * KiB, 80 * KiB, source=4 * MiB + 16 * KiB),
        Segment(80 * KiB, 112 * KiB, source=8 * MiB)]  # c, the second time


def test_a_repeat_within_one_block_copies_from_earlier_in_it() -> None:
    a = random_bytes(MIN_RUN, 4)
    assert SeenChunks().plan(0, block_of(a, a, a)) == [
        Segment(0, MIN_RUN), Segment(MIN_RUN, 2 * MIN_RUN, source=0),
        Segment(2 * MIN_RUN, 3 * MIN_RUN, source=0)]


def test_runs_shorter_than_the_minimum_and_broken_runs_stay_data() -> None:
    seen = SeenChunks()
    a = random_bytes(2 * MIN_RUN, 5)
    seen.plan(0, block_of(a))
    short = a[:MIN_RUN - CHUNK]
    # each half of `broken` is seen, but from places that are not one run
    broken = a[MIN_RUN:MIN_RUN + MIN_RUN // 2] + a[:MIN_RUN // 2]
    assert seen.plan(MiB, block_of(short, broken)) == [Segment(0, len(short) + len(broken))]


def test_zero_chunks_are_never_copied_nor_copied_from() -> None:
    seen = SeenChunks()
    zeros = bytes(4 * MIN_RUN)
    assert seen.plan(0, block_of(zeros)) == [Segment(0, len(zeros))]
    assert seen.plan(MiB, block_of(zeros)) == [Segment(0, len(zeros))]


def test_an_unaligned_tail_is_data_and_a_full_table_adds_nothing_more() -> None:
    seen = SeenChunks(cap=4)
    a, b = random_bytes(MIN_RUN, 6), random_bytes(MIN_RUN, 7)
    assert seen.plan(0, block_of(a, b, b"tail")) == [Segment(0, 2 * MIN_RUN + 4)]
    # only a's four chunks made the table: b is looked up, never found
    assert seen.plan(MiB, block_of(b, a)) == [Segment(0, MIN_RUN),
                                             Segment(MIN_RUN, 2 * MIN_RUN, source=0)]


def test_frames_carry_each_copys_sha256_and_make_zero_stretches_holes() -> None:
    a = random_bytes(MIN_RUN, 8)
    view = block_of(a, bytes(MIN_RUN), a)
    segments = [Segment(0, MIN_RUN), Segment(MIN_RUN, 2 * MIN_RUN),
                Segment(2 * MIN_RUN, 3 * MIN_RUN, source=0)]
    frames = dedup.frames(MiB, view, segments, lambda piece: b"z" + bytes(piece))
    assert frames == [Data(MiB, MIN_RUN, b"z" + a), Hole(MiB + MIN_RUN, MIN_RUN),
                      Copy(MiB + 2 * MIN_RUN, MIN_RUN, 0, hashlib.sha256(a).digest())]


class CollectCopies(Collect):
    """Rebuilds the image, serving copies from what it already rebuilt, as the helper does."""

    def copy(self, offset, size, source, digest):
        assert source + size <= offset
        piece = bytes(self.image[source:source + size])
        assert hashlib.sha256(piece).digest() == digest
        self.image[offset:offset + size] = piece
        self.copied = getattr(self, "copied", 0) + size


@pytest.mark.parametrize("level,copied", [(1, 0), (dedup.LEVEL - 1, 0), (dedup.LEVEL, 2 * MiB)])
def test_the_reader_looks_for_repeats_only_from_its_level_on(tmp_path, level, copied) -> None:
    a = random_bytes(2 * MiB, 9)
    source = write_file(tmp_path / "s.img", 16 * MiB, {MiB: a, 9 * MiB + 3 * CHUNK: a})
    sink, result = stream(source, StreamSettings(threads=2, level=level, adaptive=False),
                          sink=CollectCopies, producer=ExtentReader(SeenChunks()))
    assert getattr(sink, "copied", 0) == copied
    assert bytes(sink.image) == source.read_bytes()
    assert result.digest == digest_of(source)


# ---- whole dups ----------------------------------------------------------------------------------

def repeating_image(path, size: int = 24 * MiB):
    """Random content, and the same again elsewhere: part of the first MiB (which the helper
    holds back until the end) at 20 MiB, and 3 MiB across a block boundary 4 KiB off the grid.
    Returns (path, bytes that repeat)."""
    head, body = random_bytes(256 * KiB, 10), random_bytes(3 * MiB, 11)
    data = {64 * KiB: head, 2 * MiB: body, 11 * MiB + CHUNK: body, 20 * MiB: head}
    return write_file(path, size, data), len(head) + len(body)


def restored_sha256(saveset) -> str:
    """sha256 of what the stock tool restores from a saveset."""
    restored = subprocess.run(["zstd", "-d", "-q", "-c", str(saveset)], check=True,
                              stdout=subprocess.PIPE).stdout
    return hashlib.sha256(restored).hexdigest()


def test_dup_sends_what_the_image_repeats_as_copies(transport, tmp_path) -> None:
    source, repeats = repeating_image(tmp_path / "source.img")
    target = tmp_path / "copy.img"
    result = transport.dup(source, target, "--level", "9")
    assert result.returncode == 0, result.stderr
    assert sha256_of(target) == sha256_of(source)
    assert result.summary["bytes_copied"] == repeats
    assert result.summary["bytes_sent"] < 3.5 * MiB  # the random bytes once, not twice


def test_dup_at_a_cpu_bound_level_sends_no_copies(transport, tmp_path) -> None:
    source, repeats = repeating_image(tmp_path / "source.img")
    result = transport.dup(source, tmp_path / "copy.img", "--level", "1")
    assert result.returncode == 0, result.stderr
    assert result.summary["bytes_copied"] == 0
    assert result.summary["bytes_sent"] > 6 * MiB


def test_a_saveset_written_beside_copies_holds_every_byte(transport, tmp_path) -> None:
    source, repeats = repeating_image(tmp_path / "source.img")
    saveset = tmp_path / "copy.bps"
    result = transport.dup(source, tmp_path / "copy.img", "--level", "9", "--saveset", saveset)
    assert result.returncode == 0, result.stderr
    assert result.summary["bytes_copied"] == repeats
    assert restored_sha256(saveset) == sha256_of(source)
    verify = bacpac("verify", *transport.args(), "--json", transport.target(saveset))
    assert verify.returncode == 0, verify.stderr


def test_a_backup_has_no_target_to_copy_from_and_sends_everything(transport, tmp_path) -> None:
    source, repeats = repeating_image(tmp_path / "source.img")
    saveset = tmp_path / "only.bps"
    result = bacpac("backup", *transport.args(), "--no-progress", "--json", "--level", "9",
                    source, transport.target(saveset))
    assert result.returncode == 0, result.stderr
    assert result.summary["bytes_copied"] == 0
    assert restored_sha256(saveset) == sha256_of(source)


@requires_root
def test_dup_onto_a_block_device_copies_from_the_device_itself(transport, loop_device,
                                                               tmp_path) -> None:
    source, repeats = repeating_image(tmp_path / "source.img")
    device = loop_device(32 * MiB)
    with open(device, "r+b") as f:  # old content where the copies will go
        f.write(os.urandom(32 * MiB))
    result = transport.dup(source, device, "--level", "9", "--force")
    assert result.returncode == 0, result.stderr
    assert result.summary["bytes_copied"] == repeats
    assert sha256_of(device, 24 * MiB) == sha256_of(source)
