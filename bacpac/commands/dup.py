"""bacpac dup and backup: a disk or image onto a target and/or a saveset, proven end to end.

The client hashes the whole source: the image digest it reports (a sha256 over the sha256 of
each 1 MiB piece, remote_helper/target/imagedigest.py), and the plain sha256 a saveset's
trailer holds, when a saveset is written or --sha256 asks for it. The helper proves what it
received frame by frame: every zstd frame carries its content checksum, which decompression
verifies, and frames must be contiguous, in order and complete, so holes cost the helper
nothing; zlib frames, which have no strong checksum, are hashed whole instead.
--verify re-reads the target from its disk and compares the digests. A backup is a dup with no
target disk: the helper writes only the saveset, from the same frames.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import queue
from dataclasses import dataclass, field
from typing import Optional

from remote_helper.target import devices, imagedigest
from remote_helper.wire import protocol
from remote_helper.wire.protocol import ANSWER, END, MATCH, OPEN, READY, Frame

from ..engine.source import Source, close_source, open_source
from ..errors import BacpacError, DiskFullError, TransferError, UsageError, interruption
from ..ui.events import Counters, JobMessage, JobStarted, JobSummary, Sink
from .jobs import (check_result, naming, remote_path, report_digests, run_tracked,
                   saveset_metadata, warn, where)
from ..engine.dedup import SeenChunks
from ..engine.delta import Asks, SegmentReader, two_levels
from ..engine.pipeline import ExtentReader, ImageStream, Producer, StreamResult, StreamSettings
from ..transport.fanout import SAVESET, TARGET, Fanout
from ..transport.helper import ConnectOptions, HelperSession, Receiver, open_session
from ..spec import Endpoint

PARTLY = "; the target was partly written and does not hold a usable copy"
PARTLY_WRITTEN = PARTLY + ": run the same command again with --delta to finish it"


@dataclass(frozen=True)
class DupRequest:
    """One dup (target disk, optional saveset) or backup (saveset only), validated.

    For a backup, `target` names the saveset and `saveset` is None. `savesets` are written
    by helpers of their own, fed the same frames (a fan-out): those on other hosts than the
    target's, and any beyond the first on its host.
    """

    source: str
    target: Endpoint
    saveset: Optional[str] = None
    backup: bool = False
    force: bool = False
    verify: bool = False
    delta: bool = False
    nothing_else_writes_target: bool = False  # a block device's digest cache may stand for it
    stream: StreamSettings = field(default_factory=StreamSettings)
    savesets: tuple[Endpoint, ...] = ()
    dry_run: bool = False

    @property
    def command(self) -> str:
        return "backup" if self.backup else "dup"

    @property
    def saveset_path(self) -> Optional[str]:
        if self.backup:
            return remote_path(self.target)
        if self.saveset is None:
            return None
        return remote_path(dataclasses.replace(self.target, path=self.saveset))


@dataclass(frozen=True)
class _Job:
    """One dup or backup under way: what was asked, how to reach the target, and where it
    reports (its events, under its name, and its summary, filled in as it goes)."""

    request: DupRequest
    options: ConnectOptions
    sink: Sink
    name: str
    summary: JobSummary


def run_dup(request: DupRequest, options: ConnectOptions, sink: Sink) -> JobSummary:
    """Run one dup or backup; emits its events; returns its summary or raises its error."""
    name = f"{request.source} → {request.target}"
    summary = JobSummary(command=request.command, source=request.source,
                         target=str(request.target), saveset=_saveset_shown(request))
    body = _dry_run if request.dry_run else _dup
    return run_tracked(sink, name, summary,
                       lambda s: body(_Job(request, options, sink, name, s)))


def _dry_run(job: _Job) -> None:
    """Connect, start the helper and run every check of the OPEN; the helper answers READY
    with what it would write, and stops: nothing is written, nothing of the source is read."""
    request = job.request
    source = open_source(request.source)
    try:
        job.summary.bytes_total = source.size
        if source.rw_mount:
            warn(job.sink, job.name, job.summary,
                 _mounted_warning(request.source, *source.rw_mount))
        session = open_session(request.target, job.options)
        try:
            settings = _negotiate(request, session.hello, session.host)
            path = remote_path(request.target)
            ready = session.request(OPEN, {**_open_frame(request, source, settings),
                                           "dry_run": True}, READY, path)
        finally:
            session.close()
        for endpoint in request.savesets:  # a fan-out's saveset hosts check theirs too
            other = open_session(endpoint, job.options)
            try:
                leg = _leg_open(request, source, settings, SAVESET, remote_path(endpoint))
                other.request(OPEN, {**leg, "confirm": False, "dry_run": True}, READY,
                              remote_path(endpoint))
            finally:
                other.close()
    finally:
        close_source(source)
    job.summary.extra.update(dry_run=True, target_kind=ready.get("kind"))
    would = (f"would write a saveset of {source.size} bytes" if request.backup else
             _would_delta(request, ready, where(request.target, path), source.size)
             if request.delta and ready.get("kind") != "new file" else
             f"would write {source.size} bytes to the {ready.get('kind')} "
             f"{where(request.target, path)}")
    if not request.backup and request.saveset_path:
        would += f" and a saveset at {request.saveset_path}"
    for endpoint in request.savesets:
        would += f" and a saveset at {endpoint}"
    job.summary.extra["would"] = would  # the dry run's answer, told even with --no-progress
    job.sink.emit(JobMessage(job.name, "info", f"dry run: every check passed; {would}"))


def _would_delta(request: DupRequest, ready: dict, target: str, size: int) -> str:
    """What a --delta run would do: which blocks differ, only reading the target can tell."""
    return (f"would compare the {size} bytes of the source with the {ready.get('kind')} "
            f"{target} block by block (reading it, or its digest cache when that holds) and "
            "send and write only the blocks that differ; how many, only the run can tell")


def _dup(job: _Job) -> None:
    request = job.request
    _refuse_twice_written(request)
    source = open_source(request.source)
    stream: Optional[_Stream] = None
    try:
        job.summary.bytes_total = source.size
        if source.rw_mount:
            warn(job.sink, job.name, job.summary,
                 _mounted_warning(request.source, *source.rw_mount))
        stream = _Stream(request, source, request.stream)  # works while we connect
        if request.savesets:
            _fan_out(job, stream)
            return
        try:
            _with_helper(job, stream, request.stream)
        except _Renegotiate as again:  # that helper refused the stream before writing a byte
            _with_helper(job, stream, again.settings)
    finally:
        # Never under a reader still running: the number could go to the next file opened.
        if stream is None or stream.close():
            close_source(source)


def _mounted_warning(path: str, device: str, mountpoint: str) -> str:
    """Names the device that is mounted: the source itself, or a partition or loop device of
    it, which is the one to unmount."""
    subject = path if os.path.realpath(path) == device else f"{path}: {device}"
    return f"{subject} is mounted read-write on {mountpoint}: the copy may be inconsistent"


class _Renegotiate(TransferError):
    """The helper's HELLO came after the stream was begun with settings it cannot decode."""

    def __init__(self, host: str, settings: StreamSettings) -> None:
        super().__init__(f"{host}: the helper's codecs changed between two starts")
        self.settings = settings


