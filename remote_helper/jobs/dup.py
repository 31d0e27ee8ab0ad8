"""The dup job (a backup is a dup with no target path): the stream of blocks written into the
target and the saveset, and proven by its digests or frame by frame.
"""
import os
import sys
import time
from typing import TYPE_CHECKING, Dict, List, Optional  # for the type comments

from ..errors import ClientGone, IntegrityError, ProtocolError
from ..saveset.digestcache import CacheRun
from ..saveset.output import open_output
from ..target import devices, imagedigest
from ..target.delta import TargetSegments
from ..target import checks
from ..target.target import NullTarget, check_target, open_target
from ..target.writer import ImageWriter
from ..wire import codecs, protocol, zstdframe
from ..wire.zstdframe import require_zstd
from ..wire.protocol import (ASK, COMMIT, COPY, DATA, END, ERROR, HOLE, MATCH, PREPARED,
                             PROGRESS, READY, RESULT)

if TYPE_CHECKING:  # for the type comments only: the server imports this module
    from .server import Input, Output  # noqa: F401
    from ..target.target import Target
    from ..target.writer import AnyTarget, Record, Saveset, Segments

VERIFY_CHUNK = 4 << 20
# How the helper proves what it received (the job's "check"): "sha256" hashes the whole stream
# and compares its digests with END's; "frames" requires every DATA frame to be one zstd frame
# carrying its content checksum, which decompression verifies, so the bytes are proven frame by
# frame and holes need no hashing. A restore must prove its saveset's trailer, so it asks for
# sha256. Which digests are hashed (the stream, the --verify re-read) is the job's "hash":
# imagedigest's names, the plain sha256 alone when the client does not say (a restore).
CHECKS = ("sha256", "frames")


def run_dup(job, inp, out):
    # type: (dict, Input, Output) -> None
    """Check and open the target and the saveset, write the stream into them, prove it.

    A backup is a dup with no target path: only the saveset is written. A delta run keeps the
    target's content and first sends the digests of its blocks (see delta.py).
    """
    size = int(job["size"])
    delta = job.get("delta")
    if delta:
        two_levels(delta)  # refused before anything is opened
    if job.get("check", "sha256") not in CHECKS:
        raise ProtocolError("unknown check %r" % (job.get("check"),))
    if any(name not in imagedigest.DIGESTS for name in hashes(job)):
        raise ProtocolError("unknown digest in %r" % (job.get("hash"),))
    # The client may have sent this OPEN, and the stream behind it, before it read our HELLO:
    # frames this host cannot decompress are refused before anything is opened.
    codec = job.get("codec")
    if codec is not None and codec not in codecs.available():
        raise ProtocolError("the stream is in %s, which this host cannot decompress (it has %s)"
                            % (codec, ", ".join(codecs.available())))
    # The saveset first: a saveset that cannot be written refuses the job before the target
    # is opened, let alone truncated.
    path = None if job.get("path") is None else os.path.expanduser(job["path"])
    source = job.get("source") or {}
    if job.get("dry_run"):
        out.send_json(READY, dry_run(job, path, source))
        return
    saveset = open_output(job.get("saveset"), path, source)
    target = None  # type: Optional[AnyTarget]
    segments = None  # type: Optional[TargetSegments]
    writer = None  # type: Optional[ImageWriter]
    cache = None  # type: Optional[CacheRun]
    try:
        if path is None:
            target = NullTarget(size)
        else:
            target = open_target(path, size, bool(job.get("force")), source, keep=bool(delta))
            # before the first byte is written: a run cut short leaves no cache
            cache = CacheRun(path, target.fd, size, delta, bool(delta and delta.get("trust")))
        out.send_json(READY, {"kind": "block" if target.is_block else "file",
                              "created": target.created,
                              "saveset": saveset.path if saveset else None})
        if delta:
            # the client asks for a delta only with a target path: target is a Target
            segments = TargetSegments(target,  # type: ignore[arg-type]
                                      int(delta["block"]), int(delta["segment"]),
                                      out.send, out.fail,
                                      cache.cached if cache is not None else None,
                                      two_levels(delta))
            if cache is not None and cache.record is not None:
                cache.record.segments = segments
        writer = image_writer(job, inp, out, target, saveset, segments,
                              cache.record if cache is not None else None)
        out.send_json(RESULT, with_cache(write_image(job, inp, out, writer, target, saveset,
                                                     segments), cache, segments, target))
    except ClientGone:
        raise
    except Exception as e:
        out.fail(e)  # now: stopping the writer below may take a while
        raise
    finally:
        # The writer first (it may wait for a segment of the target's), and both joined
        # before the files they write and read are closed. A thread that will not stop keeps
        # them open until the helper exits, at once: closed under it, their descriptors could
        # be reused, and it would write into another file.
        stopped = writer is None or writer.abandon()
        stopped = (segments is None or segments.stop()) and stopped
        if stopped:
            if cache is not None:
                cache.close()
            close_outputs(target, saveset)
        else:
            sys.stderr.write("bacpac helper: a thread did not stop in time; the target and "
                             "the saveset stay open until the helper exits\n")


