"""The digest cache of --delta: a second run need not read the target, and a cache that no
longer holds for the target (changed behind bacpac's back, corrupt, cut short) is never used.

Every test runs the real command line, locally and over the session's sshd (which runs on this
machine, so the target and its cache are read back directly), and checks the target's bytes,
the JSON summary's target_read (bytes the helper read of the target) and digest_cache.
"""
from __future__ import annotations

import glob
import os
import stat
import subprocess
from pathlib import Path

import pytest

from clirun import (KiB, MiB, Result, Transport, bacpac, bacpac_env, digest_of, random_bytes,
                    sha256_of, write_file)
from clirun import transport  # noqa: F401  (a fixture: each test locally and over ssh)
from fixtures_disk import requires_root

from remote_helper.saveset import digestcache

SIZE = 8 * MiB
BLOCK = 64 * KiB
HEAD = 1 * MiB  # the held-back head, read even with a cache (it is written last)


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """An 8 MiB random source, not yet copied."""
    return write_file(tmp_path / "source.img", SIZE, {0: random_bytes(SIZE, 1)}), \
        tmp_path / "target.img"


def cache_of(target: Path) -> Path:
    return target.parent / f".{target.name}.bacpac-digests"


def change(path: Path, offset: int, seed: int) -> None:
    write_file(path, SIZE, {offset: random_bytes(1000, seed)}, keep=True)


def assert_identical(source: Path, target: Path) -> None:
    assert target.stat().st_size == source.stat().st_size
    assert sha256_of(target) == sha256_of(source)


