"""Savesets end to end, through the real command line, locally and against a real sshd.

What a new user would try: `dup --saveset` gives an identical target and a saveset that stock
`zstd -d` turns back into the image; the saveset is mode 0600 and alone in its directory;
`verify` passes it and fails a damaged or truncated copy, naming where; `info` shows the image
size in bytes; `restore` writes it back, remote to local and local to remote; `backup` writes a
saveset only. Every command runs as `python -m bacpac` in a subprocess. "ssh" runs go through
the session's OpenSSH server on this machine, so a test reads remote files back directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from clirun import (SLOW, MiB, TRANSPORTS, Result, Transport, bacpac, sha256_of, start,
                    transport_for)
from fixtures_disk import make_ext4_image

IMAGE_SIZE = 17 * MiB + 12345  # not a multiple of the 4 MiB frame size
SEEKABLE_MAGIC = 0x8F92EAB1


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each test locally and over ssh; the leak check is left to each test (no_helper_left),
    as the module-scoped `made` runs are not any one test's."""
    return transport_for(request.param, request)


def zstd_restored_sha256(saveset) -> str:
    """sha256 of what stock `zstd -d -c` makes of a saveset."""
    proc = subprocess.Popen(["zstd", "-d", "-c", "-q", str(saveset)], stdout=subprocess.PIPE)
    digest = hashlib.sha256()
    for chunk in iter(lambda: proc.stdout.read(MiB), b""):
        digest.update(chunk)
    assert proc.wait() == 0, "zstd -d failed"
    return digest.hexdigest()


