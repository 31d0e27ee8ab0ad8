"""What every command's job shares: its summary, its timing, its JobFinished event."""
from __future__ import annotations

import os
import socket
import time
from typing import Callable

from remote_helper.target.checks import absolute

from .. import __version__
from ..errors import BacpacError, internal_error, interruption
from ..ui.events import JobFinished, JobMessage, JobSummary, Sink
from ..spec import Endpoint


def run_tracked(sink: Sink, job: str, summary: JobSummary,
                body: Callable[[JobSummary], None]) -> JobSummary:
    """Run body(summary); time it, mark it ok or failed, and always emit JobFinished, whose
    error is the line the user is told. An interrupt (Ctrl-C, SIGTERM, SIGHUP) the body left
    as it came is raised as Interrupted."""
    started = time.monotonic()
    try:
        body(summary)
        summary.status = "ok"
        return summary
    except BacpacError as e:
        summary.error = str(e)
        raise
    except KeyboardInterrupt as e:
        interrupted = interruption(e)
        summary.error = str(interrupted)
        raise interrupted from None
    except Exception as e:
        summary.error = internal_error(e)
        raise
    finally:
        summary.seconds = time.monotonic() - started
        sink.emit(JobFinished(job, summary))


def warn(sink: Sink, job: str, summary: JobSummary, text: str) -> None:
    """A warning told now (on stderr) and kept in the job's summary (its JSON's "warnings")."""
    summary.warnings.append(text)
    sink.emit(JobMessage(job, "warning", text))


def remote_path(endpoint: Endpoint) -> str:
    """A local path resolved where the user typed it (a trailing slash kept: it names a
    directory); a remote one is relative to the remote home directory, as with scp."""
    return absolute(endpoint.path) if endpoint.is_local else endpoint.path


def where(endpoint: Endpoint, path: str) -> str:
    """host:path for messages, or the path alone when local."""
    return path if endpoint.is_local else f"{endpoint.host}:{path}"


def saveset_metadata(kind: str, source_path: str, size: int, frame_size: int) -> dict:
    return {"kind": kind, "size": size, "frame_size": frame_size,
            "source_host": socket.gethostname(), "source_path": os.path.abspath(source_path),
            "bacpac_version": __version__}
