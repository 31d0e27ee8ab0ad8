"""bacpac dup end to end, through the real command line, locally and against a real sshd.

Every test runs `python -m bacpac dup` as a subprocess, so what is checked is what a user sees:
the exit code, the one error line on stderr, the JSON summary, and the target's bytes. The data
tests run twice: "local" (the helper as a local subprocess) and "ssh" (testhost:PATH through
the session's OpenSSH server, which runs on this machine, so the test reads the target back
directly).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bacpac.commands.jobs import check_result
from bacpac.errors import VerifyError
from bacpac.engine.pacing import LOCAL_LEVEL, START_LEVEL
from bacpac.transport.helper import helper_payload
from clirun import MiB, allocated, bacpac, bacpac_env, digest_of, sha256_of, write_file
from clirun import transport  # noqa: F401  (a fixture: each test locally and over ssh)
from remote_helper.wire.zstdframe import USUAL_PLACES
from fixtures_disk import make_ext4_image, mkfs_and_mount, partition_disk, requires_root, run


def fill_device(device: str, data: bytes, offset: int = 0) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory) -> Path:
    """A 64 MiB ext4 image holding a few MB of files: more than half of it is empty."""
    path = tmp_path_factory.mktemp("ext4") / "disk.img"
    make_ext4_image(str(path), 64 * MiB)
    return path


# ---- copies -------------------------------------------------------------------------------

def test_dup_copies_ext4_image_byte_for_byte_with_json_summary(transport, ext4_image,
                                                               tmp_path) -> None:
    target = tmp_path / "copy.img"
    result = transport.dup(ext4_image, target)
    assert result.returncode == 0, result.stderr
    size = ext4_image.stat().st_size
    assert target.stat().st_size == size
    assert sha256_of(target) == sha256_of(ext4_image)
    summary = result.summary
    for key in ("command", "status", "source", "target", "saveset", "bytes_total", "bytes_read",
                "bytes_sent", "bytes_written", "seconds", "sha256", "digest", "digest_algorithm",
                "error"):
        assert key in summary, key
    assert summary["command"] == "dup"
    assert summary["status"] == "ok"
    assert summary["error"] is None
    assert summary["source"] == str(ext4_image)
    assert summary["target"] == transport.target(target)
    assert summary["digest"] == digest_of(ext4_image)
    assert summary["digest_algorithm"] == "sha256-1m"
    assert summary["sha256"] is None  # not asked for: a pass over every byte, holes included
    assert summary["bytes_total"] == size
    assert summary["bytes_read"] == size
    assert summary["bytes_written"] == size
    assert 0 < summary["bytes_sent"] < size // 2
    assert summary["seconds"] >= 0


def test_dup_leaves_target_sparse_with_exact_size(transport, tmp_path) -> None:
    size = 64 * MiB
    data = {10 * MiB: os.urandom(MiB), 40 * MiB + 4096: os.urandom(5000)}
    source = write_file(tmp_path / "source.img", size, data)
    target = tmp_path / "copy.img"
    result = transport.dup(source, target)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_size == size
    assert sha256_of(target) == sha256_of(source)
    assert allocated(target) < 4 * MiB
    assert result.summary["bytes_sent"] < 2 * MiB


def test_dup_does_not_write_zero_blocks_of_a_dense_source(transport, tmp_path) -> None:
    size = 32 * MiB
    source = tmp_path / "zeros.img"
    source.write_bytes(bytes(size))  # written zeros, not holes
    assert allocated(source) >= size
    target = tmp_path / "copy.img"
    result = transport.dup(source, target)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_size == size
    assert sha256_of(target) == hashlib.sha256(bytes(size)).hexdigest()
    assert allocated(target) < MiB
    assert result.summary["bytes_sent"] < MiB


def test_dup_skips_zero_runs_inside_blocks(transport, tmp_path) -> None:
    size = 64 * MiB
    image = bytearray(size)  # written densely: every block is data, mostly zeros
    for offset in range(2 * MiB, size, 4 * MiB):
        image[offset:offset + 100] = os.urandom(100)
    source = tmp_path / "dense.img"
    source.write_bytes(image)
    target = tmp_path / "copy.img"
    result = transport.dup(source, target)
    assert result.returncode == 0, result.stderr
    assert sha256_of(target) == hashlib.sha256(image).hexdigest()
    assert allocated(target) < 8 * MiB


def test_dup_copies_fully_random_source(transport, tmp_path) -> None:
    data = os.urandom(16 * MiB)
    source = tmp_path / "random.img"
    source.write_bytes(data)
    target = tmp_path / "copy.img"
    result = transport.dup(source, target)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data
    summary = result.summary
    assert summary["digest"] == digest_of(source)
    assert summary["bytes_written"] == len(data)
    assert summary["bytes_sent"] >= len(data) * 0.99  # random data does not compress


def test_dup_copies_source_of_unaligned_size(transport, tmp_path) -> None:
    size = 10 * MiB + 1234
    data = {0: os.urandom(3000), 4 * MiB - 100: os.urandom(200), size - 777: os.urandom(777)}
    source = write_file(tmp_path / "odd.img", size, data)
    target = tmp_path / "copy.img"
    result = transport.dup(source, target)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_size == size
    assert target.read_bytes() == source.read_bytes()
    assert result.summary["bytes_total"] == size
    assert result.summary["digest"] == digest_of(source)


def test_dup_with_sha256_reports_the_plain_sha256_too(transport, ext4_image, tmp_path) -> None:
    target = tmp_path / "copy.img"
    result = transport.dup(ext4_image, target, "--sha256", "--verify")
    assert result.returncode == 0, result.stderr
    assert result.summary["sha256"] == sha256_of(ext4_image) == sha256_of(target)
    assert result.summary["digest"] == digest_of(ext4_image)


def test_dup_truncates_larger_existing_target_to_source_size(transport, ext4_image,
                                                             tmp_path) -> None:
    target = tmp_path / "old.img"
    target.write_bytes(os.urandom(8 * MiB) * 10)  # 80 MiB of old data, larger than the source
    result = transport.dup(ext4_image, target)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_size == ext4_image.stat().st_size
    assert sha256_of(target) == sha256_of(ext4_image)


def test_dup_overwrites_old_data_where_the_source_has_holes(transport, tmp_path) -> None:
    size = 8 * MiB
    source = write_file(tmp_path / "source.img", size, {3 * MiB: os.urandom(4096)})
    target = tmp_path / "old.img"
    target.write_bytes(os.urandom(size))
    result = transport.dup(source, target)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == source.read_bytes()


def test_dup_verify_rereads_target_and_passes(transport, ext4_image, tmp_path) -> None:
    target = tmp_path / "copy.img"
    result = transport.dup(ext4_image, target, "--verify")
    assert result.returncode == 0, result.stderr
    assert result.summary["status"] == "ok"
    assert result.summary["digest"] == digest_of(target) == digest_of(ext4_image)


FLIP_AT = 2 * MiB + 12345  # past the held-back head, in random data: a byte the helper writes


def flipping_python(tmp_path: Path, target: Path) -> Path:
    """A remote python whose helper flips one bit of the byte at FLIP_AT of `target` as it
    writes it: a disk that corrupts what it is given. The helper's own checks see the bytes it
    meant to write; only a re-read of the disk (--verify) sees what is there."""
    script = tmp_path / "flipping-python"
    script.write_text(f"""#!{sys.executable} -S
