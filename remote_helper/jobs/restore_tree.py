"""The restore_tree job: a tree saveset's tar stream, relayed by the client from the helper that
reads the saveset, written as a tree into a directory.

# Strategy: the DATA frames are the saveset's own zstd frames, each proven by the reading
# helper before it was sent; here they are decompressed, hashed (the sha256 of the whole tar
# must be END's, which is the trailer's) and fed to the TarDecoder, whose events go straight
# to the TreeWriter: an entry that is no FILE is made at once, a FILE's data goes into a sink
# under a temporary name that takes its final name only when the member is complete. Nothing
# is held but one member's headers. The destination is checked before READY: a directory, or
# a name that does not exist yet in a directory that does.
"""
import hashlib
import os
import stat
from typing import TYPE_CHECKING, Any  # for the type comments

from ..errors import ClientGone, IntegrityError, ProtocolError, Refused
from ..tree.entry import FILE
from ..tree.tar import TarError
from ..tree.tardecode import TarDecoder
from ..tree.writer import TreeWriter
from ..wire import codecs, protocol
from ..wire.protocol import DATA, END, ERROR, READY, RESULT

if TYPE_CHECKING:  # for the type comments only: the server imports this module
    from .server import Input, Output  # noqa: F401


def check_tree_dest(path):
    # type: (str) -> None
    """Refuse a destination that is not a directory (a device, a file, a link) or whose parent
    does not exist; a missing destination is made by the writer."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path.rstrip("/")) or "."
        if not os.path.isdir(parent):
            raise Refused("%s: its directory %s does not exist" % (path, parent))
        return
    if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
        raise Refused("%s: is a device; a tree saveset restores into a directory" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise Refused("%s: exists and is not a directory; a tree saveset restores into a "
                      "directory" % path)


def run_restore_tree(job, inp, out):
    # type: (dict, Input, Output) -> None
    """Check DEST, READY, then DATA frames of tar up to END; RESULT with the writer's counts."""
    path = os.path.abspath(os.path.expanduser(job["path"]))
    check_tree_dest(path)
    writer = TreeWriter(os.fsencode(path), owners=os.geteuid() == 0, xattrs=True, delete=False)
    try:
        out.send_json(READY, {"kind": "tree"})
        result = _TarApplier(writer).run(inp)
    finally:
        writer.close()
    out.send_json(RESULT, result)


class _TarApplier(object):
    """Tar bytes in, a tree out through the TreeWriter."""

    def __init__(self, writer):
        # type: (TreeWriter) -> None
        self._writer = writer
        self._decoder = TarDecoder()
        self._decompressor = codecs.Decompressor()
        self._sha = hashlib.sha256()
        self._offset = 0
        self._sink = None  # type: Any

    def run(self, inp):
        # type: (Input) -> dict
        try:
            end = self._receive(inp)
        except TarError as e:
            if self._sink is not None:
                self._sink.abort()
            raise IntegrityError("%s: the saveset's tar stream is damaged: %s"
                                 % (os.fsdecode(self._writer.dest), e.message))
        except BaseException:
            if self._sink is not None:
                self._sink.abort()
            raise
        sha256 = self._sha.hexdigest()
        if end.get("bytes") != self._offset or end.get("sha256") != sha256:
            raise IntegrityError("%s: the tar stream has %d bytes of sha256 %s, the saveset "
                                 "says %r bytes of sha256 %r" % (
                                     os.fsdecode(self._writer.dest), self._offset, sha256,
                                     end.get("bytes"), end.get("sha256")))
        counts = self._writer.finish()
        return dict(counts, bytes_written=self._offset, sha256=sha256)

    def _receive(self, inp):
        # type: (Input) -> dict
        while True:
            frame = inp.next()
            if frame.type == DATA:
                if frame.offset != self._offset:
                    raise ProtocolError("DATA at tar offset %d, %d expected"
                                        % (frame.offset, self._offset))
                data = self._decompressor.decompress(frame.flags, frame.payload, frame.size)
                self._sha.update(data)
                self._offset += len(data)
                self._decoder.feed(data)
                self._apply()
            elif frame.type == END:
                self._decoder.close()
                return frame.json()
            elif frame.type == ERROR:
                raise ClientGone()
            else:
                raise ProtocolError("unexpected %s in a tree restore"
                                    % protocol.type_name(frame.type))

    def _apply(self):
        # type: () -> None
        while True:
            event = self._decoder.next_event()  # type: Any
            if event is None:
                return
            if event[0] == "data":
                self._sink.write(event[1], event[2])
            elif event[0] == "entry":
                entry = event[1]
                if entry.kind == FILE:
                    self._sink = self._writer.add(entry)
                else:
                    self._writer.update(entry)
            elif self._sink is not None:  # "end" of a FILE
                sink, self._sink = self._sink, None
                sink.commit()
