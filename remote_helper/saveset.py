"""The saveset format: an atomic file, a writer, a reader, a verifier and info, over file objects.

# Strategy: a saveset is a zstd stream that stock `zstd -d` restores as is, wrapped in skippable
# frames that stock tools pass over (design.md §4):
#
#   [0x184D2A50 metadata JSON][zstd frame]...[zstd frame][0x184D2A51 trailer JSON][seek table]
#
# The data frames are the very frames that crossed the wire; the writer only checks them and
# records (compressed size, content size, checksum), taking the checksum from the frame's own
# last four bytes, which zstd defines as the low 32 bits of XXH64 of the content: exactly what
# the seekable format wants, so nothing is hashed twice. The seek table (0x184D2A5E) follows
# zstd's seekable format to the letter, which lists *every* frame before it so that the running
# sum of Compressed_Size is each frame's file offset: the metadata and trailer frames are entries
# too, with Decompressed_Size 0 and the checksum of empty content. `info` reads the metadata,
# then the footer, table and trailer from the end of the file, never the data. `verify` walks
# the file from its headers alone (it never trusts the table to find a frame), decompresses
# every frame, then holds the walk against the seek table and the trailer; its first finding is
# raised with the frame's index (0 = first data frame) and byte offset. A saveset is written
# through atomic.AtomicFile, so an interrupted run never leaves a file under the final name.
"""
import hashlib
import json
import os
import struct
import time

from .errors import HelperError, IntegrityError
from .zstdframe import compress_frame  # noqa: F401  (re-exported: one import for callers)
from .zstdframe import (BadFrame, Truncated, check_single_frame, decompress_frame,
                        frame_content_size, frame_has_checksum, frame_length, is_skippable,
                        parse_header, require_zstd, skippable_frame, u32)

FORMAT = "bacpac-saveset"
VERSION = 1
META_MAGIC = 0x184D2A50
TRAILER_MAGIC = 0x184D2A51
SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
CHECKSUM_FLAG = 0x80
RESERVED_BITS = 0x7C
EMPTY_CHECKSUM = 0x51D8E999  # low 32 bits of XXH64(b""): the checksum of a skippable frame
MAX_JSON = 1 << 20  # metadata and trailer are small; a bigger length field is not ours

_ENTRY = struct.Struct("<III")
_FOOTER = struct.Struct("<IBI")


class NotASaveset(HelperError):
    """The file does not begin with a bacpac metadata frame: the CLI says "PATH: not a bacpac
    saveset" and exits 1 (it is a failed check of a file, not a wrong command)."""

    kind = "VerifyError"


class SavesetCorrupt(IntegrityError):
    """A saveset whose frames, seek table or trailer do not hold together; names where."""


def _json_frame(magic, obj):
    # type: (int, dict) -> bytes
    return skippable_frame(magic, json.dumps(obj, sort_keys=True).encode("utf-8"))


def seek_table(entries):
    # type: (list) -> bytes
    """The seek table frame for (compressed, decompressed, checksum) entries, checksums on."""
    body = b"".join(_ENTRY.pack(*entry) for entry in entries)
    body += _FOOTER.pack(len(entries), CHECKSUM_FLAG, SEEKABLE_MAGIC)
    return skippable_frame(SEEK_TABLE_MAGIC, body)


def frame_entry(frame, content_size):
    # type: (bytes, int) -> tuple
    """(compressed, decompressed, checksum) of one wire frame, after checking it is one."""
    _, declared, has_checksum = parse_header(frame[:18])
    if not has_checksum:
        raise BadFrame("zstd frame has no content checksum")
    if declared != content_size:
        raise BadFrame("zstd frame declares %r content bytes, not %d" % (declared, content_size))
    if len(frame) > 0xFFFFFFFF or content_size > 0xFFFFFFFF:
        raise BadFrame("zstd frame too large for a seek table entry")
    check_single_frame(frame)
    return len(frame), content_size, u32(frame, len(frame) - 4)


class SavesetWriter(object):
    """Writes a saveset to `fileobj`: metadata now, frames as they come, trailer on finish()."""

    def __init__(self, fileobj, metadata):
        # type: (object, dict) -> None
        self._f = fileobj
        meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        meta.update(metadata)
        meta.update({"format": FORMAT, "version": VERSION, "type": "metadata"})
        head = _json_frame(META_MAGIC, meta)
        self._f.write(head)
        self._table = [(len(head), 0, EMPTY_CHECKSUM)]
        self._bytes = 0

    def add_frame(self, frame, content_size):
        # type: (bytes, int) -> None
        """Append one complete zstd frame, as is; BadFrame if it is not a checksummed frame."""
        entry = frame_entry(frame, content_size)
        self._f.write(frame)
        self._table.append(entry)
        self._bytes += content_size

    def finish(self, sha256_hex, total_bytes):
        # type: (str, int) -> None
        """Write the trailer and the seek table; the caller then commits the file."""
        if total_bytes != self._bytes:
            raise IntegrityError("saveset frames hold %d bytes, the stream %d"
                                 % (self._bytes, total_bytes))
        trailer = _json_frame(TRAILER_MAGIC, {
            "format": FORMAT, "type": "trailer", "sha256": sha256_hex,
            "frames": len(self._table) - 1, "bytes": total_bytes})
        self._table.append((len(trailer), 0, EMPTY_CHECKSUM))
        self._f.write(trailer)
        self._f.write(seek_table(self._table))