import mmap, os, sys
real_pwrite = os.pwrite
def pwrite(fd, data, offset):
    view = memoryview(data)
    if (offset <= {FLIP_AT} < offset + len(view)
            and os.path.realpath("/proc/self/fd/%d" % fd) == {str(target)!r}):
        flipped = mmap.mmap(-1, len(view))  # page-aligned, as a direct write wants it
        flipped[:] = view
        flipped[{FLIP_AT} - offset] ^= 1
        view = memoryview(flipped)
    return real_pwrite(fd, view, offset)
os.pwrite = pwrite
code = sys.argv[sys.argv.index("-c") + 1]  # run as `python -S -c STAGE1 MARKER` would
sys.argv = ["-c"] + sys.argv[sys.argv.index("-c") + 2:]
exec(compile(code, "<string>", "exec"), {{"__name__": "__main__"}})
""")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("verify", [False, True], ids=["unverified", "verify"])
def test_dup_verify_catches_a_target_that_was_written_wrong(transport, tmp_path, verify) -> None:
    source = write_file(tmp_path / "source.img", 4 * MiB, {0: os.urandom(4 * MiB)})
    target = tmp_path / "copy.img"
    result = transport.dup(source, target, "--remote-python", flipping_python(tmp_path, target),
                           *(["--verify"] if verify else []))
    with open(target, "rb") as written, open(source, "rb") as meant:
        written.seek(FLIP_AT)
        meant.seek(FLIP_AT)
        assert written.read(1)[0] == meant.read(1)[0] ^ 1  # the disk holds the flipped bit
    if not verify:  # every check of the helper's passes: the bytes it hashed were right
        assert result.returncode == 0, result.stderr
        return
    line = result.one_error_line(1, transport.target(target), digest_of(source), alone=False)
    assert f"re-read of the target gave digest {digest_of(target)}" in line
    assert result.summary["status"] == "error"


def test_dup_without_json_prints_nothing_on_stdout(tmp_path, no_helper_left) -> None:
    source = write_file(tmp_path / "source.img", MiB, {0: b"x" * 100})
    result = bacpac("dup", "--no-progress", str(source), str(tmp_path / "copy.img"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert (tmp_path / "copy.img").read_bytes() == source.read_bytes()


def _bare_python(tmp_path: Path, path: str, hide_tool: bool = True) -> str:
    """A remote python on which zstandard will not import, PATH set to `path`; with
    `hide_tool`, it runs in a mount namespace of its own where the zstd tool is not in the
    usual places either, which the helper searches after PATH. (The helper runs with -S but
    searches site-packages itself, so -S alone no longer hides zstandard: a package of that
    name earlier on the path does, as a host without it would.)"""
    hide = tmp_path / "hide" / "zstandard"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('zstandard hidden by the test')\n")
    run = f"PATH={path} PYTHONPATH={hide.parent} exec {sys.executable} \"$@\""
    if hide_tool:
        mounts = "; ".join(f"[ ! -e {place}/zstd ] || mount --bind /dev/null {place}/zstd"
                           for place in USUAL_PLACES)
        run = f"exec unshare --mount --map-root-user /bin/sh -c '{mounts}; {run}' sh \"$@\""
    script = tmp_path / "bare-python"
    script.write_text(f"#!/bin/sh\n{run}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("path,hide_tool,codec,zstd,check", [
    (os.environ["PATH"], False, "zstd", "cli", "frames"),
    ("/nonexistent", False, "zstd", "cli", "frames"),
    ("/nonexistent", True, "zlib", "", "sha256"),
], ids=["zstd_tool", "zstd_tool_off_the_path", "zlib"])
def test_helper_without_zstandard_falls_back_and_still_proves_the_copy(
        tmp_path, path: str, hide_tool: bool, codec: str, zstd: str, check: str) -> None:
    data = os.urandom(MiB) + bytes(2 * MiB) + b"tail" * (MiB // 4)
    source = write_file(tmp_path / "source.img", len(data), {0: data})
    target = tmp_path / "copy.img"
    result = bacpac("dup", "--json", "--sha256", "--remote-python",
                    _bare_python(tmp_path, path, hide_tool), str(source), str(target))
    assert result.returncode == 0, result.stderr
    summary = result.summary
    assert (summary["codec"], summary["zstd"], summary["check"]) == (codec, zstd, check)
    assert summary["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary["digest"] == digest_of(source)
    assert target.read_bytes() == data


def test_a_saveset_on_a_host_without_zstd_is_refused_with_nothing_written(tmp_path) -> None:
    source = write_file(tmp_path / "source.img", 4 * MiB, {0: os.urandom(2 * MiB)})
    target, saveset = tmp_path / "copy.img", tmp_path / "copy.saveset"
    result = bacpac("dup", "--no-progress", "--saveset", saveset, "--remote-python",
                    _bare_python(tmp_path, "/nonexistent"), str(source), str(target))
    line = result.one_error_line(2, "a saveset needs zstd on the target")
    assert "partly written" not in line
    assert not target.exists() and not saveset.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare-python", "hide", "source.img"]


def test_a_saveset_is_written_by_the_zstd_tool_off_the_helpers_path(tmp_path) -> None:
    data = os.urandom(2 * MiB)
    source = write_file(tmp_path / "source.img", 4 * MiB, {0: data})
    target, saveset = tmp_path / "copy.img", tmp_path / "copy.saveset"
    result = bacpac("dup", "--json", "--saveset", saveset, "--remote-python",
                    _bare_python(tmp_path, "/nonexistent", hide_tool=False), str(source),
                    str(target))
    assert result.returncode == 0, result.stderr
    assert result.summary["zstd"] == "cli"
    assert sha256_of(target) == sha256_of(source)
    restored = subprocess.run(["zstd", "-d", "-c", str(saveset)], capture_output=True, check=True)
    assert hashlib.sha256(restored.stdout).hexdigest() == sha256_of(source)


def wrapped_python(tmp_path: Path, name: str, before: str) -> Path:
    """A remote python that runs the shell lines `before`, then this interpreter."""
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\n{before}\nexec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("fixed", [None, 5])
def test_a_dup_to_this_host_compresses_at_the_lowest_level(transport, tmp_path, fixed) -> None:
    """The link to a helper on this host is memory, and the helper shares the compressors'
    cores: blocks go at pacing.LOCAL_LEVEL from the start instead of from zstd's default down,
    unless --level fixes it. Over ssh (to 127.0.0.1) the route is known once the TCP connection
    is made: blocks compressed before that, at most the stream's 11 buffers, go at the start."""
    blocks = 24
    source = write_file(tmp_path / "source.img", blocks * 4 * MiB,
                        {0: os.urandom(blocks * 4 * MiB)})
    result = transport.dup(source, tmp_path / "copy.img",
                           *(["--level", str(fixed)] if fixed is not None else []))
    assert result.returncode == 0, result.stderr
    assert sha256_of(tmp_path / "copy.img") == sha256_of(source)
    levels = {int(level): count for level, count in result.summary["levels"].items()}
    assert sum(levels.values()) == blocks
    if fixed is not None:
        assert levels == {fixed: blocks}
    elif transport.name == "local":
        assert levels == {LOCAL_LEVEL: blocks}
    else:
        assert set(levels) <= {START_LEVEL, LOCAL_LEVEL}, levels
        assert levels.get(LOCAL_LEVEL, 0) >= blocks - 11, levels


