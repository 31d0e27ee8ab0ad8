"""remote_helper.target.devices and bacpac.engine.source against real files, loop devices,
mounts and swap."""
import errno
import os
import shutil

import pytest

from bacpac.engine.source import close_source, open_source
from bacpac.errors import EXIT_USAGE, UsageError
from clirun import MiB, write_file
from fixtures_disk import mkfs_and_mount, partition_disk, requires_root, run
from remote_helper.target import devices

# Holes and data are placed on 64 KiB boundaries: any SEEK_HOLE granularity up to that (4 KiB
# on ext4 and tmpfs here) then gives exact extents.
STEP = 64 << 10


def sparse_file(path, size, chunks) -> str:
    """write_file with `chunks` [(offset, bytes)], as the str path remote_helper takes."""
    return str(write_file(path, size, dict(chunks)))


def extents_of(path, start=0, end=None):
    fd = os.open(path, os.O_RDONLY)
    try:
        end = devices.open_size(fd) if end is None else end
        return list(devices.data_extents(fd, start, end))
    finally:
        os.close(fd)


# --- sizes and identities ------------------------------------------------------------------


def test_open_size_of_a_sparse_file(tmp_path):
    path = sparse_file(tmp_path / "img", 3 * MiB + 5, [])
    fd = os.open(path, os.O_RDONLY)
    try:
        assert devices.open_size(fd) == 3 * MiB + 5
    finally:
        os.close(fd)


@requires_root
def test_open_size_of_a_loop_device(loop_device):
    fd = os.open(loop_device(32 * MiB), os.O_RDONLY)
    try:
        assert devices.open_size(fd) == 32 * MiB
    finally:
        os.close(fd)


def test_boot_id_is_this_boots_uuid():
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert devices.boot_id() == f.read().strip() != ""


def test_same_object_follows_symlinks_and_tells_a_copy_apart(tmp_path):
    original = sparse_file(tmp_path / "img", MiB, [(0, b"data")])
    os.symlink(original, str(tmp_path / "link"))
    shutil.copyfile(original, str(tmp_path / "copy"))
    assert devices.identity(str(tmp_path / "link"))["kind"] == "file"
    assert devices.same_object(original, str(tmp_path / "link"))
    assert not devices.same_object(original, str(tmp_path / "copy"))


@requires_root
def test_same_object_matches_a_device_by_rdev_not_by_path(loop_device, tmp_path):
    device = loop_device(8 * MiB)
    os.symlink(device, str(tmp_path / "by-id"))
    other = loop_device(8 * MiB)
    assert devices.identity(device)["kind"] == "block"
    assert devices.same_object(devices.identity(device), devices.identity(str(tmp_path / "by-id")))
    assert not devices.same_object(device, other)


# --- holes ---------------------------------------------------------------------------------


def check_exact_extents(directory):
    path = sparse_file(os.path.join(directory, "holes"), 4 * MiB,
                       [(0, b"a" * STEP), (MiB, b"b" * 2 * STEP), (4 * MiB - STEP, b"c" * STEP)])
    assert extents_of(path) == [
        (0, STEP, True),
        (STEP, MiB - STEP, False),
        (MiB, 2 * STEP, True),
        (MiB + 2 * STEP, 3 * MiB - 3 * STEP, False),
        (4 * MiB - STEP, STEP, True),
    ]


def test_data_extents_are_exact_on_the_tmp_file_system(tmp_path):
    check_exact_extents(str(tmp_path))


@requires_root
def test_data_extents_are_exact_on_tmpfs(tmpfs):
    check_exact_extents(tmpfs("8m"))


def test_data_extents_clip_to_the_range_and_end_in_a_hole(tmp_path):
    path = sparse_file(tmp_path / "img", 2 * MiB, [(STEP, b"x" * 2 * STEP)])
    assert extents_of(path, STEP + 100, 2 * MiB - 7) == [
        (STEP + 100, 2 * STEP - 100, True),
        (3 * STEP, 2 * MiB - 7 - 3 * STEP, False),
    ]


