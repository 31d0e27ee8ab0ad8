"""The two ends of `bacpac copy`: read_tree walks the sources, write_tree writes DEST.

# Strategy: one exchange for the whole tree, streamed, with no round trip per file. The
# reading side sends the manifest (every entry, in windows of a few thousand, zlib JSON); the
# writing side compares each entry with what DEST holds (rsync's quick check: kind, size,
# mtime), makes directories and fixes metadata at once, and answers each window with the
# indices whose content it wants (WANTS). The reading side sends window k+1's manifest before it
# waits for window k's WANTS, so the manifest of the next window crosses while the content of
# this one flows, and neither end ever waits a round trip. Content travels as one pax tar
# stream (tree/tar.py's codec) of the wanted files only, cut into zstd DATA frames of ~4 MiB
# whose `offset` is the tar stream's; END carries its byte count and sha256, which the writer
# checks. Links, symlinks and nodes of a window are made once the window's content is in
# (a hard link's target must exist first). The client relays frames between the two helpers,
# which may be the same machine's local subprocesses, so the same code runs push, pull and
# local copies.
"""
import errno
import functools
import hashlib
import os
import queue
import stat
import threading
import time
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple  # for the type comments

from ..errors import HelperError, IntegrityError, ProtocolError, Refused
from ..target import devices
from ..target.checks import absolute, require_directory
from ..tree import delta, manifest, tar
from ..tree.exclude import Excludes
from ..tree import prefetch
from ..tree.prefetch import Prefetcher
from ..tree.tardecode import TarDecoder
from ..tree.tarstream import TarStream
from ..tree.writer import CONTENT, META, SAME, TreeWriter
from ..saveset.treeset import TreeSavesetOutput
from ..tree.entry import DIR, FILE, HARDLINK, ROOT, Entry
from ..tree.walk import WalkError, Walker
from ..wire import codecs, protocol, zstdframe
from ..wire.protocol import BLOCKS, DATA, END, MANIFEST, PROGRESS, READY, RESULT, WANTS
from .unpacker import Unpacker

if TYPE_CHECKING:  # server.py imports this module
    from .server import Input, Output

FRAME_BYTES = 4 << 20  # tar bytes per DATA frame
READ_CHUNK = 1 << 20
# A file to send: O_NONBLOCK, so that one replaced by a FIFO since the walk fails its read
# rather than hangs the copy in its open (the read-ahead's descriptors are opened so too).
READ_FLAGS = prefetch.FLAGS
JOIN_WITHIN = 30  # seconds: a thread of the reader ends within this once told to
PROGRESS_EVERY = 0.5  # seconds between the writer's PROGRESS frames
MAX_LISTED = 10000  # paths a dry run lists by name
MAX_FAILED = 100  # files not copied, listed by name


def _excludes(job):
    # type: (dict) -> Any
    patterns = job.get("excludes") or []
    if not patterns:
        return None
    return Excludes([str(p) for p in patterns])


def _show(path):
    # type: (bytes) -> str
    return path.decode("utf-8", "replace")


# --- the reading side -------------------------------------------------------------------

def root_facts(path):
    # type: (str) -> dict
    """What the writer needs of a source root: its kind, name, and identity (same-host checks)."""
    disk = os.fsencode(path)
    try:
        st = os.stat(disk) if disk.endswith(b"/") else os.lstat(disk)
    except OSError as e:
        raise Refused("%s: %s" % (path, e.strerror or e), e.errno or 0)
    kind = "d" if stat.S_ISDIR(st.st_mode) else "f"
    name = os.path.basename(disk.rstrip(b"/")) or b"."
    return {"path": path, "kind": kind, "contents": path.endswith("/") or path == ".",
            "name": name.decode("latin-1"), "real": os.path.realpath(path)}


