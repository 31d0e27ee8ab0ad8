"""zstd frames, read at the byte level: headers, extents, and one-frame (de)compression.

# Strategy: a saveset stores the very zstd frames that crossed the wire, so both the writer
# (checking what it is handed) and the verifier (walking a file) must understand a frame's
# structure without trusting a decompressor: the frame header (RFC 8878 §3.1.1.1) gives the
# content size and whether a checksum follows; the 3-byte block headers give each block's
# length, so a frame's end is found by hopping from header to header. All of that is plain
# struct work over a `read_at(position, count)` callable, which serves a file and an in-memory
# frame alike. Compressing and decompressing one frame use the zstandard module when the host
# has it, else the `zstd` command-line tool through a pipe (docs/wire.md, HELLO).
"""
import os
import struct
from typing import Callable, Optional, Tuple  # for the type comments

from ..errors import ProtocolError, Refused

try:
    import zstandard
except ImportError:  # an old standby host; the zstd CLI may still be there
    zstandard = None  # type: ignore[assignment]  # mypy types the name as the module

_ZSTD_ERRORS = (zstandard.ZstdError,) if zstandard is not None else ()

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_FIRST = 0x184D2A50
SKIPPABLE_LAST = 0x184D2A5F
MAX_BLOCK = 128 << 10  # Block_Maximum_Size never exceeds 128 KiB: a bigger one is corruption
# Where hosts install the zstd tool, searched after PATH: the helper's may lack them (a login
# through sudo's secure_path, a ForceCommand, a restricted account).
USUAL_PLACES = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")

_U32 = struct.Struct("<I")
_FCS_SIZES = (0, 2, 4, 8)  # by Frame_Content_Size_flag; flag 0 means 1 byte if single segment
_DID_SIZES = (0, 1, 2, 4)  # by Dictionary_ID_flag


class BadFrame(ProtocolError):
    """Bytes that are not the well-formed zstd frame they claim to be."""


class Truncated(BadFrame):
    """The bytes end in the middle of a frame."""


class ZstdMissing(Refused):
    """Neither the zstandard module nor the zstd tool is on this host."""


def u32(buf, pos=0):
    # type: (bytes, int) -> int
    return _U32.unpack_from(buf, pos)[0]


def is_skippable(magic):
    # type: (int) -> bool
    return SKIPPABLE_FIRST <= magic <= SKIPPABLE_LAST


def skippable_frame(magic, payload):
    # type: (int, bytes) -> bytes
    """A skippable frame around `payload`: zstd -d passes over it."""
    return _U32.pack(magic) + _U32.pack(len(payload)) + payload


def parse_header(head):
    # type: (bytes) -> Tuple[int, Optional[int], bool]
    """(header_size, content_size or None, has_checksum) of the frame that `head` starts."""
    if len(head) < 5:
        raise Truncated("zstd frame header cut short")
    if u32(head) != ZSTD_MAGIC:
        raise BadFrame("not a zstd frame (magic 0x%08X)" % u32(head))
    fhd = bytearray(head[4:5])[0]
    if fhd & 0x08:
        raise BadFrame("zstd frame header has its reserved bit set")
    fcs_flag, single_segment = fhd >> 6, bool(fhd & 0x20)
    fcs_size = 1 if (fcs_flag == 0 and single_segment) else _FCS_SIZES[fcs_flag]
    pos = 5 + (0 if single_segment else 1) + _DID_SIZES[fhd & 0x03]
    if len(head) < pos + fcs_size:
        raise Truncated("zstd frame header cut short")
    content_size = None
    if fcs_size:
        field = bytes(head[pos:pos + fcs_size]) + b"\0" * (8 - fcs_size)
        content_size = struct.unpack("<Q", field)[0] + (256 if fcs_size == 2 else 0)
    return pos + fcs_size, content_size, bool(fhd & 0x04)


def frame_content_size(frame):
    # type: (bytes) -> Optional[int]
    """The content size a zstd frame's header declares, or None when it declares none."""
    return parse_header(frame[:18])[1]


