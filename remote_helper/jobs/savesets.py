"""The helper's jobs on an existing saveset: read it out (restore), verify it, describe it.

All three open the saveset through the one SavesetReader, so they agree on what is damaged and
say it in the same words (saveset/reader.py); every error names the saveset's path.
"""
import contextlib
import os
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator  # for the type comments

from ..target import devices
from ..wire import protocol
from ..errors import HelperError, ProtocolError
from ..wire.protocol import DATA, END, READY, RESULT
from ..saveset.reader import SavesetReader, info, verify
from ..wire.zstdframe import decompress_frame, require_zstd

if TYPE_CHECKING:  # server.py imports this module
    from .server import Input, Output


@contextlib.contextmanager
def _saveset_errors(path):
    # type: (str) -> Iterator[None]
    """Every failure inside names the saveset: "PATH: cause"."""
    try:
        yield
    except HelperError as e:
        if e.message.startswith(path + ": "):
            raise
        raise type(e)("%s: %s" % (path, e.message), e.errno)
    except OSError as e:
        raise HelperError("%s: %s" % (path, e.strerror or e), e.errno or 0)


def _open(path):
    # type: (str) -> BinaryIO
    """The saveset at `path` as the client named it (relative to the home directory)."""
    with _saveset_errors(path):
        return open(os.path.expanduser(path), "rb")


def run_read_saveset(job, inp, out):
    # type: (dict, Input, Output) -> None
    """Send a saveset's frames as DATA frames, each once proven as verify proves it, then END.

    A fault in the ends is found before READY, so before the client opens the target; a fault
    in a frame is found before that frame is sent, so the target never receives a bad byte, and
    the ERROR says which frame and which byte of the saveset, in verify's words.
    """
    path = job["path"]
    with _open(path) as f, _saveset_errors(path):
        reader = SavesetReader(f)
        require_zstd()
        out.send_json(READY, {"metadata": reader.metadata, "size": reader.trailer["bytes"],
                              "frames": len(reader.entries),
                              "metadata_checked": reader.metadata_checked,
                              "boot_id": devices.boot_id(),
                              "identity": devices.identity(os.path.expanduser(path))})
        # Wait for the go-ahead: the client first opens the target, which may be refused, and
        # frames sent before then would only fill a pipe nobody reads.
        go = inp.next()
        if go.type != READY:
            raise ProtocolError("expected READY to start sending, got %s"
                                % protocol.type_name(go.type))
        offset = 0
        for index, _, frame in reader.proven_frames(decompress_frame):
            content = reader.entries[index][1]
            out.send(protocol.header(DATA, frame, offset, protocol.CODEC_ZSTD, content))
            out.send(frame)
            offset += content
        # the digests of the content proven: the trailer's sha256, and of a disk its sha256-1m
        # (the trailer's from version 3), which the writing helper holds what it wrote against
        end = {"bytes": offset}  # type: dict
        end.update(reader.content_digests)
        out.send_json(END, end)


def _query(job, out, read):
    # type: (dict, Output, Callable[[BinaryIO], dict]) -> None
    """RESULT: read(file) of the saveset at job["path"], its errors naming that path."""
    path = job["path"]
    with _open(path) as f, _saveset_errors(path):
        summary = read(f)
    out.send_json(RESULT, summary)


def run_verify(job, inp, out):
    # type: (dict, Input, Output) -> None
    _query(job, out, verify)


def run_info(job, inp, out):
    # type: (dict, Input, Output) -> None
    _query(job, out, info)