def dup_with(python: Path, source: Path, target: Path) -> None:
    """A local dup through the helper started by `python`, which must copy source whole."""
    result = bacpac("dup", "--json", "--remote-python", python, str(source), str(target))
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == source.read_bytes()


def test_the_stream_is_on_its_way_before_the_helper_has_started(tmp_path) -> None:
    # The helper's python starts only once its input pipe, widened to 1 MiB, holds half a MiB
    # more than the helper's own code: the OPEN and the stream, sent before any HELLO. A client
    # that waited for the HELLO would never fill it: the probe gives up after 30 s and says so.
    source = write_file(tmp_path / "source.img", 8 * MiB, {0: os.urandom(8 * MiB)})
    waiting = tmp_path / "waiting"
    enough = len(helper_payload()) + MiB // 2
    probe = (f"import fcntl,struct,termios,time; fcntl.fcntl(0, 1031, 1 << 20); "
             f"held = lambda: struct.unpack('i', fcntl.ioctl(0, termios.FIONREAD, bytes(4)))[0]; "
             f"deadline = time.monotonic() + 30; "
             f"exec('while held() < {enough} and time.monotonic() < deadline: time.sleep(0.01)'); "
             f"open('{waiting}', 'w').write(str(held()))")
    python = wrapped_python(tmp_path, "late-python", f"{sys.executable} -c \"{probe}\"")
    dup_with(python, source, tmp_path / "copy.img")
    assert int(waiting.read_text()) >= enough


