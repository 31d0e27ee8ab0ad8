"""The helper's jobs on an existing saveset: read it out (restore), verify it, describe it."""
import os

from . import devices, protocol
from .errors import HelperError, ProtocolError
from .protocol import DATA, END, READY, RESULT
from .saveset import NotASaveset, SavesetReader, info, verify
from .zstdframe import frame_content_size


def open_saveset(path):
    # type: (str) -> object
    path = os.path.expanduser(path)
    try:
        return open(path, "rb")
    except OSError as e:
        raise HelperError("%s: %s" % (path, e.strerror), e.errno)


def _not_a_saveset(path, error):
    # type: (str, NotASaveset) -> NotASaveset
    return NotASaveset("%s: %s" % (path, error.message))


def run_read_saveset(job, inp, out):
    # type: (dict, object, object) -> None
    """Send a saveset's frames as DATA frames, as they are, then END with the trailer's sha256.

    The frames are checked by whoever decompresses them (zstd checks each frame's checksum)
    and the whole by the sha256 the writing helper computes against the trailer's.
    """
    path = job["path"]
    with open_saveset(path) as f:
        try:
            reader = SavesetReader(f)
            trailer = reader.trailer
        except NotASaveset as e:
            raise _not_a_saveset(path, e)
        size = int(trailer["bytes"])
        out.send_json(READY, {"metadata": reader.metadata, "size": size,
                              "frames": trailer["frames"], "boot_id": devices.boot_id(),
                              "identity": devices.identity(os.path.expanduser(path))})
        # Wait for the go-ahead: the client first opens the target, which may be refused, and
        # frames sent before then would only fill a pipe nobody reads.
        go = inp.next()
        if go.type != READY:
            raise ProtocolError("expected READY to start sending, got %s"
                                % protocol.type_name(go.type))
        offset = 0
        for _, _, frame in reader.frames():
            content = frame_content_size(frame) or 0
            out.send(protocol.header(DATA, frame, offset, protocol.CODEC_ZSTD, content))
            out.send(frame)
            offset += content
        out.send_json(END, {"bytes": offset, "sha256": trailer["sha256"]})


def _query(job, out, read):
    # type: (dict, object, object) -> None
    """RESULT: read(file) of the saveset at job["path"], its errors naming that path."""
    path = job["path"]
    with open_saveset(path) as f:
        try:
            summary = read(f)
        except NotASaveset as e:
            raise _not_a_saveset(path, e)
        except HelperError as e:
            raise type(e)("%s: %s" % (path, e.message), e.errno)
    out.send_json(RESULT, summary)


def run_verify(job, inp, out):
    # type: (dict, object, object) -> None
    _query(job, out, verify)


def run_info(job, inp, out):
    # type: (dict, object, object) -> None
    _query(job, out, info)
