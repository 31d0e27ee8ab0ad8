"""Fault injection against the real sshd: every fault fails fast, in one line, leaving nothing.

Each test breaks one thing while `bacpac dup` runs through the command line: the TCP stream cut
(a proxy between client and sshd) during the handshake or mid-transfer, the client killed or
interrupted, the helper killed on the target, a peer that stops answering, a listener that
never speaks, a file system that fills up. Each must end within FAIL_WITHIN seconds with a
non-zero exit and one "bacpac: ..." line naming the cause, leave no helper process, no saveset
and no temporary saveset, and say "--delta" when the target was partly written. An interrupted
dup must not leave a target that looks complete: its first MiB reads as zeros.

Every run is given FAIL_WITHIN seconds before it is killed.
"""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from clirun import (FAIL_WITHIN, REPO, SLOW, MiB, allocated, assert_failed_in_one_line,
                    bacpac, bacpac_env, finish, random_bytes, random_image, start, wait_until)
from clirun import transport  # noqa: F401  (a fixture: each test locally and over ssh)
from fixtures_disk import make_ext4_image, requires_root
from fixtures_sshd import helper_pids

EXT4_MAGIC_OFFSET = 1080  # the superblock at 1024, its s_magic at +56


# ---- helpers ---------------------------------------------------------------------------------

def saveset_leftovers(saveset: Path) -> list[str]:
    """The saveset under its final name, or its temporary file beside it."""
    return sorted(glob.glob(str(saveset)) + glob.glob(str(saveset.parent / f".{saveset.name}.*")))


def head_is_invalidated(target: Path) -> bool:
    with open(target, "rb") as f:
        head = f.read(MiB)
    return head == bytes(len(head))


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_image(tmp_path_factory) -> Path:
    """48 MiB of random data: long enough on the wire to be cut in the middle."""
    return random_image(tmp_path_factory.mktemp("faults") / "random.img", 48 * MiB)


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory) -> Path:
    """A 64 MiB ext4 image (superblock magic at byte 1080) with 16 MiB of random file data."""
    base = tmp_path_factory.mktemp("ext4")
    tree = base / "tree"
    tree.mkdir()
    random_image(tree / "noise.bin", 16 * MiB, seed=1)
    image = base / "disk.img"
    make_ext4_image(str(image), 64 * MiB, fill_dir=str(tree))
    with open(image, "rb") as f:
        f.seek(EXT4_MAGIC_OFFSET)
        assert f.read(2) == b"\x53\xef"
    return image


