"""The saveset format, and its writer.

# Strategy: a saveset is a zstd stream that stock `zstd -d` restores as is, wrapped in skippable
# frames that stock tools pass over (docs/saveset.md specifies it):
#
#   [0x184D2A50 metadata JSON][zstd frame]...[zstd frame][0x184D2A51 trailer JSON][seek table]
#
# The data frames are the very frames that crossed the wire; the writer only checks them and
# records (compressed size, content size, checksum), taking the checksum from the frame's own
# last four bytes, which zstd defines as the low 32 bits of XXH64 of the content: exactly what
# the seekable format wants, so nothing is hashed twice. The seek table (0x184D2A5E) follows
# zstd's seekable format to the letter, which lists *every* frame before it so that the running
# sum of Compressed_Size is each frame's file offset: the metadata and trailer frames are entries
# too, with Decompressed_Size 0 and the checksum of empty content. A saveset is written through
# atomic.AtomicFile, so an interrupted run never leaves a file under the final name.
#
# The metadata and the trailer are JSON objects in canonical form (json.dumps, sort_keys, the
# default separators), so a reader can hold every byte of them to account:
#   metadata  format "bacpac-saveset", type "metadata", version, kind "disk" or "tree", size
#             (bytes of the image; null for a tree, whose tar is streamed: see treeset.py),
#             frame_size, created (UTC, ISO 8601), source_host, source_path,
#             bacpac_version;
#   trailer   format, type "trailer", frames (data frames), bytes (of the image), sha256 (of
#             the image), and from version 2 metadata_sha256: the sha256 of the whole metadata
#             frame, header included, so that no byte of the metadata goes unchecked; from
#             version 3 a disk saveset's trailer also has digest and digest_algorithm
#             "sha256-1m": the image digest a dup reports (target/imagedigest.py), so that a
#             saveset's digest can be compared with its dup's (a tree's has none: a copy
#             reports the tar's plain sha256).
# Versions 1 (before the metadata digest) and 2 (before the image digest) are still read; of a
# version 1 saveset the reader says its metadata is unchecked (reader.py holds the checks).
"""
import hashlib
import json
import struct
import time
from typing import BinaryIO, Optional  # for the type comments

from ..errors import HelperError, IntegrityError
from ..target.imagedigest import ALGORITHM as DIGEST_ALGORITHM
# re-exported: output.py needs one import
from ..wire.zstdframe import compress_frame, require_zstd  # noqa: F401
from ..wire.zstdframe import BadFrame, check_single_frame, parse_header, skippable_frame, u32

FORMAT = "bacpac-saveset"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DIGEST_VERSION = 3  # the first whose disk trailer has the image digest
KINDS = ("disk", "tree")  # tree: a pax tar stream, its size unknown until the trailer
META_MAGIC = 0x184D2A50
TRAILER_MAGIC = 0x184D2A51
SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
CHECKSUM_FLAG = 0x80
RESERVED_BITS = 0x7C
EMPTY_CHECKSUM = 0x51D8E999  # low 32 bits of XXH64(b""): the checksum of a skippable frame
MAX_JSON = 1 << 20  # metadata and trailer are small; a bigger length field is not ours

ENTRY = struct.Struct("<III")
FOOTER = struct.Struct("<IBI")


class NotASaveset(HelperError):
    """The file does not begin with a bacpac metadata frame: the CLI says "PATH: not a bacpac
    saveset" and exits 1 (it is a failed check of a file, not a wrong command)."""

    kind = "VerifyError"


class SavesetCorrupt(IntegrityError):
    """A saveset whose frames, seek table or trailer do not hold together; names where."""


def canonical_json(obj):
    # type: (dict) -> bytes
    """The one serialisation of a metadata or trailer object: the reader requires it."""
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def seek_table(entries):
    # type: (list) -> bytes
    """The seek table frame for (compressed, decompressed, checksum) entries, checksums on."""
    body = b"".join(ENTRY.pack(*entry) for entry in entries)
    body += FOOTER.pack(len(entries), CHECKSUM_FLAG, SEEKABLE_MAGIC)
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
        # type: (BinaryIO, dict) -> None
        self._f = fileobj
        meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # type: dict
        meta.update(metadata)
        meta.update({"format": FORMAT, "version": VERSION, "type": "metadata"})
        head = skippable_frame(META_MAGIC, canonical_json(meta))
        self._f.write(head)
        self._kind = meta.get("kind")
        self._metadata_sha256 = hashlib.sha256(head).hexdigest()
        self._table = [(len(head), 0, EMPTY_CHECKSUM)]
        self._bytes = 0

    def add_frame(self, frame, content_size):
        # type: (bytes, int) -> None
        """Append one complete zstd frame, as is; BadFrame if it is not a checksummed frame."""
        entry = frame_entry(frame, content_size)
        self._f.write(frame)
        self._table.append(entry)
        self._bytes += content_size

    def finish(self, sha256_hex, total_bytes, digest_hex=None):
        # type: (str, int, Optional[str]) -> None
        """Write the trailer and the seek table; the caller then commits the file. A disk
        saveset's trailer needs the image digest (`digest_hex`) as well as the plain sha256."""
        if total_bytes != self._bytes:
            raise IntegrityError("saveset frames hold %d bytes, the stream %d"
                                 % (self._bytes, total_bytes))
        fields = {"format": FORMAT, "type": "trailer", "sha256": sha256_hex,
                  "frames": len(self._table) - 1, "bytes": total_bytes,
                  "metadata_sha256": self._metadata_sha256}
        if self._kind == "disk":
            if digest_hex is None:
                raise IntegrityError("no %s digest of the image for the saveset's trailer"
                                     % DIGEST_ALGORITHM)
            fields.update(digest=digest_hex, digest_algorithm=DIGEST_ALGORITHM)
        trailer = skippable_frame(TRAILER_MAGIC, canonical_json(fields))
        self._table.append((len(trailer), 0, EMPTY_CHECKSUM))
        self._f.write(trailer)
        self._f.write(seek_table(self._table))