def _parse_json(payload, kind):
    # type: (bytes, str) -> object
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, dict) and value.get("format") == FORMAT and value.get("type") == kind:
        return value
    return None


class SavesetReader(object):
    """Reads a saveset's metadata at once; its seek table and trailer from the end on demand."""

    def __init__(self, fileobj):
        # type: (object) -> None
        self._f = fileobj
        self._f.seek(0, os.SEEK_END)
        self.file_size = self._f.tell()
        self.data_offset = 0  # set by _read_metadata: where the first data frame starts
        self.metadata = self._read_metadata()
        self._tail = None  # type: object

    def read_at(self, pos, count):
        # type: (int, int) -> bytes
        self._f.seek(pos)
        return self._f.read(count)

    def _read_metadata(self):
        # type: () -> dict
        head = self.read_at(0, 8)
        if len(head) < 8 or u32(head) != META_MAGIC or u32(head, 4) > MAX_JSON:
            raise NotASaveset("not a bacpac saveset")
        self.data_offset = 8 + u32(head, 4)
        payload = self.read_at(8, self.data_offset - 8)
        if len(payload) < self.data_offset - 8:
            raise SavesetCorrupt("file truncated at byte %d, inside the metadata frame"
                                 % self.file_size)
        meta = _parse_json(payload, "metadata")
        if meta is None:
            raise NotASaveset("not a bacpac saveset")
        if meta.get("version") != VERSION:
            raise SavesetCorrupt("saveset version %r: this bacpac reads version %d"
                                 % (meta.get("version"), VERSION))
        return meta

    @property
    def entries(self):
        # type: () -> list
        """Seek table entries (compressed, decompressed, checksum) of the data frames."""
        return self._load_tail()[0][1:-1]

    @property
    def trailer(self):
        # type: () -> dict
        return self._load_tail()[1]

    @property
    def trailer_offset(self):
        # type: () -> int
        return self._load_tail()[2]

    def _load_tail(self):
        # type: () -> tuple
        if self._tail is None:
            table, table_offset = self._read_seek_table()
            if table[0] != (self.data_offset, 0, EMPTY_CHECKSUM):
                raise SavesetCorrupt("seek table: entry 0 does not describe the metadata frame")
            if sum(entry[0] for entry in table) != table_offset:
                raise SavesetCorrupt("seek table: its frames add up to %d bytes, but it starts"
                                     " at byte %d" % (sum(e[0] for e in table), table_offset))
            trailer_offset = table_offset - table[-1][0]
            self._tail = (table, self._read_trailer(trailer_offset, table[-1]), trailer_offset)
        return self._tail

    def _read_seek_table(self):
        # type: () -> tuple
        footer = self.read_at(self.file_size - 9, 9) if self.file_size >= 9 else b""
        if len(footer) < 9 or _FOOTER.unpack(footer)[2] != SEEKABLE_MAGIC:
            raise SavesetCorrupt("seek table: no seek table footer at the end of the file (%d"
                                 " bytes): truncated, or something follows the seek table"
                                 % self.file_size)
        count, descriptor, _ = _FOOTER.unpack(footer)
        if descriptor & RESERVED_BITS or not descriptor & CHECKSUM_FLAG:
            raise SavesetCorrupt("seek table: unexpected descriptor 0x%02X" % descriptor)
        body_size = count * _ENTRY.size + 9
        table_offset = self.file_size - 8 - body_size
        if count < 2 or table_offset < self.data_offset:
            raise SavesetCorrupt("seek table: %d entries do not fit this file" % count)
        table = self.read_at(table_offset, 8 + body_size)
        if u32(table) != SEEK_TABLE_MAGIC or u32(table, 4) != body_size:
            raise SavesetCorrupt("seek table: bad frame header at byte %d" % table_offset)
        entries = [_ENTRY.unpack_from(table, 8 + i * _ENTRY.size) for i in range(count)]
        return entries, table_offset

    def _read_trailer(self, offset, entry):
        # type: (int, tuple) -> dict
        head = self.read_at(offset, 8)
        if (entry[1:] != (0, EMPTY_CHECKSUM) or len(head) < 8 or u32(head) != TRAILER_MAGIC
                or u32(head, 4) + 8 != entry[0] or entry[0] > MAX_JSON):
            raise SavesetCorrupt("trailer: no trailer frame at byte %d" % offset)
        trailer = _parse_json(self.read_at(offset + 8, entry[0] - 8), "trailer")
        if trailer is None:
            raise SavesetCorrupt("trailer: unreadable trailer at byte %d" % offset)
        return trailer

    def frames(self):
        # type: () -> object
        """Yield (index, file_offset, frame_bytes) for each data frame, walking the headers."""
        index, offset = 0, self.data_offset
        while True:
            try:
                length = frame_length(self.read_at, offset)
            except Truncated:
                raise SavesetCorrupt(self._truncated(index, offset))
            except BadFrame as e:
                if offset == self._table_trailer_offset():
                    raise SavesetCorrupt("trailer: no trailer frame at byte %d" % offset)
                raise SavesetCorrupt("frame %d at byte %d: %s" % (index, offset, e.message))
            if is_skippable(u32(self.read_at(offset, 4))):
                return  # the first skippable frame after the data is the trailer
            frame = self.read_at(offset, length)
            if len(frame) < length:
                raise SavesetCorrupt(self._truncated(index, offset))
            yield index, offset, frame
            index, offset = index + 1, offset + length

    def _table_trailer_offset(self):
        # type: () -> object
        """Where the seek table alone puts the trailer, or None: to name a damaged trailer."""
        try:
            table, table_offset = self._read_seek_table()
        except SavesetCorrupt:
            return None
        return table_offset - table[-1][0]

    def _truncated(self, index, offset):
        # type: (int, int) -> str
        if offset >= self.file_size:
            return ("file truncated at byte %d, after %d data frames: no trailer or seek table"
                    % (self.file_size, index))
        return ("file truncated: frame %d at byte %d is cut off by the end of the file at byte %d"
                % (index, offset, self.file_size))