def _with_helper(job: _Job, stream: "_Stream", settings: StreamSettings) -> None:
    """The transfer through a helper of its own, with the stream begun in `settings` before
    its HELLO is read (HelperSession.start). The requested settings first: every helper with
    zstd decodes them; one without refuses them, and the next helper is sent what it can."""
    session = open_session(job.request.target, job.options, hello=False, on_route=stream.route,
                           job="dup")
    try:
        _transfer(job, stream, session, settings)
    finally:
        session.close()


class _Stream:
    """The image's stream, begun before the helper is reached: remade if the helper's codecs
    make the negotiated settings differ from the ones it was begun with."""

    def __init__(self, request: DupRequest, source: Source, settings: StreamSettings) -> None:
        self._request = request
        self.source = source
        self._here = request.target.is_local and all(  # the helpers run on this host
            saveset.is_local for saveset in request.savesets)
        self._stopped = True  # every stream replaced so far stopped its threads
        self.image = self._start(settings)

    def route(self, here: bool) -> None:
        """Told by the connection, before its handshake, whether it stays on this host."""
        self._here = here
        if here:
            self.image.to_this_host()

    def _start(self, settings: StreamSettings) -> ImageStream:
        # In a delta run the receiver feeds this the target's digests as the helper sends them;
        # a queue of each stream's own, so a reader being stopped can never take one.
        self.digests: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.asks = Asks()  # and hands the answers to its ASKs to this
        producer: Producer
        if self._request.delta:
            producer = SegmentReader(self.digests, self.asks)
        elif self._request.backup or self._request.savesets:
            producer = ExtentReader()  # no COPY frames: a saveset's helper has no disk to read
        else:
            producer = ExtentReader(SeenChunks())
        return ImageStream(self.source.fd, self.source.size, settings, producer,
                           here=self._here, name=self.source.path)

    def on_digests(self, frame: Frame) -> None:
        """A DIGESTS frame from the target's helper: a segment's, or an answer to an ASK."""
        if frame.flags == ANSWER:
            self.asks.answer(frame.offset, bytes(frame.payload))
        else:
            self.digests.put((frame.offset, frame.payload))

    def use(self, settings: StreamSettings) -> ImageStream:
        if settings != self.image.settings:
            self._stopped = self.image.close() and self._stopped
            self.image = self._start(settings)
        return self.image

    def close(self) -> bool:
        """Stop the stream's threads; whether all of them, and those of every stream it
        replaced, stopped: until then the source stays open."""
        return self.image.close() and self._stopped