def test_what_a_login_script_prints_before_the_helper_starts_is_skipped(tmp_path) -> None:
    source = write_file(tmp_path / "source.img", 4 * MiB, {0: os.urandom(MiB), 3 * MiB: b"end"})
    # a greeting, bytes that begin like a frame header, and more than the pipe or the window
    # holds: the helper only starts once all of it is read
    python = wrapped_python(tmp_path, "chatty-python",
                            "echo 'Welcome to standby-1!'\nprintf 'BK%.0s' $(seq 40)\n"
                            "head -c 3000000 /dev/zero | tr '\\0' x")
    dup_with(python, source, tmp_path / "copy.img")


def test_the_helper_runs_no_pth_file_of_the_target_yet_finds_its_zstandard(tmp_path) -> None:
    # A .pth file that prints would corrupt the frames on stdout, as a chatty login script
    # does; the helper runs with -S and searches the site directories itself, .pth unread.
    userbase = tmp_path / "userbase"
    user_site = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getusersitepackages())"],
        env={**os.environ, "PYTHONUSERBASE": str(userbase)}, capture_output=True, text=True,
        check=True).stdout.strip()
    Path(user_site).mkdir(parents=True)
    (Path(user_site) / "chatty.pth").write_text("import sys; print('hello from a .pth file')\n")
    python = tmp_path / "python-with-a-chatty-pth"
    python.write_text(f"#!/bin/sh\nPYTHONUSERBASE={userbase} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    noisy = subprocess.run([str(python), "-c", "pass"], capture_output=True, text=True)
    assert noisy.stdout == "hello from a .pth file\n"  # what a plain `python3` would do
    data = os.urandom(MiB)
    source = write_file(tmp_path / "source.img", len(data), {0: data})
    target = tmp_path / "copy.img"
    result = bacpac("dup", "--json", "--remote-python", str(python), str(source), str(target))
    assert result.returncode == 0, result.stderr
    assert (result.summary["codec"], result.summary["zstd"]) == ("zstd", "zstandard")
    assert target.read_bytes() == data


def test_delta_to_a_helper_without_zstd_restarts_its_stream_with_zlib(tmp_path) -> None:
    # The stream began with zstd before the helper was reached; the zlib fallback starts it
    # afresh, and the delta's digests must reach the new reader, not the stopped one.
    old = os.urandom(4 * MiB)
    new = bytearray(old)
    new[MiB:MiB + 4096] = os.urandom(4096)
    source = write_file(tmp_path / "source.img", len(new), {0: bytes(new)})
    target = write_file(tmp_path / "copy.img", len(old), {0: old})
    result = bacpac("dup", "--delta", "--json", "--remote-python",
                    _bare_python(tmp_path, "/nonexistent"), str(source), str(target))
    assert result.returncode == 0, result.stderr
    assert result.summary["codec"] == "zlib"
    assert result.summary["blocks_sent"] == 1
    assert target.read_bytes() == bytes(new)


def source(**digests: str) -> dict:
    return {"source_digests": digests}


def test_check_result_fails_when_helper_digest_differs() -> None:
    with pytest.raises(VerifyError, match="testhost:/x.img: the target's sha256") as info:
        check_result(False, "testhost:/x.img", {**source(sha256="a" * 64), "sha256": "b" * 64})
    assert info.value.exit_code == 1
    both = {**source(digest="d" * 64, sha256="a" * 64), "sha256": "a" * 64, "digest": "e" * 64}
    with pytest.raises(VerifyError, match="the target's digest e+ differs from the source's d+"):
        check_result(False, "testhost:/x.img", both)


def test_check_result_fails_when_the_helper_checked_another_way_than_asked() -> None:
    hashed = {**source(sha256="a" * 64), "sha256": "a" * 64, "check": "sha256"}
    with pytest.raises(VerifyError, match="checked the copy by sha256, not by frames"):
        check_result(False, "testhost:/x.img", hashed, "frames")
    framed = {**source(digest="a" * 64), "check": "frames"}
    with pytest.raises(VerifyError, match="checked the copy by frames, not by sha256"):
        check_result(False, "testhost:/x.img", framed, "sha256")
    assert check_result(False, "testhost:/x.img", framed, "frames") == {"digest": "a" * 64}


def test_check_result_fails_when_verify_reread_differs() -> None:
    result = {**source(digest="a" * 64), "digest": "a" * 64, "verify_digest": "c" * 64}
    with pytest.raises(VerifyError, match="re-read of the target gave digest c+"):
        check_result(True, "testhost:/x.img", result)
    assert check_result(False, "testhost:/x.img", result) == {"digest": "a" * 64}


def test_check_result_fails_when_verify_reread_is_missing_or_no_digest_came() -> None:
    with pytest.raises(VerifyError):
        check_result(True, "testhost:/x.img", {**source(sha256="a" * 64), "sha256": "a" * 64})
    with pytest.raises(VerifyError, match="no digest of the source"):
        check_result(False, "testhost:/x.img", {**source(sha256=None), "check": "frames"},
                     "frames")


# ---- block devices ------------------------------------------------------------------------

@requires_root
def test_dup_refuses_block_device_without_force(transport, ext4_image, loop_device) -> None:
    device = loop_device(80 * MiB)
    fill_device(device, os.urandom(2 * MiB))
    before = sha256_of(device)
    result = transport.dup(ext4_image, device)
    result.one_error_line(2, "--force", transport.target(device))
    assert sha256_of(device) == before
    assert result.summary["status"] == "error"
    assert "--force" in result.summary["error"]


@requires_root
def test_dup_writes_block_device_with_force(transport, ext4_image, loop_device) -> None:
    device = loop_device(80 * MiB)
    tail = os.urandom(MiB)
    fill_device(device, os.urandom(70 * MiB))
    fill_device(device, tail, 79 * MiB)
    result = transport.dup(ext4_image, device, "--force", "--verify")
    assert result.returncode == 0, result.stderr
    size = ext4_image.stat().st_size
    assert sha256_of(device, size) == sha256_of(ext4_image)  # old data in the holes is zeroed
    with open(device, "rb") as f:
        f.seek(79 * MiB)
        assert f.read(MiB) == tail  # beyond the image: untouched
    summary = result.summary
    assert summary["status"] == "ok"
    assert summary["bytes_written"] == size


@requires_root
def test_dup_refuses_mounted_target_even_with_force(transport, ext4_image, loop_device,
                                                    tmp_path) -> None:
    device = loop_device(80 * MiB)
    mountpoint = tmp_path / "mnt"
    mkfs_and_mount(device, mountpoint)
    (mountpoint / "keep.txt").write_text("precious")
    os.sync()
    before = sha256_of(device)
    result = transport.dup(ext4_image, device, "--force")
    result.one_error_line(2, "mount", transport.target(device))
    assert sha256_of(device) == before
    assert (mountpoint / "keep.txt").read_text() == "precious"


@requires_root
def test_dup_refuses_disk_whose_partition_is_mounted(transport, ext4_image, loop_device,
                                                     tmp_path) -> None:
    device = loop_device(96 * MiB)
    (partition,) = partition_disk(device, [(MiB, 80 * MiB)])
    mountpoint = tmp_path / "mnt"
    mkfs_and_mount(partition, mountpoint)
    os.sync()
    before = sha256_of(device)
    result = transport.dup(ext4_image, device, "--force")
    result.one_error_line(2, "mount", "partition", transport.target(device))
    assert sha256_of(device) == before


@requires_root
@pytest.mark.parametrize("progress", [[], ["--no-progress"]])
def test_dup_warns_of_a_source_partition_mounted_read_write(loop_device, tmp_path,
                                                            progress) -> None:
    source = loop_device(24 * MiB)
    (partition,) = partition_disk(source, [(MiB, 16 * MiB)])
    mountpoint = mkfs_and_mount(partition, tmp_path / "mnt")
    os.sync()
    result = bacpac("dup", "--json", *progress, source, tmp_path / "copy.img")
    assert result.returncode == 0, result.stderr
    warning = (f"{source}: {partition} is mounted read-write on {mountpoint}: "
               "the copy may be inconsistent")
    assert result.summary["warnings"] == [warning]
    lines = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].endswith(warning), result.stderr
    if progress:
        assert result.stderr == f"bacpac: warning: {warning}\n"


