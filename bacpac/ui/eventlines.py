"""A job's events as JSON lines, so that a parent process can show them: `bacpac run` starts
each job as a child `bacpac ... --events` and relays what it prints into one display.

# Strategy: one line per event, {"event": CLASS, ...its fields}, flushed at once; progress is
# thinned to a few lines a second per job (the parent redraws at that rate anyway, and a pipe
# carrying thousands of lines a second would cost both ends CPU for nothing). decode() is the
# inverse, and refuses what it does not know rather than guessing.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict
from typing import Optional, TextIO

from .events import (Event, JobFinished, JobMessage, JobProgress, JobStarted, JobSummary,
                     RunFailed)
from .sinks import write_out
from .text import Clock

PROGRESS_INTERVAL = 0.2  # seconds between two progress lines of one job
_KINDS = {cls.__name__: cls for cls in (JobStarted, JobProgress, JobMessage, RunFailed)}


class EventLineSink:
    """Every event as one JSON line on `stream` (progress at most every PROGRESS_INTERVAL)."""

    def __init__(self, stream: TextIO, clock: Clock = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._pending: dict[str, JobProgress] = {}

    def emit(self, event: Event) -> None:
        """Write the event's line; a progress line only when the last is old enough."""
        with self._lock:
            if isinstance(event, JobProgress):
                self._pending[event.job] = event
                now = self._clock()
                last = self._last.get(event.job)
                if last is not None and now - last < PROGRESS_INTERVAL:
                    return
                self._last[event.job] = now
            elif isinstance(event, JobFinished):
                self._flush_progress(event.job)
            self._write(event if not isinstance(event, JobProgress)
                        else self._pending.pop(event.job))

    def _flush_progress(self, job: str) -> None:
        latest = self._pending.pop(job, None)
        if latest is not None:
            self._write(latest)

    def _write(self, event: Event) -> None:
        if isinstance(event, JobFinished):
            data = {"event": "JobFinished", "job": event.job, "summary": asdict(event.summary)}
        else:
            data = {"event": type(event).__name__, **asdict(event)}
        write_out(self._stream, json.dumps(data, sort_keys=True) + "\n")

    def close(self) -> None:
        """Write the progress not yet written."""
        with self._lock:
            for job in list(self._pending):
                self._flush_progress(job)


def decode(line: str) -> Optional[Event]:
    """The event a line of EventLineSink stands for; None for anything else."""
    try:
        data = json.loads(line)
        kind = data.pop("event")
        if kind == "JobFinished":
            return JobFinished(str(data["job"]), JobSummary(**data["summary"]))
        return _KINDS[kind](**data)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