def test_data_extents_cover_an_unaligned_write(tmp_path):
    path = sparse_file(tmp_path / "img", 2 * MiB, [(MiB + 5000, b"y" * 10)])
    extents = extents_of(path)
    assert sum(length for _, length, _ in extents) == 2 * MiB
    data = [(offset, length) for offset, length, is_data in extents if is_data]
    assert len(data) == 1
    offset, length = data[0]
    assert MiB <= offset <= MiB + 5000 and MiB + 5010 <= offset + length <= MiB + STEP


def test_data_extents_of_a_file_of_holes_only(tmp_path):
    path = sparse_file(tmp_path / "img", 3 * MiB, [])
    assert extents_of(path) == [(0, 3 * MiB, False)]


def test_data_extents_treat_everything_as_data_without_seek_hole(tmp_path, monkeypatch):
    path = sparse_file(tmp_path / "img", 3 * MiB, [])

    def no_seek_data(fd, pos, how):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(devices.os, "lseek", no_seek_data)
    assert extents_of(path, 0, 3 * MiB) == [(0, 3 * MiB, True)]


@requires_root
def test_data_extents_yield_one_data_extent_for_a_block_device(loop_device):
    # The backing file is all holes, but a block device cannot tell: read it all.
    assert extents_of(loop_device(16 * MiB)) == [(0, 16 * MiB, True)]


# --- zeros ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_is_zero_of_zeros(kind):
    assert devices.is_zero(kind(bytes(4 * MiB)))
    assert devices.is_zero(kind(b""))


@pytest.mark.parametrize("where", [0, 2 * MiB, 4 * MiB - 1])
def test_is_zero_sees_one_nonzero_byte(where):
    buf = bytearray(4 * MiB)
    buf[where] = 1
    assert not devices.is_zero(buf)
    assert not devices.is_zero(memoryview(buf))
    assert not devices.is_zero(bytes(buf))


def test_is_zero_of_buffers_larger_than_the_cache_and_of_slices():
    big = bytearray(9 * MiB)
    assert devices.is_zero(big)
    big[-1] = 7
    assert not devices.is_zero(big)
    assert devices.is_zero(memoryview(big)[:-1])
    assert not devices.is_zero(memoryview(big)[-10:])


@requires_root
def test_zero_range_on_a_loop_device_reads_back_zeros(loop_device):
    device = loop_device(8 * MiB)
    fd = os.open(device, os.O_RDWR)
    try:
        os.pwrite(fd, b"\xab" * 8 * MiB, 0)
        assert devices.zero_range(fd, MiB, 2 * MiB, True) == "zeroout"
        # An unaligned range cannot use BLKZEROOUT: zeros are written instead.
        assert devices.zero_range(fd, 5 * MiB + 1, 1000, True) == "write"
        devices.drop_cache(fd)
        image = os.pread(fd, 8 * MiB, 0)
    finally:
        os.close(fd)
    assert image[:MiB] == b"\xab" * MiB
    assert devices.is_zero(image[MiB:3 * MiB])
    assert image[3 * MiB:5 * MiB + 1] == b"\xab" * (2 * MiB + 1)
    assert devices.is_zero(image[5 * MiB + 1:5 * MiB + 1001])
    assert image[5 * MiB + 1001:] == b"\xab" * (3 * MiB - 1001)


def test_zero_range_punches_a_hole_in_a_file_and_extends_it(tmp_path):
    path = sparse_file(tmp_path / "img", 4 * MiB, [(0, b"\xcd" * 4 * MiB)])
    fd = os.open(path, os.O_RDWR)
    try:
        assert devices.zero_range(fd, MiB, 2 * MiB, False) == "punch"
        assert devices.zero_range(fd, 4 * MiB - STEP, 2 * STEP, False) == "punch"
        assert os.fstat(fd).st_size == 4 * MiB + STEP
        image = os.pread(fd, 5 * MiB, 0)
    finally:
        os.close(fd)
    assert image[:MiB] == b"\xcd" * MiB
    assert devices.is_zero(image[MiB:3 * MiB])
    assert image[3 * MiB:4 * MiB - STEP] == b"\xcd" * (MiB - STEP)
    assert devices.is_zero(image[4 * MiB - STEP:])
    assert (MiB, 2 * MiB, False) in extents_of(path)  # a hole, not written zeros