@requires_root
def test_dup_refuses_active_swap_device(transport, ext4_image, loop_device) -> None:
    device = loop_device(80 * MiB)
    run("mkswap", device)
    run("swapon", device)
    try:
        before = Path(device).read_bytes()
        result = transport.dup(ext4_image, device, "--force")
        result.one_error_line(2, "swap", transport.target(device))
        after = Path(device).read_bytes()
    finally:
        run("swapoff", device)
    # The kernel may page out to the swap area while the test runs, so the device is not
    # expected to stay byte-identical: its header is, and no page of the source's data got there
    # (a page of zeros the kernel swapped out would look like one of the source's holes).
    page = 4096
    assert after[:page] == before[:page]
    source = ext4_image.read_bytes()[:len(after)]
    copied = [offset for offset in range(page, len(source), page)
              if after[offset:offset + page] != before[offset:offset + page]
              and after[offset:offset + page] == source[offset:offset + page]
              and any(source[offset:offset + page])]
    assert copied == []


@requires_root
def test_dup_refuses_image_file_backing_a_mounted_loop_device(transport, ext4_image,
                                                              loop_device, tmp_path) -> None:
    device = loop_device(80 * MiB)
    backing = Path(Path("/sys/block", os.path.basename(device), "loop", "backing_file")
                   .read_text().strip())
    mountpoint = tmp_path / "mnt"
    mkfs_and_mount(device, mountpoint)
    os.sync()
    before = sha256_of(backing)
    result = transport.dup(ext4_image, backing)
    result.one_error_line(2, "mount", transport.target(backing))
    assert backing.stat().st_size == 80 * MiB
    assert sha256_of(backing) == before


