"""Reading a saveset: the one reader, and the one verdict, that verify, restore and info share.

# Strategy: a saveset is proven in three steps, and every fault is told the same way whichever
# command found it, naming the frame and its byte offset (frame 0 is the first data frame):
# 1. Its ends, when the reader is made, before a byte of data is read (so before a restore
#    writes anything): the metadata frame; the seek table, from the end of the file; the trailer
#    the table points at. Both JSON objects must be in canonical form with every field of its
#    type; the metadata's sha256 must be the one the trailer records (from version 2); the table's
#    running sum must be its own offset; the table, the trailer and the metadata must agree on
#    the frame count and the image size. A fault in the table is then located by walking the
#    frame headers against it (reading headers and checksum fields only): the message names
#    the first frame that disagrees, or where the file was cut, rather than a sum.
# 2. Each data frame, found from its own headers (the table is never trusted to find one),
#    held against its table entry, sizes first so that a damaged size never makes the
#    decompressor reserve what a header claims, then decompressed, which checks its content
#    against its checksum. Restore sends a frame on only once it passed.
# 3. The whole, after the last frame: as many frames as the table lists, and the content's
#    sha256 equal to the trailer's; of a disk saveset also its image digest (sha256-1m,
#    target/imagedigest.py), held against the trailer's from version 3 and reported from any
#    version, so that a restore or a verify can be compared with the dup that wrote it.
# `info` stops after step 1; `verify` and restore run all three.
"""
import hashlib
import json
import os
from typing import Any, BinaryIO, Callable, Dict, Iterator, Optional, Tuple  # for the type comments

from .format import (CHECKSUM_FLAG, DIGEST_ALGORITHM, DIGEST_VERSION, EMPTY_CHECKSUM, ENTRY,
                      FOOTER, FORMAT, KINDS, MAX_JSON, META_MAGIC, READABLE_VERSIONS,
                      RESERVED_BITS, SEEK_TABLE_MAGIC, SEEKABLE_MAGIC, TRAILER_MAGIC,
                      NotASaveset, SavesetCorrupt, canonical_json)
from .treeset import TarCheck
from ..target.imagedigest import ImageDigest
from ..wire.zstdframe import (BadFrame, Truncated, decompress_frame, frame_length, is_skippable,
                        parse_header, require_zstd, u32)

_OURS = b'"' + FORMAT.encode("ascii") + b'"'  # a damaged metadata frame of ours still has it
_PROBE = 4096  # how far into a metadata frame that is not JSON to look for it
Decompress = Callable[[bytes, int], bytes]  # (frame, content_size) -> content


def _is_count(value):
    # type: (object) -> bool
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_text(value):
    # type: (object) -> bool
    return isinstance(value, str)


def _is_sha256(value):
    # type: (object) -> bool
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


METADATA_FIELDS = {
    "version": lambda v: v in READABLE_VERSIONS, "kind": lambda v: v in KINDS,
    "size": lambda v: v is None or _is_count(v),  # null for a tree: streamed, size unknown
    "frame_size": lambda v: _is_count(v) and v > 0, "created": _is_text,
    "source_host": _is_text, "source_path": _is_text, "bacpac_version": _is_text,
}  # type: Dict[str, Callable[[Any], bool]]
TRAILER_FIELDS = {"frames": _is_count, "bytes": _is_count, "sha256": _is_sha256}
DIGEST_FIELD = "metadata_sha256"  # in the trailer from version 2
IMAGE_DIGEST_FIELDS = {  # in a disk saveset's trailer from version 3
    "digest": _is_sha256, "digest_algorithm": lambda v: v == DIGEST_ALGORITHM,
}  # type: Dict[str, Callable[[Any], bool]]


def _parse_json(payload, kind):
    # type: (bytes, str) -> Optional[dict]
    """The object, if `payload` is a canonical JSON object of this `kind` and format, else None."""
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if (isinstance(value, dict) and value.get("format") == FORMAT and value.get("type") == kind
            and canonical_json(value) == payload):
        return value
    return None


