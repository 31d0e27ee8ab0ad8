"""The sinks that show a job's events: plain log lines and JSON summaries, and make_sink,
which picks them or the live display on a terminal (live.py); the words they share are in text.py.

# Strategy: emit() is called from several threads, thousands of times a second, so it only
# stores counters under a short lock; formatting happens when something is shown (at rich's
# refresh rate, or once per log interval). Cumulative counters can arrive out of order from
# different threads (events.Counters emits outside its lock), so the sinks keep the maximum
# seen. A sink's own lock is always the innermost one and is never held while calling into
# rich, whose refresh thread calls back into the sink to fetch the counters.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional, TextIO

from ..errors import OutputError
from .events import Event, JobFinished, JobMessage, JobProgress, JobStarted, RunFailed, Sink
from .text import Clock, blocks_text, describe, files_text, human_rate, human_size, result_line, status_mark


@dataclass
class _LogJob:
    """What LogSink remembers of a running job to pace and rate its progress lines."""

    label: str
    total: int
    last_time: float
    last_read: int = 0


class LogSink:
    """Plain timestamped lines for a stderr that is not a terminal (cron, CI, journald)."""

    def __init__(self, stream: TextIO, clock: Clock = time.monotonic,
                 interval: float = 5.0, show_failures: bool = True) -> None:
        self.show_failures = show_failures  # off when the caller prints the error line itself
        self._stream = stream
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._jobs: dict[str, _LogJob] = {}

    def emit(self, event: Event) -> None:
        """Write a line for starts, messages and ends; progress at most once per interval."""
        with self._lock:
            if isinstance(event, JobProgress):
                self._progress(event)
            elif isinstance(event, JobStarted):
                self._jobs[event.job] = _LogJob(
                    describe(event.source, event.target), event.bytes_total, self._clock())
                self._write(f"{event.command} {self._jobs[event.job].label}: started, "
                            f"{human_size(event.bytes_total)}")
            elif isinstance(event, JobMessage):
                self._write(f"{self._label(event.job)}: {event.level}: {event.text}")
            elif isinstance(event, JobFinished):
                self._jobs.pop(event.job, None)
                if event.summary.status != "ok" and not self.show_failures:
                    return
                self._write(f"{status_mark(event.summary)} {result_line(event.summary)}")

    def close(self) -> None:
        """Flush; the stream belongs to the caller."""
        with self._lock:
            self._stream.flush()

    def _progress(self, event: JobProgress) -> None:
        job = self._jobs.get(event.job)
        if job is None:
            return
        now = self._clock()
        elapsed = now - job.last_time
        if elapsed < self._interval:
            return
        if event.bytes_total:
            job.total = event.bytes_total
        read = max(event.bytes_read, job.last_read)
        rate = (read - job.last_read) / elapsed if elapsed > 0 else 0.0
        job.last_time, job.last_read = now, read
        percent = f"{100 * read / job.total:.0f}% " if job.total else ""
        total = f" of {human_size(job.total)}" if job.total else ""
        blocks = (blocks_text(event.blocks_compared, event.blocks_sent)
                  + files_text(event.files_done, event.files_wanted, event.current))
        slowest = f", slowest {event.slowest}" if event.slowest else ""
        self._write(f"{job.label}: {percent}{human_size(read)}{total}, "
                    f"sent {human_size(event.bytes_sent)}{blocks}, {human_rate(rate)}{slowest}")

    def _label(self, job_id: str) -> str:
        job = self._jobs.get(job_id)
        return job.label if job else job_id

    def _write(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_out(self._stream, f"{stamp} {line}\n")


def write_out(stream: TextIO, text: str) -> None:
    """Write and flush text; a reader gone away is an OutputError naming the stream, not a
    BrokenPipeError for the "internal error" catch-all."""
    try:
        stream.write(text)
        stream.flush()
    except (BrokenPipeError, ConnectionResetError) as e:
        name = getattr(stream, "name", "output")
        raise OutputError(f"{str(name).strip('<>')}: {e.strerror} (its reader went away)") from None


class WarningSink:
    """Warnings alone, one "bacpac: warning: ..." line each, for --no-progress: a warning is
    not progress, and a run that may have copied an inconsistent disk must say so. A dry run's
    answer (what it would write: its summary's "would") is not progress either: told too."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def emit(self, event: Event) -> None:
        """Write a warning's line, or a finished dry run's answer; ignore everything else."""
        if isinstance(event, JobMessage) and event.level == "warning":
            write_out(self._stream, f"bacpac: warning: {event.text}\n")
        elif (isinstance(event, JobFinished) and event.summary.status == "ok"
              and event.summary.extra.get("would")):
            write_out(self._stream,
                      f"dry run: every check passed; {event.summary.extra['would']}\n")

    def close(self) -> None:
        """Nothing to tear down; every line is already flushed."""


class JsonSink:
    """One JSON object per finished job on stdout, for scripts; ignores everything else.

    A command that fails before any job finished still prints one object, so a script that
    reads stdout always gets an answer."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # jobs of a fleet finish concurrently: no torn lines
        self._printed = False

    def emit(self, event: Event) -> None:
        """Print the summary of a finished job as one line, flushed at once."""
        if isinstance(event, JobFinished):
            self._print(event.summary.to_json())
        elif isinstance(event, RunFailed) and not self._printed:
            self._print({"command": event.command, "status": "error", "error": event.error,
                         "exit_code": event.exit_code})

    def _print(self, data: dict) -> None:
        line = json.dumps(data, sort_keys=True)
        with self._lock:
            self._printed = True  # even if the write fails: a stdout gone is not tried twice
            write_out(self._stream, line + "\n")

    def close(self) -> None:
        """Nothing to tear down; every line is already flushed."""


class TeeSink:
    """Sends every event to several sinks."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def emit(self, event: Event) -> None:
        """Pass the event to each sink in turn."""
        for sink in self.sinks:
            sink.emit(event)

    def close(self) -> None:
        """Close each sink."""
        for sink in self.sinks:
            sink.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream is no terminal
        return False


def make_sink(*, progress: bool, json_output: bool, stderr: Optional[TextIO] = None,
              stdout: Optional[TextIO] = None, show_failures: bool = False) -> Sink:
    """The sinks the command line asks for: display or log lines on stderr, JSON on stdout.

    The streams default to sys.stderr and sys.stdout as they are at call time, not import
    time, so a caller (or pytest) that replaced them is honoured.
    """
    stderr = sys.stderr if stderr is None else stderr
    stdout = sys.stdout if stdout is None else stdout
    sinks: list[Sink] = []
    if progress:
        if _is_terminal(stderr):
            from .live import RichSink  # rich is loaded only for a terminal
            sinks.append(RichSink.on(stderr, show_failures=show_failures))
        else:
            sinks.append(LogSink(stderr, show_failures=show_failures))
    else:
        sinks.append(WarningSink(stderr))
    if json_output:
        sinks.append(JsonSink(stdout))
    return sinks[0] if len(sinks) == 1 else TeeSink(*sinks)