@requires_root
def test_dup_refuses_target_smaller_than_source(transport, loop_device, tmp_path) -> None:
    size = 512 * MiB
    source = write_file(tmp_path / "big.img", size, {0: os.urandom(MiB), size - 4096:
                                                      os.urandom(4096)})
    device = loop_device(MiB)
    fill_device(device, os.urandom(MiB))
    before = sha256_of(device)
    result = transport.dup(source, device, "--force")
    line = result.one_error_line(2, "smaller", "bytes", transport.target(device))
    assert str(size) in line and str(MiB) in line
    assert sha256_of(device) == before


@requires_root
def test_dup_copies_from_block_device_source(transport, ext4_image, loop_device,
                                             tmp_path) -> None:
    device = loop_device(64 * MiB)
    fill_device(device, ext4_image.read_bytes())
    target = tmp_path / "copy.img"
    result = transport.dup(device, target)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_size == 64 * MiB
    assert digest_of(target) == digest_of(ext4_image) == result.summary["digest"]
    assert result.summary["bytes_total"] == 64 * MiB
    assert result.summary["bytes_sent"] < 32 * MiB


# ---- refusals of files and paths ----------------------------------------------------------

def test_dup_refuses_target_that_is_the_source_itself(transport, tmp_path) -> None:
    source = write_file(tmp_path / "disk.img", 4 * MiB, {MiB: os.urandom(MiB)})
    before = sha256_of(source)
    result = transport.dup(source, source)
    line = result.one_error_line(2, "source itself", transport.target(source))
    assert "partly written" not in line  # the OPEN was refused: its stream, already sent, unread
    assert source.stat().st_size == 4 * MiB
    assert sha256_of(source) == before


