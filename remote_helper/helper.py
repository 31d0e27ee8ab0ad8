"""The helper's server loop: HELLO, then one job read from stdin, answered on stdout.

# Strategy: the helper speaks first (HELLO: versions, codecs, who and where it runs), then
# reads one OPEN frame holding the job and all its options, so nothing of a job ever shows in
# the target's process list. Every failure becomes one ERROR frame (kind, errno, message) and
# exit status 1; end of input before END means the client is gone, and the helper closes
# everything and exits at once without a word. stdout carries frames only; stderr is for
# diagnostics the client shows when the helper dies.
"""
import fcntl
import hashlib
import io
import os
import platform
import socket
import stat
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, Optional  # type comments

from . import codecs, devices, protocol, zstdframe
from .errors import IntegrityError, ProtocolError, as_helper_error
from .delta import TargetSegments
from .protocol import COPY, DATA, END, ERROR, HOLE, MATCH, OPEN, PROGRESS, READY, RESULT
from .saveset_jobs import run_info, run_read_saveset, run_verify
from .saveset_output import open_output
from .target import NullTarget, Target, open_target
from .writer import ImageWriter

if TYPE_CHECKING:
    from .writer import AnyTarget, Saveset, Segments

READ_BUFFER = 1 << 20
# stdin's pipe from sshd: 64 KiB by default, so sshd had to wake us, and be woken, every 64 KiB
# of a stream of hundreds of MB. 1 MiB (Linux's pipe-max-size for unprivileged users) took a
# tenth of the loopback dup's CPU away, and a seventh of the time its sends were blocked.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # in fcntl from Python 3.10; Linux's number
VERIFY_CHUNK = 4 << 20
# How the helper proves what it received (the job's "check"): "sha256" hashes the whole stream
# and compares it with END's; "frames" requires every DATA frame to be one zstd frame carrying
# its content checksum, which decompression verifies, so the bytes are proven frame by frame
# and holes need no hashing. A restore must prove its saveset's trailer, so it asks for sha256.
CHECKS = ("sha256", "frames")


class ClientGone(Exception):
    """stdin ended (or the client sent ERROR) before the job was complete."""


class Output(object):
    """Frames to stdout, whole and one at a time: the main thread, the writer (PROGRESS) and
    the delta reader (DIGESTS) all send.

    Whichever thread fails first sends the ERROR frame, at once: the main thread may be
    blocked on stdin, waiting for a client that waits for this thread. The client then ends
    the run and closes our input. That ERROR is the last frame: what any thread sends after
    it is dropped, and a later failure is only a consequence of the first.
    """

    def __init__(self, fd):
        # type: (int) -> None
        self._fd = fd
        self._lock = threading.Lock()
        self._failed = False

    def send(self, data):
        # type: (bytes) -> None
        with self._lock:
            if not self._failed:
                self._write(data)

    def send_json(self, frame_type, obj):
        # type: (int, dict) -> None
        self.send(protocol.encode_json(frame_type, obj))

    def fail(self, error):
        # type: (BaseException) -> None
        """Tell the client why the job failed, unless a thread has already."""
        with self._lock:
            if self._failed:
                return
            self._failed = True
            try:
                self._write(protocol.encode_json(ERROR, error_frame(error)))
            except OSError:
                pass  # the client is gone: nobody to tell

    def _write(self, data):
        # type: (bytes) -> None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


class Input(object):
    """Frames from stdin: exact reads of a header, then of its payload (no extra copy)."""

    def __init__(self, stream):
        # type: (BinaryIO) -> None
        self._stream = stream
        self.idle = 0.0  # seconds spent waiting for input: the client paces itself by it

    def next(self):
        # type: () -> protocol.Frame
        head = self._read_exact(protocol.HEADER_SIZE)
        frame_type, flags, length, offset, size, crc = protocol.parse_header(head)
        payload = self._read_exact(length) if length else b""
        protocol.check_payload(frame_type, payload, crc)
        return protocol.Frame(frame_type, flags, offset, size, payload)

    def _read_exact(self, n):
        # type: (int) -> bytes
        start = time.monotonic()
        data = self._stream.read(n)  # a buffered read: blocks until n bytes or end of input
        self.idle += time.monotonic() - start
        if len(data) != n:
            raise ClientGone()  # before END, so the client or the link died
        return data


def hello():
    # type: () -> dict
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "python": platform.python_version(),
        "codecs": codecs.available(),
        "zstd": codecs.zstd_backend(),
        "uid": os.getuid(),
        "hostname": socket.gethostname(),
        "boot_id": devices.boot_id(),
        "pid": os.getpid(),
    }