def _transfer(job: _Job, stream: _Stream, session: HelperSession,
              settings: StreamSettings) -> None:
    request, source, summary = job.request, stream.source, job.summary
    image = stream.use(settings)
    path = remote_path(request.target)
    counters = Counters(job.name, job.sink)
    receiver = Receiver(session, path, counters.set_written, stream.on_digests,
                        functools.partial(_agrees, request, settings, session.host))
    stream.asks.connect(functools.partial(receiver.send, session.send))
    receiver.send(session.ship)
    # Sent without waiting for READY: the helper checks the OPEN before it reads on, and
    # refuses it, with nothing written, by an ERROR that the receiver reads in READY's place.
    receiver.send(session.send_json, OPEN, _open_frame(request, source, settings))
    if settings == request.stream:  # not again for a helper that refused them
        job.sink.emit(JobStarted(job.name, request.command, request.source,
                                 str(request.target), request.saveset_path, source.size))
    try:
        result = _stream(job, image, session, receiver, counters)
    except BacpacError as e:
        if request.backup or (e is receiver.error and not receiver.ready):
            raise  # a backup writes no target; a refused OPEN wrote nothing
        raise type(e)(with_partly_written(e, naming(str(e), session.host, where(
            request.target, path)), where(request.target, path))) from None
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP (cli.py)
        hint = "" if request.backup else PARTLY_WRITTEN
        raise interruption(e, where(request.target, path), hint) from None
    finally:  # what was done, whether or not the run got to the end
        summary.bytes_read = counters.bytes_read
        summary.bytes_sent = counters.bytes_sent
        summary.bytes_written = counters.bytes_written  # as the helper's PROGRESS said
    verify = request.verify and not request.backup
    report_digests(summary, check_result(verify, where(request.target, path), result,
                                         _check(settings)))
    summary.extra.update(codec=settings.codec, zstd=session.hello.get("zstd"),
                         cipher=session.cipher, helper_python=session.hello.get("python"),
                         verified=verify, check=_check(settings))
    summary.bytes_written = int(result.get("bytes_written", 0))
    summary.extra["hosts"] = [{  # one helper: as a fan-out reports each of its own
        "host": request.target.host or "localhost", "role": SAVESET if request.backup else TARGET,
        "path": path, "bytes_sent": summary.bytes_sent, "bytes_written": summary.bytes_written}]