def run_read_tree(job, inp, out):
    # type: (dict, Input, Output) -> None
    """Walk the sources; send the manifest, then the content the writer asks for, then END."""
    paths = [str(p) for p in job["roots"]]
    facts = [root_facts(p) for p in paths]
    level = int(job.get("level") or 3)
    dry_run = bool(job.get("dry_run"))
    codec = protocol.CODEC_ZSTD if zstdframe.backend() else protocol.CODEC_ZLIB
    out.send_json(READY, {"roots": facts, "boot_id": devices.boot_id()})
    go = inp.next()
    if go.type != READY:
        raise ProtocolError("expected READY to start the walk, got %s"
                            % protocol.type_name(go.type))
    started = go.json()
    names = [str(n).encode("latin-1") for n in started.get("names", [])]
    if len(names) != len(paths):
        raise ProtocolError("READY names %d roots, the job has %d" % (len(names), len(paths)))
    level = int(started.get("level") or level)  # the client's choice, once it knows the route
    walker = Walker(bool(job.get("one_file_system")), _excludes(job), bool(job.get("xattrs")))
    roots = [(os.fsencode(p), n) for p, n in zip(paths, names)]
    sender = _ContentSender(out, codec, level)
    entries = 0
    waiting = deque()  # type: Deque[Tuple[int, List[Tuple[bytes, Entry]]]]
    inbox = _Inbox(inp)
    digest_of = _file_digest if job.get("checksum") else None
    walk = _Ahead(manifest.windows(walker.walk(roots), digest_of), "tree-walk")
    try:
        for batch, payload in walk:
            out.send(protocol.encode(MANIFEST, payload, entries, 0, len(batch)))
            waiting.append((entries, batch))
            entries += len(batch)
            if len(waiting) > 1:  # window k+1 is on its way: now take k's wants
                _send_wanted(inbox, waiting.popleft(), sender, dry_run)
        while waiting:
            _send_wanted(inbox, waiting.popleft(), sender, dry_run)
        total, sha256 = sender.finish()
    except WalkError as e:
        raise HelperError(str(e), e.errno)
    finally:
        walk.close()
        sender.close()
        inbox.close()
    out.send_json(END, {"bytes": total, "sha256": sha256, "entries": entries,
                        "files_sent": sender.files, "content": sender.content, "level": level,
                        "delta_files": sender.delta_files, "failed": sender.failed[:MAX_FAILED],
                        "failed_count": len(sender.failed),
                        "problems": walker.problems[:20], "problem_count": len(walker.problems)})


class _Ahead(object):
    """The manifest's windows made on a thread of their own, at most DEPTH ahead: the walk
    (lstat, listdir: with a cold cache, a disk read an inode) goes on while the main thread
    reads and sends the content of the windows before, instead of between them. The walk's
    error is raised where its window would have been taken."""

    DEPTH = 2

    def __init__(self, windows, name):
        # type: (Any, str) -> None
        self._windows = windows
        self._queue = queue.Queue(self.DEPTH)  # type: queue.Queue
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        # type: () -> None
        try:
            for window in self._windows:
                if not self._put((True, window)):
                    return
            self._put((False, None))
        except BaseException as e:
            self._put((False, e))

    def _put(self, item):
        # type: (tuple) -> bool
        while not self._stop:
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        # type: () -> Any
        while True:
            try:
                more, window = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                raise HelperError("the walk ended without a word")
            if not more:
                if window is not None:
                    raise window
                return
            yield window

    def close(self):
        # type: () -> None
        """Stop the walk (after a failure elsewhere) within a deadline."""
        self._stop = True
        self._thread.join(JOIN_WITHIN)


def _send_wanted(inbox, window, sender, dry_run):
    # type: (_Inbox, Tuple[int, List[Tuple[bytes, Entry]]], _ContentSender, bool) -> None
    first, batch = window
    wants = inbox.wants()
    wanted = wants.get("want", [])
    deltas = set(wants.get("delta", []))
    for index in wanted:
        if type(index) is not int or not 0 <= index < len(batch) or batch[index][1].kind != FILE:
            raise ProtocolError("WANTS names entry %r, which is no file of its window" % (index,))
    if dry_run:
        return
    sender.prefetch.add([(batch[i][0], batch[i][1].size) for i in wanted])
    for index in wanted:
        theirs = functools.partial(inbox.blocks, first + index) if index in deltas else None
        sender.add(batch[index][0], batch[index][1], theirs)


