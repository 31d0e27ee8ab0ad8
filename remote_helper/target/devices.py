"""Facts about local block devices and image files, on either end of a transfer.

# Strategy: everything here reads what the kernel already publishes (/proc/self/mountinfo,
# /proc/swaps, /sys/class/block) or asks it directly (ioctl, lseek, fallocate), so the answers
# hold for mounts made by any tool. Devices are matched by device number, files by st_dev and
# st_ino, never by the spelling of a path: /dev/disk/by-id links, bind mounts and symlinks all
# name the same object. The client imports this module too, so it stays standard library only
# and Python 3.6 syntax.
"""
import errno
import fcntl
import os
import re
import stat
import struct
from typing import Any, Callable, Iterable, Iterator, List, Optional, Set, Tuple, Union  # for the type comments

from .libc import fallocate as _fallocate

BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
BLKZEROOUT = 0x127F  # _IO(0x12, 127), argument: uint64 start, uint64 length
LOOP_GET_STATUS64 = 0x4C05
LOOP_INFO64_SIZE = 232  # sizeof(struct loop_info64)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
ZERO_CHUNK = 4 << 20

_zeros = bytes(ZERO_CHUNK)


def open_size(fd):
    # type: (int) -> int
    """Size in bytes of an open regular file or block device."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        # st_size of a device node is 0: only the driver knows the size.
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0]
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def boot_id():
    # type: () -> str
    """This boot's random id: equal ids and device numbers mean the very same machine state."""
    return _read("/proc/sys/kernel/random/boot_id").strip()


def net_namespace():
    # type: () -> str
    """This process's network namespace ("net:[4026531840]"), "" where it cannot be read: two
    helpers of one boot in two namespaces talk through a virtual link, which may be shaped."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def io_read_bytes():
    # type: () -> int
    """Bytes this process has had read from storage (/proc/self/io), page-cache hits aside."""
    for line in _read("/proc/self/io").splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def _read(path):
    # type: (str) -> str
    """A small kernel-published text file, or "" when it is not there (or not readable)."""
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError):
        return ""


def _makedev(text):
    # type: (str) -> int
    """A device number from sysfs's "major:minor", or -1."""
    major, sep, minor = text.strip().partition(":")
    return os.makedev(int(major), int(minor)) if sep else -1


def identity(path):
    # type: (Union[str, int]) -> dict
    """What a path (or an open fd) is, following symlinks: kind, dev, ino, rdev."""
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        kind = "block"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    return {"kind": kind, "dev": st.st_dev, "ino": st.st_ino, "rdev": st.st_rdev}


def same_object(a, b):
    # type: (Union[dict, str], Union[dict, str]) -> bool
    """Whether two identities (dicts from identity(), or paths) name the same disk or file."""
    a = a if isinstance(a, dict) else identity(a)
    b = b if isinstance(b, dict) else identity(b)
    if not a or a.get("kind") != b.get("kind"):
        return False
    if a["kind"] == "block":
        # Two device nodes (e.g. /dev/sda and a by-id link) share only their rdev.
        return a["rdev"] == b["rdev"]
    return (a["dev"], a["ino"]) == (b["dev"], b["ino"])


# --- who is using a device or file -------------------------------------------------------


def _unescape(field):
    # type: (str) -> str
    """Undo the octal escapes (\\040 for a space) of /proc/self/mountinfo and /proc/swaps."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts():
    # type: () -> list
    """(rdev, source_rdev, mountpoint, read_write) for every mount this process can see.

    The device number catches every spelling of the source; the source's own rdev catches
    file systems (btrfs) that report an anonymous device number."""
    mounts = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 6 and len(tail) >= 2:
            rw = "rw" in fields[5].split(",")
            mounts.append((_makedev(fields[2]), _rdev_of(_unescape(tail[1])),
                           _unescape(fields[4]), rw))
    return mounts


def _swaps():
    # type: () -> list
    """The paths of active swap areas."""
    lines = _read("/proc/swaps").splitlines()[1:]
    return [_unescape(line.split()[0]) for line in lines if line.strip()]


def _rdev_of(path):
    # type: (str) -> int
    """The device number of a block device path, or -1 for anything else."""
    try:
        st = os.stat(path)
    except OSError:
        return -1
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else -1


def _sys_name(rdev):
    # type: (int) -> str
    """The kernel's name of a block device (loop3, sda1) from its device number."""
    link = "/sys/dev/block/%d:%d" % (os.major(rdev), os.minor(rdev))
    return os.path.basename(os.path.realpath(link))


