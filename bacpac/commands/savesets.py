"""bacpac restore, verify and info: the commands on an existing saveset, local or remote.

# Strategy: every saveset operation runs in a helper where the saveset lives, local or remote,
# so a saveset is never copied to be looked at. A restore runs two helpers: one reads the
# saveset and sends its zstd frames as they are; the other, where the target lives, is the
# very helper a dup talks to, with the same checks, sparse writes and sha256. The client only
# relays frames between them, so a restore is proven against the trailer's sha256 exactly as a
# dup is against the source's.
"""
from __future__ import annotations

from dataclasses import dataclass

from remote_helper.target import imagedigest
from remote_helper.wire import protocol
from remote_helper.wire.protocol import DATA, END, ERROR, OPEN, READY, RESULT

from ..errors import BacpacError, ProtocolError, UsageError, VerifyError, interruption
from ..ui.events import Counters, JobStarted, JobSummary, Sink
from .jobs import check_result, naming, remote_path, report_digests, run_tracked, where
from ..transport.helper import ConnectOptions, HelperSession, Receiver, open_session
from ..spec import Endpoint


# A failure on the target's side: the saveset is sound, and a second run may well succeed.
TARGET_FAILED = ("; the target was partly written and does not hold a usable copy: run the "
                 "restore again once the cause is fixed")


@dataclass(frozen=True)
class RestoreRequest:
    saveset: Endpoint
    target: Endpoint
    force: bool = False
    verify: bool = False


def run_restore(request: RestoreRequest, options: ConnectOptions, sink: Sink) -> JobSummary:
    """Write a saveset's image onto a target, wherever each of them is."""
    job = f"{request.saveset} → {request.target}"
    summary = JobSummary(command="restore", source=str(request.saveset),
                         target=str(request.target), saveset=str(request.saveset))
    return run_tracked(sink, job, summary, lambda s: _restore(request, options, sink, job, s))


def _restore(request: RestoreRequest, options: ConnectOptions, sink: Sink, job: str,
             summary: JobSummary) -> None:
    reader = open_session(request.saveset, options)
    try:
        meta = _open_reader(reader, request.saveset)
        summary.bytes_total = int(meta["size"])
        summary.extra["metadata_checked"] = meta.get("metadata_checked", False)
        writer = open_session(request.target, options)
        try:
            path = remote_path(request.target)
            writer.request(OPEN, _writer_open(request, path, meta), READY, path)
            reader.send_json(READY, {})  # the target is open: the reader may start sending
            sink.emit(JobStarted(job, "restore", str(request.saveset), str(request.target),
                                 str(request.saveset), summary.bytes_total))
            counters = Counters(job, sink)
            receiver = Receiver(writer, path, counters.set_written)
            target = where(request.target, path)
            try:
                result = _relay(reader, writer, receiver, counters)
            except _SavesetFailed as e:
                raise type(e.error)(f"{e.error}{_saveset_hint(e.error, target)}") from None
            except BacpacError as e:
                raise type(e)(naming(str(e), writer.host, target) + TARGET_FAILED) from None
            except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP (cli.py)
                raise interruption(e, target, TARGET_FAILED) from None
            finally:  # what was done, whether or not the run got to the end
                summary.bytes_read = counters.bytes_read
                summary.bytes_sent = counters.bytes_sent
                summary.bytes_written = counters.bytes_written
            proven = check_result(request.verify, target, result)
            report_digests(summary, dict(proven, sha256=result["content_sha256"]))
            summary.extra["verified"] = request.verify
            summary.bytes_written = int(result.get("bytes_written", 0))
        finally:
            writer.close()
    except BaseException:
        reader.close(hang_up=True)  # it may be blocked sending frames nobody will read now
        raise
    reader.close()


def _saveset_hint(error: BacpacError, target: str) -> str:
    """What to do when the saveset failed a restore half way: the same saveset will fail the
    same way again, so the advice is never to run the restore again as it was."""
    cause = ("the saveset is damaged" if isinstance(error, VerifyError)
             else "the saveset could not be read")
    return (f"; {cause}, and the target {target} was partly written and does not hold a "
            "usable copy: restore it from another saveset")


class _SavesetFailed(Exception):
    """The helper reading the saveset sent ERROR during a restore: its error, to be told with
    advice of its own (a writer-side failure gets another)."""

    def __init__(self, error: BacpacError) -> None:
        super().__init__(str(error))
        self.error = error