class _Inbox(object):
    """The reading side's input on a thread of its own: WANTS, and the BLOCKS of old files,
    taken as they come, so the writer's digests never wait on a reader busy sending content
    (which would wait on the writer in turn)."""

    def __init__(self, inp):
        # type: (Input) -> None
        self._inp = inp
        self._frames = queue.Queue()  # type: queue.Queue
        self._wants = deque()  # type: Deque[dict]
        self._blocks = {}  # type: Dict[int, List[bytes]]
        self._sizes = {}  # type: Dict[int, int]
        self._done = set()  # type: set
        self.error = None  # type: Optional[BaseException]
        self._thread = threading.Thread(target=self._run, name="tree-inbox")
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        # type: () -> None
        try:
            while True:
                frame = self._inp.next()
                if frame.type not in (WANTS, BLOCKS):
                    raise ProtocolError("expected WANTS or BLOCKS, got %s"
                                        % protocol.type_name(frame.type))
                self._frames.put(frame)
        except BaseException as e:
            self.error = e
            self._frames.put(None)

    def _take(self):
        # type: () -> None
        """One more frame into the stash; the input's error once it has ended."""
        while True:
            try:
                frame = self._frames.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._frames.empty():
                    frame = None
                    break
        if frame is None:
            self._frames.put(None)
            raise self.error or ProtocolError("the input ended")
        if frame.type == WANTS:
            self._wants.append(frame.json())
            return
        try:
            first, digests = delta.parse_blocks(frame.payload)
        except ValueError as e:
            raise ProtocolError("bad BLOCKS: %s" % e)
        held = self._blocks.setdefault(frame.offset, [])
        if first != sum(len(d) for d in held) // delta.DIGEST:
            raise ProtocolError("BLOCKS for entry %d out of order" % frame.offset)
        held.append(digests)
        if first + len(digests) // delta.DIGEST >= delta.block_count(frame.size):
            self._done.add(frame.offset)

    def wants(self):
        # type: () -> dict
        while not self._wants:
            self._take()
        return self._wants.popleft()

    def blocks(self, index):
        # type: (int) -> bytes
        """The old file's block digests of the copy's entry `index`, once all have come."""
        while index not in self._done:
            self._take()
        self._done.discard(index)
        return b"".join(self._blocks.pop(index))

    def close(self):
        # type: () -> None
        """The thread reads until the input ends (the client closes it after RESULT)."""
        self._thread.join(0.0)