def _refuse_twice_written(request: DupRequest) -> None:
    """Two outputs of one run at the same place on the same host: one would overwrite the
    other (their helpers would each check its own path alone)."""
    seen: set[tuple[Optional[str], str]] = set()
    outputs = [request.target] + list(request.savesets)
    if request.saveset is not None:
        outputs.append(dataclasses.replace(request.target, path=request.saveset))
    for endpoint in outputs:
        place = (endpoint.host, os.path.normpath(remote_path(endpoint)))
        if place in seen:
            what = ("the saveset is the target itself" if not request.backup and
                    place == (request.target.host, os.path.normpath(remote_path(request.target)))
                    else f"named twice as an output of the same {request.command}")
            raise UsageError(f"{endpoint}: {what}")
        seen.add(place)


def _saveset_shown(request: DupRequest) -> Optional[str]:
    """The saveset the summary names: the one on the target's host, else the first other."""
    if request.saveset_path is not None or not request.savesets:
        return request.saveset_path
    return str(request.savesets[0])


def _all_savesets(request: DupRequest) -> list[str]:
    path = request.saveset_path
    first = [] if path is None else [where(request.target, path)]
    return first + [str(saveset) for saveset in request.savesets]


def _fan_out(job: _Job, stream: _Stream) -> None:
    """The stream read and compressed once, and sent to a helper on each host: the savesets'
    first, each opened and checked, then the target's (transport/fanout.py)."""
    request, summary = job.request, job.summary
    main_role = SAVESET if request.backup else TARGET
    fan = Fanout(job.options)
    try:
        legs = [(endpoint, SAVESET) for endpoint in request.savesets]
        fan.open([(endpoint, role, remote_path(endpoint), where(endpoint, remote_path(endpoint)))
                  for endpoint, role in legs + [(request.target, main_role)]], stream.route)
        fan.require_codec(request.stream.codec)
        fan.refuse_one_file_twice()
        _fan_transfer(job, stream, fan)
    finally:
        summary.extra["hosts"] = [leg.report() for leg in  # the target's first
                                  sorted(fan.legs, key=lambda leg: leg.role != TARGET)]
        fan.close()


def _fan_transfer(job: _Job, stream: _Stream, fan: Fanout) -> None:
    request, source, summary = job.request, stream.source, job.summary
    settings = request.stream
    image = stream.use(settings)
    counters = Counters(job.name, job.sink)
    counters.streams = len(fan.legs)
    sizes = _Sizes(counters, settings.delta_block, request.delta)
    opens = [_leg_open(request, source, settings, leg.role, leg.path) for leg in fan.legs]
    target = fan.legs[-1]  # the target's helper, or a backup's first saveset
    try:
        stream.asks.connect(target.session.send)
        fan.start(opens, counters.set_written, stream.on_digests, sizes.count)
        job.sink.emit(JobStarted(job.name, request.command, request.source,
                                 str(request.target), _saveset_shown(request), source.size))
        streamed = image.send(fan)
        results = fan.finish(end_of(streamed))
    except BacpacError as e:
        leg = fan.culprit(e)
        partly = fan.target_ready() and not request.backup
        message = str(e) if leg is None else naming(str(e), leg.host, leg.where)
        raise type(e)(with_partly_written(e, message, target.where) if partly else message
                      ) from None
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP (cli.py)
        hint = PARTLY_WRITTEN if fan.target_ready() and not request.backup else ""
        raise interruption(e, target.where, hint) from None
    finally:
        summary.bytes_read = counters.bytes_read
        summary.bytes_sent = counters.bytes_sent
        summary.bytes_written = counters.bytes_written
    check = _check(settings)
    for leg, result in zip(fan.legs, results):
        result["source_digests"] = digests_of(streamed)
        report_digests(summary, check_result(request.verify and leg.role == TARGET, leg.where,
                                             result, check))
        # as a plain dup's: each helper's warnings; the target's reads and digest cache (last)
        digest_cache_report(job.sink, job.name, summary, leg.host, result)
    hello = target.session.hello
    summary.extra.update(codec=settings.codec, zstd=hello.get("zstd"),
                         cipher=target.session.cipher, helper_python=hello.get("python"),
                         verified=request.verify and not request.backup, check=check,
                         levels=streamed.levels, savesets=_all_savesets(request))
    summary.bytes_written = int(target.result.get("bytes_written", 0))
    if request.delta:
        summary.extra.update(blocks_sent=sizes.blocks_sent, blocks_matched=sizes.blocks_matched,
                             block_size=settings.delta_block)


