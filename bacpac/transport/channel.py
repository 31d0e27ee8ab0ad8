"""The byte channel to a helper: four methods, two implementations (SSH exec, local process).

# Strategy: everything above this layer sees a Channel, never Paramiko or subprocess. A channel
# is one helper's stdin (write, close_write) and stdout (read), plus its exit status (wait).
# The helper's stderr is diagnostics only and is drained on a thread of its own from the start,
# so a chatty helper can never block on a full stderr pipe and deadlock the stream; its last
# lines are kept for error messages.
"""
from __future__ import annotations

import collections
import os
import subprocess
import threading
from typing import IO, Protocol, Sequence, Union

from .. import threads
from ..errors import TransferError

Buffer = Union[bytes, bytearray, memoryview]


class Channel(Protocol):
    """A helper's stdin/stdout as a byte stream; errors raise bacpac errors, never OSError."""

    name: str  # "host" or "local", for messages

    def read(self, n: int) -> bytes:
        """Up to n bytes from the helper's stdout; b"" at end of stream."""

    def write(self, data: Buffer) -> None:
        """All of data to the helper's stdin (blocks on back-pressure)."""

    def close_write(self) -> None:
        """End of the helper's stdin (EOF)."""

    def hang_up(self) -> None:
        """End the helper's stdin and stop reading its stdout, so that it ends by itself
        whether it was reading (end of input) or writing (a broken pipe): a helper blocked
        sending what nobody will read any more is not left waiting."""

    def wait(self, timeout: float | None = None) -> int:
        """The helper's exit status; -1 if it did not exit within timeout."""

    def stderr_tail(self) -> str:
        """The last lines the helper wrote to stderr."""

    def close(self) -> None:
        """Tear everything down: the helper first, so that every read of it ends, then the
        channel's own threads, then its descriptors; safe to call twice, and from another
        thread than a reader's."""


class StderrTail:
    """Drains a stream on a daemon thread and keeps its last lines."""

    def __init__(self, read_chunk, lines: int = 20) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._read_chunk = read_chunk
        self._thread = threading.Thread(target=self._drain, name="helper-stderr", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        pending = b""
        while True:
            try:
                chunk = self._read_chunk(65536)
            except Exception:  # the channel is gone; stdout's reader says how, not this thread
                break
            if not chunk:
                break
            pending += chunk
            *done, pending = pending.split(b"\n")
            for line in done:
                self._lines.append(line.decode("utf-8", "replace"))
        if pending:
            self._lines.append(pending.decode("utf-8", "replace"))

    def join(self, timeout: float) -> None:
        """Let the drain catch up with the end of the stream, for a complete tail."""
        self._thread.join(timeout)

    def finish(self, what: str) -> bool:
        """Join the drain, whose stream the caller has ended; whether it stopped in time."""
        return threads.join((self._thread,), what)

    def text(self) -> str:
        return "\n".join(self._lines)


class LocalChannel:
    """The helper as a local subprocess over pipes: the embedded, no-network path."""

    name = "localhost"

    def __init__(self, argv: Sequence[str]) -> None:
        try:
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
        except OSError as e:
            raise TransferError(f"localhost: cannot start the helper {argv[0]}: {e.strerror}")
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._stdin: IO[bytes] = self._proc.stdin
        self._stdout: IO[bytes] = self._proc.stdout
        # Held while reading stdout, so that it is never closed under a read (a deadline's
        # close runs on another thread): its number could go to the next file opened.
        self._reading = threading.Lock()
        self._stderr = StderrTail(self._proc.stderr.read)

    def read(self, n: int) -> bytes:
        with self._reading:
            if self._stdout.closed:
                raise TransferError("localhost: reading from the helper: the channel is closed")
            try:
                return os.read(self._stdout.fileno(), n)
            except OSError as e:
                raise TransferError(f"localhost: reading from the helper: {e.strerror}")

    def write(self, data: Buffer) -> None:
        try:
            self._stdin.write(data)
        except (BrokenPipeError, ValueError):
            raise TransferError("localhost: the helper closed its input")
        except OSError as e:
            raise TransferError(f"localhost: writing to the helper: {e.strerror}")

    def close_write(self) -> None:
        try:
            self._stdin.close()
        except OSError:
            pass  # the helper is gone already; wait() will say how it ended

    def hang_up(self) -> None:
        self.close_write()
        self._close_stdout()

    def _close_stdout(self) -> None:
        """Close stdout once no read is under way (one ends when the helper writes or exits)."""
        if not self._reading.acquire(timeout=threads.STOP_WITHIN):
            threads.warn("localhost: a read from the helper did not end within "
                         f"{threads.STOP_WITHIN:g} s; its descriptor stays open until bacpac exits")
            return
        try:
            self._stdout.close()
        finally:
            self._reading.release()

    def wait(self, timeout: float | None = None) -> int:
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return -1
        self._stderr.join(1.0)
        return status

    def stderr_tail(self) -> str:
        return self._stderr.text()

    def close(self) -> None:
        self.close_write()
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(threads.STOP_WITHIN)
        except subprocess.TimeoutExpired:  # killed, and still there: stuck in the kernel
            pass
        self._close_stdout()
        if self._stderr.finish("localhost: the helper's stderr"):
            assert self._proc.stderr
            self._proc.stderr.close()
