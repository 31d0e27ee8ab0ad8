"""The sinks that show a job's events: a rich live display, plain log lines, JSON summaries.

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
from typing import Any, Callable, Iterable, Optional, TextIO

from rich import filesize
from rich.console import Console, RenderableType
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TaskID,
                           TextColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Column
from rich.text import Text

from .events import (Event, JobFinished, JobMessage, JobProgress, JobStarted, JobSummary,
                     NullSink, Sink)

Clock = Callable[[], float]

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(size: float) -> str:
    """Binary units, one decimal: "512 B", "1.5 GiB" (rich only exposes decimal units)."""
    value = float(size)
    for unit in _BINARY_UNITS[:-1]:
        if abs(value) < 1024:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_BINARY_UNITS[-1]}"


def human_rate(bytes_per_second: float) -> str:
    """Decimal units per second, as network and disk rates are quoted: "330.0 MB/s"."""
    return f"{filesize.decimal(int(bytes_per_second))}/s"


def human_duration(seconds: float) -> str:
    """"6.1 s", "2 min 05 s", "1 h 02 min": short, and precise where it matters."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def describe(source: str, target: str) -> str:
    """The short label of a job: "disk.img → host:/dev/sdb"."""
    return f"{source} → {target}"


def result_line(summary: JobSummary) -> str:
    """One line per finished job, without its ✓/✗ mark (the sinks style that differently)."""
    label = describe(summary.source, summary.target)
    if summary.status != "ok":
        return f"{label}: {summary.error or 'failed'}"
    parts = [f"{label}: {human_size(summary.bytes_read)} in {human_duration(summary.seconds)}"]
    if summary.seconds > 0:
        parts[0] += f" ({human_rate(summary.bytes_read / summary.seconds)})"
    parts.append(f"sent {human_size(summary.bytes_sent)}")
    if summary.saveset:
        parts.append(f"saveset {summary.saveset}")
    if summary.sha256:
        parts.append(f"sha256 {summary.sha256[:12]}…")
    return ", ".join(parts)


def _mark(summary: JobSummary) -> str:
    return "✓" if summary.status == "ok" else "✗"


@dataclass
class _Row:
    """A running job's row in the live display, and its latest counters."""

    task_id: TaskID
    read: int = 0
    sent: int = 0
    written: int = 0
    compared: int = 0  # delta runs only
    blocks_sent: int = 0
    dirty: bool = False


class _WireColumn(ProgressColumn):
    """Bytes put on the channel, and the compression ratio (read / sent)."""

    def render(self, task: Task) -> Text:
        sent = int(task.fields.get("sent", 0))
        ratio = f" ({task.completed / sent:.1f}×)" if sent else ""
        return Text(f"sent {human_size(sent)}{ratio}{task.fields.get('blocks', '')}",
                    style="progress.filesize")


def blocks_text(compared: int, sent: int) -> str:
    """", 12 of 4096 blocks sent" in a delta run, "" otherwise."""
    return f", {sent} of {compared} blocks sent" if compared else ""


class _SyncedProgress(Progress):
    """A Progress that pulls the sink's counters just before each render."""

    def __init__(self, sync: Callable[[], None], *columns: Any, **kwargs: Any) -> None:
        self._sync = sync
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        self._sync()
        yield from super().get_renderables()