def test_dup_refuses_symlink_to_the_source_itself(transport, tmp_path) -> None:
    source = write_file(tmp_path / "disk.img", 4 * MiB, {MiB: os.urandom(MiB)})
    link = tmp_path / "link.img"
    link.symlink_to(source)
    before = sha256_of(source)
    result = transport.dup(source, link)
    result.one_error_line(2, "source itself")
    assert link.is_symlink()
    assert sha256_of(source) == before


def test_dup_refuses_directory_target(transport, tmp_path) -> None:
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target_dir = tmp_path / "dir"
    target_dir.mkdir()
    result = transport.dup(source, target_dir)
    line = result.one_error_line(2, "directory", transport.target(target_dir))
    assert "partly written" not in line
    assert os.listdir(target_dir) == []


def test_dup_refuses_target_in_missing_directory(transport, tmp_path) -> None:
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = tmp_path / "no" / "such" / "copy.img"
    result = transport.dup(source, target)
    result.one_error_line(2, transport.target(target), "does not exist")
    assert not (tmp_path / "no").exists()


def test_dup_refuses_missing_source(transport, tmp_path) -> None:
    missing = tmp_path / "missing.img"
    target = tmp_path / "copy.img"
    result = transport.dup(missing, target)
    result.one_error_line(2, str(missing), "No such file")
    assert not target.exists()


def test_dup_refuses_directory_source(tmp_path, no_helper_left) -> None:
    target = tmp_path / "copy.img"
    result = bacpac("dup", "--no-progress", str(tmp_path), str(target))
    result.one_error_line(2, str(tmp_path), "directory")
    assert not target.exists()


def test_dup_rejects_bad_ssh_option(sshd, tmp_path, no_helper_left) -> None:
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = tmp_path / "copy.img"
    for option in ("NoSuchOption=1", "Port=notanumber", "novalue"):
        result = bacpac("dup", "-F", sshd.config_path, "-o", option, "--no-progress",
                        str(source), f"testhost:{target}")
        result.one_error_line(2, "-o")
    assert not target.exists()


