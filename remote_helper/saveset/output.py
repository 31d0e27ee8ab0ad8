"""The saveset a dup or backup writes on the target, fed from the writer thread.

The zstd frames that crossed the wire go in as they are; a zero run (a HOLE frame) becomes
zstd frames of zeros cut on the same block grid as the client's frames, compressed here once
per length and reused, so a hole costs no CPU. The file lives under a temporary name until
commit(); on any failure discard() removes it, and nothing ever stands under the final name
that is not complete. Every libc.WRITEBACK_EVERY bytes the kernel is asked to start writing
what was added: the target itself is written by direct I/O, so the saveset's would otherwise be
the only dirty pages, all left for commit()'s fsync, in series at the end of the run.
"""
import os
from typing import Optional  # for the type comments

from ..target import checks, libc
from ..errors import HelperError
from .atomic import AtomicFile
from .format import SavesetWriter, compress_frame, require_zstd


class SavesetOutput(object):
    """One saveset being written: add() frames in stream order, then commit() or discard()."""

    def __init__(self, path, metadata, frame_size):
        # type: (str, dict, int) -> None
        require_zstd()
        self.path = path
        self._frame_size = frame_size
        self._zero_frames = {}  # type: dict
        try:
            self._file = AtomicFile(path)
        except OSError as e:
            raise self._error(e)
        self._writer = self._guard(SavesetWriter, self._file.fileobj, metadata)
        fileobj = self._file.fileobj
        self._writeback = libc.Writeback(fileobj.fileno(), fileobj.flush)
        self._prepared = False

    def add(self, frame, size):
        # type: (bytes, int) -> None
        self._guard(self._writer.add_frame, frame, size)
        self._guard(self._writeback.written_to, self._file.fileobj.tell())

    def add_zeros(self, offset, length):
        # type: (int, int) -> None
        """Zero frames for [offset, offset+length), cut on the frame-size grid."""
        end = offset + length
        while offset < end:
            size = min(end, (offset // self._frame_size + 1) * self._frame_size) - offset
            self.add(self._zero_frame(size), size)
            offset += size

    def prepare(self, sha256, nbytes, digest):
        # type: (str, int, str) -> None
        """The trailer written (the image's plain sha256 and its sha256-1m `digest`) and the
        whole file durable, under no final name yet: what is left for commit() is the rename,
        which a fan-out asks for once every host prepared."""
        self._guard(self._writer.finish, sha256, nbytes, digest)
        self._guard(self._file.sync)
        self._prepared = True

    def commit(self, sha256, nbytes, digest):
        # type: (str, int, str) -> None
        if not self._prepared:
            self._guard(self._writer.finish, sha256, nbytes, digest)
        self._guard(self._file.commit)

    def discard(self):
        # type: () -> None
        self._file.discard()

    def _zero_frame(self, size):
        # type: (int) -> bytes
        frame = self._zero_frames.get(size)
        if frame is None:
            frame = self._zero_frames[size] = compress_frame(bytes(size), 1)
        return frame

    def _guard(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            raise self._error(e)

    def _error(self, e):
        # type: (OSError) -> HelperError
        return HelperError("%s: %s" % (self.path, e.strerror or e), e.errno or 0)


def open_output(spec, target, source):
    # type: (Optional[dict], Optional[str], dict) -> Optional[SavesetOutput]
    """The SavesetOutput an OPEN frame's "saveset" entry asks for, or None; its path checked
    first against the `target` path (None for a backup) and the `source` (see target/checks.py)."""
    if not spec:
        return None
    path = checks.absolute(os.path.expanduser(spec["path"]))
    checks.check_saveset(path, target, source)
    return SavesetOutput(path, spec.get("metadata") or {}, int(spec["frame_size"]))