def _open_reader(reader: HelperSession, saveset: Endpoint) -> dict:
    """The saveset's READY: its ends are proven (the helper refuses a damaged one here, before
    the target is opened), its metadata and image size."""
    path = remote_path(saveset)
    return reader.request(OPEN, {"protocol": protocol.PROTOCOL_VERSION, "job": "read_saveset",
                                 "path": path}, READY, path)


def _writer_open(request: RestoreRequest, path: str, meta: dict) -> dict:
    """The OPEN of the helper that writes: a tree saveset's tar goes to restore_tree, which
    wants a directory; a disk saveset's image to the dup job, as a dup's stream does."""
    if (meta.get("metadata") or {}).get("kind") == "tree":
        if request.verify:
            raise UsageError(f"{request.saveset}: --verify re-reads a disk image; a tree "
                             "saveset is proven by its sha256 as it is restored")
        return {"protocol": protocol.PROTOCOL_VERSION, "job": "restore_tree", "path": path}
    return {"protocol": protocol.PROTOCOL_VERSION, "job": "dup", "path": path,
            "size": int(meta["size"]), "force": request.force, "verify": request.verify,
            # the reading helper proved the content against the trailer's digests; this one
            # proves it wrote that content by its image digest (a hole's needs no hashing)
            "check": "sha256", "hash": [imagedigest.ALGORITHM],
            "codec": "zstd", "saveset": None,
            # the saveset itself is the source: a target that is the saveset file is refused
            "source": {"boot_id": meta.get("boot_id"), "identity": meta.get("identity")}}


def _relay(reader: HelperSession, writer: HelperSession, receiver: Receiver,
           counters: Counters) -> dict:
    """Frames from the reading helper to the writing one, until END; the writer's RESULT."""
    while True:
        frame = reader.recv()
        if receiver.failed:
            receiver.wait()
        if frame.type == DATA:
            receiver.send(writer.send_block, frame.offset, frame.size, frame.flags,
                          frame.payload)
            counters.add(read=frame.size, sent=len(frame.payload))
        elif frame.type == END:
            end = reader.json(frame)
            receiver.send(writer.send_json, END, end)
            break
        elif frame.type == ERROR:
            raise _SavesetFailed(reader.rebuild(reader.json(frame), ""))
        else:
            raise ProtocolError(f"{reader.host}: unexpected {protocol.type_name(frame.type)} "
                                "while reading the saveset")
    result = receiver.wait()
    # what the writing helper proves it wrote: a disk's image digest, a tree's tar sha256
    key = "digest" if end.get("digest") else "sha256"
    result["source_digests"] = {key: end.get(key)}
    result["content_sha256"] = end.get("sha256")  # the trailer's, proven by the reader
    return result


def query_saveset(job_name: str, saveset: Endpoint, options: ConnectOptions) -> dict:
    """Run `verify` or `info` in a helper where the saveset lives; its RESULT. An interrupt
    before it answers (a slow login, a long verify) names the saveset, host and path."""
    path = remote_path(saveset)
    try:
        session = open_session(saveset, options)
        try:
            return session.request(OPEN, {"protocol": protocol.PROTOCOL_VERSION,
                                          "job": job_name, "path": path}, RESULT, path)
        finally:
            session.close()
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP (cli.py)
        raise interruption(e, where(saveset, path)) from None


def format_note(version: object, metadata_checked: object) -> str:
    """The saveset's format version, and whether a checksum covers its metadata: what `verify`
    and `info` say of a saveset written before the metadata had one."""
    if metadata_checked:
        return f"version {version}"
    return (f"version {version}: its metadata, such as the source and the creation time, is "
            "not covered by a checksum")


def run_verify(saveset: Endpoint, options: ConnectOptions, sink: Sink) -> JobSummary:
    summary = JobSummary(command="verify", source=str(saveset), target="", saveset=str(saveset))

    def body(summary: JobSummary) -> None:
        result = query_saveset("verify", saveset, options)
        report_digests(summary, {key: result[key] for key in ("digest", "sha256")
                                 if result.get(key)})
        summary.bytes_total = summary.bytes_read = int(result.get("bytes", 0))
        summary.extra.update(frames=result.get("frames"), compressed=result.get("compressed"),
                             version=result.get("version"),
                             metadata_checked=result.get("metadata_checked"))
        if "entries" in result:  # a tree saveset: its tar decoded to the end
            summary.extra["entries"] = result["entries"]

    return run_tracked(sink, str(saveset), summary, body)
