"""The frame codec shared by the client and the helper: bytes in, frames out; no I/O.

# Strategy: every message is a frame, a fixed 32-byte header followed by a payload. The header
# carries a magic, the frame type, flags, the payload length, an offset and a size (for data
# frames: where the block goes in the image and how many bytes it decompresses to; for a hole,
# the length of the zero run, with no payload at all; for a copy, the length of the run, its
# payload saying where the target already holds the same bytes) and two CRC-32s: one of the
# payload and one of the header itself, so a corrupt length is caught before we trust it.
# Control payloads are small JSON objects; data payloads are compressed blocks. The Decoder is
# fed whatever bytes arrive, in any pieces, and hands back whole frames; b"" marks end of
# input, after which a partial frame is an error. Bytes that break the format raise
# RemoteProtocolError (each end names its peer when it tells the user), a misuse of the codec
# LocalProtocolError (a bug on this side).
# Nothing here touches a file, a socket, a thread or a clock (after h11).
"""
import json
import struct
import zlib
from collections import deque, namedtuple
from typing import Optional, Tuple

from ..errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1

MAGIC = b"BK"
# magic, type, flags, payload length, offset, size, payload crc, header crc
HEADER = struct.Struct(">2sBBIQQII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 << 20  # a hard cap: no peer makes us allocate more than this for one frame
MAX_CONTROL = 1 << 20  # JSON payloads are small; a huge one is hostile

# Frame types.
HELLO = 1  # helper -> client, first: versions and capabilities
OPEN = 2  # client -> helper: the job and its options
READY = 3  # helper -> client: checks passed, send data
DATA = 4  # client -> helper: one compressed block at `offset`
HOLE = 5  # client -> helper: `size` zero bytes at `offset`, no payload
END = 6  # client -> helper: total bytes and sha256 of the stream
RESULT = 7  # helper -> client: what was written and its sha256
ERROR = 8  # either way: kind, errno, message
PROGRESS = 9  # helper -> client: bytes durably written so far
DIGESTS = 10  # helper -> client (delta): sha256 of each block of the target segment at `offset`
MATCH = 11  # client -> helper (delta): the target already holds `size` bytes at `offset`
COPY = 12  # client -> helper: `size` bytes at `offset` equal to those written at an earlier one
MANIFEST = 13  # tree reader -> writer: a window of entries (zlib JSON), `offset` its first index
WANTS = 14  # tree writer -> reader: JSON, the indices of a window whose content it needs
PREPARED = 15  # helper -> client (confirm): all written and proven; the saveset awaits COMMIT
COMMIT = 16  # client -> helper (confirm): every host prepared: rename the saveset into place
BLOCKS = 17  # tree writer -> reader: sha256 of each block of the old file of entry `offset`
ASK = 18  # client -> helper (delta): the pieces of the segment at `offset` whose blocks differ

TYPE_NAMES = {
    HELLO: "HELLO", OPEN: "OPEN", READY: "READY", DATA: "DATA", HOLE: "HOLE", END: "END",
    RESULT: "RESULT", ERROR: "ERROR", PROGRESS: "PROGRESS", DIGESTS: "DIGESTS", MATCH: "MATCH",
    COPY: "COPY", MANIFEST: "MANIFEST", WANTS: "WANTS", PREPARED: "PREPARED",
    COMMIT: "COMMIT", BLOCKS: "BLOCKS", ASK: "ASK",
}
# Frames capped at MAX_CONTROL: everything but DATA (HOLE and MATCH have no payload at all).
CONTROL_TYPES = frozenset(TYPE_NAMES) - {DATA}
# A COPY's payload: the offset of the earlier bytes, and the sha256 they must have.
COPY_PAYLOAD = struct.Struct(">Q32s")

# DIGESTS flags: the answer to an ASK (the block digests of the pieces asked), not a segment's.
ANSWER = 1

# DATA flags: the codec of the payload.
CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_ZLIB = 2
CODECS = {"raw": CODEC_RAW, "zstd": CODEC_ZSTD, "zlib": CODEC_ZLIB}



class Frame(namedtuple("Frame", "type flags offset size payload")):
    """One decoded frame; `payload` is bytes (or a memoryview on the encode side)."""

    __slots__ = ()

    def json(self):
        # type: () -> dict
        """The payload of a control frame, decoded; bad JSON is a protocol error."""
        try:
            value = json.loads(bytes(self.payload).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise RemoteProtocolError("bad %s payload: %s" % (type_name(self.type), e))
        if not isinstance(value, dict):
            raise RemoteProtocolError("bad %s payload: not an object" % type_name(self.type))
        return value


def type_name(frame_type):
    # type: (int) -> str
    return TYPE_NAMES.get(frame_type, "type %d" % frame_type)


def header(frame_type, payload, offset=0, flags=0, size=0):
    # type: (int, bytes, int, int, int) -> bytes
    """The 32-byte header for `payload`; send it, then the payload, with no concatenation."""
    length = len(payload)
    if length > MAX_PAYLOAD:
        raise LocalProtocolError("payload of %d bytes is over the %d-byte cap"
                                 % (length, MAX_PAYLOAD))
    crc = zlib.crc32(payload) & 0xFFFFFFFF
    head = HEADER.pack(MAGIC, frame_type, flags, length, offset, size, crc, 0)[:-4]
    return head + struct.pack(">I", zlib.crc32(head) & 0xFFFFFFFF)


def encode(frame_type, payload=b"", offset=0, flags=0, size=0):
    # type: (int, bytes, int, int, int) -> bytes
    """A whole frame as one bytes object (for small frames)."""
    return header(frame_type, payload, offset, flags, size) + bytes(payload)


def encode_json(frame_type, obj):
    # type: (int, dict) -> bytes
    return encode(frame_type, json.dumps(obj, sort_keys=True).encode("utf-8"))


def encode_hole(offset, length):
    # type: (int, int) -> bytes
    return encode(HOLE, b"", offset, 0, length)


def encode_copy(offset, size, source, digest):
    # type: (int, int, int, bytes) -> bytes
    return encode(COPY, COPY_PAYLOAD.pack(source, digest), offset, 0, size)


def parse_copy(frame):
    # type: (Frame) -> tuple
    """(source offset, sha256) of a COPY frame, which must copy from strictly before itself."""
    if len(frame.payload) != COPY_PAYLOAD.size:
        raise RemoteProtocolError("COPY frame of %d bytes, not %d" % (len(frame.payload),
                                                                 COPY_PAYLOAD.size))
    source, digest = COPY_PAYLOAD.unpack(frame.payload)
    if source + frame.size > frame.offset:
        raise RemoteProtocolError("COPY of %d bytes to offset %d from offset %d: not from before it"
                            % (frame.size, frame.offset, source))
    return source, digest


def parse_header(head, max_payload=MAX_PAYLOAD):
    # type: (bytes, int) -> Tuple[int, int, int, int, int, int]
    """Check a 32-byte header; returns (type, flags, length, offset, size, payload_crc)."""
    magic, frame_type, flags, length, offset, size, crc, head_crc = HEADER.unpack(head)
    if magic != MAGIC:
        raise RemoteProtocolError("bad frame magic %r: not a bacpac stream" % magic)
    if zlib.crc32(head[:-4]) & 0xFFFFFFFF != head_crc:
        raise RemoteProtocolError("corrupt frame header (checksum mismatch)")
    if frame_type not in TYPE_NAMES:
        raise RemoteProtocolError("unknown frame type %d" % frame_type)
    cap = MAX_CONTROL if frame_type in CONTROL_TYPES else max_payload
    if length > cap:
        raise RemoteProtocolError(
            "%s frame of %d bytes is over the %d-byte cap" % (type_name(frame_type), length, cap))
    if size > max_payload and frame_type in (DATA, COPY):  # both are held in memory whole
        raise RemoteProtocolError("%s frame of %d bytes is over the %d-byte cap"
                            % (type_name(frame_type), size, max_payload))
    return frame_type, flags, length, offset, size, crc


def check_payload(frame_type, payload, crc):
    # type: (int, bytes, int) -> None
    if zlib.crc32(payload) & 0xFFFFFFFF != crc:
        raise RemoteProtocolError("corrupt %s payload (checksum mismatch)" % type_name(frame_type))


class Decoder(object):
    """Feed bytes in any pieces with feed(); next_frame() returns a Frame or None (need data).

    The fed pieces are kept as they came, not copied into one growing buffer: a frame's
    header and payload are each taken out whole. A piece that is exactly the next header or
    the next payload is handed on as it is, with no copy: a reader that reads `needed` bytes at
    a time and feeds each read as it came gets every payload that way. Other payloads are
    joined from their pieces, with one copy.
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        # type: (int) -> None
        self._pieces = deque()  # type: deque
        self._skip = 0  # bytes of the first piece already taken
        self._buffered = 0
        self._eof = False
        # the parsed header of the frame being assembled
        self._head = None  # type: Optional[Tuple[int, int, int, int, int, int]]
        self._max_payload = max_payload

    def feed(self, data):
        # type: (bytes) -> None
        """Add received bytes (kept, not copied: a mutable buffer is copied once); b"" means end
        of input."""
        if self._eof and data:
            raise LocalProtocolError("data fed to the decoder after end of input")
        if not data:
            self._eof = True
            return
        self._pieces.append(data if isinstance(data, bytes) else bytes(data))
        self._buffered += len(data)

    @property
    def buffered(self):
        # type: () -> int
        """Bytes fed and not yet taken out in a frame (a parsed header counts as taken)."""
        return self._buffered

    @property
    def needed(self):
        # type: () -> int
        """Bytes still missing, once next_frame() returned None: of the next header, or, once
        that was parsed, of its payload. Reading that many at a time never reads past a frame."""
        wanted = HEADER_SIZE if self._head is None else self._head[2]
        return max(wanted - self._buffered, 0)

    def next_frame(self):
        # type: () -> Optional[Frame]
        """The next whole frame, or None when more bytes are needed."""
        if self._head is None:
            if self._buffered < HEADER_SIZE:
                return self._need_data("frame header")
            self._head = parse_header(self._take(HEADER_SIZE), self._max_payload)
        frame_type, flags, length, offset, size, crc = self._head
        if self._buffered < length:
            return self._need_data("%s payload" % type_name(frame_type))
        payload = self._take(length)
        self._head = None
        check_payload(frame_type, payload, crc)
        return Frame(frame_type, flags, offset, size, payload)

    def _take(self, n):
        # type: (int) -> bytes
        """The next n buffered bytes (n <= buffered): a piece of exactly n bytes as it is."""
        if not n:
            return b""
        self._buffered -= n
        first = self._pieces[0]
        if not self._skip and len(first) == n:
            self._pieces.popleft()
            return first
        parts = []
        while n:
            piece = self._pieces[0]
            end = min(len(piece), self._skip + n)
            parts.append(memoryview(piece)[self._skip:end])
            n -= end - self._skip
            self._skip = end
            if end == len(piece):
                self._pieces.popleft()
                self._skip = 0
        return b"".join(parts)

    def _need_data(self, what):
        # type: (str) -> Optional[Frame]
        if self._eof and (self._buffered or self._head is not None):
            raise RemoteProtocolError("stream truncated in the middle of a %s" % what)
        return None

    @property
    def at_eof(self):
        # type: () -> bool
        """True once end of input was fed and every whole frame was taken."""
        return self._eof and self._head is None and not self._buffered
