"""The live view of `bacpac run` on a terminal: a row per job (state, host, bytes, rate,
ratio, ETA) under an overall bar, and a summary table when the run ends.

# Strategy: as live.py does, emit() only stores under a short lock; a thread of ours redraws
# the whole table a few times a second (a fleet's table is small: rebuilding it is cheaper than
# keeping rich's tasks in step), and the lock is never held while calling into rich. Jobs are
# announced before they start by a JobMessage of level "queued" (its text: the host), so the
# table shows what is still to come; a job never announced gets its row when it starts.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import threads
from .events import (Event, JobFinished, JobMessage, JobProgress, JobStarted, JobSummary,
                     RunFailed)
from .text import Clock, human_duration, human_rate, human_ratio, human_size

REFRESH_PER_SECOND = 4
QUEUED = "queued"
_STYLES = {"queued": "dim", "running": "cyan", "ok": "green", "failed": "red",
           "checked": "green"}


@dataclass
class _Job:
    host: str
    state: str = QUEUED
    total: int = 0
    read: int = 0
    sent: int = 0
    streams: int = 1  # a fan-out's helpers, each sent the stream
    started: Optional[float] = None
    summary: Optional[JobSummary] = None


class FleetView:
    """The live table of a run's jobs on a terminal; the summary table at close()."""

    @classmethod
    def on(cls, stream: TextIO) -> "FleetView":
        return cls(Console(file=stream))

    def __init__(self, console: Console, clock: Clock = time.monotonic) -> None:
        self._console = console
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._live = Live(console=console, auto_refresh=False, transient=True,
                          redirect_stdout=False, redirect_stderr=False)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def emit(self, event: Event) -> None:
        """Store what changed; print messages above the table."""
        if isinstance(event, JobMessage) and event.level == QUEUED:
            with self._lock:
                self._jobs.setdefault(event.job, _Job(host=event.text))
            self._start()
            return
        if isinstance(event, JobMessage):
            style = "yellow" if event.level == "warning" else "dim"
            self._live.console.print(Text.assemble((f"{event.job}: {event.level}: ", style),
                                                   event.text), soft_wrap=True)
            return
        if isinstance(event, RunFailed):
            return  # the command line tells it, after close()
        with self._lock:
            job = self._jobs.setdefault(event.job, _Job(host="?"))
            if isinstance(event, JobStarted):
                job.state, job.total, job.started = "running", event.bytes_total, self._clock()
            elif isinstance(event, JobProgress):
                job.read = max(job.read, event.bytes_read)
                job.sent = max(job.sent, event.bytes_sent)
                job.streams = event.streams
            elif isinstance(event, JobFinished):
                job.summary = event.summary
                job.read = max(job.read, event.summary.bytes_read)
                job.sent = max(job.sent, event.summary.bytes_sent)
                job.state = _result(event.summary)
        self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="fleet display",
                                            daemon=True)
        self._live.start()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1 / REFRESH_PER_SECOND):
            self._live.update(self.render(), refresh=True)

    def render(self) -> RenderableType:
        """The table of every job, and the overall bar under it."""
        now = self._clock()
        with self._lock:
            rows = [(name, _Job(**vars(job))) for name, job in self._jobs.items()]
        table = Table(box=None, pad_edge=False, expand=False)
        for column in ("job", "host", "state", "bytes", "rate", "ratio", "ETA"):
            table.add_column(column, justify="right" if column in ("bytes", "rate", "ratio",
                                                                   "ETA") else "left")
        total = read = 0
        for name, job in rows:
            total += job.total
            read += min(job.read, job.total) if job.total else 0
            table.add_row(name, job.host, Text(job.state, style=_STYLES.get(job.state, "")),
                          *_figures(job, now))
        done = sum(1 for _, job in rows if job.state not in (QUEUED, "running"))
        bar = ProgressBar(total=max(total, 1), completed=read, width=40)
        line = Text(f" {done} of {len(rows)} jobs done, {human_size(read)} of "
                    f"{human_size(total)}")
        return Group(table, _grid(bar, line))

    def close(self) -> None:
        """Stop the table, then print the summary table of the finished jobs (once: the
        command line may close a sink twice)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            threads.join((thread,), "the run's display")
            self._live.stop()
        with self._lock:
            finished = [(name, job) for name, job in self._jobs.items() if job.summary]
        if finished:
            self._console.print(summary_table(finished))


def _grid(bar: ProgressBar, line: Text) -> Table:
    grid = Table.grid(padding=0)
    grid.add_row(bar, line)
    return grid


def _result(summary: JobSummary) -> str:
    if summary.status != "ok":
        return "failed"
    return "checked" if summary.extra.get("dry_run") else "ok"


def _figures(job: _Job, now: float) -> tuple[str, str, str, str]:
    if job.state == QUEUED:
        return "", "", "", ""
    seconds = (job.summary.seconds if job.summary else
               (now - job.started if job.started is not None else 0.0))
    rate = job.read / seconds if seconds > 0 else 0.0
    size = f"{human_size(job.read)} / {human_size(job.total)}" if job.total else \
        human_size(job.read)
    ratio = human_ratio(job.read, job.sent, job.streams)
    eta = ""
    if job.state == "running" and rate > 0 and job.total:
        eta = human_duration(max(0, job.total - job.read) / rate)
    return size, human_rate(rate), ratio, eta


def summary_table(finished: list[tuple[str, _Job]]) -> Table:
    """Job, host, result, bytes read and sent, time, digest prefix: one row per job."""
    table = Table(title="bacpac run", title_justify="left")
    for column in ("job", "host", "result", "read", "sent", "time", "digest"):
        table.add_column(column)
    for name, job in finished:
        summary = job.summary
        assert summary is not None
        result = _result(summary)
        shown = result if result != "failed" else f"failed: {summary.error}"
        table.add_row(name, job.host, Text(shown, style=_STYLES[result]),
                      human_size(summary.bytes_read), human_size(summary.bytes_sent),
                      human_duration(summary.seconds),
                      (summary.digest or summary.sha256 or "")[:12])
    return table
