"""One stream to several helpers: a dup's target and its savesets on other hosts (fan-out).

# Strategy: the source is read and compressed once; each frame is written to every helper's
# channel in turn, from the sending thread (each channel has its own batched writer), so the
# slowest link sets the pace of the whole run, and memory stays what one stream takes. Safety
# comes from the order of the steps. The helpers that write only a saveset are opened first:
# they write nothing under a final name, so a refusal there leaves every host untouched. The
# target's helper gets its OPEN only once every saveset helper has said READY, and no data
# goes anywhere before the target's READY. At the end every helper is told to confirm
# (`confirm` in its OPEN): it proves its stream, makes everything durable and says PREPARED,
# but renames its saveset into place only on COMMIT, which the client sends once every host
# has said PREPARED. A failure anywhere before that point leaves no saveset under a final
# name on any host: the client closes every channel, and a helper whose input ends discards
# its temporary saveset (docs/wire.md §4).
"""
from __future__ import annotations

import functools
import posixpath
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from remote_helper.wire.zstdframe import compress_frame
from remote_helper.wire import protocol
from remote_helper.wire.protocol import COMMIT, END, MATCH, OPEN, Frame

from .. import threads
from ..errors import TransferError, UsageError
from ..spec import Endpoint
from .helper import ConnectOptions, HelperSession, Receiver, open_session

READY_WITHIN = 120.0  # seconds from an OPEN to its READY: the checks of one target
# seconds for the legs' connections, made at once, to be made or to fail: a connection's own
# ConnectTimeout and the helper's HELLO deadline (helper.HELLO_WITHIN) end each before this
CONNECT_WITHIN = 120.0
MATCH_LEVEL = 1  # the zstd level of matched bytes sent on as DATA to a saveset elsewhere
TARGET, SAVESET = "target", "saveset"


@dataclass
class Leg:
    """One helper of the fan-out: where it writes, in which role, and what it was sent."""

    endpoint: Endpoint
    role: str  # TARGET (the disk, and a saveset on the same host) or SAVESET (a saveset only)
    path: str  # the path as the helper opens it
    where: str  # host:path, for messages
    session: HelperSession
    receiver: Optional[Receiver] = None
    bytes_sent: int = 0
    written: int = 0  # as its PROGRESS said
    result: dict = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.session.host

    def report(self) -> dict:
        return {"host": self.endpoint.host or "localhost", "role": self.role, "path": self.path,
                "bytes_sent": self.bytes_sent,
                "bytes_written": int(self.result.get("bytes_written", self.written))}


# What a sent frame counts: its image bytes, the payload bytes put on all channels together,
# and whether it was sent (False: matched, the target had it).
Count = Callable[[int, int, bool], None]