def run_dup(job, inp, out):
    # type: (dict, Input, Output) -> None
    """Check and open the target and the saveset, write the stream into them, prove it by sha256.

    A backup is a dup with no target path: only the saveset is written. A delta run keeps the
    target's content and first sends the digests of its blocks (see delta.py).
    """
    size = int(job["size"])
    delta = job.get("delta")
    if job.get("check", "sha256") not in CHECKS:
        raise ProtocolError("unknown check %r" % (job.get("check"),))
    # The client may have sent this OPEN, and the stream behind it, before it read our HELLO:
    # frames this host cannot decompress are refused before anything is opened.
    codec = job.get("codec")
    if codec is not None and codec not in codecs.available():
        raise ProtocolError("the stream is in %s, which this host cannot decompress (it has %s)"
                            % (codec, ", ".join(codecs.available())))
    # The saveset first: a saveset that cannot be written refuses the job before the target
    # is opened, let alone truncated.
    path = None if job.get("path") is None else os.path.expanduser(job["path"])
    source = job.get("source") or {}
    saveset = open_output(job.get("saveset"), path, source)
    target = None  # type: Optional[AnyTarget]
    segments = None  # type: Optional[TargetSegments]
    try:
        if path is None:
            target = NullTarget(size)
        else:
            target = open_target(path, size, bool(job.get("force")), source, keep=bool(delta))
        out.send_json(READY, {"kind": "block" if target.is_block else "file",
                              "created": target.created,
                              "saveset": saveset.path if saveset else None})
        if delta:
            # the client asks for a delta only with a target path: target is a Target
            segments = TargetSegments(target,  # type: ignore[arg-type]
                                      int(delta["block"]), int(delta["segment"]),
                                      out.send, out.fail)
        result = write_image(job, inp, out, target, saveset, segments)
        out.send_json(RESULT, result)
    finally:
        if segments is not None:
            segments.stop()
        if target is not None:
            target.close()
        if saveset is not None:
            saveset.discard()  # harmless after commit: only a temporary file is ever removed


def write_image(job, inp, out, target, saveset, segments):
    # type: (dict, Input, Output, AnyTarget, Saveset, Segments) -> dict
    last = [time.monotonic(), inp.idle]  # when the previous PROGRESS went, and idle by then

    def progress(written):
        # type: (int) -> None
        """Bytes written, and the share of the time since the last PROGRESS spent waiting for
        input: measured here, so the client's pacing never reads a stale or skewed figure."""
        now, idle = time.monotonic(), inp.idle
        share = (idle - last[1]) / max(now - last[0], 1e-6)
        last[:] = [now, idle]
        out.send_json(PROGRESS, {"written": written, "idle": round(min(share, 1.0), 3)})

    check = job.get("check", "sha256")
    writer = ImageWriter(target, progress, out.fail, saveset, segments,
                         hash_stream=check == "sha256")
    try:
        end = receive_image(inp, writer, target, check == "frames")
    except ClientGone:
        writer.abandon()
        raise
    written, sha256 = writer.drain()
    where = target.path or (saveset.path if saveset else "stream")
    result = {"bytes_written": written, "check": check}
    if check == "frames":
        sha256 = end.get("sha256")  # the source's, for the saveset's trailer and --verify
        if not _is_sha256(sha256):
            raise ProtocolError("END carries no sha256 of the source: %r" % (sha256,))
    elif end.get("sha256") != sha256:
        raise IntegrityError("%s: sha256 of what was written (%s) differs from the source's (%s)"
                             % (where, sha256, end.get("sha256")))
    else:
        result["sha256"] = sha256
    writer.finish()  # the head last, once the image is proven: else the target will not mount
    if job.get("verify") and target.path is not None:
        result["verify_sha256"] = reread_sha256(target)
    if saveset is not None:
        # sha256 is not None here: the writer's hash (check sha256) or END's, proven above
        saveset.commit(sha256, written)  # type: ignore[arg-type]
        result["saveset"] = saveset.path
    return result


