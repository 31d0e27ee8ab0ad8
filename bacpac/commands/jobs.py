"""What every command's job shares: its summary, its timing, its JobFinished event, and how a
helper's result and errors are checked and named."""
from __future__ import annotations

import os
import socket
import time
from typing import Callable

from remote_helper.target.checks import absolute

from .. import __version__
from ..errors import BacpacError, VerifyError, internal_error, interruption
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


def naming(message: str, host: str, where: str) -> str:
    """ "host: cause" (what the SSH layer says) as "host:path: cause", naming the target."""
    if message.startswith(f"{host}: "):
        return f"{where}: {message[len(host) + 2:]}"
    return message


def check_result(verify: bool, where: str, result: dict, check: str = "sha256") -> str:
    """The source's sha256, once the helper proved the copy the way it was asked to (its own
    sha256 equal to the source's, or every frame's checksum) and a --verify re-read agrees."""
    sha256 = str(result["source_sha256"])
    if result.get("check", "sha256") != check:
        raise VerifyError(f"{where}: the helper checked the copy by {result.get('check')}, "
                          f"not by {check} as asked")
    if check == "sha256" and result.get("sha256") != sha256:
        raise VerifyError(f"{where}: the target's sha256 {result.get('sha256')} differs from the "
                          f"source's {sha256}")
    if verify and "verify_sha256" not in result:
        raise VerifyError(f"{where}: --verify was asked, but the helper did not re-read the target")
    if verify and result["verify_sha256"] != sha256:
        raise VerifyError(f"{where}: re-read of the target gave sha256 "
                          f"{result.get('verify_sha256')}, the source's is {sha256}")
    return sha256
