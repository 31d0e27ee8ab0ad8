"""Fixtures: loop devices and tmpfs mounts, when running as root.

Teardown reads /proc itself instead of asking remote_helper.devices, so that a bug in the code
under test can never leave a device attached or a file system mounted: it unmounts whatever
is mounted from a loop device (or its partitions), turns swap off, then detaches it.
"""
import fcntl
import functools
import glob
import os
import shutil
import struct
import subprocess
import tempfile
import time

import pytest

__all__ = [
    "requires_root", "loop_devices_unavailable", "loop_device", "failing_loop_device", "tmpfs",
    "make_ext4_image", "partition_disk", "mkfs_and_mount", "run",
]

BLKRRPART = 0x125F  # _IO(0x12, 95): re-read the partition table


def run(*cmd):
    """Run a command; raise with its stderr when it fails."""
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(map(str, cmd)), proc.stderr.strip()))
    return proc.stdout


@functools.lru_cache(maxsize=None)
def loop_devices_unavailable():
    """Why loop devices cannot be used here, or "" when they can."""
    if os.geteuid() != 0:
        return "needs root for loop devices"
    try:
        run("losetup", "--find")
    except (OSError, RuntimeError) as e:
        return "needs root for loop devices (losetup: %s)" % e
    return ""


def requires_root(test):
    """Mark a test (or class) as needing root and loop devices; skip it with the reason."""
    reason = loop_devices_unavailable()
    return pytest.mark.root(pytest.mark.skipif(bool(reason), reason=reason)(test))


def _unescape(field):
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def _device_numbers(device):
    """"major:minor" of a loop device and of each of its partitions."""
    name = os.path.basename(device)
    numbers = set()
    for sysdir in ["/sys/class/block/" + name] + glob.glob("/sys/class/block/%sp*" % name):
        try:
            with open(os.path.join(sysdir, "dev")) as f:
                numbers.add(f.read().strip())
        except OSError:
            pass
    return numbers


def _mountpoints_of(device):
    """Where a loop device or one of its partitions is mounted, the newest mount first."""
    numbers = _device_numbers(device)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f.read().splitlines()]
    found = []
    for fields in reversed(mounts):
        source = fields[fields.index("-") + 2]
        if fields[2] in numbers or source == device or source.startswith(device + "p"):
            found.append(_unescape(fields[4]))
    return found


def _release(device):
    """Unmount, swapoff and detach a loop device, whatever the test left on it."""
    # umount takes the top mount at a path, which may be something the test stacked on ours:
    # go round until nothing of this device is mounted, lazily if a mount stays busy.
    for _ in range(10):
        mountpoints = _mountpoints_of(device)
        if not mountpoints:
            break
        for mountpoint in mountpoints:
            if subprocess.call(["umount", mountpoint], stderr=subprocess.DEVNULL) != 0:
                subprocess.call(["umount", "-l", mountpoint], stderr=subprocess.DEVNULL)
    with open("/proc/swaps") as f:
        for line in f.read().splitlines()[1:]:
            swap = _unescape(line.split()[0])
            if swap == device or swap.startswith(device + "p"):
                subprocess.call(["swapoff", swap])
    subprocess.call(["losetup", "-d", device])


@pytest.fixture
def loop_device(tmpfs, tmp_path_factory):
    """Factory: loop_device(size_bytes, backing_dir=None) -> "/dev/loopN".

    The backing file is sparse; the device is attached with partition scanning, and at
    teardown it is unmounted, swapped off and detached, and its backing file removed.
    (Depends on tmpfs so that a tmpfs holding a backing file outlives the loop device.)"""
    made = []

    def make(size_bytes, backing_dir=None):
        reason = loop_devices_unavailable()
        if reason:
            pytest.skip(reason)
        directory = str(backing_dir or tmp_path_factory.mktemp("loop"))
        fd, backing = tempfile.mkstemp(prefix="disk-", suffix=".img", dir=directory)
        os.ftruncate(fd, size_bytes)
        os.close(fd)
        try:
            device = run("losetup", "--find", "--show", "--partscan", backing).strip()
        except RuntimeError as e:
            os.unlink(backing)
            pytest.skip("needs root for loop devices (%s)" % e)
        made.append((device, backing))
        return device

    yield make
    for device, backing in reversed(made):
        try:
            _release(device)
        finally:
            os.unlink(backing)