def verify(fileobj, decompressor=None):
    # type: (object, object) -> dict
    """Check every frame, the seek table and the trailer; SavesetCorrupt names the first fault.

    `decompressor(frame, content_size) -> bytes` raises BadFrame on a damaged frame; by default
    the zstandard module or the zstd tool (ZstdMissing when the host has neither).
    """
    reader = SavesetReader(fileobj)
    if decompressor is None:
        require_zstd()
    decompress = decompressor or decompress_frame
    digest = hashlib.sha256()
    walked = []
    end = reader.data_offset
    for index, offset, frame in reader.frames():
        walked.append((offset, _check_frame(index, offset, frame, decompress, digest)))
        end = offset + len(frame)
    _check_table(reader, walked, end)
    summary = {
        "frames": len(walked), "bytes": sum(entry[1] for _, entry in walked),
        "compressed": sum(entry[0] for _, entry in walked), "sha256": digest.hexdigest()}
    _check_trailer(reader, summary)
    return summary


def _check_frame(index, offset, frame, decompress, digest):
    # type: (int, int, bytes, object, object) -> tuple
    try:
        size = frame_content_size(frame)
        if size is None:
            raise BadFrame("no content size in the frame header")
        if not frame_has_checksum(frame):
            raise BadFrame("no content checksum")
        digest.update(decompress(frame, size))
    except BadFrame as e:
        raise SavesetCorrupt("frame %d at byte %d: %s" % (index, offset, e.message))
    return len(frame), size, u32(frame, len(frame) - 4)


def _check_table(reader, walked, end):
    # type: (SavesetReader, list, int) -> None
    entries = reader.entries
    if end != reader.trailer_offset:
        raise SavesetCorrupt("the data frames end at byte %d, but the seek table puts the trailer"
                             " at byte %d" % (end, reader.trailer_offset))
    if len(entries) != len(walked):
        raise SavesetCorrupt("seek table: lists %d data frames, the file holds %d"
                             % (len(entries), len(walked)))
    for index, (offset, entry) in enumerate(walked):
        if tuple(entries[index]) != entry:
            raise SavesetCorrupt("frame %d at byte %d: seek table says %s, the frame is %s"
                                 % (index, offset, _describe(entries[index]), _describe(entry)))


def _describe(entry):
    # type: (tuple) -> str
    return "%d bytes of %d, checksum 0x%08X" % tuple(entry)


def _check_trailer(reader, summary):
    # type: (SavesetReader, dict) -> None
    trailer = reader.trailer
    for key in ("frames", "bytes", "sha256"):
        if trailer.get(key) != summary[key]:
            raise SavesetCorrupt("trailer: %s is %r, the content has %r"
                                 % (key, trailer.get(key), summary[key]))
    meta = reader.metadata
    if meta.get("kind") == "disk" and meta.get("size") != summary["bytes"]:
        raise SavesetCorrupt("metadata: image size %r, but the frames hold %d bytes"
                             % (meta.get("size"), summary["bytes"]))


def info(fileobj):
    # type: (object) -> dict
    """Metadata, trailer and sizes, from the start and the end of the file only."""
    reader = SavesetReader(fileobj)
    entries = reader.entries
    compressed = sum(entry[0] for entry in entries)
    size = sum(entry[1] for entry in entries)
    return {
        "metadata": reader.metadata, "trailer": reader.trailer, "size": size,
        "frames": len(entries), "compressed": compressed, "file_size": reader.file_size,
        "ratio": round(float(size) / compressed, 3) if compressed else None}