@pytest.fixture
def outdir(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def dup_args(ssh_args: Sequence[str], source: Path, target: Path, *extra: object) -> list:
    return ["dup", *ssh_args, "--no-progress", *extra, source, f"testhost:{target}"]


# ---- the stream cut ----------------------------------------------------------------------------

def test_cut_during_handshake_fails_naming_the_host_and_writes_nothing(
        no_helper_left, sshd, tcp_proxy, big_image, outdir) -> None:
    proxy = tcp_proxy(cut_after=600)  # past the version line, inside the key exchange
    target = outdir / "t.img"
    run = bacpac(*dup_args(proxy.ssh_args(sshd), big_image, target), timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, "testhost", "handshake", "the server closed the connection")
    assert proxy.cut.is_set()
    assert not target.exists()


def test_cut_mid_transfer_leaves_no_helper_and_no_saveset(
        no_helper_left, sshd, tcp_proxy, big_image, outdir) -> None:
    proxy = tcp_proxy(cut_after=16 * MiB)
    target, saveset = outdir / "t.img", outdir / "disk.bacpac"
    run = bacpac(*dup_args(proxy.ssh_args(sshd), big_image, target, "--saveset", saveset),
                 timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, f"testhost:{target}", "--delta")
    assert proxy.cut.is_set()
    wait_until(lambda: not saveset_leftovers(saveset), 10, "saveset removed")
    assert head_is_invalidated(target)


def test_cut_mid_transfer_leaves_ext4_target_without_a_file_system(
        no_helper_left, sshd, tcp_proxy, ext4_image, outdir) -> None:
    proxy = tcp_proxy(cut_after=12 * MiB)  # of about 17 MiB on the wire
    target = outdir / "t.img"
    run = bacpac(*dup_args(proxy.ssh_args(sshd), ext4_image, target), timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, f"testhost:{target}", "--delta")
    assert proxy.cut.is_set()
    wait_until(lambda: not helper_pids(sshd), 10, "helper gone")
    assert allocated(target) > MiB, "the cut came before any data was written"
    assert head_is_invalidated(target)
    with open(target, "rb") as f:
        f.seek(EXT4_MAGIC_OFFSET)
        assert f.read(2) != b"\x53\xef"
    probe = subprocess.run(["blkid", "-p", str(target)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=10)
    assert "ext4" not in probe.stdout, probe.stdout


# ---- the client or the helper killed -------------------------------------------------------------

def _start_slow_dup(sshd, source: Path, target: Path, saveset: Path, *extra: object) -> tuple:
    """A dup slowed down by --level 19 with a saveset, returned once the target holds data past
    its head. Small blocks, so that the client notices a fault between two of them."""
    began = time.monotonic()
    proc = start(*dup_args(sshd.cli_args(), source, target, *SLOW, "--saveset", saveset,
                           *extra))
    # The saveset is being written too, but unseen: an O_TMPFILE file has no name until done.
    wait_until(lambda: allocated(target) > MiB, 30, "data written to the target", proc)
    assert not saveset_leftovers(saveset), "a saveset is visible before it is complete"
    return proc, began


def test_client_killed_mid_transfer_leaves_no_helper_and_no_saveset(
        no_helper_left, sshd, big_image, outdir) -> None:
    target, saveset = outdir / "t.img", outdir / "disk.bacpac"
    proc, _ = _start_slow_dup(sshd, big_image, target, saveset)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    wait_until(lambda: not saveset_leftovers(saveset), 10, "saveset removed")
    wait_until(lambda: not helper_pids(sshd), 10, "helper gone")
    assert head_is_invalidated(target)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda signum: signal.Signals(signum).name)
def test_client_interrupted_mid_transfer_names_target_and_hints_delta(
        no_helper_left, sshd, big_image, outdir, signum) -> None:
    """Ctrl-C, a shutdown's SIGTERM and a closed terminal's SIGHUP end a run alike: one line
    naming the signal, the same in the JSON with what was done so far, exit 128 + signal."""
    target, saveset = outdir / "t.img", outdir / "disk.bacpac"
    proc, _ = _start_slow_dup(sshd, big_image, target, saveset, "--json")
    interrupted = time.monotonic()
    proc.send_signal(signum)
    run = finish(proc, interrupted, timeout=FAIL_WITHIN)
    name = signal.Signals(signum).name
    line = assert_failed_in_one_line(run, f"interrupted by {name}", str(target), "--delta",
                                     code=128 + signum)
    summary = run.summary
    assert (summary["status"], summary["error"]) == ("error", line[len("bacpac: "):])
    assert summary["bytes_read"] > MiB and summary["bytes_sent"] > MiB, summary
    assert summary["bytes_written"] <= summary["bytes_read"], summary
    wait_until(lambda: not helper_pids(sshd), 10, "helper gone")
    wait_until(lambda: not saveset_leftovers(saveset), 10, "saveset removed")
    assert head_is_invalidated(target)


def kill_helpers(sshd, proc):
    """SIGKILL every helper of `sshd` and wait for the client's end."""
    pids = helper_pids(sshd)
    assert pids, "no helper process found by its marker"
    killed = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return finish(proc, killed, timeout=FAIL_WITHIN)


def test_helper_killed_mid_transfer_fails_in_one_line_and_leaves_no_saveset(
        no_helper_left, sshd, big_image, outdir) -> None:
    target, saveset = outdir / "t.img", outdir / "disk.bacpac"
    proc, _ = _start_slow_dup(sshd, big_image, target, saveset)
    run = kill_helpers(sshd, proc)
    assert_failed_in_one_line(run, "testhost", str(target), "--delta")
    assert head_is_invalidated(target)
    assert saveset_leftovers(saveset) == []


def test_helper_killed_mid_transfer_fails_in_one_line_naming_target_and_delta(
        no_helper_left, sshd, big_image, outdir) -> None:
    target = outdir / "t.img"
    proc = start(*dup_args(sshd.cli_args(), big_image, target, *SLOW))
    wait_until(lambda: allocated(target) > MiB, 30, "data written to the target", proc)
    run = kill_helpers(sshd, proc)
    line = assert_failed_in_one_line(run, f"testhost:{target}", "--delta")
    assert "helper" in line
    assert head_is_invalidated(target)


def test_a_hangup_that_nohup_ignores_does_not_end_the_run(no_helper_left, sshd, outdir) -> None:
    source = random_image(outdir / "source.img", 8 * MiB, seed=3)
    target = outdir / "t.img"
    began = time.monotonic()
    proc = subprocess.Popen(["nohup", sys.executable, "-m", "bacpac",
                             *dup_args(sshd.cli_args(), source, target, *SLOW)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, env=bacpac_env(), cwd=REPO)
    wait_until(lambda: allocated(target) > MiB, 30, "data written to the target", proc)
    proc.send_signal(signal.SIGHUP)
    run = finish(proc, began)
    assert run.returncode == 0, run.stderr
    assert target.read_bytes() == source.read_bytes()


# ---- the source fails ------------------------------------------------------------------------

@requires_root
def test_a_source_read_error_names_the_source_the_offset_and_the_cause(
        transport, failing_loop_device, outdir) -> None:
    source = failing_loop_device(random_bytes(8 * MiB, 2), 16 * MiB)
    target = outdir / "t.img"
    run = bacpac(*transport.dup_args(source, target), timeout=FAIL_WITHIN)
    line = assert_failed_in_one_line(run, f"bacpac: {source}: read error at byte {8 * MiB}: "
                                     "Input/output error", "partly written")
    summary = run.summary
    assert (summary["status"], summary["error"]) == ("error", line[len("bacpac: "):])
    # The blocks before the bad one were read and sent, in order, before it failed.
    assert summary["bytes_read"] == 8 * MiB and summary["bytes_sent"] > 8 * MiB, summary


# ---- a peer that stops answering ----------------------------------------------------------------

def test_frozen_peer_is_dropped_by_server_alive_within_bounds(
        no_helper_left, sshd, tcp_proxy, big_image, outdir) -> None:
    proxy = tcp_proxy(freeze_after=8 * MiB)
    target, saveset = outdir / "t.img", outdir / "disk.bacpac"
    args = [*proxy.ssh_args(sshd), "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"]
    began = time.monotonic()
    proc = start(*dup_args(args, big_image, target, "--saveset", saveset))
    wait_until(proxy.frozen.is_set, 20, "freeze", proc)
    # Without the keepalives, a held stream would hang the run to its deadline: the message
    # says they, not the deadline, ended it.
    run = finish(proc, began, timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, f"testhost:{target}", "no answer from the server for",
                              "--delta")
    # The proxy held the stream: it read no more than the chunk that crossed the freeze.
    assert proxy.bytes_up - proxy.freeze_after < 65536, proxy.bytes_up
    proxy.close()  # the link finally dies: sshd sees it, and the helper gets end of input
    wait_until(lambda: not helper_pids(sshd), 10, "helper gone")
    assert saveset_leftovers(saveset) == []
    assert head_is_invalidated(target)


@pytest.fixture
def silent_listener() -> int:
    """A port that completes TCP handshakes (the backlog) but never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def test_connect_timeout_against_a_listener_that_never_speaks(
        no_helper_left, sshd, silent_listener, big_image, outdir) -> None:
    target = outdir / "t.img"
    args = ["-F", sshd.config_path, "-o", f"Port={silent_listener}", "-o", "ConnectTimeout=2"]
    run = bacpac(*dup_args(args, big_image, target), timeout=FAIL_WITHIN)
    # The message says ConnectTimeout, not the run's deadline, ended it.
    assert_failed_in_one_line(run, "testhost", "handshake", "timed out after 2 s")
    assert not target.exists()


# ---- full file systems --------------------------------------------------------------------------

def test_full_target_file_system_says_no_space_and_leaves_no_saveset(
        no_helper_left, sshd, tmpfs, big_image, outdir) -> None:
    full = Path(tmpfs("8m"))
    target, saveset = full / "t.img", outdir / "disk.bacpac"
    run = bacpac(*dup_args(sshd.cli_args(), big_image, target, "--saveset", saveset),
                 timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, f"testhost:{target}", "No space left on device")
    wait_until(lambda: not saveset_leftovers(saveset), 10, "saveset removed")