def write_synthetic_image(path, size: int = IMAGE_SIZE) -> str:
    """An image with random runs, an explicit zero run, a hole, text, and an odd size."""
    rng = _rng(1)
    with open(path, "wb") as f:
        f.write(rng(3 * MiB))
        f.write(bytes(5 * MiB))              # zeros written out
        f.seek(11 * MiB)                     # a hole of 3 MiB
        f.write(b"bacpac saveset test line\n" * (2 * MiB // 25))
        f.write(rng(MiB + 777))
        f.truncate(size)                     # a hole to the (odd) end
    return sha256_of(path)


def _rng(seed: int):
    import random
    generator = random.Random(seed)
    return lambda n: generator.getrandbits(8 * n).to_bytes(n, "little")


def seek_table_offsets(path) -> list[tuple[int, int]]:
    """(file offset, compressed size) of every frame the seek table lists, read by hand."""
    with open(path, "rb") as f:
        data = f.read()
    count, _, magic = struct.unpack("<IBI", data[-9:])
    assert magic == SEEKABLE_MAGIC
    table_start = len(data) - 9 - 12 * count
    offsets, position = [], 0
    for i in range(count):
        compressed = struct.unpack_from("<III", data, table_start + 12 * i)[0]
        offsets.append((position, compressed))
        position += compressed
    return offsets


def stock_digest(image) -> str:
    """The dup's reported digest as a user recomputes it with stock coreutils."""
    out = subprocess.run(f"split -b 1M --filter=sha256sum '{image}' | sha256sum", shell=True,
                         capture_output=True, check=True)
    return out.stdout.split()[0].decode("ascii")


def left_in(directory) -> list[str]:
    return sorted(os.listdir(directory))


@dataclass
class Made:
    """One dup --saveset run, shared by the tests that look at its results."""

    dir: Path
    image: Path
    image_sha256: str
    target: Path
    saveset: Path
    result: Result


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("image") / "disk.img"
    return path, write_synthetic_image(path)


@pytest.fixture(scope="module")
def made(request: pytest.FixtureRequest, image, tmp_path_factory) -> dict[str, Made]:
    """dup --saveset of the synthetic image, once per transport; each in its own directory."""
    runs = {}
    for name in TRANSPORTS:
        where = transport_for(name, request)
        target_dir = tmp_path_factory.mktemp(f"target-{name}")
        saveset_dir = tmp_path_factory.mktemp(f"saveset-{name}")
        target, saveset = target_dir / "disk.img", saveset_dir / "disk.bacpac"
        result = bacpac("dup", *where.args(), "--no-progress", "--json", "--saveset", saveset,
                        image[0], where.target(target))
        runs[name] = Made(saveset_dir, image[0], image[1], target, saveset, result)
    return runs


@pytest.fixture
def one(made: dict[str, Made], transport: Transport) -> Made:
    run = made[transport.name]
    assert run.result.returncode == 0, run.result.stderr
    return run


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, str]:
    """A saveset of a few KiB (a 2 MiB image, mostly zeros) and its image's sha256.

    Small enough that a helper reading it out never blocks on a full pipe: the refusal tests
    use it, so that they time the refusal and not the slow abandoned reader (see
    test_restore_refusal_does_not_wait_for_the_saveset_reader).
    """
    directory = tmp_path_factory.mktemp("small")
    image = directory / "small.img"
    with open(image, "wb") as f:
        f.write(b"a small disk\n" * 1000)
        f.truncate(2 * MiB + 4321)
    saveset = directory / "small.bacpac"
    result = bacpac("backup", "--no-progress", image, saveset)
    assert result.returncode == 0, result.stderr
    return saveset, sha256_of(image)


def corrupt_copy(saveset: Path, directory: Path) -> tuple[Path, int, int]:
    """A copy with one byte flipped in the middle; (copy, data frame index, its offset)."""
    data = bytearray(saveset.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    copy = directory / "flipped.bacpac"
    copy.write_bytes(bytes(data))
    frames = seek_table_offsets(saveset)
    for index, (offset, size) in enumerate(frames):
        if offset <= middle < offset + size:
            assert 0 < index < len(frames) - 1, "the middle byte is not in a data frame"
            return copy, index - 1, offset
    raise AssertionError("the middle byte is in no frame")


# --- dup --saveset ------------------------------------------------------------------------------

def test_dup_saveset_gives_identical_target_and_saveset_zstd_restores(one: Made):
    summary = one.result.summary
    assert summary["status"] == "ok"
    assert summary["sha256"] == one.image_sha256
    assert summary["saveset"] == str(one.saveset)
    assert sha256_of(one.target) == one.image_sha256
    assert zstd_restored_sha256(one.saveset) == one.image_sha256


def test_dup_saveset_is_mode_0600_and_alone_in_its_directory(one: Made):
    assert stat.S_IMODE(os.stat(one.saveset).st_mode) == 0o600
    assert left_in(one.dir) == [one.saveset.name]


def test_dup_saveset_into_missing_directory_refused(transport: Transport, image, tmp_path,
                                                    no_helper_left):
    missing = tmp_path / "nowhere"
    result = bacpac("dup", *transport.args(), "--no-progress", "--saveset",
                    missing / "disk.bacpac", image[0], transport.target(tmp_path / "t.img"))
    assert result.returncode != 0
    assert str(missing) in result.error_line
    assert not missing.exists()


def test_dup_saveset_into_missing_directory_creates_no_target(transport: Transport, image, tmp_path,
                                                              no_helper_left):
    result = bacpac("dup", *transport.args(), "--no-progress", "--saveset",
                    tmp_path / "nowhere" / "disk.bacpac", image[0],
                    transport.target(tmp_path / "t.img"))
    assert result.returncode != 0
    assert left_in(tmp_path) == []


def test_dup_saveset_into_missing_directory_leaves_existing_target_untouched(
        transport: Transport, image, tmp_path, no_helper_left):
    target = tmp_path / "t.img"
    target.write_bytes(b"precious" * 4096)
    result = bacpac("dup", *transport.args(), "--no-progress", "--saveset",
                    tmp_path / "nowhere" / "disk.bacpac", image[0], transport.target(target))
    assert result.returncode != 0
    assert target.read_bytes() == b"precious" * 4096


def test_dup_saveset_on_full_disk_says_no_space_and_leaves_nothing(
        transport: Transport, tmpfs, tmp_path, no_helper_left):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    full = Path(tmpfs("8m"))
    source = tmp_path / "random.img"
    source.write_bytes(_rng(2)(64 * MiB))  # incompressible: the saveset cannot fit in 8 MiB
    saveset = full / "disk.bacpac"
    result = bacpac("dup", *transport.args(), "--no-progress", "--saveset", saveset, source,
                    transport.target(tmp_path / "t.img"))
    assert result.returncode == 1, result.stderr
    assert "No space left on device" in result.error_line
    assert str(saveset) in result.error_line
    assert left_in(full) == []


def test_dup_saveset_client_killed_leaves_no_saveset_and_no_helper(
        transport: Transport, tmp_path, no_helper_left):
    source = tmp_path / "slow.img"
    sixteen_letters = bytes(65 + b % 16 for b in range(256))
    with open(source, "wb") as f:  # compressible, but not trivially: slow at level 19
        f.write(_rng(3)(16 * MiB).translate(sixteen_letters))
    saveset_dir = tmp_path / "savesets"
    saveset_dir.mkdir()
    proc = start("dup", *transport.args(), "--no-progress", *SLOW, "--saveset",
                 saveset_dir / "disk.bacpac", source, transport.target(tmp_path / "t.img"),
                 stdout=subprocess.DEVNULL)
    target = tmp_path / "t.img"
    try:
        deadline = time.monotonic() + 30
        # The saveset grows unseen (O_TMPFILE); the target, written alongside, shows progress.
        while not (target.exists() and target.stat().st_blocks * 512 > 2 * MiB):
            assert proc.poll() is None, "dup ended before it could be killed: " + \
                proc.stderr.read()
            assert time.monotonic() < deadline, "no data written after 30 s"
            time.sleep(0.05)
        assert left_in(saveset_dir) == [], "a saveset is visible before it is complete"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    deadline = time.monotonic() + 10
    while left_in(saveset_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left_in(saveset_dir) == []


# --- verify -------------------------------------------------------------------------------------

def test_verify_passes_the_saveset(one: Made, transport: Transport, no_helper_left):
    result = bacpac("verify", *transport.args(), transport.target(one.saveset))
    assert result.returncode == 0, result.stderr
    assert ": ok," in result.stdout
    assert one.image_sha256 in result.stdout
    assert str(IMAGE_SIZE) in result.stdout


def test_verify_json_reports_ok_and_image_sha256(one: Made, transport: Transport, no_helper_left):
    result = bacpac("verify", *transport.args(), "--json", transport.target(one.saveset))
    assert result.returncode == 0, result.stderr
    assert result.summary["status"] == "ok"
    assert result.summary["sha256"] == one.image_sha256
    assert result.summary["bytes_total"] == IMAGE_SIZE


def test_verify_names_frame_and_offset_of_a_flipped_byte(one: Made, transport: Transport, tmp_path,
                                                         no_helper_left):
    copy, index, offset = corrupt_copy(one.saveset, tmp_path)
    result = bacpac("verify", *transport.args(), transport.target(copy))
    assert result.returncode == 1, result.stdout
    assert f"frame {index} at byte {offset}" in result.error_line
    assert str(copy) in result.error_line


def test_verify_fails_a_saveset_with_its_last_4k_cut_off(one: Made, transport: Transport, tmp_path,
                                                         no_helper_left):
    copy = tmp_path / "cut.bacpac"
    copy.write_bytes(one.saveset.read_bytes()[:-4096])
    result = bacpac("verify", *transport.args(), transport.target(copy))
    assert result.returncode == 1, result.stdout
    assert "truncated" in result.error_line or "seek table" in result.error_line
    assert str(copy) in result.error_line


def test_verify_says_a_file_is_not_a_bacpac_saveset(transport: Transport, image, no_helper_left):
    result = bacpac("verify", *transport.args(), transport.target(image[0]))
    assert result.returncode == 1
    assert "not a bacpac saveset" in result.error_line
    assert str(image[0]) in result.error_line


@pytest.mark.parametrize("command", ["verify", "info"])
def test_missing_saveset_is_named(command: str, transport: Transport, tmp_path, no_helper_left):
    missing = tmp_path / "no.bacpac"
    result = bacpac(command, *transport.args(), transport.target(missing))
    assert result.returncode == 1
    assert str(missing) in result.error_line
    assert "No such file or directory" in result.error_line


# --- info ---------------------------------------------------------------------------------------

def test_info_shows_image_size_in_bytes(one: Made, transport: Transport, no_helper_left):
    result = bacpac("info", *transport.args(), transport.target(one.saveset))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["kind"] == "disk"
    assert lines["size"].startswith(f"{IMAGE_SIZE} bytes")
    assert lines["source"].endswith(f":{one.image}")
    assert lines["sha256"] == one.image_sha256
    assert "ratio" in lines["compressed"]


def test_info_json_gives_sizes_frames_ratio_and_source(one: Made, transport: Transport,
                                                       no_helper_left):
    result = bacpac("info", *transport.args(), "--json", transport.target(one.saveset))
    assert result.returncode == 0, result.stderr
    info = result.summary
    assert info["size"] == IMAGE_SIZE
    assert info["frames"] == len(seek_table_offsets(one.saveset)) - 2 >= IMAGE_SIZE // (4 * MiB)
    assert 0 < info["compressed"] < os.path.getsize(one.saveset)
    assert info["ratio"] == pytest.approx(IMAGE_SIZE / info["compressed"], rel=1e-3)
    assert info["metadata"]["kind"] == "disk"
    assert info["metadata"]["source_path"] == str(one.image)
    assert info["metadata"]["bacpac_version"]
    assert info["metadata"]["created"]
    assert info["trailer"]["sha256"] == one.image_sha256


def test_info_json_has_its_command_and_status(one: Made, transport: Transport, no_helper_left):
    result = bacpac("info", *transport.args(), "--json", transport.target(one.saveset))
    assert result.returncode == 0, result.stderr
    assert (result.summary["command"], result.summary["status"]) == ("info", "ok")


@pytest.mark.parametrize("host", ["standby:", ""], ids=["remote", "local"])
@pytest.mark.parametrize("stage", ["connecting", "waiting"])
def test_info_interrupted_before_the_helper_answers_names_host_and_path(
        host: str, stage: str, tmp_path, monkeypatch, capsys):
    """Ctrl-C during a slow login, or before the helper's RESULT: the line names the saveset."""
    from bacpac import cli
    from bacpac.commands import savesets

    class Answerless:
        def request(self, *args, **kwargs):
            raise KeyboardInterrupt()

        def close(self):
            pass

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(savesets, "open_session",
                        ctrl_c if stage == "connecting" else lambda *a, **k: Answerless())
    path = tmp_path / "some.saveset"
    args = cli.build_parser().parse_args(["info", "--json", f"{host}{path}"])
    assert cli.run(args.run, args) == 128 + signal.SIGINT
    out, err = capsys.readouterr()
    assert err == f"bacpac: {host}{path}: interrupted by SIGINT\n"
    assert json.loads(out)["error"] == f"{host}{path}: interrupted by SIGINT"


# --- the image digest: the dup's, in every command on its saveset (format 3) ------------------

def test_info_verify_and_restore_report_the_dup_s_sha256_1m(one: Made, transport: Transport,
                                                             tmp_path, no_helper_left):
    expected = stock_digest(one.image)
    dup = one.result.summary
    assert (dup["digest"], dup["digest_algorithm"]) == (expected, "sha256-1m")
    described = bacpac("info", *transport.args(), "--json", transport.target(one.saveset))
    verified = bacpac("verify", *transport.args(), "--json", transport.target(one.saveset))
    restored = bacpac("restore", *transport.args(), "--no-progress", "--json",
                      transport.target(one.saveset), tmp_path / "restored.img")
    for run in (described, verified, restored):
        assert run.returncode == 0, run.stderr
        assert run.summary["digest"] == expected, run.summary
        assert run.summary["digest_algorithm"] == "sha256-1m"
        assert run.summary["sha256"] == one.image_sha256
    assert stock_digest(tmp_path / "restored.img") == expected
    text = bacpac("verify", *transport.args(), transport.target(one.saveset))
    assert f"sha256-1m {expected}" in text.stdout
    lines = dict(line.split(None, 1) for line in bacpac(
        "info", *transport.args(), transport.target(one.saveset)).stdout.splitlines())
    assert lines["digest"] == f"{expected} (sha256-1m)"


def test_restore_verify_rereads_the_target_and_proves_the_dup_s_digest(one: Made, tmp_path,
                                                                       no_helper_left):
    target = tmp_path / "restored.img"
    run = bacpac("restore", "--no-progress", "--json", "--verify", one.saveset, target)
    assert run.returncode == 0, run.stderr
    assert run.summary["verified"] is True
    assert run.summary["digest"] == stock_digest(target) == one.result.summary["digest"]
    assert run.summary["sha256"] == one.image_sha256 == sha256_of(target)


V2_SAVESET = Path(__file__).parent / "data" / "saveset-v2.bacpac"  # before the image digest


def test_restore_of_a_version_2_saveset_reports_its_computed_digest(transport: Transport,
                                                                    tmp_path, no_helper_left):
    target = tmp_path / "restored.img"
    result = bacpac("restore", *transport.args(), "--no-progress", "--json",
                    transport.target(V2_SAVESET), target)
    assert result.returncode == 0, result.stderr
    assert result.summary["sha256"] == sha256_of(target)
    assert result.summary["digest"] == stock_digest(target)
    described = bacpac("info", *transport.args(), "--json", transport.target(V2_SAVESET))
    assert described.summary["digest"] is None and described.summary["metadata"]["version"] == 2
    lines = dict(line.split(None, 1) for line in bacpac(
        "info", *transport.args(), transport.target(V2_SAVESET)).stdout.splitlines())
    assert lines["digest"] == "none in format version 2 (verify computes it)"
    verified = bacpac("verify", *transport.args(), transport.target(V2_SAVESET))
    assert f"sha256-1m {stock_digest(target)}" in verified.stdout


# --- restore ------------------------------------------------------------------------------------

@pytest.mark.parametrize("saveset_side, target_side",
                         [("ssh", "local"), ("local", "ssh"), ("local", "local")])
def test_restore_gives_the_image(saveset_side: str, target_side: str, made, tmp_path,
                                 request, no_helper_left):
    run = made[saveset_side]
    where_saveset = transport_for(saveset_side, request)
    where_target = transport_for(target_side, request)
    target = tmp_path / "restored.img"
    result = bacpac("restore", *(where_saveset.args() or where_target.args()), "--no-progress",
                    "--json", where_saveset.target(run.saveset), where_target.target(target))
    assert result.returncode == 0, result.stderr
    assert result.summary["sha256"] == run.image_sha256
    assert sha256_of(target) == run.image_sha256


def test_restore_of_mostly_empty_image_writes_a_sparse_file(request, tmp_path, no_helper_left):
    ssh = transport_for("ssh", request)
    image = Path(make_ext4_image(str(tmp_path / "ext4.img"), 64 * MiB))
    saveset = tmp_path / "ext4.bacpac"
    backup = bacpac("backup", *ssh.args(), "--no-progress", image, ssh.target(saveset))
    assert backup.returncode == 0, backup.stderr
    target = tmp_path / "restored.img"
    result = bacpac("restore", *ssh.args(), "--no-progress", ssh.target(saveset), target)
    assert result.returncode == 0, result.stderr
    assert sha256_of(target) == sha256_of(image)
    assert os.stat(target).st_blocks * 512 < 32 * MiB


def test_restore_onto_block_device_needs_force(small, transport: Transport, loop_device,
                                               no_helper_left):
    saveset, image_sha256 = small
    device = loop_device(4 * MiB)
    with open(device, "rb") as f:
        before = hashlib.sha256(f.read()).hexdigest()
    refused = bacpac("restore", *transport.args(), "--no-progress", transport.target(saveset),
                     device)
    assert refused.returncode == 2
    assert "--force" in refused.error_line
    assert device in refused.error_line
    with open(device, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before
    forced = bacpac("restore", *transport.args(), "--no-progress", "--force",
                    transport.target(saveset), device)
    assert forced.returncode == 0, forced.stderr
    assert sha256_of(device, 2 * MiB + 4321) == image_sha256


@pytest.mark.parametrize("target_side", TRANSPORTS)
def test_restore_refuses_the_saveset_as_its_own_target(target_side: str, small, tmp_path,
                                                       request, no_helper_left):
    saveset = tmp_path / "self.bacpac"
    saveset.write_bytes(small[0].read_bytes())
    where = transport_for(target_side, request)
    result = bacpac("restore", *where.args(), "--no-progress", "--force", saveset,
                    where.target(saveset))
    assert result.returncode == 2, result.stderr
    assert "source itself" in result.error_line
    assert saveset.read_bytes() == small[0].read_bytes()


def test_restore_refusal_does_not_wait_for_the_saveset_reader(made, tmp_path, no_helper_left):
    """Both helpers end by themselves, the reader at the end of its input: one left waiting
    would be killed by the client 10 s on, and never log its exit."""
    target = tmp_path / "self.bacpac"
    target.write_bytes(made["local"].saveset.read_bytes())
    exits = tmp_path / "exits"
    python = tmp_path / "logging-python"
    python.write_text(f"#!/bin/sh\n{sys.executable} \"$@\"\necho $? >> {exits}\n")
    python.chmod(0o755)
    result = bacpac("restore", "--no-progress", "--force", "--remote-python", python, target,
                    target)
    assert result.returncode == 2, result.stderr
    assert exits.read_text().split() == ["1", "1"]  # the writer refused, the reader saw EOF


def test_restore_from_corrupted_saveset_says_damaged_and_restore_from_another(
        one: Made, transport: Transport, tmp_path, no_helper_left):
    copy, index, offset = corrupt_copy(one.saveset, tmp_path)
    target = tmp_path / "restored.img"
    verified = bacpac("verify", *transport.args(), transport.target(copy))
    result = bacpac("restore", *transport.args(), "--no-progress", "--json",
                    transport.target(copy), target)
    line = result.one_error_line(1, f"frame {index} at byte {offset}", "saveset is damaged",
                                 "partly written", "another saveset", alone=False)
    assert "--delta" not in line and "again" not in line
    assert line.startswith(verified.one_error_line(1)), "restore and verify disagree"
    summary = result.summary
    assert summary["error"] == line[len("bacpac: "):]
    # The JSON says what was done: every frame before the bad one, which is never sent.
    assert summary["bytes_read"] == index * 4 * MiB, summary


def changed_metadata(saveset: Path, key: str, directory: Path) -> Path:
    """A copy whose metadata field `key` has one character changed, still valid JSON."""
    raw = saveset.read_bytes()
    at = raw.index(b'"%s": ' % key.encode()) + len(key) + 4
    at += raw[at:at + 1] == b'"'  # into a string value, past its quote
    old = raw[at]
    new = old + 1 if 0x31 <= old <= 0x38 else (0x38 if old == 0x39 else old ^ 0x01)
    copy = directory / f"changed-{key}.bacpac"
    copy.write_bytes(raw[:at] + bytes([new]) + raw[at + 1:])
    return copy


def saveset_commands_fail_alike(transport: Transport, saveset: Path, tmp_path: Path,
                                *words: str) -> str:
    """verify, info and restore of a damaged saveset: each exits 1 with the same message,
    holding `words`, and the restore creates no target."""
    target = tmp_path / "restored.img"
    lines = []
    for command in ("verify", "info", "restore"):
        args = [transport.target(saveset)] + ([target] if command == "restore" else [])
        result = bacpac(command, *transport.args(), "--no-progress", *args)
        lines.append(result.one_error_line(1, str(saveset), *words))
    assert len(set(lines)) == 1, lines
    assert not target.exists()
    return lines[0]


@pytest.mark.parametrize("key", ["source_path", "created", "frame_size", "kind", "size"])
def test_verify_info_and_restore_refuse_a_changed_metadata_field(key: str, small, tmp_path,
                                                                 request, no_helper_left):
    copy = changed_metadata(small[0], key, tmp_path)
    saveset_commands_fail_alike(transport_for("local", request), copy, tmp_path,
                                "metadata frame at byte 0: damaged")


def test_verify_info_and_restore_refuse_a_changed_source_path_over_ssh(small, tmp_path, request,
                                                                        no_helper_left):
    copy = changed_metadata(small[0], "source_path", tmp_path)
    saveset_commands_fail_alike(transport_for("ssh", request), copy, tmp_path,
                                "metadata frame at byte 0: damaged", "testhost:")


V1_SAVESET = Path(__file__).parent / "data" / "saveset-v1.bacpac"  # made by bacpac 0.1.0
V1_IMAGE_SHA256 = "6e9e08fc565c09a1b1a832d5584c7ff70de9bb69316e979fea74cb26254b8879"
UNCHECKED = "version 1: its metadata, such as the source and the creation time, is not covered"


def test_verify_passes_a_version_1_saveset_and_says_its_metadata_is_unchecked(
        transport: Transport, no_helper_left):
    result = bacpac("verify", *transport.args(), transport.target(V1_SAVESET))
    assert result.returncode == 0, result.stderr
    assert V1_IMAGE_SHA256 in result.stdout and UNCHECKED in result.stdout
    as_json = bacpac("verify", *transport.args(), "--json", transport.target(V1_SAVESET))
    assert as_json.summary["metadata_checked"] is False and as_json.summary["version"] == 1


def test_info_of_a_version_1_saveset_says_its_metadata_is_unchecked(transport: Transport,
                                                                      no_helper_left):
    result = bacpac("info", *transport.args(), transport.target(V1_SAVESET))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["format"].startswith(UNCHECKED)
    assert lines["sha256"] == V1_IMAGE_SHA256


def test_restore_of_a_version_1_saveset_gives_the_image(transport: Transport, tmp_path,
                                                        no_helper_left):
    target = tmp_path / "restored.img"
    result = bacpac("restore", *transport.args(), "--no-progress", "--json",
                    transport.target(V1_SAVESET), target)
    assert result.returncode == 0, result.stderr
    assert sha256_of(target) == V1_IMAGE_SHA256 == result.summary["sha256"]


def test_info_shows_the_format_version(one: Made, transport: Transport, no_helper_left):
    result = bacpac("info", *transport.args(), transport.target(one.saveset))
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["format"] == "version 3"


# --- backup -------------------------------------------------------------------------------------

def test_backup_gives_saveset_that_zstd_restores_and_verify_passes(
        transport: Transport, image, tmp_path, no_helper_left):
    saveset = tmp_path / "backup.bacpac"
    result = bacpac("backup", *transport.args(), "--no-progress", "--json", image[0],
                    transport.target(saveset))
    assert result.returncode == 0, result.stderr
    assert result.summary["sha256"] == image[1]
    assert stat.S_IMODE(os.stat(saveset).st_mode) == 0o600
    assert left_in(tmp_path) == ["backup.bacpac"]
    assert zstd_restored_sha256(saveset) == image[1]
    verify = bacpac("verify", *transport.args(), "--json", transport.target(saveset))
    assert verify.returncode == 0, verify.stderr
    assert verify.summary["sha256"] == image[1]