def two_levels(delta):
    # type: (dict) -> bool
    """Whether the delta's DIGESTS carry piece digests, and the client ASKs for the blocks of
    those that differ (`pieces` and `ask`, docs/wire.md): only with blocks that divide the
    image digest's piece, in segments that it divides."""
    pieces = int(delta.get("pieces") or 0)
    if not pieces:
        return False
    block, segment = int(delta["block"]), int(delta["segment"])
    if pieces != imagedigest.PIECE or block >= pieces or pieces % block or segment % pieces:
        raise ProtocolError("delta pieces of %d bytes with blocks of %d in segments of %d"
                            % (pieces, block, segment))
    if delta.get("ask") is not True:
        raise ProtocolError("delta pieces without ask: this helper sends a piece's blocks "
                            "only when asked")
    return True


def dry_run(job, path, source):
    # type: (dict, Optional[str], dict) -> dict
    """Every check of the target and the saveset, nothing written: what each would be."""
    spec = job.get("saveset")
    if spec:
        require_zstd()
        checks.check_saveset(checks.absolute(os.path.expanduser(spec["path"])), path, source)
    kind = None
    if path is not None:
        kind = check_target(path, int(job["size"]), bool(job.get("force")), source)
    return {"dry_run": True, "kind": kind, "saveset": spec["path"] if spec else None}


def close_outputs(target, saveset):
    # type: (Optional[AnyTarget], Saveset) -> None
    if target is not None:
        target.close()
    if saveset is not None:
        saveset.discard()  # harmless after commit: only a temporary file is ever removed


def hashes(job):
    # type: (dict) -> List[str]
    """The digests the job asks for, by imagedigest's names."""
    return list(job.get("hash") or [imagedigest.PLAIN])


def key(name):
    # type: (str) -> str
    """The key a digest has in END and RESULT (the re-read's: "verify_" + it)."""
    return imagedigest.KEYS[name]


def with_cache(result, cache, segments, target):
    # type: (dict, Optional[CacheRun], Optional[TargetSegments], AnyTarget) -> dict
    """The run's RESULT, once its digest cache is kept (or not), with what the helper read."""
    source = result.pop("end_digests")  # type: Dict[str, str]
    if cache is not None and segments is not None:
        # a --verify that found the target differing proves the run wrong: no cache
        proven = all(result.get("verify_" + name, value) == value
                     for name, value in source.items())
        result.update(cache.commit(target.fd, proven))  # type: ignore[union-attr]
    if segments is not None:
        result.update(target_read=segments.read_bytes, io_read_bytes=devices.io_read_bytes())
    if cache is not None and cache.warnings:
        result["warnings"] = cache.warnings
    return result


def image_writer(job, inp, out, target, saveset, segments, record=None):
    # type: (dict, Input, Output, AnyTarget, Saveset, Segments, Record) -> ImageWriter
    """The thread that writes the image, reporting PROGRESS as it goes."""
    last = [time.monotonic(), inp.idle]  # when the previous PROGRESS went, and idle by then

    def progress(written):
        # type: (int) -> None
        """Bytes written, and the share of the time since the last PROGRESS spent waiting for
        input: measured here, so the client's pacing never reads a stale or skewed figure."""
        now, idle = time.monotonic(), inp.idle
        share = (idle - last[1]) / max(now - last[0], 1e-6)
        last[:] = [now, idle]
        out.send_json(PROGRESS, {"written": written, "idle": round(min(share, 1.0), 3)})

    hashed = hashes(job) if job.get("check", "sha256") == "sha256" else []
    return ImageWriter(target, progress, out.fail, saveset, segments, hashes=hashed,
                       record=record)


def write_image(job, inp, out, writer, target, saveset, segments=None):
    # type: (dict, Input, Output, ImageWriter, AnyTarget, Saveset, Optional[TargetSegments]) -> dict
    """Receive the image into the writer, prove it, and finish the target and the saveset."""
    check = job.get("check", "sha256")
    end = receive_image(inp, writer, target, check == "frames", segments)
    written, digests = writer.drain()
    where = target.path or (saveset.path if saveset else "stream")
    # The source's digests, for the comparisons here and the client's, the saveset's trailer
    # (the plain sha256 and the image digest) and --verify.
    wanted = sorted(set(hashes(job)) | (set(imagedigest.DIGESTS) if saveset is not None
                                        else set()))
    source = dict((key(name), end.get(key(name))) for name in wanted)
    for name, value in source.items():
        if not _is_sha256(value):
            raise ProtocolError("END carries no %s of the source: %r" % (name, value))
    result = {"bytes_written": written, "check": check, "end_digests": source}
    for name, value in digests.items():  # check sha256: the stream, hashed as it was written
        if value != source[key(name)]:
            raise IntegrityError("%s: %s of what was written (%s) differs from the source's (%s)"
                                 % (where, key(name), value, source[key(name)]))
        result[key(name)] = value
    sha256, digest = source.get("sha256"), source.get("digest")
    writer.finish()  # the head last, once the image is proven: else the target will not mount
    if job.get("verify") and target.path is not None:
        for name, value in reread(target, hashes(job)).items():
            result["verify_" + key(name)] = value
    if job.get("confirm"):  # a fan-out: no final name before every host has got this far
        if saveset is not None:
            saveset.prepare(sha256, written, digest)  # type: ignore[arg-type]
        out.send_json(PREPARED, result)
        await_commit(inp)
    if saveset is not None:
        # sha256 and digest are not None here: END's, required above for a saveset
        saveset.commit(sha256, written, digest)  # type: ignore[arg-type]
        result["saveset"] = saveset.path
    return result


