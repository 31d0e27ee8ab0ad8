"""Direct I/O on both ends: the client's reads of the source and the helper's writes to the
target go around the page cache where they are aligned, and fall back to buffered I/O where
the file system refuses, without a wrong byte either way."""
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os

import pytest
import zstandard

from bacpac.errors import TransferError
from bacpac.engine.pipeline import ImageStream, StreamSettings
from clirun import MiB, digest_of, write_file
from remote_helper.target import devices, directio
from remote_helper.errors import HelperError
from remote_helper.target.target import open_target

SOURCE = {"boot_id": "", "identity": {}}


def is_direct(fd):
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & directio.O_DIRECT)


@pytest.fixture
def direct_dir(tmp_path):
    """tmp_path, where its file system does direct I/O (overlayfs and old tmpfs may not: there
    bacpac goes buffered, which the fallback tests below show by other means)."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_RDONLY | directio.O_DIRECT))
    except OSError as e:
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT ({e.strerror})")
    finally:
        probe.unlink()
    return tmp_path


class Collect:
    """A FrameSender that rebuilds the image from the frames it is handed."""

    def __init__(self, size):
        self.image = bytearray(size)
        self.holes = []

    def block(self, offset, size, flags, payload):
        data = zstandard.ZstdDecompressor().decompress(payload)
        assert len(data) == size
        self.image[offset:offset + size] = data

    def hole(self, offset, size):
        self.holes.append((offset, size))

    def match(self, offset, size, data=None):
        raise AssertionError("a full copy sends no MATCH")

    def check(self):
        pass

    def helper_idle(self):
        return None


def stream(path, settings=StreamSettings(threads=2, sha256=True), sink=Collect, **reader_args):
    """Send the image at `path` through a `sink` (a Collect); (collector, result)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = devices.open_size(fd)
        image = ImageStream(fd, size, settings, **reader_args)
        try:
            sink = sink(size)
            return sink, image.send(sink)
        finally:
            image.close()
    finally:
        os.close(fd)


def reads_spy(mocker):
    """Every os.preadv call as (direct?, offset, length), in order."""
    calls = []
    real = os.preadv

    def preadv(fd, buffers, offset, *rest):
        calls.append((is_direct(fd), offset, sum(len(b) for b in buffers)))
        return real(fd, buffers, offset, *rest)

    mocker.patch("os.preadv", side_effect=preadv)
    return calls


def unaligned_image(directory):
    """9 MiB + 1234 bytes: data, a hole, data, and data up to an unaligned end."""
    size = 9 * MiB + 1234
    chunks = {0: os.urandom(3 * MiB), 5 * MiB: os.urandom(2 * MiB),
              8 * MiB: os.urandom(MiB + 1234)}
    path = write_file(directory / "src.img", size, chunks)
    return str(path), path.read_bytes()


# --- the client's reads ----------------------------------------------------------------------


def test_the_reader_reads_aligned_blocks_directly_and_an_unaligned_tail_buffered(direct_dir,
                                                                                 mocker):
    path, content = unaligned_image(direct_dir)
    calls = reads_spy(mocker)
    sink, result = stream(path)
    assert bytes(sink.image) == content
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert result.digest == digest_of(path)
    assert result.bytes_read == len(content)
    direct = [c for c in calls if c[0]]
    buffered = [c for c in calls if not c[0]]
    assert sum(n for _, _, n in direct) == 6 * MiB  # all the data but the tail; no hole
    assert buffered == [(False, 9 * MiB, 1234)]