def frame_has_checksum(frame):
    # type: (bytes) -> bool
    """Whether a zstd frame ends with a content checksum (Content_Checksum_flag)."""
    return parse_header(frame[:18])[2]


def frame_length(read_at, start):
    # type: (Callable[[int, int], bytes], int) -> int
    """Length of the frame (zstd or skippable) at `start`, found from its headers alone."""
    magic_bytes = read_at(start, 4)
    if len(magic_bytes) < 4:
        raise Truncated("frame cut short at byte %d" % (start + len(magic_bytes)))
    if is_skippable(u32(magic_bytes)):
        length = read_at(start + 4, 4)
        if len(length) < 4:
            raise Truncated("skippable frame header cut short")
        return 8 + u32(length)
    header_size, _, has_checksum = parse_header(read_at(start, 18))
    pos = start + header_size
    last = False
    while not last:
        block = bytearray(read_at(pos, 3))
        if len(block) < 3:
            raise Truncated("frame cut short at byte %d" % (pos + len(block)))
        value = block[0] | block[1] << 8 | block[2] << 16
        last, block_type, size = bool(value & 1), (value >> 1) & 3, value >> 3
        if block_type == 3 or size > MAX_BLOCK:
            raise BadFrame("corrupt block header at byte %d" % pos)
        pos += 3 + (1 if block_type == 1 else size)  # an RLE block stores its byte once
    return pos + (4 if has_checksum else 0) - start


def memory_reader(buf):
    # type: (bytes) -> Callable[[int, int], bytes]
    """A read_at callable over bytes or a memoryview."""
    return lambda pos, count: buf[pos:pos + count]


def check_single_frame(frame):
    # type: (bytes) -> None
    """Refuse anything but exactly one zstd frame."""
    length = frame_length(memory_reader(frame), 0)
    if length != len(frame):
        raise BadFrame("zstd frame is %d bytes but %d were given" % (length, len(frame)))


def backend():
    # type: () -> str
    """Which zstd this host has: "zstandard", "cli" or "" (none)."""
    if zstandard is not None:
        return "zstandard"
    return "cli" if zstd_tool() else ""


def zstd_tool():
    # type: () -> str
    """The zstd tool: on PATH, else in one of the usual places; "" when it is in neither."""
    import shutil  # here, as subprocess below: a helper with the zstandard module never runs it
    return (shutil.which("zstd") or shutil.which("zstd", path=os.pathsep.join(USUAL_PLACES))
            or "")


def require_zstd():
    # type: () -> None
    """Raise ZstdMissing unless this host can (de)compress zstd frames."""
    if not backend():
        raise ZstdMissing("zstd is needed here: install python3-zstandard or the zstd tool")


def compress_frame(data, level=3):
    # type: (bytes, int) -> bytes
    """One zstd frame of `data` with its content size and content checksum, as on the wire."""
    if zstandard is not None:
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        return cctx.compress(data)
    # From a pipe the CLI cannot know the size; --stream-size makes it write it in the header.
    return _run_cli(["-q", "-c", "--check", "-%d" % level, "--stream-size=%d" % len(data)], data)


def decompress_frame(frame, content_size):
    # type: (bytes, int) -> bytes
    """The content of one zstd frame; its checksum is checked; BadFrame if it is damaged."""
    try:
        if zstandard is not None:
            data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=content_size)
        else:
            data = _run_cli(["-q", "-d", "-c"], frame)
    except _ZSTD_ERRORS + (BadFrame,) as e:
        # libzstd checks the frame's own checksum; say so in the words verify's readers know
        message = str(e)
        raise BadFrame("content checksum mismatch" if "checksum" in message else message)
    if len(data) != content_size:
        raise BadFrame("decompressed to %d bytes, not %d" % (len(data), content_size))
    return data


def _run_cli(args, data):
    # type: (list, bytes) -> bytes
    require_zstd()
    import subprocess  # its import is a tenth of the helper's start (docs/performance.md)
    proc = subprocess.Popen([zstd_tool()] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(bytes(data))
    if proc.returncode:
        raise BadFrame(err.decode("utf-8", "replace").strip() or "zstd failed")
    return out