@pytest.fixture
def failing_loop_device(loop_device):
    """Factory: failing_loop_device(content, size) -> "/dev/loopN", a loop device of `size`
    bytes that holds `content` and fails every read past it with EIO, as a disk with bad
    sectors does: its backing file is cut to len(content) once attached."""

    def make(content, size):
        device = loop_device(size)
        with open("/sys/block/%s/loop/backing_file" % os.path.basename(device)) as f:
            backing = f.read().strip()
        with open(backing, "r+b") as f:
            f.write(content)
            f.truncate(len(content))
        run("blockdev", "--flushbufs", device)  # no page of the device's cache answers a read
        return device

    return make


@pytest.fixture
def tmpfs(tmp_path_factory):
    """Factory: tmpfs(size="8m") -> a fresh directory with a tmpfs mounted on it."""
    mounted = []

    def make(size="8m"):
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a tmpfs")
        mountpoint = str(tmp_path_factory.mktemp("tmpfs"))
        run("mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", mountpoint)
        mounted.append(mountpoint)
        return mountpoint

    yield make
    for mountpoint in reversed(mounted):
        if subprocess.call(["umount", mountpoint], stderr=subprocess.DEVNULL) != 0:
            subprocess.call(["umount", "-l", mountpoint])


def partition_disk(device, partitions):
    """Write an MBR with Linux partitions [(start_bytes, size_bytes)...] and make the kernel
    see them; return the partition device paths.

    Written here rather than with sfdisk, which is not always installed. A kernel built without
    partition table parsers (as here) ignores BLKRRPART, so `partx --add` then tells it the
    partitions through BLKPG."""
    table = bytearray(512)
    for i, (start, size) in enumerate(partitions):
        entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                            start // 512, size // 512)
        table[446 + 16 * i:462 + 16 * i] = entry
    table[510:512] = b"\x55\xaa"
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(table), 0)
        os.fsync(fd)
        fcntl.ioctl(fd, BLKRRPART)
    finally:
        os.close(fd)
    nodes = ["%sp%d" % (device, i + 1) for i in range(len(partitions))]
    if not all(os.path.exists("/sys/class/block/" + os.path.basename(n)) for n in nodes):
        run("partx", "--add", device)
    for _ in range(50):  # devtmpfs makes the nodes asynchronously, within milliseconds
        if all(os.path.exists(node) for node in nodes):
            break
        time.sleep(0.1)
    return nodes


def mkfs_and_mount(device, mountpoint):
    """Make ext4 on `device` and mount it on `mountpoint` (made if need be); return the mountpoint.

    Inode tables are written now: the kernel's lazy init would otherwise write to the device
    in the background while a test compares its bytes."""
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device)
    os.makedirs(str(mountpoint), exist_ok=True)
    run("mount", "-o", "noinit_itable", device, mountpoint)
    return str(mountpoint)


def _sample_tree(directory):
    """Fill a directory with a few MB of real files: Python sources and package docs."""
    for pattern, budget in (("/usr/lib/python3*/*.py", 4 << 20), ("/usr/share/doc/*/*", 2 << 20)):
        used = 0
        for source in sorted(glob.glob(pattern)):
            if used >= budget:
                break
            if os.path.islink(source) or not os.path.isfile(source):
                continue
            target = os.path.join(directory, source.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target)
            used += os.path.getsize(target)


def make_ext4_image(path, size, fill_dir=None):
    """Make an ext4 image file of `size` bytes (int) or mke2fs size ("64M"), filled with the
    files of fill_dir, or with a few MB of real documentation and Python sources."""
    size_arg = "%dk" % (size // 1024) if isinstance(size, int) else size
    if fill_dir is not None:
        run("mke2fs", "-q", "-F", "-t", "ext4", "-d", fill_dir, path, size_arg)
        return path
    with tempfile.TemporaryDirectory(prefix="bacpac-sample-") as tree:
        _sample_tree(tree)
        run("mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, path, size_arg)
    return path