def _field_fault(obj, fields, known):
    # type: (dict, dict, set) -> Optional[str]
    """What is wrong with the fields of a metadata or trailer object, or None."""
    for key in sorted(fields):
        if key not in obj or not fields[key](obj[key]):
            return "%s is %r" % (key, obj.get(key))
    unknown = sorted(set(obj) - known)
    return "unknown field %r" % unknown[0] if unknown else None


def _versions():
    # type: () -> str
    """ "1, 2 and 3": the versions this reader knows, for a message."""
    known = [str(version) for version in READABLE_VERSIONS]
    return ", ".join(known[:-1]) + " and " + known[-1]


def _describe(entry):
    # type: (tuple) -> str
    return "%d bytes of %r, checksum 0x%08X" % tuple(entry)


class SavesetReader(object):
    """A saveset whose ends are proven (step 1); its data frames on demand (steps 2 and 3).

    Raises NotASaveset for a file that is no saveset, SavesetCorrupt for a damaged one.
    """

    def __init__(self, fileobj):
        # type: (BinaryIO) -> None
        self._f = fileobj
        self._f.seek(0, os.SEEK_END)
        self.file_size = self._f.tell()
        self.metadata, self._metadata_frame = self._read_metadata()
        self.data_offset = len(self._metadata_frame)
        self.entries, self.trailer_offset, self.trailer = self._read_ends()
        self.metadata_checked = DIGEST_FIELD in self.trailer
        # filled by proven_frames once every frame passed: "sha256" and, of a disk, "digest"
        self.content_digests = {}  # type: Dict[str, str]

    def read_at(self, pos, count):
        # type: (int, int) -> bytes
        self._f.seek(pos)
        return self._f.read(count)

    # --- step 1: the ends -----------------------------------------------------------------

    def _read_metadata(self):
        # type: () -> Tuple[dict, bytes]
        head = self.read_at(0, 8)
        if len(head) < 8 or u32(head) != META_MAGIC:
            raise NotASaveset("not a bacpac saveset")
        size = u32(head, 4)
        if size <= MAX_JSON and 8 + size > self.file_size:
            raise SavesetCorrupt("file truncated at byte %d, inside the metadata frame"
                                 % self.file_size)
        payload = self.read_at(8, size) if size <= MAX_JSON else b""
        meta = _parse_json(payload, "metadata")
        if meta is None:
            if _OURS not in self.read_at(8, _PROBE):
                raise NotASaveset("not a bacpac saveset")
            raise SavesetCorrupt("metadata frame at byte 0: damaged (its length field or its "
                                 "JSON is not as bacpac writes them)")
        if meta.get("version") not in READABLE_VERSIONS:
            raise SavesetCorrupt("metadata frame at byte 0: saveset version %r: this bacpac reads"
                                 " versions %s (a newer bacpac wrote it, or it is damaged)"
                                 % (meta.get("version"), _versions()))
        fault = _field_fault(meta, METADATA_FIELDS, set(METADATA_FIELDS) | {"format", "type"})
        if fault is None and (meta["size"] is None) != (meta["kind"] == "tree"):
            fault = "size is %r for kind %r" % (meta["size"], meta["kind"])  # only a tree's is null
        if fault is not None:
            raise SavesetCorrupt("metadata frame at byte 0: damaged: %s" % fault)
        return meta, head + payload

    def _read_ends(self):
        # type: () -> Tuple[list, int, dict]
        try:
            table, table_offset = self._read_seek_table()
        except SavesetCorrupt as e:
            raise self._located(e, None)
        entries = table[1:-1]
        fault = self._table_fault(table, table_offset)
        trailer_offset = table_offset - table[-1][0]
        if fault is None:
            trailer = self._read_trailer(trailer_offset, table[-1], table_offset)
            fault = self._count_fault(trailer, entries, trailer_offset)
        if fault is not None:
            raise self._located(SavesetCorrupt(fault), entries)
        self._check_metadata(trailer, trailer_offset)
        return entries, trailer_offset, trailer

    def _read_seek_table(self):
        # type: () -> Tuple[list, int]
        footer_at = self.file_size - FOOTER.size
        footer = self.read_at(footer_at, FOOTER.size) if footer_at >= 0 else b""
        if len(footer) < FOOTER.size or FOOTER.unpack(footer)[2] != SEEKABLE_MAGIC:
            raise SavesetCorrupt("seek table: no seek table footer at the end of the file (byte"
                                 " %d): truncated, or something follows the seek table"
                                 % self.file_size)
        count, descriptor, _ = FOOTER.unpack(footer)
        if descriptor & RESERVED_BITS or not descriptor & CHECKSUM_FLAG:
            raise SavesetCorrupt("seek table footer at byte %d: unexpected descriptor 0x%02X"
                                 % (footer_at, descriptor))
        body_size = count * ENTRY.size + FOOTER.size
        table_offset = self.file_size - 8 - body_size
        if count < 2 or table_offset < self.data_offset:
            raise SavesetCorrupt("seek table footer at byte %d: %d entries do not fit this file"
                                 % (footer_at, count))
        table = self.read_at(table_offset, 8 + body_size)
        if u32(table) != SEEK_TABLE_MAGIC or u32(table, 4) != body_size:
            raise SavesetCorrupt("seek table at byte %d: bad frame header" % table_offset)
        entries = [ENTRY.unpack_from(table, 8 + i * ENTRY.size) for i in range(count)]
        return entries, table_offset

    def _table_fault(self, table, table_offset):
        # type: (list, int) -> Optional[str]
        where = "seek table at byte %d" % table_offset
        if table[0] != (self.data_offset, 0, EMPTY_CHECKSUM):
            return "%s: its first entry does not describe the metadata frame" % where
        if table[-1][1:] != (0, EMPTY_CHECKSUM) or not 8 <= table[-1][0] <= 8 + MAX_JSON:
            return "%s: its last entry does not describe a trailer frame" % where
        total = sum(entry[0] for entry in table)
        if total != table_offset:
            return "%s: its frames add up to %d bytes, but it starts at byte %d" % (
                where, total, table_offset)
        return None

    def _read_trailer(self, offset, entry, table_offset):
        # type: (int, tuple, int) -> dict
        where = "trailer at byte %d" % offset
        head = self.read_at(offset, 8)
        if u32(head) != TRAILER_MAGIC or u32(head, 4) + 8 != entry[0]:
            raise SavesetCorrupt("%s: no trailer frame there, where the seek table at byte %d "
                                 "puts it" % (where, table_offset))
        trailer = _parse_json(self.read_at(offset + 8, entry[0] - 8), "trailer")
        if trailer is None:
            raise SavesetCorrupt("%s: damaged (its JSON is not as bacpac writes it)" % where)
        fields = dict(TRAILER_FIELDS, **({DIGEST_FIELD: _is_sha256} if DIGEST_FIELD in trailer
                                         else {}))
        if self.metadata["version"] >= DIGEST_VERSION and self.metadata["kind"] == "disk":
            fields.update(IMAGE_DIGEST_FIELDS)
        fault = _field_fault(trailer, fields, set(fields) | {"format", "type"})
        if fault is not None:
            raise SavesetCorrupt("%s: damaged: %s" % (where, fault))
        return trailer

    def _count_fault(self, trailer, entries, trailer_offset):
        # type: (dict, list, int) -> Optional[str]
        where = "trailer at byte %d" % trailer_offset
        if trailer["frames"] != len(entries):
            return "%s: it counts %d data frames, the seek table lists %d" % (
                where, trailer["frames"], len(entries))
        held = sum(entry[1] for entry in entries)
        if trailer["bytes"] != held:
            return "%s: it counts %d bytes, the seek table's frames hold %d" % (
                where, trailer["bytes"], held)
        return None

    def _check_metadata(self, trailer, trailer_offset):
        # type: (dict, int) -> None
        recorded = trailer.get(DIGEST_FIELD)
        if recorded is None and self.metadata["version"] != 1:
            raise SavesetCorrupt("trailer at byte %d: no sha256 of the metadata, which a version"
                                 " %d saveset records" % (trailer_offset, self.metadata["version"]))
        if recorded is not None and hashlib.sha256(self._metadata_frame).hexdigest() != recorded:
            raise SavesetCorrupt("metadata frame at byte 0: damaged: its sha256 is not the one "
                                 "the trailer records")
        if self.metadata["size"] not in (None, trailer["bytes"]):
            raise SavesetCorrupt("metadata frame at byte 0: image size %d, but the frames hold "
                                 "%d bytes" % (self.metadata["size"], trailer["bytes"]))

    def _located(self, fault, entries):
        # type: (SavesetCorrupt, Optional[list]) -> SavesetCorrupt
        """The first frame that disagrees with `entries` (or where the file was cut), found by
        walking the frame headers; `fault` itself when the walk finds nothing wrong."""
        try:
            for index, offset, length in self._walk(entries):
                if entries is not None:
                    self._check_frame(entries, index, offset, length)
        except SavesetCorrupt as found:
            return found
        return fault

    # --- steps 2 and 3: the frames and the whole ------------------------------------------

    def proven_frames(self, decompress):
        # type: (Decompress) -> Iterator[Tuple[int, int, bytes]]
        """Yield (index, offset, frame) of each data frame once it is proven; after the last,
        the content's digests are held against the trailer's and kept in content_digests
        (a disk's image digest is computed from any version, and checked from version 3).
        SavesetCorrupt at the first fault.

        `decompress(frame, content_size) -> bytes` raises BadFrame on a damaged frame.
        """
        digests = self._content_digests()
        for index, offset, length in self._walk(self.entries):
            frame = self.read_at(offset, length)
            content = self._check_frame(self.entries, index, offset, length, frame, decompress)
            assert content is not None  # with decompress, the content or an exception
            for digest in digests.values():
                digest.update(content)
            yield index, offset, frame
        for key in sorted(digests, reverse=True):  # the plain sha256 first, as before
            found = digests[key].hexdigest()
            if key in self.trailer and found != self.trailer[key]:
                raise SavesetCorrupt("trailer at byte %d: %s %s, but the content's is %s"
                                     % (self.trailer_offset, self._digest_name(key),
                                        self.trailer[key], found))
            self.content_digests[key] = found

    def _content_digests(self):
        # type: () -> Dict[str, Any]
        """The digests proven_frames computes: the plain sha256, and a disk's image digest."""
        self.content_digests.clear()
        digests = {"sha256": hashlib.sha256()}  # type: Dict[str, Any]
        if self.metadata["kind"] == "disk":
            digests["digest"] = ImageDigest()
        return digests

    @staticmethod
    def _digest_name(key):
        # type: (str) -> str
        return DIGEST_ALGORITHM + " digest" if key == "digest" else key

    def _walk(self, entries):
        # type: (Optional[list]) -> Iterator[Tuple[int, int, int]]
        """Yield (index, offset, length) of each data frame, found from its own headers, up to
        the first skippable frame (the trailer); with `entries`, their count must agree."""
        index, offset = 0, self.data_offset
        while True:
            where = "frame %d at byte %d" % (index, offset)
            try:
                length = frame_length(self.read_at, offset)
            except Truncated:
                raise SavesetCorrupt(self._truncated(index, offset))
            except BadFrame as e:
                raise SavesetCorrupt("%s: %s" % (where, e.message))
            if is_skippable(u32(self.read_at(offset, 4))):
                if entries is not None and index != len(entries):
                    raise SavesetCorrupt("%s: the data frames end here, but the seek table "
                                         "lists %d" % (where, len(entries)))
                return
            if offset + length > self.file_size:
                raise SavesetCorrupt(self._truncated(index, offset))
            if entries is not None and index >= len(entries):
                raise SavesetCorrupt("%s: the seek table lists only %d data frames"
                                     % (where, len(entries)))
            yield index, offset, length
            index, offset = index + 1, offset + length

    def _check_frame(self, entries, index, offset, length, frame=None, decompress=None):
        # type: (list, int, int, int, Optional[bytes], Optional[Decompress]) -> Optional[bytes]
        """Hold a data frame against its table entry: its header's content size and its
        checksum field (read alone when `frame` is None), then with `decompress` its content,
        which zstd checks against that checksum; returns the content (None without)."""
        where = "frame %d at byte %d" % (index, offset)
        head = frame[:18] if frame is not None else self.read_at(offset, 18)
        _, declared, has_checksum = parse_header(head)
        if declared is None or not has_checksum:
            raise SavesetCorrupt("%s: no content %s in its header" % (
                where, "size" if declared is None else "checksum"))
        tail = frame[-4:] if frame is not None else self.read_at(offset + length - 4, 4)
        found, entry = (length, declared, u32(tail)), tuple(entries[index])
        content = None
        if decompress is not None and frame is not None and found[:2] == entry[:2]:
            try:
                content = decompress(frame, declared)
            except BadFrame as e:
                raise SavesetCorrupt("%s: %s" % (where, e.message))
        if found != entry:
            raise SavesetCorrupt("%s: the seek table says %s, the frame is %s"
                                 % (where, _describe(entry), _describe(found)))
        return content

    def _truncated(self, index, offset):
        # type: (int, int) -> str
        if offset >= self.file_size:
            return ("file truncated at byte %d, after %d data frames: no trailer or seek table"
                    % (self.file_size, index))
        return ("file truncated: frame %d at byte %d is cut off by the end of the file at byte %d"
                % (index, offset, self.file_size))

    def summary(self):
        # type: () -> dict
        """Sizes and digests, as its ends give them (proven whole once proven_frames ran)."""
        digest = self.content_digests.get("digest", self.trailer.get("digest"))
        return {
            "frames": len(self.entries), "bytes": self.trailer["bytes"],
            "compressed": sum(entry[0] for entry in self.entries),
            "sha256": self.trailer["sha256"], "version": self.metadata["version"],
            "digest": digest, "digest_algorithm": DIGEST_ALGORITHM if digest else None,
            "metadata_checked": self.metadata_checked}