class Fanout:
    """The helpers of one fan-out, opened with open(), started with start(), fed as a
    pipeline.FrameSender, ended with finish(); close() always."""

    def __init__(self, options: ConnectOptions) -> None:
        self._options = options
        self.legs: list[Leg] = []
        self._count: Count = lambda size, payload, sent: None
        self._on_written: Callable[[int, Optional[str]], None] = lambda written, host: None

    def open(self, wanted: list[tuple[Endpoint, str, str, str]],
             on_route: Callable[[bool], None] = lambda here: None) -> None:
        """Connect to the helper of each leg (endpoint, role, path, where), ship it and read its
        HELLO: all at once, so that the slowest sets the time, not their sum (one at a time
        when a password may be asked on the terminal). The legs keep the order given; the
        first failure, in that order, is raised once every attempt has ended, and close()
        closes what was opened. on_route(True) is told as soon as every helper is known to
        run on this host (helper.open_session's on_route)."""
        opened: list[Optional[HelperSession]] = [None] * len(wanted)
        errors: list[Optional[BaseException]] = [None] * len(wanted)
        here: set[int] = set()
        lock = threading.Lock()

        def routed(index: int, local: bool) -> None:
            with lock:
                if local:
                    here.add(index)
                everywhere = local and len(here) == len(wanted)
            if everywhere:
                on_route(True)

        def connect(index: int) -> None:
            try:
                opened[index] = open_session(wanted[index][0], self._options,
                                             on_route=functools.partial(routed, index))
            except BaseException as e:  # raised on the calling thread, below
                errors[index] = e

        together = not self._options.interactive
        workers = [threading.Thread(target=connect, args=(index,), name=f"connect-{index}",
                                    daemon=True) for index in range(1, len(wanted))]
        try:
            for worker in workers if together else ():
                worker.start()
            connect(0)
            for index in range(1, len(wanted)):
                if not together and not any(errors):  # one at a time, up to a failure
                    connect(index)
        finally:
            threads.join(workers, "the fan-out's connections", CONNECT_WITHIN)
            for (endpoint, role, path, where), session in zip(wanted, opened):
                if session is not None:
                    self.legs.append(Leg(endpoint, role, path, where, session))
        failed = next((error for error in errors if error is not None), None)
        if failed is not None:
            raise failed

    def require_codec(self, codec: str) -> None:
        """Every helper gets the same frames: each must decode them."""
        for leg in self.legs:
            if codec not in (leg.session.hello.get("codecs") or []):
                raise UsageError(f"{leg.host}: a saveset needs zstd on every host it is fed "
                                 "to: install python3-zstandard or the zstd tool there")

    def refuse_one_file_twice(self) -> None:
        """Two legs on one machine reached by two names (an alias and an address of one
        standby) share a boot id: the same path there is one file, which one leg would
        overwrite with the other's output (each helper checks its own path alone)."""
        seen: dict[tuple, Leg] = {}
        for leg in self.legs:
            boot_id = leg.session.hello.get("boot_id")
            if not boot_id:
                continue
            path = posixpath.normpath(leg.path)  # a relative one is under the user's home
            home = None if path.startswith("/") else leg.session.hello.get("uid")
            place = (boot_id, home, path)
            first = seen.setdefault(place, leg)
            if first is not leg:
                if {first.role, leg.role} == {TARGET, SAVESET}:
                    saveset, target = (first, leg) if first.role == SAVESET else (leg, first)
                    raise UsageError(f"{saveset.where}: the saveset is the target itself "
                                     f"({target.where}: the same machine, by its boot id)")
                raise UsageError(f"{leg.where}: named twice as an output ({first.where}: the "
                                 "same machine, by its boot id)")

    def start(self, opens: list[dict], on_written: Callable[[int, Optional[str]], None],
              on_digests: Callable[[Frame], None], count: Count) -> None:
        """Send each leg its OPEN (opens[i] for legs[i]), the savesets' first, and wait for
        every READY: the target's helper, which may truncate a file, is asked only once every
        saveset host has passed its checks."""
        self._count, self._on_written = count, on_written
        for leg, job in zip(self.legs, opens):
            digests = on_digests if job.get("delta") else None
            leg.receiver = Receiver(leg.session, leg.path,
                                    functools.partial(self._written, leg), digests,
                                    ready_first=True, confirm=True)
        for role in (SAVESET, TARGET):
            chosen = [(leg, job) for leg, job in zip(self.legs, opens) if leg.role == role]
            for leg, job in chosen:
                self._receiver(leg).send(leg.session.send_json, OPEN, job)
            for leg, _ in chosen:
                self._receiver(leg).wait_ready(READY_WITHIN)

    def _written(self, leg: Leg, written: int) -> None:
        """PROGRESS from one helper: the display follows the slowest, and names its host
        while it lags behind another."""
        leg.written = written
        slowest = min(self.legs, key=lambda other: other.written)
        lags = slowest.written < max(other.written for other in self.legs)
        self._on_written(slowest.written, slowest.host if lags else None)

    @staticmethod
    def _receiver(leg: Leg) -> Receiver:
        assert leg.receiver is not None, "Fanout.start() comes first"
        return leg.receiver

    # ---- pipeline.FrameSender -----------------------------------------------------------

    def block(self, offset: int, size: int, flags: int, payload: bytes) -> None:
        for leg in self.legs:
            self._receiver(leg).send(leg.session.send_block, offset, size, flags, payload)
            leg.bytes_sent += len(payload)
        self._count(size, len(payload) * len(self.legs), True)

    def hole(self, offset: int, size: int) -> None:
        self._each(protocol.encode_hole(offset, size))
        self._count(size, 0, True)

    def match(self, offset: int, size: int, data: memoryview) -> None:
        """MATCH to the target, which holds these bytes; to a saveset elsewhere, which does
        not, the bytes themselves, compressed here (they were read for the comparison)."""
        payload: Optional[bytes] = None
        sent = 0
        for leg in self.legs:
            if leg.role == TARGET:
                frame = protocol.encode(MATCH, b"", offset, 0, size)
                self._receiver(leg).send(leg.session.send, frame)
                continue
            if payload is None:
                payload = compress_frame(data, MATCH_LEVEL)
            self._receiver(leg).send(leg.session.send_block, offset, size,
                                     protocol.CODEC_ZSTD, payload)
            leg.bytes_sent += len(payload)
            sent += len(payload)
        self._count(size, sent, False)

    def copy(self, offset: int, size: int, source: int, digest: bytes) -> None:
        # A fan-out's reader plans no COPY frames: a saveset-only helper has no disk to copy from.
        raise TransferError(f"internal: a COPY frame at {offset} in a fan-out")

    def check(self) -> None:
        for leg in self.legs:
            receiver = self._receiver(leg)
            if receiver.failed:
                receiver.wait()  # raises the helper's error

    def helper_idle(self) -> Optional[float]:
        """The share of time the helpers waited for input: the least of them, once every one
        has said; the pacer raises the level only when all of them wait on their links."""
        idle = [self._receiver(leg).helper_idle for leg in self.legs]
        return None if any(value is None for value in idle) else min(
            value for value in idle if value is not None)

    def _each(self, frame: bytes) -> None:
        for leg in self.legs:
            self._receiver(leg).send(leg.session.send, frame)

    # ---- the end ------------------------------------------------------------------------

    def finish(self, end: dict) -> list[dict]:
        """END to every helper; once every one has said PREPARED, COMMIT to every one; their
        RESULTs, in the order of the legs. The first helper to fail raises its error, and no
        COMMIT goes anywhere."""
        for leg in self.legs:
            self._receiver(leg).send(leg.session.send_json, END, end)
        waiting = list(self.legs)
        while waiting:
            self.check()  # a helper that failed ends the wait for the others at once
            waiting = [leg for leg in waiting if not self._receiver(leg).wait_prepared(0.2)]
        for leg in self.legs:
            self._receiver(leg).send(leg.session.send_json, COMMIT, {})
        for leg in self.legs:
            leg.result = self._receiver(leg).wait()
        return [leg.result for leg in self.legs]

    def culprit(self, error: BaseException) -> Optional[Leg]:
        """The leg whose helper raised `error`, or else the first whose helper failed."""
        failed = [leg for leg in self.legs if leg.receiver is not None and leg.receiver.failed]
        for leg in failed:
            if leg.receiver is not None and leg.receiver.error is error:
                return leg
        return failed[0] if failed else None

    def target_ready(self) -> bool:
        """Whether the target's helper opened it (and may have written into it)."""
        return any(leg.role == TARGET and leg.receiver is not None and leg.receiver.ready
                   for leg in self.legs)

    def close(self) -> None:
        """Close every helper's channel: one that has not had its COMMIT discards its saveset."""
        errors: list[BaseException] = []
        for leg in self.legs:
            try:
                leg.session.close()
            except BaseException as e:  # the others are closed all the same
                errors.append(e)
        if errors:
            raise errors[0]

