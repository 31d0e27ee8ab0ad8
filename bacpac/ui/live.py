"""The live progress display on a terminal, drawn with rich: one row per running job.

# Strategy: imported only when stderr is a terminal (rich costs a command's start-up some 40
# ms, which log lines and JSON do not need). emit() only stores counters under the sink's
# short lock; the display's refresh thread pulls them just before each render, and the lock is
# never held while calling into rich. That thread is ours, not rich's (whose Live.stop() does
# not join its own): close() stops and joins it before the display stops.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, TextIO

from rich.console import Console, RenderableType
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TaskID,
                           TextColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Column
from rich.text import Text

from .. import threads
from .events import Event, JobFinished, JobMessage, JobProgress, JobStarted
from .text import (Clock, blocks_text, describe, files_text, human_ratio, human_size,
                   result_line, status_mark)


REFRESH_PER_SECOND = 4


@dataclass
class _Row:
    """A running job's row in the live display, and its latest counters."""

    task_id: TaskID
    read: int = 0
    sent: int = 0
    written: int = 0
    compared: int = 0  # delta runs only
    blocks_sent: int = 0
    files: str = ""  # a tree copy's files done, wanted and current
    slowest: Optional[str] = None  # a fan-out's host that has written the least
    streams: int = 1  # a fan-out's helpers, each sent the stream
    total: Optional[int] = None  # a total learnt mid-job, for the bar and the ETA
    dirty: bool = False


class _WireColumn(ProgressColumn):
    """Bytes put on the channel, and the compression ratio (read / sent)."""

    def render(self, task: Task) -> Text:
        sent = int(task.fields.get("sent", 0))
        ratio = human_ratio(int(task.completed), sent, int(task.fields.get("streams", 1)))
        ratio = f" ({ratio})" if ratio else ""
        slowest = task.fields.get("slowest")
        slowest = f", slowest {slowest}" if slowest else ""
        return Text(f"sent {human_size(sent)}{ratio}{task.fields.get('blocks', '')}{slowest}",
                    style="progress.filesize")


class _SyncedProgress(Progress):
    """A Progress that pulls the sink's counters just before each render."""

    def __init__(self, sync: Callable[[], None], *columns: Any, **kwargs: Any) -> None:
        self._sync = sync
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        self._sync()
        yield from super().get_renderables()


class _Refresher:
    """Redraws the display every interval on a thread of its own, until stop() joins it."""

    def __init__(self, refresh: Callable[[], None], per_second: float) -> None:
        self._refresh = refresh
        self._interval = 1 / per_second
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="display", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._refresh()

    def stop(self) -> None:
        self._stop.set()
        threads.join((self._thread,), "the progress display")


class RichSink:
    """A live display on a terminal: one row per running job, a result line per finished one."""

    @classmethod
    def on(cls, stream: TextIO, show_failures: bool = True) -> "RichSink":
        """The display drawn on `stream` (a terminal)."""
        return cls(Console(file=stream), show_failures=show_failures)

    def __init__(self, console: Console, clock: Clock = time.monotonic,
                 show_failures: bool = True) -> None:
        self.show_failures = show_failures  # off when the caller prints the error line itself
        self._console = console
        self._lock = threading.Lock()  # guards _rows; innermost, see the strategy above
        self._start_lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._refresher: Optional[_Refresher] = None  # while the display is started
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
            auto_refresh=False,  # _Refresher does it
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
            if self._refresher is not None:
                self._refresher.stop()
                self._refresher = None
                self._progress.stop()

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
            if event.files_wanted:
                row.files = files_text(event.files_done, event.files_wanted, event.current)
            row.slowest, row.streams = event.slowest, event.streams
            if event.bytes_total:
                row.total = event.bytes_total
            row.dirty = True

    def _sync(self) -> None:
        """Copy changed counters into rich's tasks; called by rich before it renders."""
        with self._lock:
            changed = [(row.task_id, row.read, row.sent,
                        blocks_text(row.compared, row.blocks_sent) + row.files, row.slowest,
                        row.streams, row.total)
                       for row in self._rows.values() if row.dirty]
            for row in self._rows.values():
                row.dirty = False
        for task_id, read, sent, blocks, slowest, streams, total in changed:
            try:
                if total is not None:
                    self._progress.update(task_id, total=total)
                self._progress.update(task_id, completed=read, sent=sent, blocks=blocks,
                                      slowest=slowest, streams=streams)
            except KeyError:  # the job finished between the copy and the update
                pass

    def _start_job(self, event: JobStarted) -> None:
        with self._start_lock:
            if self._refresher is None:
                self._progress.start()
                self._refresher = _Refresher(self._progress.refresh, REFRESH_PER_SECOND)
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
        self._console.print(Text.assemble((status_mark(summary), f"bold {style}"), " ",
                                          result_line(summary)), soft_wrap=True)