def _leg_open(request: DupRequest, source: Source, settings: StreamSettings, role: str,
              path: str) -> dict:
    """The OPEN of one helper of a fan-out: the target's as a dup's (its own host's saveset
    with it), a saveset's as a backup's; each to confirm before its saveset gets its name."""
    job = _open_frame(request, source, settings)
    job["confirm"] = True
    if role == SAVESET:
        job.update(path=None, force=False, verify=False, delta=None, saveset={
            "path": path, "frame_size": settings.block_size,
            "metadata": saveset_metadata("disk", request.source, source.size,
                                         settings.block_size)})
    return job


class _Sizes:
    """What the sent frames count (bytes read and sent, blocks compared and sent), for one
    helper's SessionSender and for a fan-out alike."""

    def __init__(self, counters: Counters, delta_block: int, delta: bool) -> None:
        self._counters = counters
        self._delta_block = delta_block
        self._delta = delta
        self.blocks_sent = 0
        self.blocks_matched = 0

    def count(self, size: int, payload: int, sent: bool) -> None:
        if not self._delta:
            self._counters.add(read=size, sent=payload)
            return
        blocks = -(-size // self._delta_block)
        if sent:
            self.blocks_sent += blocks
        else:
            self.blocks_matched += blocks
        self._counters.add(read=size, sent=payload, compared=blocks,
                           blocks_sent=blocks if sent else 0)


def _negotiate(request: DupRequest, hello: dict, host: str) -> StreamSettings:
    codecs = hello.get("codecs") or []
    stream = request.stream
    if stream.codec in codecs:
        return stream
    if request.saveset_path is not None:
        raise UsageError(f"{host}: a saveset needs zstd on the target: install "
                         "python3-zstandard or the zstd tool there")
    if "zlib" in codecs:
        return dataclasses.replace(stream, codec="zlib", level=min(max(stream.level, 1), 9))
    raise UsageError(f"{host}: the helper offers no codec this client speaks ({codecs})")


def _agrees(request: DupRequest, settings: StreamSettings, host: str, hello: dict) -> None:
    """A HELLO read while the stream is on its way: its helper must decode what it is sent, or
    it refuses the OPEN, and the dup starts again with a helper told what it can decode."""
    wanted = _negotiate(request, hello, host)
    if wanted != settings:
        raise _Renegotiate(host, wanted)


def digests_of(streamed: StreamResult) -> dict[str, str]:
    """The source's digests by their keys in END and RESULT: those computed."""
    digests = {"digest": streamed.digest}
    if streamed.sha256 is not None:
        digests["sha256"] = streamed.sha256
    return digests


def end_of(streamed: StreamResult) -> dict:
    """END's payload: the byte count and the source's digests, as the helper compares them."""
    return {"bytes": streamed.bytes_read, **digests_of(streamed)}


def _hashes(settings: StreamSettings) -> list[str]:
    """The digests the helper computes where it hashes (zlib frames, --verify): those the
    client computes of the source."""
    return [imagedigest.ALGORITHM] + ([imagedigest.PLAIN] if settings.sha256 else [])


def _check(settings: StreamSettings) -> str:
    """How the helper proves the stream: by zstd's frame checksums, else by hashing it."""
    return "frames" if settings.codec == "zstd" else "sha256"


def _open_frame(request: DupRequest, source: Source, settings: StreamSettings) -> dict:
    saveset = None
    if request.saveset_path is not None:
        saveset = {"path": request.saveset_path, "frame_size": settings.block_size,
                   "metadata": saveset_metadata("disk", request.source, source.size,
                                                settings.block_size)}
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "job": "dup",
        "path": None if request.backup else remote_path(request.target),
        "size": source.size,
        "force": request.force,
        "verify": request.verify,
        "check": _check(settings),
        "hash": _hashes(settings),
        "codec": settings.codec,  # refused at once by a helper that cannot decode it
        "saveset": saveset,
        "delta": ({"block": settings.delta_block, "segment": settings.block_size,
                   "trust": request.nothing_else_writes_target,
                   # two levels: the helper's DIGESTS carry piece digests, and the client
                   # ASKs for the blocks of those that differ (delta.py)
                   "pieces": imagedigest.PIECE if two_levels(settings) else 0,
                   "ask": two_levels(settings)}
                  if request.delta else None),
        "source": {"boot_id": devices.boot_id(), "identity": source.identity},
    }


