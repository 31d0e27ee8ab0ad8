"""bacpac dup: duplicate a disk or image onto a target, locally or over SSH, proven by sha256."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional

from remote_helper import devices, protocol
from remote_helper.protocol import END, OPEN, READY

from .disk import Source, close_source, open_source
from .errors import BacpacError, UsageError, VerifyError
from .events import Counters, JobFinished, JobMessage, JobStarted, JobSummary, Sink
from .pipeline import StreamSettings, stream_image
from .remote import ConnectOptions, HelperSession, Receiver, open_session
from .spec import Endpoint

PARTLY_WRITTEN = ("; the target was partly written and does not hold a usable copy: "
                  "run the same command again to write it whole")


@dataclass(frozen=True)
class DupRequest:
    """One duplication job, validated."""

    source: str
    target: Endpoint
    force: bool = False
    verify: bool = False
    stream: StreamSettings = field(default_factory=StreamSettings)


def run_dup(request: DupRequest, options: ConnectOptions, sink: Sink) -> JobSummary:
    """Run one dup; emits its events; returns its summary or raises its error (after JobFinished)."""
    job = f"{request.source} → {request.target}"
    summary = JobSummary(command="dup", source=request.source, target=str(request.target))
    started = time.monotonic()
    try:
        _dup(request, options, sink, job, summary)
        summary.status = "ok"
        return summary
    except BacpacError as e:
        summary.error = str(e)
        raise
    except KeyboardInterrupt:
        summary.error = "interrupted"
        raise
    finally:
        summary.seconds = time.monotonic() - started
        sink.emit(JobFinished(job, summary))


def _dup(request: DupRequest, options: ConnectOptions, sink: Sink, job: str,
         summary: JobSummary) -> None:
    target_path = _target_path(request.target)
    source = open_source(request.source)
    try:
        summary.bytes_total = source.size
        if source.rw_mountpoint:
            sink.emit(JobMessage(job, "warning", f"{request.source} is mounted read-write on "
                                 f"{source.rw_mountpoint}: the copy may be inconsistent"))
        session = open_session(request.target, options)
        try:
            _transfer(request, source, session, target_path, sink, job, summary)
        finally:
            session.close()
    finally:
        close_source(source)


def _target_path(target: Endpoint) -> str:
    # A local target is resolved here, where the user typed it; a remote one is relative to the
    # remote home directory, as with scp.
    return os.path.abspath(target.path) if target.is_local else target.path


def _transfer(request: DupRequest, source: Source, session: HelperSession, target_path: str,
              sink: Sink, job: str, summary: JobSummary) -> None:
    settings = _negotiate(request.stream, session)
    summary.extra.update(codec=settings.codec, cipher=session.cipher,
                         helper_python=session.hello.get("python"))
    session.request(OPEN, _open_frame(request, source, target_path), READY, target_path)
    sink.emit(JobStarted(job, "dup", request.source, str(request.target), None, source.size))
    counters = Counters(job, sink)
    receiver = Receiver(session, target_path, counters.set_written)
    try:
        result = _stream(source, settings, session, receiver, counters)
    except BacpacError as e:
        raise type(e)(f"{e}{PARTLY_WRITTEN}") from None
    _check_result(request, session, target_path, result, summary)
    summary.bytes_read = counters.bytes_read
    summary.bytes_sent = counters.bytes_sent
    summary.bytes_written = int(result.get("bytes_written", 0))


def _negotiate(stream: StreamSettings, session: HelperSession) -> StreamSettings:
    codecs = session.hello.get("codecs") or []
    if stream.codec in codecs:
        return stream
    if "zlib" in codecs:
        return StreamSettings(stream.block_size, min(stream.level, 9), stream.threads, "zlib")
    raise UsageError(f"{session.host}: the helper offers no codec this client speaks ({codecs})")


def _open_frame(request: DupRequest, source: Source, target_path: str) -> dict:
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "job": "dup",
        "path": target_path,
        "size": source.size,
        "force": request.force,
        "verify": request.verify,
        "source": {"boot_id": devices.boot_id(), "identity": source.identity},
    }


def _stream(source: Source, settings: StreamSettings, session: HelperSession,
            receiver: Receiver, counters: Counters) -> dict:
    def send_block(offset: int, size: int, flags: int, payload: bytes) -> None:
        session.send_block(offset, size, flags, payload)
        counters.add(read=size, sent=len(payload))

    def send_hole(offset: int, size: int) -> None:
        session.send(protocol.encode_hole(offset, size))
        counters.add(read=size)

    def check() -> None:
        if receiver.failed:
            receiver.wait()  # raises the helper's error

    try:
        streamed = stream_image(source.fd, source.size, settings, send_block, send_hole, check)
        session.send_json(END, {"bytes": streamed.bytes_read, "sha256": streamed.sha256})
    except BacpacError:
        check()  # the helper's own account of why the channel broke is the better message
        raise
    result = receiver.wait()
    result["source_sha256"] = streamed.sha256
    return result


def _check_result(request: DupRequest, session: HelperSession, target_path: str, result: dict,
                  summary: JobSummary) -> None:
    where = target_path if session.host == "localhost" else f"{session.host}:{target_path}"
    sha256 = result["source_sha256"]
    if result.get("sha256") != sha256:
        raise VerifyError(f"{where}: the target's sha256 {result.get('sha256')} differs from the "
                          f"source's {sha256}")
    if request.verify and result.get("verify_sha256") != sha256:
        raise VerifyError(f"{where}: re-read of the target gave sha256 "
                          f"{result.get('verify_sha256')}, the source's is {sha256}")
    summary.sha256 = sha256
    summary.extra["verified"] = bool(request.verify)


