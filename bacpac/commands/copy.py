"""bacpac copy: files and trees from SRC... to DEST, either side remote, or both local.

# Strategy: a copy runs two helpers, one where the sources are (read_tree: it walks them and
# reads the content) and one where DEST is (write_tree: it compares, asks for what differs,
# and writes), each a local subprocess or an SSH session, as a restore does. The client only
# relays frames: the reader's MANIFEST, DATA and END to the writer on the calling thread, the
# writer's WANTS back to the reader on a thread of its own (with PROGRESS and the RESULT).
# So push, pull and local copies run the same code, and the client holds no file list.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional

from remote_helper.wire import protocol
from remote_helper.wire.protocol import (BLOCKS, DATA, END, ERROR, MANIFEST, OPEN, PROGRESS,
                                         READY, RESULT, WANTS)

from .. import threads
from ..engine.pacing import RateLimit
from ..errors import BacpacError, ProtocolError, TransferError, UsageError, interruption
from ..spec import Endpoint
from ..transport.helper import ConnectOptions, HelperSession, open_session
from ..ui.events import Counters, JobMessage, JobStarted, JobSummary, Sink
from .jobs import naming, remote_path, run_tracked, saveset_metadata, where

# The zstd level of the content, when no --level is given: a copy whose two helpers run on one
# host (a local copy, or a target reached over loopback) has memory for a link, and every
# CPU second its compressor takes is taken from the writer and the SSH layer on the same
# cores: level 1 there (docs/performance.md, copy-reader: -3 to 3 measured); else 3, zstd's
# default, whose fewer bytes pay on a real link.
SAME_HOST_LEVEL = 1
LINK_LEVEL = 3
OPEN_WITHIN = 600.0  # seconds: connecting, authenticating (a password typed) and HELLO
RESULT_WITHIN = 24 * 3600.0  # the writer's last work after END (directory times, --delete)
# Both helpers run jobs of remote_helper/jobs/copy.py: only its modules are shipped (a third
# fewer bytes to build, send and inflate than every module's).
HELPER_JOB = "copy"


@dataclass(frozen=True)
class CopyRequest:
    sources: tuple[Endpoint, ...]
    dest: Endpoint
    excludes: tuple[str, ...] = ()
    one_file_system: bool = False
    delete: bool = False
    dry_run: bool = False
    xattrs: bool = False
    checksum: bool = False
    saveset: Optional[str] = None  # a path on the writing host
    level: Optional[int] = None
    whole_file: bool = False  # a changed file is sent whole, not as its changed blocks
    bwlimit: Optional[float] = None  # bytes/s of frames relayed to the writer (--bwlimit)
    extra: dict = field(default_factory=dict)


def check_request(request: CopyRequest) -> None:
    """Usage errors, before any connection: sources on one host, not both sides remote."""
    if not request.sources:
        raise UsageError("copy: no source given")
    first = request.sources[0]
    for src in request.sources[1:]:
        if (src.host, src.user) != (first.host, first.user):
            raise UsageError(f"{src}: every source must be on the same host ({first} is not)")
    if request.saveset and request.dry_run:
        raise UsageError("--saveset: not with --dry-run, which writes nothing")
    if not first.is_local and not request.dest.is_local:
        raise UsageError(f"{first} → {request.dest}: one side must be local (a copy between "
                         "two remote hosts is not supported)")
    for src in request.sources:
        if not src.path:
            raise UsageError(f"{src}: empty source path")


def run_copy(request: CopyRequest, options: ConnectOptions, sink: Sink) -> JobSummary:
    check_request(request)
    sources = " ".join(str(s) for s in request.sources)
    job = f"{sources} → {request.dest}"
    summary = JobSummary(command="copy", source=sources, target=str(request.dest),
                         saveset=request.saveset)
    return run_tracked(sink, job, summary, lambda s: _copy(request, options, sink, job, s))


def _source_path(endpoint: Endpoint) -> str:
    path = remote_path(endpoint)
    if endpoint.path.endswith("/") and not path.endswith("/"):
        path += "/"
    return path


def _copy(request: CopyRequest, options: ConnectOptions, sink: Sink, job: str,
          summary: JobSummary) -> None:
    first = request.sources[0]
    paths = [_source_path(s) for s in request.sources]
    src_where = where(first, paths[0])
    dest_path = remote_path(request.dest)
    dest_where = where(request.dest, dest_path)
    # the writer's helper starts (connects, ships, says HELLO) while the reader's does
    opening = _Opening(request.dest, options)
    writer: Optional[HelperSession] = None
    try:
        reader = open_copy_session(first, options)
    except BaseException:
        opening.discard()
        raise
    try:
        facts = reader.request(OPEN, {
            "protocol": protocol.PROTOCOL_VERSION, "job": "read_tree", "roots": paths,
            "one_file_system": request.one_file_system, "excludes": list(request.excludes),
            "xattrs": request.xattrs, "level": request.level or 3,
            "dry_run": request.dry_run, "checksum": request.checksum}, READY, paths[0])
        writer = opening.session()
        ready = writer.request(OPEN, {
            "protocol": protocol.PROTOCOL_VERSION, "job": "write_tree", "dest": dest_path,
            "roots": facts["roots"], "source": {"boot_id": facts.get("boot_id"),
                                                "roots": facts["roots"]},
            "delete": request.delete, "dry_run": request.dry_run, "xattrs": request.xattrs,
            "checksum": request.checksum, "excludes": list(request.excludes),
            "whole_file": request.whole_file,
            "saveset": _saveset_spec(request, paths[0])}, READY, dest_path)
        reader.send_json(READY, {"names": ready["names"],
                                 "level": content_level(request.level, reader.hello,
                                                        writer.hello)})
        sink.emit(JobStarted(job, "copy", summary.source, str(request.dest), None, 0))
        counters = Counters(job, sink)
        answers = _Answers(writer, reader, dest_where, counters)
        try:
            end = _relay(reader, writer, answers, counters, src_where, dest_where,
                         RateLimit(request.bwlimit))
            result = answers.wait()
        except KeyboardInterrupt as e:
            raise interruption(e, dest_where, "; run the copy again: it sends only what is "
                               "missing") from None
        finally:
            summary.bytes_sent = counters.bytes_sent
            summary.bytes_read = counters.bytes_read
        _report(summary, result, end, request, sink, job)
        _report_failed(summary, result, end, sink, job,
                       None if first.is_local else reader.host,
                       None if request.dest.is_local else writer.host)
    except BaseException:
        reader.close(hang_up=True)
        if writer is not None:
            writer.close(hang_up=True)
        else:
            opening.discard()
        raise
    reader.close()
    writer.close()


def open_copy_session(endpoint: Endpoint, options: ConnectOptions) -> HelperSession:
    """A helper for one side of a copy, its HELLO read: the session begun early for it
    (cli._begin_copy_early, the remote side's), else a new one."""
    session = open_session(endpoint, options, hello=False, job=HELPER_JOB)
    session.greet()
    return session


def content_level(level: Optional[int], reader_hello: dict, writer_hello: dict) -> int:
    """The zstd level the reader compresses at: the user's, else by where the helpers run."""
    if level is not None:
        return level
    same = [hello.get(key) for key in ("boot_id", "netns") for hello in (reader_hello, writer_hello)]
    # One boot and one network namespace: the link is memory. Another namespace of the same
    # boot (a container, the benchmark's 100 Mbit/s host) may sit behind a shaped link.
    return SAME_HOST_LEVEL if all(same) and same[0] == same[1] and same[2] == same[3] \
        else LINK_LEVEL


def _saveset_spec(request: CopyRequest, source: str) -> Optional[dict]:
    if not request.saveset:
        return None
    path = request.saveset if not request.dest.is_local else remote_path(Endpoint(request.saveset))
    return {"path": path, "level": request.level or 3,
            "metadata": saveset_metadata("tree", source, 0, 4 << 20)}


def _report(summary: JobSummary, result: dict, end: dict, request: CopyRequest, sink: Sink,
            job: str) -> None:
    # no digest of a stream that was never sent (-n, or nothing changed): not the empty one's
    summary.sha256 = result.get("sha256") if end.get("bytes") else None
    summary.bytes_total = int(result.get("bytes_total", 0))
    summary.bytes_written = int(result.get("bytes_sent", 0))
    summary.bytes_read = int(end.get("content", 0))
    summary.bytes_sent = int(result.get("stream_bytes", 0))
    extra = summary.extra
    for key in ("files_total", "files_sent", "files_unchanged", "files_meta", "delta_files",
                "delta_reused"):
        extra[key] = int(result.get(key, 0))
    extra["files_deleted"] = int(result.get("deleted", 0))
    extra["entries"] = int(result.get("entries", 0))
    extra["stream_bytes"] = int(result.get("stream_bytes", 0))
    extra["content_bytes"] = int(result.get("bytes_sent", 0))
    extra["dry_run"] = request.dry_run
    if "level" in end:
        extra["level"] = int(end["level"])
    if result.get("saveset"):
        extra["saveset_sha256"] = result["saveset"].get("sha256")
        extra["saveset_bytes"] = result["saveset"].get("bytes")
    if request.dry_run:
        extra["would_send"] = list(result.get("would_send", []))
        extra["would_delete"] = list(result.get("would_delete", []))
        for path in extra["would_send"]:
            sink.emit(JobMessage(job, "info", f"would send {path}"))
        for path in extra["would_delete"]:
            sink.emit(JobMessage(job, "info", f"would delete {path}"))


def _report_failed(summary: JobSummary, result: dict, end: dict, sink: Sink, job: str,
                   src_host: Optional[str], dest_host: Optional[str]) -> None:
    """Files not copied (the reader could not read them, or a delta's old file changed) and
    directories the walk could not list: each told as a warning and listed in --json; the
    others were copied, and the job fails (exit 1) with a last line that counts them, as
    rsync's partial transfer does."""
    failed = []
    for host, rows in ((src_host, end.get("failed", [])), (dest_host, result.get("failed", []))):
        for path, cause in rows:
            failed.append(f"{host}:{path}: {cause}" if host else f"{path}: {cause}")
    problems = [f"{src_host}:{p}" if src_host else str(p) for p in end.get("problems", [])]
    files = int(result.get("files_failed", 0))
    count = files + int(end.get("problem_count", len(problems)))
    summary.extra["files_failed"] = files
    summary.extra["failed"] = failed + problems
    for line in failed + problems:
        summary.warnings.append(line)
        sink.emit(JobMessage(job, "warning", line))
    if count:
        what = ("file" if count == files else "file or directory") if count == 1 else \
            ("files" if count == files else "files or directories")
        raise TransferError(f"{count} {what} of {summary.target} "
                            f"{'was' if count == 1 else 'were'} not copied (see the warnings "
                            "above); the others were")


class _Opening:
    """A helper session opened on a thread of its own: session() waits for it (or raises why
    it could not be opened); discard() closes it, whenever it comes, if nobody took it."""

    def __init__(self, endpoint: Endpoint, options: ConnectOptions) -> None:
        self._endpoint = endpoint
        self._options = options
        self._session: Optional[HelperSession] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="open-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._session = open_copy_session(self._endpoint, self._options)
        except BaseException as e:
            self._error = e

    def _wait(self) -> None:
        self._thread.join(OPEN_WITHIN)
        if self._thread.is_alive():
            raise ProtocolError(f"{self._endpoint}: the helper did not start within "
                                f"{OPEN_WITHIN:g} s")

    def session(self) -> HelperSession:
        self._wait()
        if self._error is not None:
            raise self._error
        assert self._session is not None
        return self._session

    def discard(self) -> None:
        try:
            self._wait()
        except BacpacError:
            return
        if self._session is not None:
            self._session.close(hang_up=True)
            self._session = None


class _Answers:
    """The writer's frames during the copy: WANTS go on to the reader, PROGRESS to the display,
    then RESULT or ERROR. A failure hangs up the reader, whose next frame then ends the relay."""

    def __init__(self, writer: HelperSession, reader: HelperSession, where: str,
                 counters: Counters) -> None:
        self._writer = writer
        self._reader = reader
        self._where = where
        self._counters = counters
        self.result: Optional[dict] = None
        self.error: Optional[BaseException] = None
        self._reused = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copy-answers", daemon=True)
        writer.owns(self._thread)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                frame = self._writer.recv()
                if frame.type == WANTS:
                    self._reader.send(protocol.encode(WANTS, frame.payload, frame.offset))
                    self._counters.add_total(int(self._writer.json(frame).get("bytes", 0)))
                    continue
                if frame.type == BLOCKS:
                    self._reader.send(protocol.encode(BLOCKS, frame.payload, frame.offset, 0,
                                                      frame.size))
                    continue
                if frame.type == PROGRESS:
                    progress = self._writer.json(frame)
                    reused = int(progress.get("reused", 0))  # a delta's old bytes: done too
                    self._counters.add(read=reused - self._reused)
                    self._reused = reused
                    self._counters.set_written(int(progress.get("written", 0)))
                    self._counters.set_files(int(progress.get("files", 0)),
                                             int(progress.get("wanted", 0)),
                                             str(progress.get("current", "")))
                    continue
                self.result = self._writer.expect(frame, RESULT, self._where)
                self._counters.add(read=int(self.result.get("delta_reused", 0)) - self._reused)
                return
        except BaseException as e:
            self.error = e
            try:
                self._reader.channel.hang_up()
            except BacpacError:
                pass
        finally:
            self._done.set()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def wait(self) -> dict:
        if not self._done.wait(RESULT_WITHIN):
            raise ProtocolError(f"{self._where}: no RESULT from the helper")
        threads.join((self._thread,), "the copy's answers")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _relay(reader: HelperSession, writer: HelperSession, answers: _Answers, counters: Counters,
           src_where: str, dest_where: str, limit: RateLimit) -> dict:
    """The reader's frames on to the writer, until END (returned), at most at the limit's
    rate (the reader is held back by the channel's window meanwhile)."""
    while True:
        try:
            frame = reader.recv()
        except BacpacError:
            if answers.failed:  # the writer failed first and hung up the reader
                answers.wait()
            raise
        if answers.failed:
            answers.wait()
        if frame.type in (MANIFEST, DATA):
            try:
                writer.send(protocol.header(frame.type, frame.payload, frame.offset,
                                            frame.flags, frame.size))
                writer.send(frame.payload)
            except BacpacError:
                answers.wait()
                raise
            if frame.type == DATA:
                counters.add(read=frame.size, sent=len(frame.payload))
            limit.sent(len(frame.payload))
        elif frame.type == END:
            end = reader.json(frame)
            writer.send_json(END, end)
            return end
        elif frame.type == ERROR:
            error = reader.rebuild(reader.json(frame), src_where)
            raise type(error)(naming(str(error), reader.host, src_where)) from None
        else:
            raise ProtocolError(f"{reader.host}: unexpected {protocol.type_name(frame.type)} "
                                "from the reading helper")
