"""Progress events and the sink interface; nothing here knows how events are shown.

Jobs call a Sink from any thread (the reader, the sender, the thread that reads the helper's
PROGRESS frames); sinks in sinks.py and live.py render them as a rich display, log lines or JSON.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol, Union


@dataclass(frozen=True)
class JobStarted:
    """A job is about to move bytes; bytes_total is the source's size."""

    job: str
    command: str
    source: str
    target: str
    saveset: Optional[str]
    bytes_total: int


@dataclass(frozen=True)
class JobProgress:
    """Counters so far (cumulative, not increments); blocks only in a delta run."""

    job: str
    bytes_read: int
    bytes_sent: int
    bytes_written: int
    blocks_compared: int = 0
    blocks_sent: int = 0
    files_done: int = 0  # a tree copy: files written so far, of those known to need sending
    files_wanted: int = 0
    current: str = ""  # the file being written
    slowest: Optional[str] = None  # a fan-out's host whose helper has written the least
    streams: int = 1  # a fan-out's helpers: bytes_sent counts the stream once for each
    bytes_total: int = 0  # a total learnt mid-job (a tree copy's, as the writer asks): 0 if not


@dataclass(frozen=True)
class JobMessage:
    """A line worth telling the user mid-job: a warning, a phase change."""

    job: str
    level: str  # "info" | "warning"
    text: str


@dataclass
class JobSummary:
    """What a finished job reports: the fields the README lists for --json, and `extra` for
    the rest."""

    command: str
    source: str
    target: str
    saveset: Optional[str] = None
    status: str = "error"
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    sha256: Optional[str] = None  # the plain sha256 of the image, when computed
    digest: Optional[str] = None  # the image digest (remote_helper/target/imagedigest.py)
    digest_algorithm: Optional[str] = None
    error: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data["seconds"] = round(self.seconds, 3)
        data.update(extra)
        return data


@dataclass(frozen=True)
class JobFinished:
    job: str
    summary: JobSummary


@dataclass(frozen=True)
class RunFailed:
    """The command ended in an error; the JSON sink reports it when no job of it did (a usage
    error, an option refused before any job began)."""

    command: Optional[str]
    error: str
    exit_code: int


# What a sink receives: one of the dataclasses above, and nothing else.
Event = Union[JobStarted, JobProgress, JobMessage, JobFinished, RunFailed]


class Sink(Protocol):
    """Receives events from any thread; close() flushes and tears down the display."""

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class Counters:
    """Thread-safe cumulative counters of one job, emitted as JobProgress on change."""

    def __init__(self, job: str, sink: Sink) -> None:
        self._job = job
        self._sink = sink
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.bytes_sent = 0
        self.bytes_written = 0
        self.blocks_compared = 0
        self.blocks_sent = 0
        self.files_done = 0
        self.files_wanted = 0
        self.current = ""
        self.slowest: Optional[str] = None
        self.streams = 1  # a fan-out sets its number of helpers
        self.bytes_total = 0

    def add(self, read: int = 0, sent: int = 0, compared: int = 0, blocks_sent: int = 0) -> None:
        with self._lock:
            self.bytes_read += read
            self.bytes_sent += sent
            self.blocks_compared += compared
            self.blocks_sent += blocks_sent
            event = self._snapshot()
        self._sink.emit(event)

    def set_written(self, written: int, slowest: Optional[str] = None) -> None:
        """Bytes written by the helper; in a fan-out, by the one that has written the least,
        which is `slowest` (None when none lags)."""
        with self._lock:
            self.bytes_written = max(self.bytes_written, written)
            self.slowest = slowest
            event = self._snapshot()
        self._sink.emit(event)

    def set_files(self, done: int, wanted: int, current: str) -> None:
        """A tree copy's files: written so far, known to need sending, the one being written."""
        with self._lock:
            self.files_done, self.files_wanted, self.current = done, wanted, current
            event = self._snapshot()
        self._sink.emit(event)

    def add_total(self, more: int) -> None:
        """A total that grows as the job learns it (a tree copy's bytes to send)."""
        with self._lock:
            self.bytes_total += more
            event = self._snapshot()
        self._sink.emit(event)

    def _snapshot(self) -> JobProgress:
        return JobProgress(self._job, self.bytes_read, self.bytes_sent, self.bytes_written,
                           self.blocks_compared, self.blocks_sent, self.files_done,
                           self.files_wanted, self.current, self.slowest, self.streams,
                           self.bytes_total)