def _partitions(name):
    # type: (str) -> list
    """(name, rdev) of each partition of a whole disk, from /sys/class/block/NAME/."""
    base = "/sys/class/block/" + name
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    return [(entry, _makedev(_read(os.path.join(base, entry, "dev")))) for entry in entries
            if os.path.exists(os.path.join(base, entry, "partition"))]


def _holders(name):
    # type: (str) -> list
    """The kernel names of the devices built on this one (LVM, MD, dm-crypt)."""
    try:
        return sorted(os.listdir("/sys/class/block/%s/holders" % name))
    except OSError:
        return []


def _holder_kind(holder):
    # type: (str) -> str
    """LVM, MD, dm-crypt or the generic list, from a holder's name and dm uuid."""
    uuid = _read("/sys/class/block/%s/dm/uuid" % holder)
    if holder.startswith("md"):
        return "MD"
    if uuid.startswith("LVM-"):
        return "LVM"
    if uuid.startswith("CRYPT-"):
        return "dm-crypt"
    return "LVM, MD or dm-crypt"


def _device_users(rdev, name, mounts, swaps):
    # type: (int, str, list, list) -> list
    """(subject, predicate) pairs: what uses this one block device (not its partitions)."""
    node = "/dev/" + name
    users = []
    for dev, source_rdev, mountpoint, _ in mounts:
        if rdev in (dev, source_rdev):
            users.append((node, "is mounted on " + mountpoint))
    for swap in swaps:
        if _rdev_of(swap) == rdev:
            users.append((node, "is an active swap device"))
    for holder in _holders(name):
        users.append((node, "is in use by %s (%s)" % (holder, _holder_kind(holder))))
    return users


def _block_users(rdev, mounts, swaps):
    # type: (int, list, list) -> list
    """(subject, predicate) pairs for a block device and each of its partitions."""
    name = _sys_name(rdev)
    users = _device_users(rdev, name, mounts, swaps)
    for part, part_rdev in _partitions(name):
        for subject, predicate in _device_users(part_rdev, part, mounts, swaps):
            users.append(("partition " + subject, predicate))
    return users


def _is_file(target, path):
    # type: (dict, str) -> bool
    """Whether path names the file `target`; False when it is gone ("... (deleted)")."""
    try:
        return same_object(target, identity(path))
    except OSError:
        return False


def _loop_backing(name):
    # type: (str) -> Optional[Tuple[int, int]]
    """(st_dev, st_ino) of the file a loop device reads, as the kernel holds it, or None (no
    permission to open the device, or nothing attached)."""
    try:
        fd = os.open("/dev/" + name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64_SIZE))
    except (IOError, OSError):
        return None
    finally:
        os.close(fd)
    return struct.unpack_from("QQ", info)  # lo_device, lo_inode: its first two fields


def _backs(target, name):
    # type: (dict, str) -> bool
    """Whether the file `target` backs the loop device `name`: by the path sysfs shows, or,
    where that path no longer names it (renamed over, unlinked while another name is left,
    another mount namespace), by the device and inode the kernel holds."""
    if _is_file(target, _read("/sys/block/%s/loop/backing_file" % name).strip()):
        return True
    return _loop_backing(name) == (target["dev"], target["ino"])


def _loops_backed_by(target):
    # type: (dict) -> list
    """(name, rdev) of each attached loop device whose backing file is the file `target`."""
    return [(name, _makedev(_read("/sys/block/%s/dev" % name)))
            for name in sorted(os.listdir("/sys/block"))
            if os.path.isdir("/sys/block/%s/loop" % name) and _backs(target, name)]