def _file_digest(disk, item):
    # type: (bytes, Entry) -> Optional[str]
    """A FILE's sha256 for --checksum (None for anything else, or a file gone since)."""
    if item.kind != FILE:
        return None
    try:
        fd = os.open(disk, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


def _sha256_fd(fd):
    # type: (int) -> str
    sha = hashlib.sha256()
    while True:
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            return sha.hexdigest()
        sha.update(chunk)


class _ContentSender(object):
    """The tar stream of the wanted files, cut into compressed DATA frames of FRAME_BYTES."""

    def __init__(self, out, codec, level):
        # type: (Output, int, int) -> None
        self._pieces = []  # type: List[bytes]  # the next frame's, joined once (one copy)
        self._held = 0
        self._compressor = _Compressor(out, codec, level)
        self.prefetch = Prefetcher()  # the disk reads the next files while this one is sent
        self.files = 0
        self.content = 0  # bytes of file content sent (holes excluded)
        self.delta_files = 0
        self.failed = []  # type: List[List[str]]  # [path, cause] of files that could not be read

    def add(self, disk, item, theirs=None):
        # type: (bytes, Entry, Optional[Callable[[], bytes]]) -> None
        """The file's member; with `theirs` (the old file's block digests) its changed blocks
        only; a file that cannot be opened becomes a member that says why (delta.py)."""
        fd = self.prefetch.take(item.size)
        try:
            if fd is None:
                fd = os.open(disk, READ_FLAGS)
        except OSError as e:
            cause = "cannot read: %s" % (e.strerror or e)
            self.failed.append([_show(disk), cause])
            if theirs is not None:
                theirs()  # the old file's digests, taken so that they are not kept
            self._put(tar.encode_header(delta.failed_entry(item, cause)))
            return
        try:
            if theirs is not None:
                item = delta.delta_entry(fd, item, theirs)
                self.delta_files += item.xattrs != ()
            self._member(fd, item)
        finally:
            os.close(fd)
        self.files += 1

    def _member(self, fd, item):
        # type: (int, Entry) -> None
        self._put(tar.encode_header(item))
        size = tar.member_data_size(item)
        written = 0
        if item.extents is not None:
            head = tar.sparse_map(item)
            self._put(head)
            written += len(head)
            spans = [e for e in item.extents if e[1]]
        else:
            spans = [(0, item.size)] if item.size else []
        for start, length in spans:
            pos = start
            end = start + length
            while pos < end:
                chunk = os.pread(fd, min(READ_CHUNK, end - pos), pos)
                if not chunk:  # the file shrank since the walk: zeros keep the stream whole
                    chunk = b"\0" * min(READ_CHUNK, end - pos)
                self._put(chunk)
                pos += len(chunk)
                written += len(chunk)
                self.content += len(chunk)
        if written != size:
            raise HelperError("%s: tar member of %d bytes, %d announced"
                              % (_show(item.path), written, size))
        self._put(tar.padding(size))

    def _put(self, data):
        # type: (bytes) -> None
        self._pieces.append(data)
        self._held += len(data)
        if self._held >= FRAME_BYTES:
            self._flush()

    def _flush(self):
        # type: () -> None
        if self._held:
            data = b"".join(self._pieces)
            self._pieces = []
            self._held = 0
            self._compressor.put(data)

    def finish(self):
        # type: () -> tuple
        if self.files:
            self._put(tar.END_OF_ARCHIVE)
        self._flush()
        return self._compressor.finish()

    def close(self):
        # type: () -> None
        self.prefetch.close()
        self._compressor.close()


class _Compressor(object):
    """A thread that hashes, compresses and sends the tar stream's frames, so that reading the
    files (pread) and compressing them (zstandard) overlap: both release the GIL. At most
    QUEUED frames wait for it; a failure in it is raised by the next put()."""

    QUEUED = 2

    def __init__(self, out, codec, level):
        # type: (Output, int, int) -> None
        self._out = out
        self._codec = codec
        self._level = level
        self._queue = queue.Queue(self.QUEUED)  # type: queue.Queue
        self._sha = hashlib.sha256()
        self._offset = 0
        self._stop = False
        self.error = None  # type: Optional[BaseException]
        self._thread = threading.Thread(target=self._run, name="compressor")
        self._thread.daemon = True
        self._thread.start()

    def put(self, data):
        # type: (Optional[bytes]) -> None
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(data, timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self):
        # type: () -> None
        try:
            while not self._stop:
                try:
                    data = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if data is None:
                    return
                self._send(data)
        except BaseException as e:
            self.error = e

    def _send(self, data):
        # type: (bytes) -> None
        self._sha.update(data)
        if self._codec == protocol.CODEC_ZSTD:
            payload = zstdframe.compress_frame(data, self._level)
        else:
            payload = zlib.compress(data, 6)
        self._out.send(protocol.header(DATA, payload, self._offset, self._codec, len(data)))
        self._out.send(payload)
        self._offset += len(data)

    def finish(self):
        # type: () -> tuple
        """The tar stream's length and sha256, once every frame is sent."""
        self.put(None)
        self._thread.join(JOIN_WITHIN)
        if self._thread.is_alive():
            raise HelperError("the compressing thread did not end within %d s" % JOIN_WITHIN)
        if self.error is not None:
            raise self.error
        return self._offset, self._sha.hexdigest()

    def close(self):
        # type: () -> None
        """Stop the thread (after a failure elsewhere), within a deadline."""
        self._stop = True
        self._thread.join(JOIN_WITHIN)


# --- the writing side -------------------------------------------------------------------

def layout(dest, roots):
    # type: (str, List[dict]) -> tuple
    """(top directory, make it, name of each root under it), by scp's and rsync's rules: into
    DEST when it is a directory (a root ending in "/" gives its contents), a single root becomes
    DEST otherwise; several roots make DEST a directory. Refused: DEST a device or other node,
    an existing non-directory DEST that a directory or several roots would go into."""
    try:
        st = os.stat(dest)  # a DEST that is a symlink to a directory is that directory
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise Refused("%s: %s" % (dest, e.strerror), e.errno or 0)
        st = None
    single_file = len(roots) == 1 and roots[0]["kind"] != "d"
    if st is not None and stat.S_ISDIR(st.st_mode):
        return dest, False, [ROOT if r["contents"] else r["name"].encode("latin-1")
                             for r in roots]
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise Refused("%s: is not a directory nor a regular file: refusing to replace it"
                      % dest)
    if st is not None and not single_file:
        raise Refused("%s: is not a directory" % dest, errno.ENOTDIR)
    parent = os.path.dirname(dest.rstrip("/")) or "."
    if not os.path.isdir(parent):
        raise Refused("%s: No such file or directory (the directory %s does not exist)"
                      % (dest, parent), errno.ENOENT)
    if single_file:
        if dest.endswith("/"):
            raise Refused("%s: No such directory for the file to go into" % dest, errno.ENOENT)
        return parent, False, [os.fsencode(os.path.basename(dest))]
    if len(roots) == 1:
        return dest, True, [ROOT]
    return dest, True, [ROOT if r["contents"] else r["name"].encode("latin-1") for r in roots]


def refuse_overlap(dest, source):
    # type: (str, dict) -> None
    """On the sources' own host: DEST inside a source, or a source inside DEST, is refused."""
    if source.get("boot_id") != devices.boot_id():
        return
    here = os.path.realpath(dest)
    for root in source.get("roots", []):
        real = str(root.get("real", ""))
        if not real:
            continue
        if here == real or here.startswith(real.rstrip("/") + "/"):
            raise Refused("%s: DEST lies inside the source %s" % (dest, root.get("path")))
        if real.startswith(here.rstrip("/") + "/"):
            raise Refused("%s: the source %s lies inside DEST" % (dest, root.get("path")))


SAVESET_FRAME = 4 << 20


def _open_saveset(spec, top, dry_run):
    # type: (Optional[dict], str, bool) -> Optional[TreeSavesetOutput]
    """The tree saveset, under its temporary name, checked before the first byte: not inside
    DEST (the copy would hold it, --delete remove it), its directory present."""
    if not spec:
        return None
    if dry_run:
        raise Refused("--saveset: not with --dry-run, which writes nothing")
    path = absolute(os.path.expanduser(str(spec["path"])))
    real_top = os.path.realpath(top)
    if os.path.realpath(os.path.dirname(path)).startswith(real_top.rstrip("/") + "/") or \
            os.path.realpath(os.path.dirname(path)) == real_top:
        raise Refused("%s: the saveset would be inside DEST %s" % (path, top))
    require_directory(path)
    return TreeSavesetOutput(path, dict(spec.get("metadata") or {}), SAVESET_FRAME,
                             int(spec.get("level") or 3))


class _Window(object):
    __slots__ = ("entries", "left", "deferred")

    def __init__(self):
        # type: () -> None
        self.entries = []  # type: List[Entry]
        self.left = 0  # wanted files whose content has not come yet
        self.deferred = []  # type: List[Entry]


def run_write_tree(job, inp, out):
    # type: (dict, Input, Output) -> None
    """Compare the manifest with DEST, ask for what differs, write it; RESULT with counts."""
    dest = absolute(str(job["dest"]))
    roots = list(job["roots"])
    dry_run = bool(job.get("dry_run"))
    refuse_overlap(dest, job.get("source") or {})
    top, _, names = layout(dest, roots)  # TreeWriter makes a missing top
    would_delete = []  # type: List[str]

    def on_delete(path, kind):
        # type: (bytes, str) -> None
        if len(would_delete) < MAX_LISTED:
            would_delete.append(path.decode("latin-1"))

    saveset = _open_saveset(job.get("saveset"), top, dry_run)
    try:
        writer = TreeWriter(os.fsencode(top), os.geteuid() == 0,
                            bool(job.get("xattrs")), bool(job.get("delete")),
                            _excludes(job), dry_run, on_delete=on_delete)
    except BaseException:
        if saveset is not None:
            saveset.discard()
        raise
    try:
        out.send_json(READY, {"names": [n.decode("latin-1") for n in names], "top": top})
        receiver = _TreeReceiver(writer, out, dry_run, bool(job.get("checksum")), saveset,
                                 not job.get("whole_file"))
        result = receiver.run(inp)
        if dry_run:
            result["would_delete"] = would_delete
        if saveset is not None:
            result["saveset"] = saveset.commit({"files": result["files_total"]})
            saveset = None
    except BaseException:
        if saveset is not None:
            saveset.discard()
        raise
    finally:
        writer.close()
    out.send_json(RESULT, result)


class _TreeReceiver(object):
    """The writing side's main loop: manifest windows in, WANTS out, tar content into sinks."""

    def __init__(self, writer, out, dry_run, checksum=False, saveset=None, deltas=False):
        # type: (TreeWriter, Output, bool, bool, Optional[TreeSavesetOutput], bool) -> None
        self._writer = writer
        self._bases = None  # type: Optional[delta.BaseDigests]  # made for the first delta
        self._deltas = deltas and not dry_run
        self._member = None  # type: Optional[Entry]  # the tar member of the current file
        self._old = None  # type: Optional[Tuple[str, bytes]]  # a delta's check, old digests
        self._not_copied = set()  # type: set  # paths of files not copied, and links to them
        self.failed = []  # type: List[List[str]]  # [path, cause] of files not copied here
        self._checksum = checksum
        self._saveset = saveset
        self._tar_out = TarStream(self._old_file) if saveset is not None else None
        self._out = out
        self._dry = dry_run
        self._windows = deque()  # type: Deque[_Window]
        self._expected = deque()  # type: Deque[tuple]  # (window, entry) of each wanted file
        self._decoder = TarDecoder()
        self._unpacker = Unpacker()  # decompresses frame k+1 while frame k is written
        self._offset = 0
        self._sink = None  # type: Any
        self._current = None  # type: Optional[tuple]
        self._got = 0
        self._last_progress = time.monotonic()
        self.counts = {"files_total": 0, "files_sent": 0, "files_unchanged": 0,
                       "files_meta": 0, "entries": 0, "bytes_total": 0, "bytes_sent": 0,
                       "stream_bytes": 0, "files_failed": 0, "delta_files": 0,
                       "delta_reused": 0}
        self.would_send = []  # type: List[str]

    def run(self, inp):
        # type: (Input) -> dict
        try:
            while True:
                frame = inp.next()
                if frame.type == MANIFEST:
                    self._manifest(frame)
                elif frame.type == DATA:
                    self._data(frame)
                elif frame.type == END:
                    self._decode(self._unpacker.drain())
                    return self._end(frame.json())
                else:
                    raise ProtocolError("unexpected %s in a tree copy"
                                        % protocol.type_name(frame.type))
        except BaseException:
            if self._sink is not None:
                self._sink.abort()
                self._sink = None
            raise
        finally:
            if self._bases is not None:
                self._bases.close()
            self._unpacker.close()

    def _manifest(self, frame):
        # type: (protocol.Frame) -> None
        window = _Window()
        window.entries, digests = manifest.decode_window_digests(frame.payload)
        want = []
        deltas = []
        to_send = 0  # bytes of content the wanted files hold: the client's progress total
        counts = self.counts
        for index, item in enumerate(window.entries):
            counts["entries"] += 1
            if item.kind == DIR:
                if self._writer.compare(item) != SAME:
                    self._writer.update(item)
                continue
            if item.kind != FILE:
                window.deferred.append(item)
                continue
            counts["files_total"] += 1
            counts["bytes_total"] += item.size
            verdict = self._writer.compare(item)
            if verdict != CONTENT and self._checksum and not self._same_digest(item,
                                                                               digests[index]):
                verdict = CONTENT
            if verdict == SAME:
                counts["files_unchanged"] += 1
            elif verdict == META:
                counts["files_meta"] += 1
                self._writer.update(item)
            else:
                want.append(index)
                to_send += item.data_length()
                counts["files_sent"] += 1
                if self._dry:
                    if len(self.would_send) < MAX_LISTED:
                        self.would_send.append(item.path.decode("latin-1"))
                else:
                    window.left += 1
                    self._expected.append((window, item))
                    if self._base_digests(frame.offset + index, item):
                        deltas.append(index)
        self._out.send_json(WANTS, {"window": frame.offset, "want": want, "delta": deltas,
                                    "bytes": to_send})
        self._windows.append(window)
        self._settle()

    def _base_digests(self, index, item):
        # type: (int, Entry) -> bool
        """Whether the old file of a wanted FILE serves as the base of a delta: then its
        block digests go to the reader (BLOCKS, from BaseDigests' thread)."""
        if not self._deltas or item.extents is not None or item.size < delta.MIN_SIZE:
            return False
        if self._bases is not None and self._bases.pending >= delta.MAX_PENDING:
            return False
        fd = self._writer.old_file(item)
        if fd is None:
            return False
        if os.fstat(fd).st_size < delta.BLOCK:
            os.close(fd)
            return False
        if self._bases is None:
            out = self._out
            self._bases = delta.BaseDigests(
                lambda at, old, payload: out.send(protocol.encode(BLOCKS, payload, at, 0, old)),
                out.fail)
        self._bases.add(index, item.path, fd)
        return True

    def _same_digest(self, item, digest):
        # type: (Entry, Optional[str]) -> bool
        """--checksum: whether DEST's file has the content whose sha256 the reader sent."""
        if digest is None:
            return True  # the reader could not read it: the quick check stands
        fd = self._writer.old_file(item)
        if fd is None:
            return False
        try:
            return _sha256_fd(fd) == digest
        finally:
            os.close(fd)

    def _settle(self):
        # type: () -> None
        """Make the links and nodes of every window whose content is all in, in order."""
        while self._windows and not self._windows[0].left:
            window = self._windows.popleft()
            for item in window.deferred:
                if item.kind == HARDLINK and item.target in self._not_copied:
                    self._not_copied.add(item.path)  # its file is not there to link to
                    continue
                if self._writer.compare(item) != SAME:
                    self._writer.update(item)
            if self._saveset is not None:
                self._save(window)

    def _save(self, window):
        # type: (_Window) -> None
        """The window's entries into the saveset, as DEST now holds them (so a rerun that
        sent nothing still writes a complete saveset)."""
        assert self._saveset is not None and self._tar_out is not None
        for item in window.entries:
            if item.path in self._not_copied:
                continue  # not in DEST as the source has it: left out, and reported
            for piece in self._tar_out.member(item):
                self._saveset.add_tar(piece)

    def _old_file(self, item):
        # type: (Entry) -> Any
        fd = self._writer.old_file(item)
        if fd is None:
            raise HelperError("%s: not in DEST to be saved" % _show(item.path))
        return os.fdopen(fd, "rb")

    def _data(self, frame):
        # type: (protocol.Frame) -> None
        if self._dry:
            raise ProtocolError("content sent in a dry run")
        if frame.offset != self._offset:
            raise ProtocolError("DATA at tar offset %d, %d expected" % (frame.offset,
                                                                         self._offset))
        self._offset += frame.size
        self.counts["stream_bytes"] += len(frame.payload)
        self._decode(self._unpacker.put(frame.flags, frame.payload, frame.size))
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            current = self._current[1].path if self._current is not None else b""
            self._out.send_json(PROGRESS, {"written": self.counts["bytes_sent"],
                                           "reused": self.counts["delta_reused"],
                                           "files": self._done_files(),
                                           "wanted": self.counts["files_sent"],
                                           "current": current.decode("utf-8", "replace")})

    def _decode(self, data):
        # type: (Optional[bytes]) -> None
        """A frame's content (None: no frame was in flight) through the tar decoder."""
        if data is None:
            return
        self._decoder.feed(data)
        while True:
            event = self._decoder.next_event()
            if event is None:
                return
            self._event(event)  # type: ignore[arg-type]  # next_event says object: a tuple

    def _done_files(self):
        # type: () -> int
        return self.counts["files_sent"] - len(self._expected)

    def _event(self, event):
        # type: (tuple) -> None
        what = event[0]
        if what == "entry":
            if self._sink is not None or not self._expected:
                raise ProtocolError("tar member %s not asked for" % _show(event[1].path))
            window, item = self._expected[0]
            if event[1].path != item.path or event[1].kind != FILE:
                raise ProtocolError("tar member %s where %s was expected"
                                    % (_show(event[1].path), _show(item.path)))
            self._current = (window, item)
            self._got = 0
            self._start(item, event[1])
        elif what == "data":
            if self._current is None:
                raise ProtocolError("tar data outside a member")
            self._got += len(event[2])
            if self._sink is not None:
                self._sink.write(event[1], event[2])
                self.counts["bytes_sent"] += len(event[2])
        elif what == "end":
            if self._current is None:
                return  # the end of a member that is no file (none is sent)
            window, item = self._current
            assert self._member is not None
            if self._got != self._member.data_length():
                self._drop()
                raise IntegrityError("%s: %d bytes of content came, %d announced"
                                     % (_show(item.path), self._got, self._member.data_length()))
            if self._sink is not None:
                self._finish_file(item)
            self._sink = None
            self._current = None
            self._member = None
            self._expected.popleft()
            window.left -= 1
            self._settle()

    def _start(self, item, member):
        # type: (Entry, Entry) -> None
        """A wanted file's member begins: a plain one, a delta against the old file, or one
        the reader could not read (delta.py's marks)."""
        self._member = member
        self._old = None
        old = self._bases.take(item.path) if self._bases is not None else None
        sha, failed = delta.marks(member.xattrs)
        if failed is not None:
            self._fail(item, failed, counted=False)
            return
        if sha is None:
            self._sink = self._writer.add(item)
            return
        if old is None:
            raise ProtocolError("%s: a delta member where no old file's digests were sent"
                                % _show(item.path))
        base = self._writer.old_file(item)
        if base is None:
            self._fail(item, "the old file in DEST went away during the copy")
            return
        self._sink = self._writer.add(item, base)
        try:
            for offset, length in delta.gaps(member.extents or (), item.size):
                self._sink.copy_from_base(offset, length)
                self.counts["delta_reused"] += length
            trusted = delta.unchanged(old[1], delta.stat_key(self._sink.base_stat()))
        except IntegrityError:
            self._drop()
            self._fail(item, "the old file in DEST changed during the copy")
            return
        self._old = (sha, old[0] if trusted else b"")
        self.counts["delta_files"] += 1

    def _finish_file(self, item):
        # type: (Entry) -> None
        assert self._sink is not None and self._member is not None
        if self._old is not None:
            sha, theirs = self._old
            runs = self._member.extents or ()
            size = item.size
            ok = self._sink.check(lambda fd: delta.rebuilt(fd, size, runs, theirs) == sha)
        else:
            ok = True
        if not ok:
            self._drop()
            self._fail(item, "the old file in DEST changed during the copy (sha256 differs)")
            return
        self._sink.commit()

    def _drop(self):
        # type: () -> None
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    def _fail(self, item, cause, counted=True):
        # type: (Entry, str, bool) -> None
        """This file is not copied (nothing of it under its name); the others go on. A file
        the reader could not read is listed by the reader (END), not here."""
        self.counts["files_failed"] += 1
        self.counts["files_sent"] -= 1
        self._not_copied.add(item.path)
        if counted and len(self.failed) < MAX_FAILED:
            self.failed.append([_show(self._writer.dest) + "/" + _show(item.path), cause])

    def _end(self, end):
        # type: (dict) -> dict
        if self._sink is not None or self._expected:
            raise IntegrityError("the stream ended with %d files still to come"
                                 % len(self._expected))
        sha256 = self._unpacker.hexdigest()
        if int(end.get("bytes", -1)) != self._offset or (self._offset and
                                                          end.get("sha256") != sha256):
            raise IntegrityError("tar stream of %d bytes, sha256 %s; the sender's: %s bytes, %s"
                                 % (self._offset, sha256, end.get("bytes"), end.get("sha256")))
        if self._offset:
            self._decoder.close()
        self._settle()
        if not self._writer.delete and not any(self._writer.counts.values()):
            # nothing was made or changed: no syncfs (on a busy file system it waits for
            # everybody else's writes, the rerun of an unchanged tree's largest cost)
            self._writer.fsync = False
        finished = self._writer.finish()
        result = dict(self.counts)  # type: Dict[str, Any]
        result["failed"] = self.failed
        result["sha256"] = sha256
        result["tar_bytes"] = self._offset
        if isinstance(finished, dict):
            result["finish"] = finished
            result["deleted"] = finished.get("deleted", 0)
        if self._dry:
            result["would_send"] = self.would_send
        return result