class RichSink:
    """A live display on a terminal: one row per running job, a result line per finished one."""

    def __init__(self, console: Console, clock: Clock = time.monotonic,
                 show_failures: bool = True) -> None:
        self.show_failures = show_failures  # off when the caller prints the error line itself
        self._console = console
        self._lock = threading.Lock()  # guards _rows; innermost, see the strategy above
        self._start_lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._started = False
        # No stdout/stderr redirection: other threads' writes and the JSON on stdout must
        # not be captured by a display that only some commands start.
        self._progress = _SyncedProgress(
            self._sync,
            TextColumn("{task.description}", table_column=Column(
                no_wrap=True, overflow="ellipsis", max_width=48)),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _WireColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            get_time=clock,
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def emit(self, event: Event) -> None:
        """Store counters (cheap); print messages and results above the display."""
        if isinstance(event, JobProgress):
            self._store(event)
        elif isinstance(event, JobStarted):
            self._start_job(event)
        elif isinstance(event, JobMessage):
            self._print_message(event)
        elif isinstance(event, JobFinished):
            self._finish_job(event)

    def snapshot(self, job: str) -> Optional[JobProgress]:
        """The latest counters of a running job, or None if it is not running."""
        with self._lock:
            row = self._rows.get(job)
            if row is None:
                return None
            return JobProgress(job, row.read, row.sent, row.written)

    def close(self) -> None:
        """Stop the display; the result lines already printed stay."""
        with self._start_lock:
            if self._started:
                self._progress.stop()
                self._started = False

    def _store(self, event: JobProgress) -> None:
        with self._lock:
            row = self._rows.get(event.job)
            if row is None:
                return
            row.read = max(row.read, event.bytes_read)
            row.sent = max(row.sent, event.bytes_sent)
            row.written = max(row.written, event.bytes_written)
            row.compared = max(row.compared, event.blocks_compared)
            row.blocks_sent = max(row.blocks_sent, event.blocks_sent)
            row.dirty = True

    def _sync(self) -> None:
        """Copy changed counters into rich's tasks; called by rich before it renders."""
        with self._lock:
            changed = [(row.task_id, row.read, row.sent,
                        blocks_text(row.compared, row.blocks_sent))
                       for row in self._rows.values() if row.dirty]
            for row in self._rows.values():
                row.dirty = False
        for task_id, read, sent, blocks in changed:
            try:
                self._progress.update(task_id, completed=read, sent=sent, blocks=blocks)
            except KeyError:  # the job finished between the copy and the update
                pass

    def _start_job(self, event: JobStarted) -> None:
        with self._start_lock:
            if not self._started:
                self._progress.start()
                self._started = True
        total = event.bytes_total or None  # unknown size: a pulsing bar, no ETA
        task_id = self._progress.add_task(
            describe(event.source, event.target), total=total, sent=0, blocks="")
        with self._lock:
            self._rows[event.job] = _Row(task_id)

    def _print_message(self, event: JobMessage) -> None:
        style = "yellow" if event.level == "warning" else "dim"
        self._console.print(Text.assemble((f"{event.level}: ", style), event.text),
                            soft_wrap=True)

    def _finish_job(self, event: JobFinished) -> None:
        with self._lock:
            row = self._rows.pop(event.job, None)
        if row is not None:
            self._progress.remove_task(row.task_id)
            # rich redraws its last render below each print: drop the finished row first
            self._progress.refresh()
        summary = event.summary
        if summary.status != "ok" and not self.show_failures:
            return
        style = "green" if summary.status == "ok" else "red"
        # soft_wrap: the terminal folds a long line, so a copied path or hash stays whole
        self._console.print(Text.assemble((_mark(summary), f"bold {style}"), " ",
                                          result_line(summary)), soft_wrap=True)


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
                self._write(f"{_mark(event.summary)} {result_line(event.summary)}")

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
        read = max(event.bytes_read, job.last_read)
        rate = (read - job.last_read) / elapsed if elapsed > 0 else 0.0
        job.last_time, job.last_read = now, read
        percent = f"{100 * read / job.total:.0f}% " if job.total else ""
        total = f" of {human_size(job.total)}" if job.total else ""
        blocks = blocks_text(event.blocks_compared, event.blocks_sent)
        self._write(f"{job.label}: {percent}{human_size(read)}{total}, "
                    f"sent {human_size(event.bytes_sent)}{blocks}, {human_rate(rate)}")

    def _label(self, job_id: str) -> str:
        job = self._jobs.get(job_id)
        return job.label if job else job_id

    def _write(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._stream.write(f"{stamp} {line}\n")
        self._stream.flush()


class JsonSink:
    """One JSON object per finished job on stdout, for scripts; ignores everything else."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # jobs of a fleet finish concurrently: no torn lines

    def emit(self, event: Event) -> None:
        """Print the summary of a finished job as one line, flushed at once."""
        if not isinstance(event, JobFinished):
            return
        line = json.dumps(event.summary.to_json(), sort_keys=True)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

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
            sinks.append(RichSink(Console(file=stderr), show_failures=show_failures))
        else:
            sinks.append(LogSink(stderr, show_failures=show_failures))
    if json_output:
        sinks.append(JsonSink(stdout))
    if not sinks:
        return NullSink()
    return sinks[0] if len(sinks) == 1 else TeeSink(*sinks)