def loops_backed_by(path):
    # type: (str) -> list
    """The /dev node of each attached loop device that reads the file at `path`."""
    return ["/dev/" + name for name, _ in _loops_backed_by(identity(path))]


def _file_users(path, target, mounts, swaps):
    # type: (str, dict, list, list) -> list
    """Reasons a regular file is in use: active swap, or backing a busy loop device."""
    reasons = ["%s is an active swap file" % path for swap in swaps if _is_file(target, swap)]
    for name, rdev in _loops_backed_by(target):
        loop = "/dev/" + name
        for subject, predicate in _block_users(rdev, mounts, swaps):
            if subject == loop:
                reasons.append("backing file of %s, which %s" % (loop, predicate))
            else:
                reasons.append("backing file of %s, whose %s %s" % (loop, subject, predicate))
    return reasons


def busy_reasons(path):
    # type: (str) -> list
    """Why writing this target would be unsafe, one short phrase each; [] when it is free."""
    target = identity(path)
    mounts, swaps = _mounts(), _swaps()
    if target["kind"] == "block":
        return ["%s %s" % pair for pair in _block_users(target["rdev"], mounts, swaps)]
    if target["kind"] == "file":
        return _file_users(path, target, mounts, swaps)
    return []


def mounted_readwrite(path):
    # type: (str) -> Optional[Tuple[str, str]]
    """(device, mountpoint) where this disk (a partition of it, a device built on it, or a
    loop device on this image) is mounted read-write, else None: a copy of a live file system
    may be inconsistent, and the user needs to know which one to unmount."""
    devs = sharing_devices(identity(path))
    for dev, source_rdev, mountpoint, rw in _mounts():
        name = devs.get(dev) or devs.get(source_rdev)
        if rw and name:
            return (name, mountpoint)
    return None


def sharing_devices(ident):
    # type: (dict) -> dict
    """{rdev: /dev node} of every block device whose bytes are (part of) the object `ident`
    (from identity()): a disk itself, its partitions and the devices built on them (holders:
    LVM, MD, dm-crypt), or for an image file the loop devices attached to it, and theirs."""
    if ident.get("kind") == "block":
        todo = [ident["rdev"]]
    elif ident.get("kind") == "file":
        todo = [rdev for _, rdev in _loops_backed_by(ident)]
    else:
        todo = []
    found = {}
    while todo:
        rdev = todo.pop()
        if rdev < 0 or rdev in found:
            continue
        name = _sys_name(rdev)
        found[rdev] = "/dev/" + name
        todo.extend(part for _, part in _partitions(name))
        todo.extend(_makedev(_read("/sys/class/block/%s/dev" % holder))
                    for holder in _holders(name))
    return found


def file_system_devices(path):
    # type: (str) -> set
    """Device numbers of the file system that holds `path`, or would hold it once made: its
    st_dev, and the device mountinfo gives as its source (btrfs reports an anonymous st_dev)."""
    path = os.path.abspath(path)
    while True:
        try:
            dev = os.stat(path).st_dev
            break
        except OSError:
            if os.path.dirname(path) == path:
                return set()
            path = os.path.dirname(path)
    return set([dev] + [source for fs, source, _, _ in _mounts() if fs == dev and source >= 0])


# --- reading and writing data --------------------------------------------------------------


def data_extents(fd, start, end):
    # type: (int, int, int) -> Iterator[Tuple[int, int, bool]]
    """Yield (offset, length, is_data) covering [start, end) without reading the holes.

    Moves the file offset: callers read with os.pread. Where the file system cannot tell
    (EINVAL, EOPNOTSUPP) and for block devices, the whole range is data."""
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        if end > start:
            yield (start, end - start, True)
        return
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but hole up to the end of the file
                data = end
            elif e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield (pos, end - pos, True)
                return
            else:
                raise
        data = min(data, end)
        if data > pos:
            yield (pos, data - pos, False)
        if data >= end:
            return
        hole = min(os.lseek(fd, data, SEEK_HOLE), end)
        yield (data, hole - data, True)
        pos = hole


