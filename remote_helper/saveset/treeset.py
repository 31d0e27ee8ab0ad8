"""A tree saveset being written: a pax tar archive in a saveset's frames.

# Strategy: a tree saveset is a saveset (format.py, docs/saveset.md) of kind "tree" whose
# content is a pax tar stream (tree/tar.py) rather than a disk image, so `zstd -d` gives the
# .tar and `tar --zstd -xpf` extracts it, while bacpac's reader proves every frame and the
# sha256 of the whole tar as it does a disk's. The tar's length is not known when the metadata
# is written (a tree is streamed), so a tree's metadata says "size": null and the trailer's
# "bytes" is the length. Frames that crossed the wire already compressed go in as they are
# (add_frame); tar bytes made here (headers, the end of the archive) are cut into frames of
# frame_size and compressed once (add_tar). Written through AtomicFile like any saveset: no
# final name until commit().
"""
import hashlib
from typing import Any, Callable, Optional  # for the type comments

from ..errors import HelperError
from ..tree.tar import END_OF_ARCHIVE, TarError
from ..tree.tardecode import TarDecoder
from .atomic import AtomicFile
from .format import SavesetCorrupt, SavesetWriter, compress_frame, require_zstd

KIND = "tree"


class TreeSavesetOutput(object):
    """add_frame() / add_tar() in stream order, then commit(summary) or discard()."""

    def __init__(self, path, metadata, frame_size, level=3):
        # type: (str, dict, int, int) -> None
        require_zstd()
        self.path = path
        self._frame_size = frame_size
        self._level = level
        self._pending = bytearray()
        self._sha256 = hashlib.sha256()
        self._bytes = 0
        meta = dict(metadata, kind=KIND, size=None, frame_size=frame_size)
        try:
            self._file = AtomicFile(path)
        except OSError as e:
            raise self._error(e)
        try:
            self._writer = SavesetWriter(self._file.fileobj, meta)
        except BaseException:
            self._file.discard()
            raise

    def add_frame(self, frame, content):
        # type: (bytes, bytes) -> None
        """One zstd frame of tar bytes `content`, compressed already (on the wire): as is."""
        self._flush(everything=True)
        self._add(frame, content)

    def add_tar(self, data):
        # type: (bytes) -> None
        """Tar bytes to compress here, in frames of frame_size."""
        self._pending += data
        self._flush(everything=False)

    def commit(self, summary=None):
        # type: (Optional[dict]) -> dict
        """End the archive, write the trailer and seek table, give the file its name.
        Returns what the trailer says (frames, bytes, sha256) and the caller's summary."""
        self.add_tar(END_OF_ARCHIVE)
        self._flush(everything=True)
        digest = self._sha256.hexdigest()
        self._guard(self._writer.finish, digest, self._bytes)
        self._guard(self._file.commit)
        result = dict(summary or {})
        result.update({"path": self.path, "bytes": self._bytes, "sha256": digest})
        return result

    def discard(self):
        # type: () -> None
        self._file.discard()

    def _flush(self, everything):
        # type: (bool) -> None
        size = self._frame_size
        while len(self._pending) >= size or (everything and self._pending):
            content = bytes(self._pending[:size])
            del self._pending[:size]
            self._add(compress_frame(content, self._level), content)

    def _add(self, frame, content):
        # type: (bytes, bytes) -> None
        self._guard(self._writer.add_frame, frame, len(content))
        self._sha256.update(content)
        self._bytes += len(content)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            raise self._error(e)

    def _error(self, e):
        # type: (OSError) -> HelperError
        return HelperError("%s: %s" % (self.path, e.strerror or e), e.errno or 0)



class TarCheck(object):
    """verify's last step for a tree saveset: the tar itself decodes, to its end, as the
    frames' content goes by (every header's checksum, every pax record, every sparse map)."""

    def __init__(self):
        # type: () -> None
        self._decoder = TarDecoder()
        self.entries = 0

    def wrap(self, decompress):
        # type: (Callable[[bytes, int], bytes]) -> Callable[[bytes, int], bytes]
        """decompress, also feeding what it gives to the decoder."""
        def checked(frame, content_size):
            # type: (bytes, int) -> bytes
            content = decompress(frame, content_size)
            self._guard(self._feed, content)
            return content
        return checked

    def close(self):
        # type: () -> int
        """The end of the content: the archive must have ended; the number of entries."""
        self._guard(self._decoder.close)
        return self.entries

    def _feed(self, content):
        # type: (bytes) -> None
        self._decoder.feed(content)
        while True:
            event = self._decoder.next_event()  # type: Any
            if event is None:
                return
            if event[0] == "entry":
                self.entries += 1

    def _guard(self, call, *args):
        # type: (Callable, *Any) -> None
        try:
            call(*args)
        except TarError as e:
            raise SavesetCorrupt("the tar stream in its frames is damaged: %s" % e.message)