def _is_sha256(value):
    # type: (object) -> bool
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def receive_image(inp, writer, target, checked_frames=False):
    # type: (Input, ImageWriter, AnyTarget, bool) -> dict
    """DATA, HOLE, MATCH and COPY frames, contiguous and in order, up to END; returns END's
    payload.

    With checked_frames, a DATA frame must be exactly one zstd frame with a content checksum.
    """
    decompressor = codecs.Decompressor()
    expected = 0
    whole = False  # finished before END: every byte came, in frames proven one by one
    while True:
        frame = inp.next()
        if frame.type in (DATA, HOLE, MATCH, COPY):
            if whole:
                raise ProtocolError("%s frame after the last byte of the image"
                                    % protocol.type_name(frame.type))
            if frame.offset != expected or frame.offset + frame.size > target.size:
                raise ProtocolError("block at offset %d of %d bytes: expected offset %d within %d"
                                    % (frame.offset, frame.size, expected, target.size))
            if frame.type == DATA:
                if checked_frames:
                    _require_checksum(frame)
                data = decompressor.decompress(frame.flags, frame.payload, frame.size)
                writer.put_data(frame.offset, data, frame.payload)
            elif frame.type == HOLE:
                writer.put_hole(frame.offset, frame.size)
            elif frame.type == COPY:
                if not target.readable:
                    raise ProtocolError("COPY frame with no target disk to copy from")
                writer.put_copy(frame.offset, frame.size, *protocol.parse_copy(frame))
            elif writer.delta:
                writer.put_match(frame.offset, frame.size)
            else:
                raise ProtocolError("MATCH frame outside a delta run")
            expected += frame.size
            if checked_frames and expected == target.size:
                # Every byte is here, each frame proven by its own checksum: the image is
                # whole. Its fsync (a second on a fast disk) runs while the client finishes
                # hashing a trailing hole, instead of after its END.
                writer.finish()
                whole = True
        elif frame.type == END:
            end = frame.json()
            if expected != target.size or end.get("bytes") != target.size:
                raise IntegrityError("stream ended at byte %d of %d" % (expected, target.size))
            return end
        elif frame.type == ERROR:
            raise ClientGone()
        else:
            raise ProtocolError("unexpected %s frame" % protocol.type_name(frame.type))


def _require_checksum(frame):
    # type: (protocol.Frame) -> None
    if frame.flags != protocol.CODEC_ZSTD:
        raise ProtocolError("block at offset %d: codec %d where a checked zstd frame was expected"
                            % (frame.offset, frame.flags))
    zstdframe.check_single_frame(frame.payload)
    if not zstdframe.frame_has_checksum(frame.payload):
        raise ProtocolError("block at offset %d: zstd frame without its content checksum"
                            % frame.offset)


def reread_sha256(target):
    # type: (Target) -> str
    """Read the target back from the disk, not the page cache, and hash it (--verify)."""
    devices.drop_cache(target.fd)
    digest = hashlib.sha256()
    for offset in range(0, target.size, VERIFY_CHUNK):
        digest.update(target.read_back(offset, min(VERIFY_CHUNK, target.size - offset)))
    return digest.hexdigest()


JOBS = {"dup": run_dup, "read_saveset": run_read_saveset, "verify": run_verify,
        "info": run_info}  # type: Dict[Any, Callable[[dict, Input, Output], None]]


def serve(inp, out):
    # type: (Input, Output) -> None
    out.send_json(protocol.HELLO, hello())
    frame = inp.next()
    if frame.type != OPEN:
        raise ProtocolError("expected OPEN, got %s" % protocol.type_name(frame.type))
    job = frame.json()
    if job.get("protocol") != protocol.PROTOCOL_VERSION:
        raise ProtocolError("client speaks protocol version %r, this helper speaks %d"
                            % (job.get("protocol"), protocol.PROTOCOL_VERSION))
    handler = JOBS.get(job.get("job"))
    if handler is None:
        raise ProtocolError("unknown job %r" % job.get("job"))
    handler(job, inp, out)


def error_frame(error):
    # type: (BaseException) -> dict
    where = (error.filename or "target") if isinstance(error, OSError) else None
    return as_helper_error(error, where).to_dict()


def widen_pipe(fd, size=PIPE_SIZE):
    # type: (int, int) -> None
    """Make the pipe at fd hold `size` bytes; anything else (not a pipe, a lower limit, another
    system) is left as it is."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except (OSError, IOError):
        pass


def main():
    # type: () -> int
    out = Output(sys.stdout.fileno())
    widen_pipe(sys.stdin.fileno())
    inp = Input(io.open(sys.stdin.fileno(), "rb", buffering=READ_BUFFER, closefd=False))
    try:
        serve(inp, out)
        return 0
    except ClientGone:
        return 1
    except Exception as e:
        out.fail(e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