def is_zero(buf):
    # type: (Union[bytes, bytearray, memoryview]) -> bool
    """Whether a bytes-like object holds only zero bytes.

    bytes.startswith(buffer) is one memcmp for bytes, bytearray and memoryview alike; ==
    compares a memoryview item by item, and count(0), int.from_bytes and any() walk the
    buffer in Python's own loops (docs/performance.md)."""
    global _zeros
    size = buf.nbytes if isinstance(buf, memoryview) else len(buf)
    if size > len(_zeros):
        _zeros = bytes(size)
    return _zeros.startswith(buf)




def zero_chunks(length):
    # type: (int) -> Iterator[memoryview]
    """Views of one cached zero buffer covering `length` bytes: for hashing or filling zero
    runs without allocating a buffer of zeros each time."""
    view = memoryview(_zeros)
    while length > 0:
        n = min(length, len(view))
        yield view[:n]
        length -= n


def fill_segment(view, offset, extents, read_into, dirty, whole):
    # type: (memoryview, int, Iterable[Tuple[int, int, bool]], Callable[[memoryview, int], Any], Set[int], int) -> Tuple[List[Tuple[int, int]], int]
    """Fill view, the image's bytes from `offset`, from its (start, length, is_data) extents:
    data by read_into(part, start), holes not read but zeroed where view's buffer held an
    earlier segment's data (`dirty` names the buffers that may; a buffer left holding one hole
    of `whole` bytes is clean again). The client's source reader and the helper's target
    reader share it. Returns the holes ((start, length), relative to offset) and the bytes read."""
    holes = []  # type: List[Tuple[int, int]]
    nread = 0
    buffer = id(view.obj)
    was_dirty = buffer in dirty
    for start, run, is_data in extents:
        rel = start - offset
        if is_data:
            read_into(view[rel:rel + run], start)
            nread += run
            dirty.add(buffer)
            continue
        holes.append((rel, run))
        if was_dirty:
            for chunk in zero_chunks(run):
                view[rel:rel + len(chunk)] = chunk
                rel += len(chunk)
    if holes == [(0, whole)]:
        dirty.discard(buffer)  # all of it zeros now: clean again
    return holes, nread


def _write_zeros(fd, offset, length):
    # type: (int, int, int) -> None
    """Write real zero bytes over a range, in large chunks."""
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, memoryview(_zeros)[:min(len(_zeros), end - offset)], offset)
        offset += n


def zero_range(fd, offset, length, is_block):
    # type: (int, int, int, bool) -> str
    """Make a range read as zeros, writing no data where the target allows.

    Block device: BLKZEROOUT (the driver zeroes or unmaps; the kernel drops its cached pages).
    Regular file: fallocate(PUNCH_HOLE|KEEP_SIZE) via libc, and ftruncate to extend past the
    end, which leaves a hole. Else zeros are written. Returns "zeroout", "punch" or "write"."""
    if length <= 0:
        return "punch"
    if is_block:
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
            return "zeroout"
        except (IOError, OSError):
            _write_zeros(fd, offset, length)  # unaligned range, or a driver without it
            return "write"
    end = offset + length
    size = os.fstat(fd).st_size
    if end > size:
        os.ftruncate(fd, end)
    inside = min(end, size) - offset
    if inside <= 0:
        return "punch"
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _fallocate is not None and _fallocate(fd, mode, offset, inside) == 0:
        return "punch"
    _write_zeros(fd, offset, inside)
    return "write"


def drop_cache(fd):
    # type: (int) -> None
    """Flush and drop this file's cached pages, so that a re-read (--verify) comes from disk."""
    try:
        os.fsync(fd)  # dirty pages are not dropped: write them out first
    except OSError:
        pass
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):  # AttributeError: no posix_fadvise on this platform
        pass