def cached(fd, ranges):
    """The offsets of the pages of `ranges` ([(start, end)]) of fd's file that are in the page
    cache, by mincore(2) on a mapping of it. (A read with RWF_NOWAIT would tell as well, but
    it starts readahead where it fails: the probe would cache what it looks for.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    length = os.fstat(fd).st_size
    address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address != ctypes.c_void_p(-1).value, os.strerror(ctypes.get_errno())
    try:
        vector = ctypes.create_string_buffer((length + page - 1) // page)
        assert libc.mincore(address, length, vector) == 0, os.strerror(ctypes.get_errno())
        return [n * page for n, byte in enumerate(vector.raw)
                if byte & 1 and any(start <= n * page < end for start, end in ranges)]
    finally:
        libc.munmap(address, length)


def test_direct_reads_leave_the_source_out_of_the_page_cache(direct_dir):
    # Written directly, the source starts out of the cache, where POSIX_FADV_DONTNEED would
    # only ask the kernel to drop it (and a busy kernel may keep a page or two).
    size = 9 * MiB + 1234
    chunks = {0: os.urandom(3 * MiB), 5 * MiB: os.urandom(2 * MiB),
              8 * MiB: os.urandom(MiB + 1234)}
    path = str(direct_dir / "src.img")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        os.ftruncate(fd, size)
        direct = directio.reopen(fd, os.O_RDWR)
        scratch = directio.buffer(3 * MiB)
        for offset, chunk in chunks.items():
            whole = len(chunk) - len(chunk) % directio.ALIGN
            scratch[:whole] = chunk[:whole]
            assert os.pwrite(direct, memoryview(scratch)[:whole], offset) == whole
            os.pwrite(fd, chunk[whole:], offset + whole)  # the tail, past 9 MiB
        directio.close(direct)
        content = bytearray(size)
        for offset, chunk in chunks.items():
            content[offset:offset + len(chunk)] = chunk
        data = [(0, 3 * MiB), (5 * MiB, 9 * MiB)]
        assert cached(fd, data) == [], "written directly, yet in the page cache"
        sink, _ = stream(path)
        assert bytes(sink.image) == bytes(content)
        # A buffered copy would have cached every page of the data.
        assert cached(fd, data) == []
    finally:
        os.close(fd)


def test_the_reader_falls_back_to_buffered_reads_when_direct_io_is_refused(direct_dir, mocker):
    path, content = unaligned_image(direct_dir)
    calls = []
    real = os.preadv

    def preadv(fd, buffers, offset, *rest):
        calls.append(is_direct(fd))
        if is_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset, *rest)

    mocker.patch("os.preadv", side_effect=preadv)
    sink, result = stream(path)
    assert bytes(sink.image) == content
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert result.digest == digest_of(path)
    assert calls.count(True) == 1  # refused once, then never asked again
    assert calls[0] is True


def test_a_disk_error_in_a_direct_read_is_not_taken_for_a_refusal(direct_dir, mocker):
    path, _ = unaligned_image(direct_dir)
    real = os.preadv

    def preadv(fd, buffers, offset, *rest):
        if is_direct(fd) and offset >= 5 * MiB:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset, *rest)

    mocker.patch("os.preadv", side_effect=preadv)
    with pytest.raises(TransferError) as raised:
        stream(path, name=str(path))
    assert str(raised.value) == f"{path}: read error at byte {5 * MiB}: Input/output error"


def test_the_reader_of_a_loop_device_reads_it_directly(loop_device, mocker):
    device = loop_device(8 * MiB)
    content = os.urandom(8 * MiB)
    with open(device, "r+b") as f:
        f.write(content)
    calls = reads_spy(mocker)
    sink, result = stream(device)
    assert bytes(sink.image) == content
    assert calls and all(direct for direct, _, _ in calls)


# --- the helper's writes ---------------------------------------------------------------------


def writes_spy(mocker, fail_direct=None):
    """Every os.pwrite call as (direct?, offset, length); fail_direct, an errno, makes each
    direct write fail with it."""
    calls = []
    real = os.pwrite

    def pwrite(fd, data, offset):
        direct = is_direct(fd)
        calls.append((direct, offset, len(data)))
        if direct and fail_direct is not None:
            raise OSError(fail_direct, os.strerror(fail_direct))
        return real(fd, data, offset)

    mocker.patch("os.pwrite", side_effect=pwrite)
    return calls


def test_the_target_writes_aligned_ranges_directly_and_an_unaligned_tail_buffered(direct_dir,
                                                                                  mocker):
    path = str(direct_dir / "t.img")
    size = 6 * MiB + 100
    target = open_target(path, size, False, SOURCE)
    calls = writes_spy(mocker)
    head, body = os.urandom(MiB), os.urandom(5 * MiB + 100)
    try:
        target.pwrite(MiB, memoryview(body))  # 5 MiB direct (in two scratch-sized writes)
        target.pwrite(0, head)
        target.sync()
    finally:
        target.close()
    with open(path, "rb") as f:
        assert f.read() == head + body
    assert calls == [(True, MiB, 4 * MiB), (True, 5 * MiB, MiB), (False, 6 * MiB, 100),
                     (True, 0, MiB)]


def test_the_target_falls_back_to_buffered_writes_when_direct_io_is_refused(direct_dir, mocker):
    path = str(direct_dir / "t.img")
    target = open_target(path, 3 * MiB, False, SOURCE)
    calls = writes_spy(mocker, fail_direct=errno.EINVAL)
    data = [os.urandom(MiB) for _ in range(3)]
    try:
        for n, chunk in enumerate(data):
            target.pwrite(n * MiB, chunk)
        target.sync()
    finally:
        target.close()
    with open(path, "rb") as f:
        assert f.read() == b"".join(data)
    assert [direct for direct, _, _ in calls] == [True, False, False, False]


def test_a_full_disk_under_a_direct_write_is_an_error_naming_the_target(direct_dir, mocker):
    path = str(direct_dir / "t.img")
    target = open_target(path, MiB, False, SOURCE)
    writes_spy(mocker, fail_direct=errno.ENOSPC)
    try:
        with pytest.raises(HelperError, match=r"t\.img: No space left on device") as raised:
            target.pwrite(0, os.urandom(MiB))
        assert raised.value.errno == errno.ENOSPC
    finally:
        target.close()


def test_the_target_writes_a_loop_device_directly(loop_device, mocker):
    device = loop_device(4 * MiB)
    target = open_target(device, 4 * MiB, True, SOURCE)
    calls = writes_spy(mocker)
    data = os.urandom(4 * MiB)
    try:
        target.pwrite(0, data)
        target.sync()
    finally:
        target.close()
    with open(device, "rb") as f:
        assert f.read() == data
    assert calls == [(True, 0, 4 * MiB)]