class SessionSender:
    """Puts the pipeline's frames on the helper's channel and counts them."""

    def __init__(self, session: HelperSession, receiver: Receiver, counters: Counters,
                 delta_block: int, delta: bool) -> None:
        self._session = session
        self._receiver = receiver
        self.sizes = _Sizes(counters, delta_block, delta)
        self._count = self.sizes.count
        self.bytes_copied = 0

    def block(self, offset: int, size: int, flags: int, payload: bytes) -> None:
        self._receiver.send(self._session.send_block, offset, size, flags, payload)
        self._count(size, len(payload), sent=True)

    def hole(self, offset: int, size: int) -> None:
        self._receiver.send(self._session.send, protocol.encode_hole(offset, size))
        self._count(size, 0, sent=True)

    def match(self, offset: int, size: int, data: memoryview) -> None:
        self._receiver.send(self._session.send, protocol.encode(MATCH, b"", offset, 0, size))
        self._count(size, 0, sent=False)

    def copy(self, offset: int, size: int, source: int, digest: bytes) -> None:
        frame = protocol.encode_copy(offset, size, source, digest)
        self._receiver.send(self._session.send, frame)
        self._count(size, len(frame) - protocol.HEADER_SIZE, sent=True)
        self.bytes_copied += size

    def check(self) -> None:
        if self._receiver.failed:
            self._receiver.wait()  # raises the helper's error

    def helper_idle(self) -> Optional[float]:
        return self._receiver.helper_idle


def _stream(job: _Job, image: ImageStream, session: HelperSession, receiver: Receiver,
            counters: Counters) -> dict:
    request, summary = job.request, job.summary
    sender = SessionSender(session, receiver, counters, image.settings.delta_block,
                           request.delta)
    try:
        streamed = image.send(sender)
        receiver.send(session.send_json, END, end_of(streamed))
    except BacpacError:
        sender.check()  # the helper's own account of why the channel broke is the better message
        raise
    result = receiver.wait()
    result["source_digests"] = digests_of(streamed)
    summary.extra["levels"] = streamed.levels
    summary.extra["bytes_copied"] = sender.bytes_copied
    if request.delta:
        summary.extra.update(blocks_sent=sender.sizes.blocks_sent,
                             blocks_matched=sender.sizes.blocks_matched,
                             block_size=image.settings.delta_block)
    digest_cache_report(job.sink, job.name, summary, session.host, result)
    return result


def digest_cache_report(sink: Sink, name: str, summary: JobSummary, host: str,
                        result: dict) -> None:
    """What a helper says of its target's reads and its digest cache, into the summary."""
    for text in result.get("warnings") or []:
        warn(sink, name, summary, f"{host}: {text}")
    for key in ("target_read", "io_read_bytes", "digest_cache", "digest_cache_kept"):
        if key in result:
            summary.extra[key] = result[key]


def with_partly_written(error: BacpacError, message: str, target: str) -> str:
    """message, and what became of the target; named when the message leads with another
    output (a saveset, maybe on another host), which a reader would take it for."""
    hint = partly_written(error)
    if not message.startswith(f"{target}: "):
        hint = hint.replace("the target", f"the target {target}", 1)
    return message + hint


def partly_written(error: BacpacError) -> str:
    """What to tell of a target left half written by `error`: --delta finishes it, unless a
    disk is full, which a second run would only fill again."""
    return PARTLY if isinstance(error, DiskFullError) else PARTLY_WRITTEN
