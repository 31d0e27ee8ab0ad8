"""The helper's server loop: HELLO, then one job read from stdin, answered on stdout.

# Strategy: the helper speaks first (HELLO: versions, codecs, who and where it runs), then
# reads one OPEN frame holding the job and all its options, so nothing of a job ever shows in
# the target's process list. Every failure becomes one ERROR frame (kind, errno, message) and
# exit status 1; end of input before END means the client is gone, and the helper closes
# everything and exits at once without a word. stdout carries frames only; stderr is for
# diagnostics the client shows when the helper dies.
"""
import fcntl
import importlib
import io
import os
import stat
import sys
import threading
import time
from typing import Any, BinaryIO, Callable, Dict  # for the type comments

from ..wire import codecs, protocol
from ..target import devices
from ..errors import ClientGone, ProtocolError, RemoteProtocolError, as_helper_error
from ..wire.protocol import ERROR, OPEN

READ_BUFFER = 1 << 20
# stdin's pipe from sshd: 64 KiB by default, so sshd had to wake us, and be woken, every 64 KiB
# of a stream of hundreds of MB. 1 MiB (Linux's pipe-max-size for unprivileged users) takes
# those wake-ups away, and with them CPU and blocked sends (docs/performance.md).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # in fcntl from Python 3.10; Linux's number


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
    """Frames from stdin, through the codec the client uses too. Each read asks for exactly the
    bytes the frame still needs, so a payload arrives as one bytes object, which the decoder
    hands back as it is: no copy beyond the read itself."""

    def __init__(self, stream):
        # type: (BinaryIO) -> None
        self._stream = stream
        self._decoder = protocol.Decoder()
        self.idle = 0.0  # seconds spent waiting for input: the client paces itself by it

    def next(self):
        # type: () -> protocol.Frame
        """The next frame; ClientGone if input ends between frames (before END), the
        decoder's RemoteProtocolError if it ends inside one."""
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            if self._decoder.at_eof:
                raise ClientGone()  # before END, so the client or the link died
            self._decoder.feed(self._read(self._decoder.needed))

    def _read(self, n):
        # type: (int) -> bytes
        start = time.monotonic()
        data = self._stream.read(n)  # a buffered read: blocks until n bytes or end of input
        self.idle += time.monotonic() - start
        return data


def hello():
    # type: () -> dict
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "python": sys.version.split()[0],  # as platform.python_version(), without its import
        "codecs": codecs.available(),
        "zstd": codecs.zstd_backend(),
        "uid": os.getuid(),
        "hostname": os.uname()[1],  # gethostname(), without socket's import
        "boot_id": devices.boot_id(),
        "netns": devices.net_namespace(),
        "pid": os.getpid(),
    }


# A job's module is imported when an OPEN names it, not at the helper's start: a dup's helper
# then never loads the tree writer, the tar codec and the saveset reader (its start is on a
# small dup's critical path; docs/performance.md, fixed costs).
JOBS = {"dup": "dup:run_dup", "read_saveset": "savesets:run_read_saveset",
        "verify": "savesets:run_verify", "info": "savesets:run_info",
        "read_tree": "copy:run_read_tree", "write_tree": "copy:run_write_tree",
        "restore_tree": "restore_tree:run_restore_tree",
        "prune": "prune:run_prune"}  # type: Dict[Any, str]


def job_handler(name):
    # type: (Any) -> Callable[[dict, Input, Output], None]
    """The function that runs the job `name` ("module:function" in JOBS), its module imported."""
    where = JOBS.get(name)
    if where is None:
        raise ProtocolError("unknown job %r" % name)
    module, function = where.split(":")
    return getattr(importlib.import_module("." + module, __package__), function)


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
    job_handler(job.get("job"))(job, inp, out)


def error_frame(error):
    # type: (BaseException) -> dict
    if isinstance(error, RemoteProtocolError):  # the codec names no peer: here, the client
        error = ProtocolError("protocol violation by the client: %s" % error.message)
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
