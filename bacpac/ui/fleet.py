"""What `bacpac run` shows beyond the sinks every command has: each failed job's line even
without a progress display, and the summary table at the end of a run."""
from __future__ import annotations

from typing import TextIO

from .events import Event, JobFinished
from .sinks import write_out


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