def await_commit(inp):
    # type: (Input) -> None
    """The client's COMMIT, once every host of a fan-out has prepared. Its ERROR, or the end
    of input, means another host failed: ClientGone, and the saveset is discarded."""
    frame = inp.next()
    if frame.type == ERROR:
        raise ClientGone()
    if frame.type != COMMIT:
        raise ProtocolError("expected COMMIT, got %s" % protocol.type_name(frame.type))


def _is_sha256(value):
    # type: (object) -> bool
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def receive_image(inp, writer, target, checked_frames=False, segments=None):
    # type: (Input, ImageWriter, AnyTarget, bool, Optional[TargetSegments]) -> dict
    """DATA, HOLE, MATCH and COPY frames, contiguous and in order, up to END; returns END's
    payload. In a two-level delta run, the client's ASKs between them are answered here.

    With checked_frames, a DATA frame must be exactly one zstd frame with a content checksum.
    """
    decompressor = codecs.Decompressor()
    expected = 0
    whole = False  # finished before END: every byte came, in frames proven one by one
    while True:
        frame = inp.next()
        if frame.type in (DATA, HOLE, MATCH, COPY):
            if whole:
                raise ProtocolError("%s frame after the last byte of the image"
                                    % protocol.type_name(frame.type))
            if frame.offset != expected or frame.offset + frame.size > target.size:
                raise ProtocolError("block at offset %d of %d bytes: expected offset %d within %d"
                                    % (frame.offset, frame.size, expected, target.size))
            if frame.type == DATA:
                if checked_frames:
                    _require_checksum(frame)
                data = decompressor.decompress(frame.flags, frame.payload, frame.size)
                writer.put_data(frame.offset, data, frame.payload)
            elif frame.type == HOLE:
                writer.put_hole(frame.offset, frame.size)
            elif frame.type == COPY:
                if not target.readable:
                    raise ProtocolError("COPY frame with no target disk to copy from")
                writer.put_copy(frame.offset, frame.size, *protocol.parse_copy(frame))
            elif writer.delta:
                writer.put_match(frame.offset, frame.size)
            else:
                raise ProtocolError("MATCH frame outside a delta run")
            expected += frame.size
            if checked_frames and expected == target.size:
                # Every byte is here, each frame proven by its own checksum: the image is
                # whole. Its fsync (a second on a fast disk) runs while the client finishes
                # hashing a trailing hole, instead of after its END.
                writer.finish()
                whole = True
        elif frame.type == ASK and segments is not None:
            segments.answer(frame.offset, bytes(frame.payload))
        elif frame.type == END:
            end = frame.json()
            if expected != target.size or end.get("bytes") != target.size:
                raise IntegrityError("stream ended at byte %d of %d" % (expected, target.size))
            return end
        elif frame.type == ERROR:
            raise ClientGone()
        else:
            raise ProtocolError("unexpected %s frame" % protocol.type_name(frame.type))


def _require_checksum(frame):
    # type: (protocol.Frame) -> None
    if frame.flags != protocol.CODEC_ZSTD:
        raise ProtocolError("block at offset %d: codec %d where a checked zstd frame was expected"
                            % (frame.offset, frame.flags))
    zstdframe.check_single_frame(frame.payload)
    if not zstdframe.frame_has_checksum(frame.payload):
        raise ProtocolError("block at offset %d: zstd frame without its content checksum"
                            % frame.offset)


def reread(target, names):
    # type: (Target, List[str]) -> Dict[str, str]
    """Read the target back from the disk, not the page cache, and hash it (--verify): each
    digest of `names`, in one pass (the image digest's zero pieces by a memcmp)."""
    devices.drop_cache(target.fd)
    digests = [imagedigest.DIGESTS[name]() for name in names]
    for offset in range(0, target.size, VERIFY_CHUNK):
        data = memoryview(target.read_back(offset, min(VERIFY_CHUNK, target.size - offset)))
        for digest in digests:
            digest.update(data)
    return dict((digest.algorithm, digest.hexdigest()) for digest in digests)
