"""Every path a command writes is checked before its first byte, through the real command line.

The saveset path and the target path are compared with the source and with each other by
what they are (the same file, a device node, a file backing a loop device, a file on the
source's own disk, the same resolved path for a file not made yet), and refused with one line
and exit 2, with nothing written: the source's and every existing file's sha256 unchanged, no
file created, a device node still a device node. A disk that fills up mid-run is named as full,
without advice to run again with --delta, which would only fill it again. Each test runs
locally and over ssh (the session's sshd runs on this machine, so a test reads remote files
back directly).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from clirun import MiB, Result, Transport, bacpac, random_image, sha256_of, write_file
from clirun import transport  # noqa: F401  (a fixture: each test locally and over ssh)
from fixtures_disk import mkfs_and_mount, partition_disk, requires_root, run
from remote_helper.target import checks
from remote_helper.errors import Refused


def refused(result: Result, *words: str, alone: bool = True) -> str:
    """The error line of a run refused before anything was written (the only line on stderr
    unless not `alone`)."""
    line = result.one_error_line(2, *words, alone=alone)
    assert "partly written" not in line
    assert result.summary["status"] == "error"
    return line


def dup_with_saveset(transport: Transport, source, target, saveset, *extra) -> Result:
    return transport.dup(source, target, "--saveset", saveset, *extra)


def backing_file(device: str) -> Path:
    name = os.path.basename(device)
    return Path(Path("/sys/block", name, "loop", "backing_file").read_text().strip())


@pytest.fixture
def source(tmp_path) -> Path:
    return write_file(tmp_path / "src.img", 4 * MiB, {MiB: os.urandom(MiB), 3 * MiB: b"end"})


# ---- the saveset is the source, or the target (item 1) ------------------------------------------


def test_dup_refuses_a_saveset_that_is_the_source(transport, source, tmp_path) -> None:
    before = sha256_of(source)
    target = tmp_path / "t.img"
    result = dup_with_saveset(transport, source, target, source)
    refused(result, "source itself", str(source))
    assert sha256_of(source) == before
    assert sorted(os.listdir(tmp_path)) == ["src.img"]


def test_dup_refuses_a_saveset_symlinked_to_the_source(transport, source, tmp_path) -> None:
    before = sha256_of(source)
    link = tmp_path / "link.bacpac"
    link.symlink_to(source)
    result = dup_with_saveset(transport, source, tmp_path / "t.img", link)
    refused(result, "source itself", str(link))
    assert sha256_of(source) == before
    assert link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["link.bacpac", "src.img"]


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "new"])
@pytest.mark.parametrize("through_symlink", [False, True], ids=["path", "symlink"])
def test_dup_refuses_a_saveset_that_is_the_target(transport, source, tmp_path, exists: bool,
                                                  through_symlink: bool) -> None:
    target = tmp_path / "t.img"
    if exists:
        target.write_bytes(b"precious" * 4096)
    saveset = target
    if through_symlink:
        saveset = tmp_path / "link.bacpac"
        saveset.symlink_to(target)  # dangling while the target is not made
    result = dup_with_saveset(transport, source, target, saveset)
    refused(result, "the saveset is the target itself", str(saveset))
    if exists:
        assert target.read_bytes() == b"precious" * 4096
    else:
        assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["src.img"] + (["t.img"] if exists else []) + (["link.bacpac"] if through_symlink else []))


def test_dup_refuses_a_saveset_spelt_another_way_than_the_new_target(transport, source,
                                                                      tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    target = tmp_path / "t.img"
    result = dup_with_saveset(transport, source, target, tmp_path / "sub" / ".." / "t.img")
    refused(result, "the saveset is the target itself")
    assert not target.exists()


def test_backup_refuses_to_write_its_saveset_over_the_source(transport, source) -> None:
    before = sha256_of(source)
    result = bacpac("backup", *transport.args(), "--no-progress", "--json", source,
                    transport.target(source))
    refused(result, "source itself", str(source))
    assert sha256_of(source) == before


# ---- the saveset is a device, or the file behind one (item 2) -----------------------------------


@requires_root
@pytest.mark.parametrize("through_symlink", [False, True], ids=["node", "symlink"])
def test_dup_refuses_a_saveset_on_a_device_node(transport, source, loop_device, tmp_path,
                                                through_symlink: bool) -> None:
    device = loop_device(8 * MiB)
    saveset = Path(device)
    if through_symlink:
        saveset = tmp_path / "link.bacpac"
        saveset.symlink_to(device)
    before = sha256_of(device)
    result = dup_with_saveset(transport, source, tmp_path / "t.img", saveset)
    refused(result, "block device", str(saveset))
    assert stat.S_ISBLK(os.stat(device).st_mode)
    assert sha256_of(device) == before
    assert not (tmp_path / "t.img").exists()


@requires_root
def test_dup_refuses_a_saveset_that_backs_a_loop_device(transport, source, loop_device,
                                                        tmp_path) -> None:
    device = loop_device(8 * MiB)
    backing = backing_file(device)
    before, inode = sha256_of(backing), backing.stat().st_ino
    result = dup_with_saveset(transport, source, tmp_path / "t.img", backing)
    refused(result, device, str(backing))
    assert sha256_of(backing) == before
    assert backing.stat().st_ino == inode  # still the very file the loop device reads
    assert not (tmp_path / "t.img").exists()


# ---- a target that backs a loop device (item 3) -------------------------------------------------


@requires_root
def test_dup_refuses_an_image_backing_an_unmounted_loop_device(transport, source, loop_device
                                                               ) -> None:
    device = loop_device(8 * MiB)
    backing = backing_file(device)
    with open(backing, "r+b") as f:
        f.write(b"the loop device's data" * 1000)
    before = sha256_of(backing)
    result = transport.dup(source, backing)
    refused(result, device, "--force", str(backing))
    assert backing.stat().st_size == 8 * MiB
    assert sha256_of(backing) == before
    assert sha256_of(device) == before  # the loop device still reads its data


@requires_root
def test_dup_writes_an_image_backing_a_loop_device_with_force(transport, source,
                                                              loop_device) -> None:
    backing = backing_file(loop_device(8 * MiB))
    result = transport.dup(source, backing, "--force")
    assert result.returncode == 0, result.stderr
    assert sha256_of(backing) == sha256_of(source)


@requires_root
def test_restore_refuses_an_image_backing_an_unmounted_loop_device(transport, source,
                                                                   loop_device,
                                                                   tmp_path) -> None:
    saveset = tmp_path / "src.bacpac"
    made = bacpac("backup", "--no-progress", source, saveset)
    assert made.returncode == 0, made.stderr
    device = loop_device(8 * MiB)
    backing = backing_file(device)
    before = sha256_of(backing)
    result = bacpac("restore", *transport.args(), "--no-progress", "--json", saveset,
                    transport.target(backing))
    refused(result, device, "--force", str(backing))
    assert sha256_of(backing) == before
    forced = bacpac("restore", *transport.args(), "--no-progress", "--force", saveset,
                    transport.target(backing))
    assert forced.returncode == 0, forced.stderr
    assert sha256_of(backing) == sha256_of(source)


# ---- the saveset path is checked before the first byte (item 8) ---------------------------------


@pytest.mark.parametrize("spelling", ["slash", "directory", "symlink"])
def test_dup_refuses_a_saveset_that_names_a_directory(transport, source, tmp_path,
                                                      spelling: str) -> None:
    directory = tmp_path / "savesets"
    directory.mkdir()
    link = tmp_path / "link"
    link.symlink_to(directory)
    saveset = {"slash": f"{directory}/", "directory": directory, "symlink": link}[spelling]
    target = tmp_path / "t.img"
    target.write_bytes(b"precious" * 4096)
    result = dup_with_saveset(transport, source, target, saveset)
    refused(result, "directory", str(saveset))
    assert target.read_bytes() == b"precious" * 4096
    assert os.listdir(directory) == []


def test_dup_refuses_a_saveset_in_a_missing_directory(transport, source, tmp_path) -> None:
    saveset = tmp_path / "nowhere" / "disk.bacpac"
    result = dup_with_saveset(transport, source, tmp_path / "t.img", saveset)
    refused(result, "does not exist", str(saveset))
    assert sorted(os.listdir(tmp_path)) == ["src.img"]


def test_dup_refuses_a_saveset_under_a_file(transport, source, tmp_path) -> None:
    saveset = source / "disk.bacpac"
    before = sha256_of(source)
    result = dup_with_saveset(transport, source, tmp_path / "t.img", saveset)
    refused(result, "Not a directory", str(saveset))
    assert sha256_of(source) == before
    assert sorted(os.listdir(tmp_path)) == ["src.img"]


@requires_root
def test_dup_refuses_a_saveset_in_a_read_only_directory(transport, source, tmpfs,
                                                        tmp_path) -> None:
    read_only = tmpfs("1m")
    run("mount", "-o", "remount,ro", read_only)
    target = tmp_path / "t.img"
    result = dup_with_saveset(transport, source, target, Path(read_only) / "disk.bacpac")
    refused(result, "Read-only file system", read_only)
    assert not target.exists()
    assert os.listdir(read_only) == []


@requires_root
@pytest.mark.parametrize("output", ["saveset", "target"])
def test_dup_refuses_to_write_onto_the_file_system_of_its_source_disk(
        transport, loop_device, tmp_path, output: str) -> None:
    device = loop_device(32 * MiB)
    mountpoint = Path(mkfs_and_mount(device, tmp_path / "mnt"))
    (mountpoint / "keep.txt").write_text("precious")
    os.sync()
    written = mountpoint / "copy"
    if output == "saveset":
        result = dup_with_saveset(transport, device, tmp_path / "t.img", written)
    else:
        result = transport.dup(device, written)
    # (alone=False: the source, mounted read-write, may be warned about first)
    refused(result, "source itself", device, str(written), alone=False)
    assert sorted(os.listdir(mountpoint)) == ["keep.txt", "lost+found"]
    assert not (tmp_path / "t.img").exists()


@requires_root
def test_dup_refuses_a_target_device_that_is_a_partition_of_its_source(
        transport, loop_device, tmp_path) -> None:
    device = loop_device(64 * MiB)
    (partition,) = partition_disk(device, [(MiB, 32 * MiB)])
    before = sha256_of(device)
    result = transport.dup(device, partition, "--force")
    refused(result, "source itself", partition)
    assert sha256_of(device) == before


@requires_root
@pytest.mark.parametrize("direction", ["image-to-its-loop", "loop-to-its-image"])
def test_dup_refuses_to_write_a_loop_device_and_its_image_onto_each_other(
        transport, loop_device, direction: str) -> None:
    device = loop_device(8 * MiB)
    backing = str(backing_file(device))
    with open(backing, "r+b") as f:
        f.write(os.urandom(MiB))
    before = sha256_of(backing)
    source, target = (backing, device) if direction == "image-to-its-loop" else (device, backing)
    result = transport.dup(source, target, "--force")
    refused(result, "shares its blocks with the source itself", device, target)
    assert sha256_of(backing) == before


# ---- a full disk is named as such (item 8) ------------------------------------------------------


@requires_root
@pytest.mark.parametrize("full", ["target", "saveset"])
def test_a_full_disk_is_named_without_advice_to_run_again_with_delta(
        transport, tmpfs, tmp_path, full: str) -> None:
    small = Path(tmpfs("8m"))
    source = random_image(tmp_path / "random.img", 32 * MiB)  # cannot fit in 8 MiB
    target = (small if full == "target" else tmp_path) / "t.img"
    saveset = (small if full == "saveset" else tmp_path) / "t.bacpac"
    result = dup_with_saveset(transport, source, target, saveset)
    line = result.one_error_line(1, "No space left on device", "the disk is full",
                                 transport.target(target if full == "target" else saveset))
    assert "--delta" not in line
    if full == "saveset":  # the line leads with the saveset: it names the target it speaks of
        assert f"the target {transport.target(target)} was partly written" in line, line
    assert not saveset.exists()


@requires_root
def test_a_restore_onto_a_full_disk_names_it_without_advice_to_run_again_with_delta(
        transport, tmpfs, tmp_path) -> None:
    small = Path(tmpfs("8m"))
    # 32 MiB of random bytes: too much for the 8 MiB disk, in a saveset larger than a pipe
    # holds, so the helper reading it out is blocked sending when the restore fails
    source = random_image(tmp_path / "random.img", 32 * MiB)
    saveset = tmp_path / "random.bacpac"
    made = bacpac("backup", "--no-progress", source, saveset)
    assert made.returncode == 0, made.stderr
    target = small / "restored.img"
    result = bacpac("restore", *transport.args(), "--no-progress", saveset,
                    transport.target(target))
    line = result.one_error_line(1, "No space left on device", "the disk is full",
                                 transport.target(target), "partly written",
                                 "run the restore again")
    assert "--delta" not in line and "damaged" not in line


def test_a_saveset_directory_that_cannot_be_written_in_is_refused(tmp_path, monkeypatch) -> None:
    # As root (as the suite runs) every directory is writable: what a user without the
    # permission meets is shown by the check itself.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(Refused) as caught:
        checks.check_saveset(str(tmp_path / "disk.bacpac"), None, {})
    assert str(caught.value) == "%s: cannot write in %s: Permission denied" % (
        tmp_path / "disk.bacpac", tmp_path)
