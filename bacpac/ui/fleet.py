"""What `bacpac run` shows beyond the sinks every command has: each failed job's line even
without a progress display, and the summary table at the end of a run."""
from __future__ import annotations

import sys
from typing import Optional, TextIO

from .events import Event, JobFinished, Sink
from .sinks import JsonSink, LogSink, TeeSink, WarningSink, write_out


def make_run_sink(*, progress: bool, json_output: bool, stderr: Optional[TextIO] = None,
                  stdout: Optional[TextIO] = None) -> Sink:
    """The sinks of `bacpac run`: the live table on a terminal, else log lines (or, with
    --no-progress, warnings and each failed job's line); JSON on stdout with --json."""
    stderr = sys.stderr if stderr is None else stderr
    stdout = sys.stdout if stdout is None else stdout
    sinks: list[Sink] = []
    if progress and _is_terminal(stderr):
        from .fleet_live import FleetView  # rich is loaded only for a terminal
        sinks.append(FleetView.on(stderr))
    elif progress:
        sinks.append(LogSink(stderr, show_failures=True))
    else:
        sinks += [WarningSink(stderr), FailureLines(stderr)]
    if json_output:
        sinks.append(JsonSink(stdout))
    return sinks[0] if len(sinks) == 1 else TeeSink(*sinks)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class FailureLines:
    """One "bacpac: JOB: error" line per failed job, for `run --no-progress`: a fleet's run
    must say which job failed and why, even when it shows nothing else."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def emit(self, event: Event) -> None:
        """Write the line of a failed job; ignore everything else."""
        if isinstance(event, JobFinished) and event.summary.status != "ok":
            write_out(self._stream, f"bacpac: {event.job}: {event.summary.error}\n")

    def close(self) -> None:
        """Nothing to tear down; every line is already flushed."""