@pytest.mark.parametrize("path", ["with ssh", "without ssh"])
def test_dup_follows_an_include_of_the_ssh_config(sshd, tmp_path, no_helper_left, path) -> None:
    """`Include hosts.conf` was ignored ("cannot resolve host name"); with the OpenSSH client
    installed, ssh -G resolves it, and bacpac's own parser follows it too."""
    hosts = tmp_path / "hosts.conf"
    hosts.write_text(Path(sshd.config_path).read_text().replace("Host testhost", "Host lab"))
    config = tmp_path / "config"
    config.write_text(f"Include {hosts}\n")
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = tmp_path / "copy.img"
    env = bacpac_env(PATH=str(tmp_path / "no-ssh-here")) if path == "without ssh" else None
    result = bacpac("dup", "-F", config, "--no-progress", source, f"lab:{target}", env=env)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == source.read_bytes()


def test_dup_tells_an_ssh_config_error_in_one_line(sshd, tmp_path, no_helper_left) -> None:
    config = tmp_path / "config"
    config.write_text("Host lab\n  Port twenty-two\n")
    target = tmp_path / "copy.img"
    result = bacpac("dup", "-F", config, "--no-progress", write_file(tmp_path / "disk.img", MiB,
                    {0: b"data"}), f"lab:{target}")
    result.one_error_line(2, "lab", f"{config} line 2", "port")
    assert not target.exists()


def test_dup_json_keeps_the_user_of_user_at_host(sshd, tmp_path, no_helper_left) -> None:
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = f"{sshd.user}@testhost:{tmp_path / 'copy.img'}"
    saveset = tmp_path / "copy.bacpac"
    result = bacpac("dup", "-F", sshd.config_path, "--no-progress", "--json", "--saveset",
                    saveset, source, target)
    assert result.returncode == 0, result.stderr
    assert (result.summary["source"], result.summary["target"]) == (str(source), target)
    assert result.summary["saveset"] == str(saveset)
    result = bacpac("verify", "-F", sshd.config_path, "--json", f"{sshd.user}@testhost:{saveset}")
    assert result.summary["saveset"] == f"{sshd.user}@testhost:{saveset}"


def test_dup_refuses_wrong_host_key_before_target_exists(sshd, tmp_path, no_helper_left) -> None:
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = tmp_path / "copy.img"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other"))
    other_key = (tmp_path / "other.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other_key)}\n")
    result = bacpac("dup", "-F", sshd.config_path, "-o", f"UserKnownHostsFile={known_hosts}",
                    "--no-progress", "--json", str(source), f"testhost:{target}")
    # A connection that cannot be trusted is a failure of the work (exit 1, design §1).
    result.one_error_line(1, "host key", "testhost", "changed")
    assert result.summary["status"] == "error"
    assert not target.exists()


def test_dup_reads_known_hosts_with_marker_lines(sshd, tmp_path, no_helper_left) -> None:
    """One @cert-authority line for other hosts broke every dup; a @revoked line for this
    host's key refuses it, in one line, with nothing written."""
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = tmp_path / "copy.img"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca"))
    ca_key = " ".join((tmp_path / "ca.pub").read_text().split()[:2])
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"@cert-authority *.example.com {ca_key}\n"
                           + Path(sshd.known_hosts).read_text())
    args = ("dup", "-F", sshd.config_path, "-o", f"UserKnownHostsFile={known_hosts}",
            "--no-progress", str(source), f"testhost:{target}")
    result = bacpac(*args)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == source.read_bytes()
    target.unlink()
    server_key = " ".join(sshd.host_key_pub.split()[:2])
    with open(known_hosts, "a") as f:
        f.write(f"@revoked * {server_key}\n")
    bacpac(*args).one_error_line(1, "testhost", "host key", "revoked")
    assert not target.exists()


def test_dup_refuses_unknown_host_key(sshd, tmp_path, no_helper_left) -> None:
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = tmp_path / "copy.img"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = bacpac("dup", "-F", sshd.config_path, "-o", f"UserKnownHostsFile={empty}",
                    "-o", "StrictHostKeyChecking=yes", "--no-progress", str(source),
                    f"testhost:{target}")
    result.one_error_line(1, "host key", "not known")
    assert not target.exists()
    assert empty.read_text() == ""
