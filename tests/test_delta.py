"""bacpac dup --delta end to end, through the real command line, locally and over a real sshd.

Every test runs `python -m bacpac dup ... --delta` as a subprocess and checks what a user would:
the exit code, the one error line, the JSON summary (bytes_sent, blocks_sent, blocks_matched,
block_size) and the target's bytes, by sha256. The target of an ssh run is on this machine (the
session's sshd runs here), so the test reads it back directly. The resume tests cut a dup off
for real: a TCP proxy that drops the SSH stream part way, or SIGKILL of the client.
"""
from __future__ import annotations

import glob
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import (FAIL_WITHIN, RUN_WITHIN, KiB, MiB, Transport, assert_failed_in_one_line,
                    bacpac, digest_of, random_bytes, sha256_of, start, write_file)
from clirun import transport  # noqa: F401  (a fixture: each test locally and over ssh)
from fixtures_disk import make_ext4_image, requires_root

BLOCK = 64 * KiB  # --delta's default block


@pytest.fixture
def ssh(sshd, no_helper_left) -> Transport:
    return Transport("ssh", sshd)


def copy_file(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def blocks(size: int, block: int = BLOCK) -> int:
    return -(-size // block)


def assert_identical(source: Path, target: Path) -> None:
    assert target.stat().st_size == source.stat().st_size
    assert sha256_of(target) == sha256_of(source)


def assert_delta_counts(summary: dict, size: int, sent: int, block: int = BLOCK) -> None:
    """blocks_sent is `sent`, and every block of the image was either sent or matched."""
    assert summary["block_size"] == block
    assert summary["blocks_sent"] == sent, summary
    assert summary["blocks_sent"] + summary["blocks_matched"] == blocks(size, block), summary
    assert summary["digest"] == digest_of(summary["source"])


def holders(path: Path) -> list[str]:
    """The pids of processes that have `path` open."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in fds):
                found.append(pid)
        except OSError:
            continue  # gone while we looked, or not ours to read
    return found


def wait_until_closed(path: Path, seconds: float = 10) -> None:
    """A helper cut off from its client exits by itself; until then it holds the target's lock."""
    deadline = time.monotonic() + seconds
    while holders(path):
        assert time.monotonic() < deadline, f"{path} is still held open by {holders(path)}"
        time.sleep(0.05)


@pytest.fixture
def dense_pair(tmp_path) -> tuple[Path, Path]:
    """A 4 MiB random source and an identical copy of it as the target."""
    source = write_file(tmp_path / "source.img", 4 * MiB, {0: random_bytes(4 * MiB, 1)})
    return source, copy_file(source, tmp_path / "target.img")


# ---- sending only what differs ------------------------------------------------------------

def test_delta_sends_only_the_changed_blocks_of_an_ext4_image(ssh, tmp_path) -> None:
    """The issue's scenario: 512 MiB of ext4, 1% changed in 100 scattered runs of 50 KiB."""
    size = 512 * MiB
    source = Path(make_ext4_image(str(tmp_path / "disk.img"), size))
    target = tmp_path / "copy.img"
    assert ssh.dup(source, target).returncode == 0
    rng = random.Random(7)
    stride, run = size // 100, 50 * KiB
    changes = {i * stride + rng.randrange(stride - run): rng.randbytes(run) for i in range(100)}
    write_file(source, size, changes, keep=True)
    assert sha256_of(target) != sha256_of(source)

    summary = ssh.delta(source, target).summary
    assert_identical(source, target)
    assert summary["bytes_sent"] <= 16 * MiB, summary
    assert 100 <= summary["blocks_sent"] <= 200, summary  # a run spans one block or two
    assert summary["blocks_sent"] + summary["blocks_matched"] == blocks(size)
    assert summary["bytes_total"] == size


def test_delta_with_nothing_changed_sends_nothing(transport, dense_pair) -> None:
    source, target = dense_pair
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert summary["bytes_sent"] == 0
    assert_delta_counts(summary, 4 * MiB, sent=0)


def test_delta_with_nothing_changed_leaves_the_target_untouched(transport, dense_pair) -> None:
    source, target = dense_pair
    os.utime(target, ns=(10**18, 10**18))
    assert transport.delta(source, target).summary["blocks_sent"] == 0
    assert target.stat().st_mtime_ns == 10**18  # not a byte written, so no new mtime


def test_delta_onto_a_missing_target_copies_everything(transport, dense_pair) -> None:
    source, target = dense_pair
    target.unlink()
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert_delta_counts(summary, 4 * MiB, sent=blocks(4 * MiB))
    assert summary["bytes_sent"] > 4 * MiB - 64 * KiB  # random data does not compress


def test_delta_onto_a_larger_target_cuts_it_to_the_source_size(transport, dense_pair) -> None:
    source, target = dense_pair
    with open(target, "ab") as f:
        f.write(random_bytes(3 * MiB + 777, 2))
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert_delta_counts(summary, 4 * MiB, sent=0)  # the tail beyond the source is not compared


def test_delta_onto_a_smaller_target_sends_only_the_missing_tail(transport, dense_pair) -> None:
    source, target = dense_pair
    os.truncate(target, 3 * MiB)
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert_delta_counts(summary, 4 * MiB, sent=blocks(1 * MiB))


def test_delta_rewrites_a_changed_last_partial_block(transport, tmp_path) -> None:
    size = 10 * MiB + 12345
    source = write_file(tmp_path / "source.img", size, {0: random_bytes(size, 3)})
    target = copy_file(source, tmp_path / "target.img")
    write_file(source, size, {size - 100: b"x" * 100}, keep=True)
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert_delta_counts(summary, size, sent=1)
    assert 12345 <= summary["bytes_sent"] < 12345 + 1024  # that block, random, and no other


def test_delta_of_an_empty_source_empties_the_target(transport, tmp_path) -> None:
    source = write_file(tmp_path / "empty.img", 0, {})
    target = write_file(tmp_path / "target.img", MiB, {0: random_bytes(MiB, 4)})
    summary = transport.delta(source, target).summary
    assert target.stat().st_size == 0
    assert summary["bytes_sent"] == 0
    assert_delta_counts(summary, 0, sent=0)


@pytest.mark.parametrize("option, block", [("4K", 4 * KiB), ("1M", MiB)])
def test_delta_compares_blocks_of_the_given_size(transport, dense_pair, option, block) -> None:
    source, target = dense_pair
    write_file(source, 4 * MiB, {MiB + 10: b"changed"}, keep=True)
    summary = transport.delta(source, target, "--block-size", option).summary
    assert_identical(source, target)
    assert_delta_counts(summary, 4 * MiB, sent=1, block=block)
    assert summary["bytes_sent"] <= block + 1024


@pytest.mark.parametrize("option", ["3000", "2K", "8M", "96K"])
def test_delta_refuses_a_block_size_not_a_power_of_two_from_4k_to_4m(dense_pair, option,
                                                                     no_helper_left) -> None:
    source, target = dense_pair
    before = sha256_of(target)
    result = bacpac("dup", "--no-progress", "--json", "--delta", "--block-size", option,
                    str(source), str(target))
    result.one_error_line(2, "--block-size", "power of two")
    assert sha256_of(target) == before


def test_delta_zeroes_what_the_source_no_longer_holds(transport, dense_pair) -> None:
    """Zeros written in the source, and a hole punched in it, both become zeros on the target."""
    source, target = dense_pair
    write_file(source, 4 * MiB, {2 * BLOCK: bytes(5 * BLOCK)}, keep=True)
    with open(source, "r+b") as f:  # a hole: os.truncate down and back up frees the tail
        f.truncate(3 * MiB)
        f.truncate(4 * MiB)
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert_delta_counts(summary, 4 * MiB, sent=5 + blocks(MiB))
    assert summary["bytes_sent"] == 0, summary  # zeros cross the wire as HOLE frames


def test_delta_writes_data_where_the_target_had_holes(transport, tmp_path) -> None:
    size = 8 * MiB
    target = write_file(tmp_path / "target.img", size, {0: random_bytes(MiB, 5)})
    source = copy_file(target, tmp_path / "source.img")
    write_file(source, size, {3 * MiB: random_bytes(MiB, 6), size - 5000: b"end" * 1000},
               keep=True)
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert_delta_counts(summary, size, sent=blocks(MiB) + 1)


@requires_root
def test_delta_onto_a_block_device_writes_only_the_source_length(transport, tmp_path,
                                                                 loop_device) -> None:
    device = loop_device(8 * MiB)
    old = random_bytes(8 * MiB, 8)
    with open(device, "r+b") as f:
        f.write(old)
    size = 6 * MiB
    source = write_file(tmp_path / "source.img", size, {0: old[:size]})
    write_file(source, size, {2 * MiB: random_bytes(MiB, 9), 5 * MiB: bytes(MiB)}, keep=True)
    summary = transport.delta(source, device, "--force").summary
    assert sha256_of(device, size) == sha256_of(source)
    with open(device, "rb") as f:
        f.seek(size)
        assert f.read() == old[size:]  # beyond the source's length, the device is untouched
    assert_delta_counts(summary, size, sent=2 * blocks(MiB))


def test_delta_with_saveset_saves_the_whole_new_image(transport, dense_pair, tmp_path) -> None:
    source, target = dense_pair
    write_file(source, 4 * MiB, {MiB: random_bytes(100 * KiB, 10), 3 * MiB: bytes(MiB)},
               keep=True)
    saveset = tmp_path / "disk.zst"
    summary = transport.delta(source, target, "--saveset", str(saveset)).summary
    assert_identical(source, target)
    assert summary["blocks_sent"] < blocks(4 * MiB) // 2, summary
    restored = subprocess.run(["zstd", "-d", "-c", str(saveset)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=True).stdout
    assert hashlib.sha256(restored).hexdigest() == sha256_of(source)
    verified = bacpac("verify", *transport.args(), "--no-progress", transport.target(saveset))
    assert verified.returncode == 0, verified.stderr
    assert summary["sha256"] in verified.stdout


# ---- two levels: 1 MiB pieces first, then the blocks of a piece that differs ---------------

def stock_digest(path: Path) -> str:
    """The image digest as the README tells a user to recompute it, with coreutils."""
    out = subprocess.run(f"split -b 1M --filter=sha256sum '{path}' | sha256sum", shell=True,
                         stdout=subprocess.PIPE, check=True).stdout
    return out.split()[0].decode()


def scatter(path: Path, size: int, seed: int) -> int:
    """Change a few scattered bytes of `path` in place: in 9 blocks of 6 pieces (two blocks
    in one piece, one change across a block edge, one in the short last piece); the number
    of 64 KiB blocks changed."""
    rng = random.Random(seed)
    offsets = [100, 3 * MiB + 5 * BLOCK + 7, 3 * MiB + 12 * BLOCK, 5 * MiB + 2 * BLOCK - 10,
               9 * MiB + 1, 12 * MiB + 15 * BLOCK + 100, size - 50]
    write_file(path, size, {offset: rng.randbytes(20) for offset in offsets}, keep=True)
    return 8  # the one across a block edge changes two


SCATTERED = 13 * MiB + 3 * BLOCK  # a short last piece


@pytest.fixture
def scattered_pair(tmp_path) -> tuple[Path, Path]:
    source = write_file(tmp_path / "source.img", SCATTERED,
                        {0: random_bytes(SCATTERED, 21)})
    target = copy_file(source, tmp_path / "target.img")
    return source, target


def test_delta_of_scattered_changes_sends_exactly_the_changed_blocks(transport,
                                                                     scattered_pair) -> None:
    """The default 64 KiB blocks compare in two levels: whole pieces first, then the blocks
    of the pieces that differ. Exactly the changed blocks go, and the reported digest is the
    one coreutils recompute."""
    source, target = scattered_pair
    changed = scatter(source, SCATTERED, seed=22)
    summary = transport.delta(source, target).summary
    assert_identical(source, target)
    assert_delta_counts(summary, SCATTERED, sent=changed)
    assert summary["digest"] == stock_digest(source)
    # a second run, from the digest cache the first kept (its pieces the first run changed
    # in part are UNKNOWN there: asked for, and answered from the cache's blocks), gives the
    # same
    changed = scatter(source, SCATTERED, seed=23)
    summary = transport.delta(source, target).summary
    assert summary["digest_cache"] == "used", summary
    assert_identical(source, target)
    assert_delta_counts(summary, SCATTERED, sent=changed)
    assert summary["digest"] == stock_digest(source)


def test_delta_with_blocks_of_1m_or_off_the_piece_keeps_one_level(transport,
                                                                 scattered_pair) -> None:
    source, target = scattered_pair
    scatter(source, SCATTERED, seed=24)
    summary = transport.delta(source, target, "--block-size", "2M").summary
    assert_identical(source, target)
    assert_delta_counts(summary, SCATTERED, sent=5, block=2 * MiB)  # blocks 0, 1, 2, 4, 6
    assert summary["digest"] == stock_digest(source)


# ---- the helper's target reader: on Python 3.6, and failing ------------------------------

@pytest.fixture(scope="module")
def python36() -> str:
    """A Python 3.6, the oldest the helper runs on: it has no os.preadv. (pyenv's own, not
    its shim, which may name a version it lacks.)"""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6.*/bin/python3")))
    if not found:
        pytest.skip("no python3.6 on this machine (pyenv install 3.6 brings one)")
    return found[0]


def test_delta_through_a_python_3_6_helper_gives_an_identical_target(transport, dense_pair,
                                                                     python36) -> None:
    source, target = dense_pair
    write_file(source, 4 * MiB, {MiB: random_bytes(3 * BLOCK, 12)}, keep=True)
    summary = transport.delta(source, target, "--remote-python", python36).summary
    assert summary["helper_python"].startswith("3.6."), summary
    assert_identical(source, target)
    assert_delta_counts(summary, 4 * MiB, sent=3)


def test_two_level_delta_and_its_cache_through_a_python_3_6_helper(transport, scattered_pair,
                                                                  python36) -> None:
    source, target = scattered_pair
    for seed, cache in ((25, "none"), (26, "used")):
        changed = scatter(source, SCATTERED, seed=seed)
        summary = transport.delta(source, target, "--remote-python", python36).summary
        assert summary["helper_python"].startswith("3.6."), summary
        assert summary["digest_cache"] == cache, summary
        assert_identical(source, target)
        assert_delta_counts(summary, SCATTERED, sent=changed)
    # a piece every run kept whole: the cache knows its digest, not its blocks' (the helper
    # reads it, as well as the head)
    write_file(source, SCATTERED, {7 * MiB + 100: b"changed"}, keep=True)
    summary = transport.delta(source, target, "--remote-python", python36).summary
    assert summary["digest_cache"] == "used" and summary["target_read"] == 2 * MiB, summary
    assert_identical(source, target)
    assert_delta_counts(summary, SCATTERED, sent=1)


def failed_delta(transport: Transport, source: Path, target, *extra: object) -> str:
    """A --delta dup that must fail within FAIL_WITHIN (not hang); its error line, which the
    JSON's error repeats."""
    run = bacpac(*transport.dup_args(source, target, "--delta", *extra), timeout=FAIL_WITHIN)
    line = assert_failed_in_one_line(run, transport.target(target), "partly written")
    assert run.summary["status"] == "error"
    assert run.summary["error"] == line[len("bacpac: "):]
    return line


@requires_root
def test_delta_onto_a_target_that_cannot_be_read_fails_at_once_naming_it(
        transport, failing_loop_device, tmp_path) -> None:
    device = failing_loop_device(random_bytes(8 * MiB, 13), 16 * MiB)
    source = write_file(tmp_path / "source.img", 16 * MiB, {0: random_bytes(16 * MiB, 14)})
    line = failed_delta(transport, source, device, "--force")
    assert f"read error at byte {8 * MiB}: Input/output error" in line


def test_an_unexpected_error_in_the_helpers_target_reader_ends_the_run(
        transport, dense_pair, tmp_path) -> None:
    """A helper whose os has neither preadv nor pread: its target reader dies of an
    AttributeError, which must reach the client as its ERROR, not leave it waiting."""
    python = tmp_path / "python-without-pread"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S -c 'import os, sys; "
                      "del os.preadv, os.pread; exec(sys.argv[3], {\"__name__\": \"__main__\"})' "
                      "\"$@\"\n")
    python.chmod(0o755)
    source, target = dense_pair
    line = failed_delta(transport, source, target, "--remote-python", python)
    assert "reading the target's segment at byte 0: helper failed: AttributeError" in line


# ---- resuming a dup that was cut off ------------------------------------------------------

@pytest.fixture
def random_image(tmp_path) -> Path:
    """64 MiB of incompressible data: what crosses the wire is the image itself."""
    return write_file(tmp_path / "random.img", 64 * MiB, {0: random_bytes(64 * MiB, 11)})


def test_dup_cut_off_by_a_lost_connection_is_finished_by_delta(ssh, sshd, tcp_proxy,
                                                                random_image, tmp_path) -> None:
    reference = ssh.dup(random_image, tmp_path / "scratch.img")
    assert reference.returncode == 0, reference.stderr
    full = reference.summary["bytes_sent"]
    target = tmp_path / "target.img"
    proxy = tcp_proxy(cut_after=int(0.3 * full) + 300 * KiB)
    cut = bacpac("dup", *proxy.ssh_args(sshd), "--no-progress", "--json",
                 str(random_image), f"testhost:{target}")
    cut.one_error_line(1, "connection", "--delta", f"testhost:{target}")
    assert proxy.cut.is_set()
    assert cut.summary["status"] != "ok", cut.summary
    wait_until_closed(target)
    assert sha256_of(target) != sha256_of(random_image)

    summary = ssh.delta(random_image, target).summary
    assert_identical(random_image, target)
    assert summary["bytes_sent"] < 0.85 * full, (summary["bytes_sent"], full)
    assert summary["blocks_matched"] > 0, summary  # what the first run wrote is kept


def test_dup_whose_client_was_killed_is_finished_by_delta(ssh, random_image, tmp_path) -> None:
    target = tmp_path / "target.img"
    proc = start(*ssh.dup_args(random_image, target), stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_WITHIN
    try:
        while not target.exists() or target.stat().st_blocks * 512 < 0.3 * 64 * MiB:
            assert proc.poll() is None, "the dup ended before it could be killed"
            assert time.monotonic() < deadline, "no 30% of the target written"
            time.sleep(0.002)  # polled closely: the whole dup takes about a second
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    wait_until_closed(target)
    assert sha256_of(target) != sha256_of(random_image)

    summary = ssh.delta(random_image, target).summary
    assert_identical(random_image, target)
    assert summary["blocks_matched"] > 0, summary  # what the first run wrote is kept
    assert summary["bytes_sent"] < 64 * MiB, summary
