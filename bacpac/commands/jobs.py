"""What every command's job shares: its summary, its timing, its JobFinished event, and how a
helper's result and errors are checked and named."""
from __future__ import annotations

import os
import socket
import time
from typing import Callable

from remote_helper.target import imagedigest
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
    except KeyboardInterrupt as e:  # before the body named it (a slow login): its output
        interrupted = interruption(e, summary.target or summary.saveset or None)
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


def check_result(verify: bool, where: str, result: dict, check: str = "sha256"
                 ) -> dict[str, str]:
    """The source's digests (`result["source_digests"]`: "digest", the image digest, and
    "sha256", each if computed), once the helper proved the copy the way it was asked to (the
    same digests of what it wrote, or every frame's checksum) and a --verify re-read agrees."""
    source = {key: str(value) for key, value in result["source_digests"].items()
              if value is not None}
    if not source:
        raise VerifyError(f"{where}: no digest of the source to prove the copy against")
    if result.get("check", "sha256") != check:
        raise VerifyError(f"{where}: the helper checked the copy by {result.get('check')}, "
                          f"not by {check} as asked")
    for key, value in source.items():
        if check == "sha256" and result.get(key) != value:
            raise VerifyError(f"{where}: the target's {key} {result.get(key)} differs from the "
                              f"source's {value}")
        if verify and f"verify_{key}" not in result:
            raise VerifyError(f"{where}: --verify was asked, but the helper did not re-read "
                              "the target")
        if verify and result[f"verify_{key}"] != value:
            raise VerifyError(f"{where}: re-read of the target gave {key} "
                              f"{result.get(f'verify_{key}')}, the source's is {value}")
    return source


def report_digests(summary: JobSummary, digests: dict[str, str]) -> None:
    """The proven digests into the summary: the image digest (with its algorithm) and the
    plain sha256, each if it was computed."""
    summary.digest = digests.get("digest")
    summary.digest_algorithm = imagedigest.ALGORITHM if summary.digest else None
    summary.sha256 = digests.get("sha256")