def test_drop_cache_tolerates_what_cannot_be_flushed():
    read_end, write_end = os.pipe()
    try:
        devices.drop_cache(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


# --- busy targets ---------------------------------------------------------------------------


def test_busy_reasons_of_an_unused_file(tmp_path):
    assert devices.busy_reasons(sparse_file(tmp_path / "img", MiB, [])) == []


@requires_root
def test_busy_reasons_of_an_unused_loop_device(loop_device):
    assert devices.busy_reasons(loop_device(8 * MiB)) == []


@requires_root
def test_busy_reasons_of_a_mounted_loop_device(loop_device, tmp_path):
    device = loop_device(32 * MiB)
    mountpoint = mkfs_and_mount(device, tmp_path / "mnt")
    assert devices.busy_reasons(device) == ["%s is mounted on %s" % (device, mountpoint)]


@requires_root
def test_busy_reasons_name_a_mounted_partition(loop_device, tmp_path):
    device = loop_device(64 * MiB)
    first, second = partition_disk(device, [(MiB, 24 * MiB), (25 * MiB, 24 * MiB)])
    mountpoint = mkfs_and_mount(second, tmp_path / "mnt")
    assert devices.busy_reasons(device) == ["partition %s is mounted on %s" % (second, mountpoint)]
    assert devices.busy_reasons(second) == ["%s is mounted on %s" % (second, mountpoint)]
    assert devices.busy_reasons(first) == []
    assert devices.busy_reasons(backing_file(device)) == [
        "backing file of %s, whose partition %s is mounted on %s" % (device, second, mountpoint)]


@requires_root
def test_busy_reasons_of_a_swap_device(loop_device):
    device = loop_device(16 * MiB)
    run("mkswap", device)
    run("swapon", device)  # the loop_device teardown turns it off
    assert devices.busy_reasons(device) == ["%s is an active swap device" % device]


@pytest.fixture
def swap_file(tmp_path):
    """An active swap file (fully allocated, as swapon wants), turned off at teardown."""
    path = str(tmp_path / "swapfile")
    with open(path, "wb") as f:
        f.write(bytes(16 * MiB))
    os.chmod(path, 0o600)
    run("mkswap", path)
    try:
        run("swapon", path)
    except RuntimeError as e:
        pytest.skip("swap files do not work here: %s" % e)
    yield path
    run("swapoff", path)


@requires_root
def test_busy_reasons_of_an_active_swap_file(swap_file):
    assert devices.busy_reasons(swap_file) == ["%s is an active swap file" % swap_file]


def backing_file(device):
    with open("/sys/block/%s/loop/backing_file" % os.path.basename(device)) as f:
        return f.read().strip()


def make_image_with_loop(loop_device, tmp_path):
    """A loop device with an ext4 file system mounted read-write, and its backing file."""
    device = loop_device(32 * MiB)
    return device, backing_file(device), mkfs_and_mount(device, tmp_path / "mnt")


@requires_root
def test_busy_reasons_of_the_backing_file_of_a_mounted_loop_device(loop_device, tmp_path):
    device, backing, mountpoint = make_image_with_loop(loop_device, tmp_path)
    assert devices.busy_reasons(backing) == [
        "backing file of %s, which is mounted on %s" % (device, mountpoint)]


@requires_root
def test_busy_reasons_ignore_the_backing_file_of_an_unused_loop_device(loop_device):
    assert devices.busy_reasons(backing_file(loop_device(8 * MiB))) == []


# --- what shares blocks with what ----------------------------------------------------------


@requires_root
def test_loops_backed_by_name_the_loop_device_of_an_image_even_unmounted(loop_device):
    device = loop_device(8 * MiB)
    assert devices.loops_backed_by(backing_file(device)) == [device]


@requires_root
def test_loops_backed_by_find_a_backing_file_whose_first_name_is_gone(loop_device):
    device = loop_device(8 * MiB)
    first = backing_file(device)
    second = first + ".second-name"
    os.link(first, second)
    os.unlink(first)  # sysfs now shows "FIRST (deleted)": only the inode still tells
    try:
        assert devices.loops_backed_by(second) == [device]
    finally:
        os.rename(second, first)  # for the loop_device teardown


def test_loops_backed_by_an_ordinary_file_are_none(tmp_path):
    assert devices.loops_backed_by(sparse_file(tmp_path / "img", MiB, [])) == []


@requires_root
def test_sharing_devices_of_a_disk_are_it_and_its_partitions(loop_device):
    device = loop_device(64 * MiB)
    first, second = partition_disk(device, [(MiB, 24 * MiB), (25 * MiB, 24 * MiB)])
    shared = devices.sharing_devices(devices.identity(device))
    assert sorted(shared.values()) == sorted([device, first, second])
    assert list(devices.sharing_devices(devices.identity(second)).values()) == [second]


@requires_root
def test_sharing_devices_of_an_image_are_its_loop_devices(loop_device, tmp_path):
    device = loop_device(8 * MiB)
    assert list(devices.sharing_devices(devices.identity(backing_file(device))).values()) == [
        device]
    assert devices.sharing_devices(devices.identity(sparse_file(tmp_path / "i", MiB, []))) == {}


@requires_root
def test_file_system_devices_of_a_path_not_made_yet_are_its_directorys(loop_device, tmp_path):
    device = loop_device(32 * MiB)
    mountpoint = mkfs_and_mount(device, tmp_path / "mnt")
    rdev = os.stat(device).st_rdev
    assert rdev in devices.file_system_devices(os.path.join(mountpoint, "no", "such", "file"))
    assert rdev not in devices.file_system_devices(str(tmp_path / "elsewhere"))


# --- the source side -----------------------------------------------------------------------


@requires_root
def test_mounted_readwrite_names_the_mountpoint_only_when_read_write(loop_device, tmp_path):
    device, backing, mountpoint = make_image_with_loop(loop_device, tmp_path)
    assert devices.mounted_readwrite(device) == (device, mountpoint)
    assert devices.mounted_readwrite(backing) == (device, mountpoint)
    run("mount", "-o", "remount,ro", mountpoint)
    assert devices.mounted_readwrite(device) is None
    assert devices.mounted_readwrite(loop_device(8 * MiB)) is None


def test_open_source_of_an_image(tmp_path):
    path = sparse_file(tmp_path / "img", 5 * MiB, [(0, b"x")])
    src = open_source(path)
    try:
        assert (src.path, src.size, src.rw_mount) == (path, 5 * MiB, None)
        assert devices.same_object(src.identity, path)
        assert os.read(src.fd, 1) == b"x"
    finally:
        close_source(src)


@requires_root
def test_open_source_of_a_mounted_device_names_its_mountpoint(loop_device, tmp_path):
    device = loop_device(32 * MiB)
    mountpoint = mkfs_and_mount(device, tmp_path / "mnt")
    src = open_source(device)
    close_source(src)
    assert (src.size, src.identity["kind"], src.rw_mount) == (32 * MiB, "block",
                                                             (device, mountpoint))


@requires_root
def test_mounted_readwrite_names_the_partition_that_is_mounted(loop_device, tmp_path):
    device = loop_device(24 * MiB)
    first, second = partition_disk(device, [(MiB, 8 * MiB), (10 * MiB, 8 * MiB)])
    mountpoint = mkfs_and_mount(second, tmp_path / "mnt")
    assert devices.mounted_readwrite(device) == (second, mountpoint)
    assert devices.mounted_readwrite(second) == (second, mountpoint)
    assert devices.mounted_readwrite(first) is None


def expect_usage_error(path, message):
    with pytest.raises(UsageError) as caught:
        open_source(path)
    assert str(caught.value) == message
    assert caught.value.exit_code == EXIT_USAGE


def test_open_source_refuses_a_missing_file(tmp_path):
    path = str(tmp_path / "nope.img")
    expect_usage_error(path, "%s: No such file or directory" % path)


def test_open_source_refuses_a_directory(tmp_path):
    expect_usage_error(str(tmp_path), "%s: is a directory, not a disk or image" % tmp_path)


def test_open_source_refuses_a_fifo_without_blocking(tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    expect_usage_error(path, "%s: is a FIFO, not a disk or image" % path)


def test_open_source_reports_permission_denied(tmp_path, monkeypatch):
    # Root reads anything, so the kernel's EACCES is stood in for at the one call.
    def denied(path, flags, mode=0o777):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr("bacpac.engine.source.os.open", denied)
    path = str(tmp_path / "secret.img")
    expect_usage_error(path, "%s: Permission denied" % path)