def verify(fileobj, decompressor=None):
    # type: (BinaryIO, Optional[Decompress]) -> dict
    """Steps 1 to 3 over every frame; SavesetCorrupt names the first fault.

    `decompressor(frame, content_size) -> bytes` raises BadFrame on a damaged frame; by default
    the zstandard module or the zstd tool (ZstdMissing when the host has neither). A tree
    saveset's tar must also decode to its end (its entries are counted).
    """
    reader = SavesetReader(fileobj)
    if decompressor is None:
        require_zstd()
    decompress = decompressor or decompress_frame
    tar = TarCheck() if reader.metadata["kind"] == "tree" else None
    for _ in reader.proven_frames(tar.wrap(decompress) if tar else decompress):
        pass
    summary = reader.summary()
    if tar is not None:
        summary["entries"] = tar.close()
    return summary


def info(fileobj):
    # type: (BinaryIO) -> dict
    """Metadata, trailer and sizes, from the ends of the file only (step 1)."""
    reader = SavesetReader(fileobj)
    summary = reader.summary()
    compressed = summary["compressed"]
    return {
        "metadata": reader.metadata, "trailer": reader.trailer, "size": summary["bytes"],
        "frames": summary["frames"], "compressed": compressed, "file_size": reader.file_size,
        "metadata_checked": reader.metadata_checked, "sha256": summary["sha256"],
        "digest": summary["digest"], "digest_algorithm": summary["digest_algorithm"],
        "ratio": round(float(summary["bytes"]) / compressed, 3) if compressed else None}