def test_first_delta_run_keeps_a_private_cache(transport, pair) -> None:
    source, target = pair
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert summary["digest_cache"] == "none" and summary["digest_cache_kept"] is True
    cache = cache_of(target)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert cache.stat().st_size > (SIZE // BLOCK) * 32  # the digests, then its header
    assert not list(target.parent.glob("*bacpac-tmp*"))


def test_second_delta_run_reads_only_the_head_of_the_target(transport, pair) -> None:
    source, target = pair
    transport.delta(source, target)
    change(source, 5 * MiB + 100, seed=2)
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert summary["digest_cache"] == "used", summary
    assert summary["target_read"] <= HEAD, summary
    assert summary["blocks_sent"] == 1, summary
    assert summary["digest"] == digest_of(source)
    # and the cache it keeps holds for the target as now written: a third run reads no more
    change(source, 100, seed=3)
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert summary["digest_cache"] == "used" and summary["target_read"] <= HEAD, summary


def test_a_cached_run_reads_the_one_piece_whose_blocks_it_does_not_know(transport,
                                                                       pair) -> None:
    """A run without a cache that finds a piece equal hashes none of its blocks, so its cache
    knows that piece's digest alone; a cached run whose source differs there asks for the
    piece's blocks, and the helper reads and hashes that piece (and the head), nothing else.
    The run after it knows the piece's blocks: it reads the head only."""
    source, target = pair
    transport.delta(source, target)
    cache_of(target).unlink()
    first = transport.delta(source, target).summary  # all equal: every piece MATCHed whole
    assert first["digest_cache"] == "none" and first["target_read"] == SIZE, first
    change(source, 5 * MiB + 100, seed=4)
    second = transport.delta(source, target).summary
    assert_identical(source, target)
    assert second["digest_cache"] == "used", second
    assert second["target_read"] == HEAD + MiB, second  # the head and piece 5
    assert second["blocks_sent"] == 1, second
    change(source, 5 * MiB + 300, seed=5)
    third = transport.delta(source, target).summary
    assert_identical(source, target)
    assert third["digest_cache"] == "used" and third["target_read"] == HEAD, third
    assert third["blocks_sent"] == 1, third


def test_without_a_cache_the_target_is_read_whole(transport, pair) -> None:
    source, target = pair
    transport.delta(source, target)
    cache_of(target).unlink()
    summary = transport.delta(source, target).summary
    assert summary["digest_cache"] == "none"
    assert summary["target_read"] == SIZE, summary
    assert cache_of(target).exists()


def test_target_changed_behind_bacpacs_back_is_read_and_mended(transport, pair) -> None:
    """Same size, other content, atime and mtime put back: its ctime still moved, so the cache
    no longer holds; the target is read, and the changed block sent again."""
    source, target = pair
    transport.delta(source, target)
    before = target.stat()
    change(target, 3 * MiB + 5, seed=4)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert summary["digest_cache"] == "none", summary
    assert summary["target_read"] == SIZE, summary
    assert summary["blocks_sent"] == 1, summary


@pytest.mark.parametrize("damage", ["flipped", "truncated", "garbage"])
def test_broken_cache_is_ignored_with_a_warning(transport, pair, damage) -> None:
    source, target = pair
    transport.delta(source, target)
    cache = cache_of(target)
    data = bytearray(cache.read_bytes())
    if damage == "flipped":
        data[1000] ^= 0xFF
    elif damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data = bytearray(random_bytes(len(data), 5))
    cache.write_bytes(bytes(data))
    change(target, 2 * MiB, seed=6)  # the cache's digests would say this block matches
    os.utime(target, ns=(0, 0))
    run = transport.dup(source, target, "--delta")
    assert run.returncode == 0, run.stderr
    summary = run.summary
    assert_identical(source, target)
    assert summary["digest_cache"] == "none" and summary["target_read"] == SIZE, summary
    assert any("digest cache ignored" in w for w in summary["warnings"]), summary
    assert "digest cache ignored" in run.stderr
    assert summary["digest_cache_kept"] is True  # replaced by a good one


def test_a_plain_dup_forgets_the_cache(transport, pair) -> None:
    source, target = pair
    transport.delta(source, target)
    assert transport.dup(source, target).returncode == 0
    assert not cache_of(target).exists()


def test_cache_is_bound_to_the_files_ctime(tmp_path) -> None:
    """The unit below the tests above: a committed cache loads while the file is untouched,
    and not once anything (here a chmod to the same mode) has set its ctime."""
    image = tmp_path / "image"
    image.write_bytes(random_bytes(3 * BLOCK + 5, 7))
    path = digestcache.cache_path(str(image), image.stat())
    fd = os.open(image, os.O_RDONLY)
    try:
        new = digestcache.NewCache(path, 3 * BLOCK + 5, BLOCK, 0)
        new.add(bytes(32 * 4))
        assert new.commit(fd)
        cached, warning = digestcache.load(path, fd, 3 * BLOCK + 5, BLOCK, False)
        assert cached is not None and warning is None
        assert cached.digests(1, 2) == bytes(64)
        cached.close()
        os.chmod(image, stat.S_IMODE(image.stat().st_mode))
        assert digestcache.load(path, fd, 3 * BLOCK + 5, BLOCK, False) == (None, None)
        assert digestcache.load(path, fd, 3 * BLOCK + 5, 2 * BLOCK, False)[0] is None
    finally:
        os.close(fd)


@pytest.mark.parametrize("block,size,pieces", [(16 * BLOCK, 3 * BLOCK + 5, 0),
                                               (BLOCK, 5 * BLOCK, 0),
                                               (BLOCK, 3 * BLOCK + 5, MiB)],
                         ids=["another_block_size", "another_image_size", "two_levels"])
def test_a_good_cache_out_of_date_is_ignored_without_a_warning(tmp_path, block: int,
                                                               size: int, pieces: int) -> None:
    """README: "another --block-size means the image is read as before; a broken cache gives a
    warning". A cache that is well formed but was made for other parameters is out of date,
    not broken: no warning for the user to worry about."""
    image = tmp_path / "image"
    image.write_bytes(random_bytes(3 * BLOCK + 5, 8))
    path = digestcache.cache_path(str(image), image.stat())
    fd = os.open(image, os.O_RDONLY)
    try:
        new = digestcache.NewCache(path, 3 * BLOCK + 5, BLOCK, 0)
        new.add(bytes(32 * 4))
        assert new.commit(fd)
        assert digestcache.load(path, fd, size, block, False, pieces) == (None, None)
    finally:
        os.close(fd)


def test_a_cache_of_another_block_size_is_replaced_without_a_warning(transport, pair) -> None:
    source, target = pair
    transport.delta(source, target)
    change(source, 3 * MiB, seed=9)
    run = transport.dup(source, target, "--delta", "--block-size", "128K")
    assert run.returncode == 0, run.stderr
    assert_identical(source, target)
    summary = run.summary
    assert summary["digest_cache"] == "none" and summary["target_read"] == SIZE, summary
    assert not summary["warnings"] and "digest cache" not in run.stderr, summary
    assert summary["digest_cache_kept"] is True
    again = transport.dup(source, target, "--delta", "--block-size", "128K").summary
    assert again["digest_cache"] != "none" and again["target_read"] == HEAD, again


def test_nothing_else_writes_target_needs_delta(pair) -> None:
    source, target = pair
    run = Transport("local").dup(source, target, "--nothing-else-writes-target")
    assert run.returncode == 2
    assert "--nothing-else-writes-target" in run.error_line
    assert not target.exists()


@requires_root
def test_block_device_is_read_every_time_unless_the_user_says_nothing_else_writes_it(
        pair, loop_device, tmp_path) -> None:
    source, _ = pair
    device = loop_device(SIZE + MiB)
    env = bacpac_env(HOME=str(tmp_path / "home"))  # where the helper keeps a device's cache

    def delta(*extra: str) -> dict:
        run = bacpac("dup", "--no-progress", "--json", "--delta", "--force", *extra, source,
                     device, env=env)
        assert run.returncode == 0, run.stderr
        assert sha256_of(device, SIZE) == sha256_of(source)
        return run.summary

    assert delta()["digest_cache_kept"] is False  # no flag: no cache for a device
    assert delta()["target_read"] == SIZE
    assert delta("--nothing-else-writes-target")["digest_cache"] == "none"
    assert glob.glob(str(tmp_path / "home/.cache/bacpac/dev-*.bacpac-digests"))
    summary = delta("--nothing-else-writes-target")
    assert summary["digest_cache"] == "used" and summary["target_read"] <= HEAD, summary
    assert delta()["target_read"] == SIZE  # without the flag, the device is read again
    # and that run forgot the cache: it cannot vouch for what came after it
    assert delta("--nothing-else-writes-target")["digest_cache"] == "none"


# ---- the target's block digests: every core, holes not hashed ----------------------------------

def test_hole_blocks_are_the_blocks_wholly_in_a_hole() -> None:
    from remote_helper.target.hashing import hole_blocks
    assert hole_blocks([(100, 300)], 100, 1000) == {1, 2, 3}
    assert hole_blocks([(150, 300)], 100, 1000) == {2, 3}
    assert hole_blocks([(0, 99)], 100, 1000) == set()
    assert hole_blocks([(850, 200)], 100, 950) == {9}  # the short last block, to the end


def test_hashers_give_the_digests_of_hashing_each_block() -> None:
    import hashlib
    import threading
    from remote_helper.target.hashing import Hashers, hole_blocks
    block = 4 * KiB
    data = bytearray(random_bytes(37 * block + 123, 8))
    data[5 * block:9 * block + 10] = bytes(4 * block + 10)  # a hole: blocks 5 to 8
    view = memoryview(data)
    plain = b"".join(hashlib.sha256(view[p:p + block]).digest()
                     for p in range(0, len(data), block))
    hashers = Hashers(3)
    try:
        holes = hole_blocks([(5 * block, 4 * block + 10)], block, len(data))
        assert holes == {5, 6, 7, 8}
        shares = hashers.submit(view, block, holes)
        assert len(shares) == 3
        assert b"".join(share.result(threading.Event()) or b"" for share in shares) == plain
    finally:
        assert hashers.stop(5)


@requires_root
def test_a_write_to_the_first_mib_behind_a_trusted_cache_stops_the_run(
        pair, loop_device, tmp_path) -> None:
    """What a mount would do to a device bacpac was told nothing else writes: its superblock
    changes. The cached run checks the first MiB, which it reads anyway, and stops before
    writing beyond it; the cache is gone, so the run after reads the device and mends it."""
    source, _ = pair
    device = loop_device(SIZE)
    env = bacpac_env(HOME=str(tmp_path / "home"))
    args = ("dup", "--no-progress", "--json", "--delta", "--force",
            "--nothing-else-writes-target", source, device)
    assert bacpac(*args, env=env).returncode == 0
    with open(device, "r+b") as f:
        f.seek(1024)
        f.write(b"mounted!")
    change(source, 6 * MiB, seed=9)  # a block beyond the head to write, if it went on
    run = bacpac(*args, env=env)
    assert run.returncode == 1, run.stderr
    assert "differ from its digest cache" in run.error_line
    with open(device, "rb") as f:
        f.seek(6 * MiB)
        assert f.read(1000) != random_bytes(1000, 9)  # nothing beyond the head was written
    summary = bacpac(*args, env=env).summary
    assert summary["status"] == "ok" and summary["digest_cache"] == "none", summary
    assert sha256_of(device, SIZE) == sha256_of(source)


def test_the_source_hashes_only_the_blocks_whose_answer_needs_it(monkeypatch) -> None:
    """Zeros (a hole, or a block of zeros) and data where the target holds zeros need no hash;
    only data against the target's data is hashed: here 2 blocks of 6."""
    import hashlib
    from bacpac.engine import delta
    from bacpac.engine.frames import Data, Hole, Match
    block = 4 * KiB
    same, other = random_bytes(block, 10), random_bytes(block, 11)
    zeros = bytes(block)
    mine = [zeros, same, other, same, zeros, zeros]  # the last one in a hole of the source
    target = [zeros, same, same, zeros, same, same]
    theirs = b"".join(hashlib.sha256(piece).digest() for piece in target)
    hashed = []

    class Counting:
        @staticmethod
        def sha256(data):
            hashed.append(len(data))
            return hashlib.sha256(data)

    delta.zero_digest(block)  # computed once per length, before the count starts
    monkeypatch.setattr(delta, "hashlib", Counting)
    frames = delta.plan_segment(0, memoryview(b"".join(mine)), [(5 * block, block)], theirs,
                                block, lambda view: bytes(view))
    kinds = [(type(f), f.offset // block, f.size // block) for f in frames]
    assert kinds == [(Match, 0, 2), (Data, 2, 2), (Hole, 4, 2)]
    assert hashed == [block, block]  # blocks 1 and 2


@requires_root
def test_a_run_that_fails_part_way_leaves_no_cache(pair, loop_device, failing_loop_device,
                                                   tmp_path) -> None:
    """The cache goes before the first byte is written and a new one only after the proof:
    a run cut by a read error of the source, after it wrote a changed block, leaves none, so
    the next run reads the device (told nothing else writes it) and mends it."""
    source, _ = pair
    target = loop_device(SIZE)
    env = bacpac_env(HOME=str(tmp_path / "home"))

    def delta(image) -> Result:
        return bacpac("dup", "--no-progress", "--json", "--delta", "--force",
                      "--nothing-else-writes-target", image, target, env=env)

    assert delta(source).returncode == 0
    content = bytearray(source.read_bytes()[:6 * MiB])
    content[2 * MiB:2 * MiB + 1000] = random_bytes(1000, 12)  # in the first segment
    failing = failing_loop_device(bytes(content), SIZE)  # reads past 6 MiB fail
    cut = delta(failing)
    assert cut.returncode == 1, cut.stderr
    assert not glob.glob(str(tmp_path / "home/.cache/bacpac/dev-*.bacpac-digests"))
    summary = delta(source).summary
    assert summary["status"] == "ok" and summary["digest_cache"] == "none", summary
    assert summary["target_read"] == SIZE
    assert sha256_of(target, SIZE) == sha256_of(source)


def test_cache_stat_is_taken_a_settle_past_the_last_write_and_a_racy_one_is_refused(
        tmp_path) -> None:
    """A write in the same clock tick as the cache's stat would leave ctime as it was: the
    stat is taken only SETTLE after the file's ctime, and a cache whose stat was not (forged
    here, checksum and all) is refused."""
    import hashlib
    import json
    import struct
    image = tmp_path / "image"
    image.write_bytes(random_bytes(2 * BLOCK, 13))  # its ctime: now
    path = digestcache.cache_path(str(image), image.stat())
    fd = os.open(image, os.O_RDONLY)
    try:
        new = digestcache.NewCache(path, 2 * BLOCK, BLOCK, 0)
        new.add(bytes(64))
        assert new.commit(fd)
        data = Path(path).read_bytes()
        (length,) = struct.unpack(">Q", data[-56:-48])
        header = json.loads(data[64:64 + length])
        assert header["stat_ns"] - header["ctime_ns"] >= digestcache.SETTLE * 1e9
        assert header["generation"] == 1
        assert digestcache.load(path, fd, 2 * BLOCK, BLOCK, False)[0] is not None
        header["stat_ns"] = header["ctime_ns"] + 1000  # as if taken in the tick of the write
        payload = json.dumps(header).encode()
        body = data[:64] + payload + struct.pack(">Q", len(payload)) + digestcache.MAGIC
        Path(path).write_bytes(body + hashlib.sha256(body).digest())
        assert digestcache.load(path, fd, 2 * BLOCK, BLOCK, False) == (None, None)
    finally:
        os.close(fd)


def evict(path: Path) -> None:
    """Push the file's pages out of the page cache, so that reading it means reading the disk."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_with_a_cache_the_helper_reads_almost_nothing_from_the_disk(transport, tmp_path) -> None:
    """The kernel's own count (/proc/self/io read_bytes of the helper, io_read_bytes in --json),
    with the target out of the page cache: all of it without a cache, its head with one."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                          text=True).stdout.strip()
    if kind in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {kind}, which reads nothing from a disk")
    size = 16 * MiB
    source = write_file(tmp_path / "source.img", size, {0: random_bytes(size, 14)})
    target = tmp_path / "target.img"
    transport.delta(source, target)
    cache_of(target).unlink()
    evict(target)
    first = transport.delta(source, target).summary
    assert first["digest_cache"] == "none" and first["io_read_bytes"] >= size, first
    evict(target)
    second = transport.delta(source, target).summary
    assert second["digest_cache"] == "used", second
    assert second["io_read_bytes"] <= 4 * MiB, second  # the head, read-ahead and little else


# ---- two levels: piece digests --------------------------------------------------------------

def test_a_piece_equal_to_the_targets_hashes_none_of_its_blocks(monkeypatch) -> None:
    """Each piece is hashed once (its image digest line); a piece equal to the target's is
    MATCHed whole with no block hashed, one that differs is asked for and has its blocks
    hashed to find the one to send, and a piece of zeros hashes nothing."""
    import hashlib
    from bacpac.engine import delta
    from bacpac.engine.frames import Data, Match
    from remote_helper.target import imagedigest
    per = MiB // BLOCK
    same, changed = random_bytes(MiB, 30), bytearray(random_bytes(MiB, 31))
    target = same + bytes(changed) + bytes(MiB)
    changed[3 * BLOCK + 5] ^= 1
    mine = same + bytes(changed) + bytes(MiB)
    theirs = b"".join(hashlib.sha256(target[at:at + BLOCK]).digest()
                      for at in range(0, len(target), BLOCK))
    pieces = b"".join(hashlib.sha256(target[at:at + MiB]).digest()
                      for at in range(0, len(target), MiB))
    hashed = []

    class Counting:
        @staticmethod
        def sha256(data):
            hashed.append(len(data))
            return hashlib.sha256(data)

    delta.zero_digest(BLOCK)  # computed once per length, before the count starts
    delta.zero_digest(MiB)
    imagedigest.zero_line(MiB)
    monkeypatch.setattr(delta, "hashlib", Counting)
    lines: list = []
    kinds, asked = delta.compare_pieces(0, memoryview(mine), [], pieces, BLOCK, lines)
    assert asked == [1]  # piece 2, zeros on both sides, is equal: not asked
    frames = delta.plan_blocks(0, memoryview(mine), [], kinds, theirs[per * 32:2 * per * 32],
                               BLOCK, lambda view: bytes(view))
    kinds = [(type(f), f.offset // BLOCK, f.size // BLOCK) for f in frames]
    assert kinds == [(Match, 0, per + 3), (Data, per + 3, 1), (Match, per + 4, 2 * per - 4)]
    assert hashed == [MiB, MiB] + [BLOCK] * per  # pieces 0 and 1, then piece 1's blocks
    assert lines == [imagedigest.piece_line(memoryview(mine[at:at + MiB]))
                     for at in range(0, len(mine), MiB)]


def test_an_unknown_piece_is_asked_for_and_compared_block_by_block() -> None:
    import hashlib
    from bacpac.engine import delta
    from bacpac.engine.frames import Match
    from remote_helper.target.blockdigests import UNKNOWN
    data = random_bytes(MiB, 32)
    theirs = b"".join(hashlib.sha256(data[at:at + BLOCK]).digest()
                      for at in range(0, MiB, BLOCK))
    kinds, asked = delta.compare_pieces(3 * MiB, memoryview(data), [], UNKNOWN, BLOCK, [])
    assert asked == [3]  # by its index in the image
    frames = delta.plan_blocks(3 * MiB, memoryview(data), [], kinds, theirs, BLOCK,
                               lambda view: bytes(view))
    assert [(type(f), f.offset, f.size) for f in frames] == [(Match, 3 * MiB, MiB)]


def test_block_digests_keep_a_piece_digest_for_every_piece_or_unknown() -> None:
    """Kept whole: the target's piece digest; written or zeroed whole: hashed as written (a
    short last piece too); kept in part: UNKNOWN, since its kept bytes may not have been read."""
    import hashlib
    from remote_helper.target.blockdigests import UNKNOWN, BlockDigests
    size = 3 * MiB + 2 * BLOCK
    blocks: list = []
    pieces: list = []
    record = BlockDigests(BLOCK, size, blocks.append, pieces.append)

    class Segments:
        kept_pieces = {0: b"k" * 32}

    record.segments = Segments()  # type: ignore[assignment]
    old = b"o" * 32
    written = random_bytes(MiB, 33)
    record.kept(0, MiB, old * 16)  # piece 0, whole
    record.wrote(MiB, memoryview(written[:MiB // 2]))  # piece 1, written in two parts
    record.wrote(MiB + MiB // 2, memoryview(written[MiB // 2:]))
    record.kept(2 * MiB, BLOCK, old)  # piece 2: kept in part
    record.wrote(2 * MiB + BLOCK, memoryview(written[:MiB - BLOCK]))
    record.zeroed(3 * MiB, 2 * BLOCK)  # the short last piece
    assert record.complete()
    assert b"".join(pieces) == (b"k" * 32 + hashlib.sha256(written).digest() + UNKNOWN
                                + hashlib.sha256(bytes(2 * BLOCK)).digest())
    assert len(b"".join(blocks)) == -(-size // BLOCK) * 32


def test_a_two_level_cache_keeps_both_levels_and_an_older_cache_is_ignored_silently(
        tmp_path) -> None:
    """Format 2 holds the block digests, then the piece digests; a cache of format 1 (before
    piece digests), or one of the other level count, is not used, and no warning said."""
    import hashlib
    import json
    import struct
    size = 2 * MiB + BLOCK
    image = tmp_path / "image"
    image.write_bytes(random_bytes(size, 34))
    path = digestcache.cache_path(str(image), image.stat())
    blocks, pieces = random_bytes(33 * 32, 35), random_bytes(3 * 32, 36)
    fd = os.open(image, os.O_RDONLY)
    try:
        new = digestcache.NewCache(path, size, BLOCK, 0, MiB)
        new.add(blocks)
        new.add_pieces(pieces[:64])
        new.add_pieces(pieces[64:])
        assert new.commit(fd)
        cached, warning = digestcache.load(path, fd, size, BLOCK, False, MiB)
        assert cached is not None and warning is None
        assert cached.digests(0, 33) == blocks and cached.pieces(1, 2) == pieces[32:]
        cached.close()
        assert digestcache.load(path, fd, size, BLOCK, False) == (None, None)  # one level
        # the same, as format 1 wrote it (one level): older, ignored, no warning
        data = Path(path).read_bytes()
        (length,) = struct.unpack(">Q", data[-56:-48])
        header = json.loads(data[36 * 32:36 * 32 + length])
        del header["pieces"]
        payload = json.dumps(header).encode()
        body = blocks + payload + struct.pack(">Q", len(payload)) + b"bacpac-digests-1"
        Path(path).write_bytes(body + hashlib.sha256(body).digest())
        assert digestcache.load(path, fd, size, BLOCK, False) == (None, None)
        assert digestcache.load(path, fd, size, BLOCK, False, MiB) == (None, None)
    finally:
        os.close(fd)


def test_a_piece_digest_short_of_pieces_keeps_no_cache(tmp_path) -> None:
    image = tmp_path / "image"
    image.write_bytes(random_bytes(MiB, 37))
    path = digestcache.cache_path(str(image), image.stat())
    fd = os.open(image, os.O_RDONLY)
    try:
        new = digestcache.NewCache(path, MiB, BLOCK, 0, MiB)
        new.add(bytes(16 * 32))
        assert not new.commit(fd)
        assert not os.path.exists(path)
    finally:
        os.close(fd)
