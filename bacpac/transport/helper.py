"""Ships the helper down a channel, starts it, and talks to it in frames.

# Strategy (after mitogen): the remote command is a tiny first stage, `python3 -S -c STAGE1`,
# that reads a length and then that many bytes from stdin, inflates them and runs them. The
# length travels on stdin, not in the command, so the command goes out before the payload is
# built: its build overlaps the target's login shell and Python start. That payload
# holds a loader and, for every remote_helper module, its source and its code compiled here;
# the loader imports them from memory (running the code where the target's Python is this
# one, compiling the source elsewhere), so nothing is written on the target. The same stdin
# then carries the frames. A session that names its job ships only the modules that job's
# module imports, followed through the import lines of their source (a dup's helper has no
# use for the tree writer and the tar codec: nearly half the bytes to build, send and
# inflate); the loader refuses any other remote_helper module rather than let an installed
# copy on the target stand in. The first stage's code carries the marker "bacpac_stage1", by which
# the tests find helpers left behind. -S keeps the target's .pth files out of the helper: any
# of them may be slow (a large share of the helper's start; docs/performance.md) or
# print on stdout, which carries frames. The site-packages directories are still searched,
# for zstandard; only where it is not found there does the full site setup run, in case a
# .pth file is what puts it on the path.
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import marshal
import re
import shlex
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import remote_helper
from remote_helper.errors import RemoteProtocolError
from remote_helper.wire import protocol
from remote_helper.wire.protocol import DIGESTS, ERROR, PREPARED, PROGRESS, READY, RESULT, Frame

from .. import threads
from .channel import Channel, LocalChannel
from ..errors import BacpacError, ProtocolError, TransferError, from_remote
from ..spec import Endpoint
from .ssh.config import SshOptions, resolve_host

if TYPE_CHECKING:
    # Imported where a connection is made (_start_session), not here: Paramiko is half the
    # client's imports, and is imported there while ssh -G runs.
    from .ssh.connection import SshConnection

MARKER = "bacpac_stage1"
HELPER_ACCOUNT_WAIT = 5.0  # seconds a failed send waits for the helper to say why
NOISE_LIMIT = 64 << 20  # bytes of a login script's output skipped before the helper's HELLO
# Seconds from the remote command's start to the helper's HELLO, where ConnectTimeout does not
# set them: a loaded host's python may take seconds to start, a command that runs in the
# helper's place (a ForceCommand) and reads its input would be waited for for ever.
HELLO_WITHIN = 30.0
SHOWN = 80  # characters of what a command in the helper's place wrote on stdout, shown
STAGE1 = (
    "import marshal,os,sys,zlib #" + MARKER + "\n"
    # An older Python would fail below on int.from_bytes or in the helper's f-strings: say so.
    "if sys.version_info<(3,6):sys.exit('the helper needs Python 3.6 or newer; %s is %s'"
    "%(sys.executable,sys.version.split()[0]))\n"
    "def r(n):\n"
    " b=b''\n"
    " while len(b)<n:\n"
    "  c=os.read(0,n-len(b))\n"
    "  if not c:sys.exit(1)\n"
    "  b+=c\n"
    " return b\n"
    "S,M=marshal.loads(zlib.decompress(r(int.from_bytes(r(4),'big'))))\n"
    "exec(S)"
)
STAGE2 = '''
import importlib.util, os, site, sys
def path(name):
    return "<bacpac>/" + name.replace(".", "/") + ".py"
class Platform(type(sys)):  # zstandard asks platform one thing, at its import; the real
    def python_implementation(self):  # module's import (its regular expressions) took 3 ms
        name = sys.implementation.name
        return {"cpython": "CPython", "pypy": "PyPy"}.get(name, name)
    def __getattr__(self, name):  # anything else: the real module, from then on
        if sys.modules.get("platform") is self:
            del sys.modules["platform"]
        return getattr(__import__("platform"), name)
stand_in = sys.modules.setdefault("platform", Platform("platform"))
try:
    user = [site.getusersitepackages()] if site.check_enableusersite() else []
    sys.path.extend(p for p in user + site.getsitepackages() if p not in sys.path)
    import zstandard
except Exception:
    site.main()
finally:
    if sys.modules.get("platform") is stand_in and isinstance(stand_in, Platform):
        del sys.modules["platform"]
class Loader(object):  # importlib.abc's base classes cost imports at start: the protocol suffices
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        source, code = M["modules"][module.__name__]
        if M["magic"] == importlib.util.MAGIC_NUMBER:
            code = marshal.loads(code)
        else:
            code = compile(source, path(module.__name__), "exec", dont_inherit=True)
        exec(code, module.__dict__)
class Finder(object):
    def find_spec(self, name, path=None, target=None):
        if name in M["modules"]:
            return importlib.util.spec_from_loader(name, Loader(), is_package=name in M["packages"])
        if name.split(".")[0] == "remote_helper":
            raise ImportError("bacpac: %s was not shipped with this job" % name)
sys.meta_path.insert(0, Finder())
from remote_helper.jobs import server
status = server.main()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:  # the client is gone: nobody is left to read it
        pass
os._exit(status)  # the work is done and said: skip the interpreter's teardown
'''


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach the helper: SSH settings, sudo, and which python to run it with; `early`,
    a session begun before the command's own modules were imported (EarlySession)."""

    ssh: SshOptions = SshOptions()
    sudo: bool = False
    remote_python: Optional[str] = None  # default: python3 remotely, this interpreter locally
    interactive: bool = False  # may we prompt on the terminal for passwords?
    early: Optional["EarlySession"] = field(default=None, compare=False, repr=False)


class EarlySession:
    """A helper's session (open_session with hello=False) begun on a thread of its own, so
    that the target's login shell and the helper's start overlap the client's imports of the
    engine, the opening of the source and the stream's start (docs/performance.md,
    "delta-warm"). The caller waits for the command to be sent (wait_sent) before it does
    that work, which would only slow the handshake down (the GIL); `ssh -G` overlaps the
    import of Paramiko. open_session takes the session for the same endpoint and job, and
    raises its error there, where it would have raised its own; discard() closes one that
    nobody took (the command failed first)."""

    def __init__(self, endpoint: Endpoint, options: ConnectOptions, job: str) -> None:
        self._key = (endpoint, options, job)
        self._route: Optional[bool] = None
        self._session: Optional[HelperSession] = None
        self._error: Optional[BaseException] = None
        self._lock = threading.Lock()
        self._taken = False
        self._discarded = False  # a session that comes later is closed by its thread
        self._thread = threading.Thread(target=self._run, name="early-session", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        endpoint, options, job = self._key
        try:
            session = open_session(endpoint, options, hello=False, on_route=self._routed,
                                   job=job)
        except BaseException as e:  # raised by take(), in the command's own thread
            self._error = e
            return
        with self._lock:
            if not self._discarded:
                self._session = session
                return
        session.close()  # discarded while it connected: nobody else will

    def _routed(self, here: bool) -> None:
        self._route = here

    def take(self, endpoint: Endpoint, options: ConnectOptions, job: Optional[str],
             on_route: Optional[Callable[[bool], None]]) -> Optional["HelperSession"]:
        """The session, once begun, if it is the one asked for and not taken yet (else None);
        its error if it failed. on_route is told what the connection found."""
        with self._lock:
            if self._taken or self._discarded or self._key != (endpoint, options, job):
                return None
            self._taken = True
        self.wait_sent()
        if self._error is not None:
            raise self._error
        assert self._session is not None
        if on_route is not None and self._route is not None:
            on_route(self._route)
        return self._session

    def wait_sent(self) -> None:
        """Until the helper's command is sent, or the connection failed (its error is for
        take() to raise)."""
        while self._thread.is_alive():  # bounded by the connection's own deadlines
            self._thread.join(0.2)

    def discard(self) -> None:
        """Close the session if nobody took it (one still connecting closes itself)."""
        with self._lock:
            if self._taken or self._discarded:
                return
            self._discarded = True
            session, self._session = self._session, None
        if session is not None:
            session.close()
        threads.join((self._thread,), f"{self._key[0].host}: the early session")


def prepare_payload(job: Optional[str] = None) -> threading.Thread:
    """Build the helper's payload on a thread of its own, while the helper's command starts."""
    thread = threading.Thread(target=_prepare, args=(job,), name="payload", daemon=True)
    thread.start()
    return thread


def _prepare(job: Optional[str]) -> None:
    try:
        helper_payload(job)
    except Exception:  # said once, by the caller who needs it, not as a thread's traceback
        pass


_payload_lock = threading.Lock()


def helper_payload(job: Optional[str] = None) -> bytes:
    """What the first stage reads from stdin: its length in 4 bytes (big-endian), then the
    second stage and, for each remote_helper module (with `job`, the name of a module of
    remote_helper.jobs, those that it and the server import), its source and its code as this
    interpreter compiled it. Marshal's basic types read alike in every Python 3, its code
    objects only in the version that wrote them: the helper runs them where its MAGIC_NUMBER
    is ours (compiling was a good part of its start; docs/performance.md), and compiles
    the source elsewhere. The code costs the wire 60 KB more."""
    with _payload_lock:  # prepare_payload's thread may be building it: wait, do not build twice
        return _payload(job)


@functools.lru_cache(maxsize=None)
def _payload(job: Optional[str]) -> bytes:
    files, packages = _helper_files()
    sources = {name: file.read_text() for name, file in files.items()}
    if job is not None:
        wanted = _imported(("remote_helper.jobs.server", f"remote_helper.jobs.{job}"),
                           sources, packages)
        sources = {name: text for name, text in sources.items() if name in wanted}
    modules = {name: (text, _module_code(name, files[name])) for name, text in sources.items()}
    stage2 = {"magic": importlib.util.MAGIC_NUMBER, "modules": modules,
              "packages": [name for name in packages if name in modules]}
    # Level 1: it is built at every start, on the way to the connection; level 6 took twice the
    # CPU for a payload an eighth smaller (docs/performance.md).
    payload = zlib.compress(marshal.dumps((STAGE2, stage2), 4), 1)
    return len(payload).to_bytes(4, "big") + payload


def _helper_files() -> tuple[dict[str, Path], list[str]]:
    """Every remote_helper module's file by its name, sorted (the same payload, byte for byte,
    each run), and the names that are packages."""
    root = Path(remote_helper.__file__).parent
    files, packages = {}, []
    for file in sorted(root.rglob("*.py")):
        parts = ("remote_helper",) + file.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
            packages.append(".".join(parts))
        files[".".join(parts)] = file
    return files, packages


# `from X import a, b` (or a parenthesised list over several lines), `import X`: anywhere in a
# module, inside functions too, so that a lazy import is shipped as much as one at the top.
# Compiled on first use (re's own cache), not at every client start.
_IMPORT = (r"(?m)^[ \t]*(?:from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)"
           r"|import[ \t]+([\w., \t]+))")


def _imported(roots: tuple[str, ...], sources: dict[str, str], packages: list[str]) -> set[str]:
    """The modules among `sources` that `roots` import, directly or through one another, with
    the packages above each (an import runs every __init__ on the way)."""
    found: set[str] = set()
    todo = [name for name in roots if name in sources]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += [m for m in _imports_of(name, sources[name], name in packages) if m in sources]
    return found


def _imports_of(name: str, source: str, is_package: bool) -> set[str]:
    """The absolute names an import line of the module `name` may load: the module imported
    from, and each name imported from it, which may be a submodule."""
    here = name if is_package else name.rpartition(".")[0]
    names: set[str] = set()
    for dots, origin, imported, plain in re.findall(_IMPORT, source):
        if plain:
            names.update(part.split()[0] for part in plain.split(",") if part.strip())
            continue
        base = here.rsplit(".", len(dots) - 1)[0] if dots else ""
        module = ".".join(part for part in (base, origin) if part)
        names.add(module)
        names.update(f"{module}.{part.split()[0]}" for part in imported.strip("()").split(",")
                     if part.split())
    return names


def _module_code(name: str, file: Path) -> bytes:
    """The module's code, marshalled: the bytes of its .pyc where that is fresh (an installed
    bacpac has one; they are what marshal.dumps would give, without loading the code only to
    dump it again), else compiled as an import would."""
    fresh = _fresh_pyc(file)
    if fresh is not None:
        return fresh
    return marshal.dumps(importlib.machinery.SourceFileLoader(name, str(file)).get_code(name))


def _fresh_pyc(file: Path) -> Optional[bytes]:
    """The marshalled code in file's .pyc, if the cache is this Python's and is stamped with
    the source's mtime and size (PEP 552's default, unchecked-hash pycs aside)."""
    try:
        data = Path(importlib.util.cache_from_source(str(file))).read_bytes()
        stat = file.stat()
    except (OSError, NotImplementedError):
        return None
    header = (importlib.util.MAGIC_NUMBER, bytes(4), (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(
        4, "little"), (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little"))
    return data[16:] if data[:16] == b"".join(header) else None


def helper_argv(python: str, sudo: bool) -> list[str]:
    argv = [python, "-S", "-c", STAGE1, MARKER]
    return ["sudo", "-n", "--"] + argv if sudo else argv


def open_session(endpoint: Endpoint, options: ConnectOptions, hello: bool = True,
                 on_route: Optional[Callable[[bool], None]] = None,
                 job: Optional[str] = None) -> "HelperSession":
    """Connect (or spawn locally), ship and start the helper, and read its HELLO (with
    hello=False, leave both to the caller: see HelperSession.start). on_route, if given, is
    told as early as can be whether the helper runs on this host (ssh.over_loopback). job,
    the remote_helper.jobs module of the one job the session will run, ships only what that
    module needs (helper_payload). A session begun early for it (options.early) is taken
    instead of a new one."""
    if options.early is not None and not hello:
        begun = options.early.take(endpoint, options, job, on_route)
        if begun is not None:
            return begun
    return _start_session(endpoint, options, hello, on_route, job)


def _start_session(endpoint: Endpoint, options: ConnectOptions, hello: bool,
                   on_route: Optional[Callable[[bool], None]],
                   job: Optional[str]) -> "HelperSession":
    if endpoint.is_local:
        if on_route is not None:
            on_route(True)
        python = options.remote_python or sys.executable
        channel: Channel = LocalChannel(helper_argv(python, options.sudo))
        return _started(channel, "localhost", None, hello, HELLO_WITHIN, job)
    host = endpoint.host or ""
    importing = threading.Thread(target=_import_ssh, name="import-ssh", daemon=True)
    importing.start()  # Paramiko, while this thread waits for ssh -G
    try:
        resolved = resolve_host(host, endpoint.user, options.ssh)
    finally:
        importing.join(IMPORT_WITHIN)
    from .ssh.connection import connect  # imported: its error, if any, is raised here
    conn = connect(host, endpoint.user, options.ssh, interactive=options.interactive,
                   on_route=on_route, resolved=resolved)
    try:
        argv = helper_argv(options.remote_python or "python3", options.sudo)
        channel = conn.exec(" ".join(shlex.quote(a) for a in argv))
        return _started(channel, endpoint.host or "", conn, hello,
                        conn.connect_timeout or HELLO_WITHIN, job)
    except BaseException:
        conn.close()
        raise


def _started(channel: Channel, host: str, conn: Optional[SshConnection], hello: bool,
             within: float, job: Optional[str]) -> "HelperSession":
    """HelperSession.start, the payload built on a thread meanwhile: from the moment the
    command is sent, so that its build overlaps the target's login shell and Python start
    (about 140 ms here) rather than the handshake, whose CPU it took a share of."""
    payload = prepare_payload(job)
    try:
        session = HelperSession.start(channel, host, conn, hello, within, job)
    except BaseException:
        threads.join((payload,), "the helper's payload")
        raise
    session.owns(payload)
    return session


IMPORT_WITHIN = 60.0  # seconds: the import of Paramiko (a cold start reads tens of MB)


def _import_ssh() -> None:
    """Import the SSH layer (Paramiko), for a connection about to be made."""
    try:
        from .ssh import connection  # noqa: F401
    except BaseException:  # the connecting thread imports it again, and raises it there
        pass


def _hello_at(data: bytes) -> Optional[int]:
    """Where in data a HELLO frame's header begins, if one does."""
    at = data.find(protocol.MAGIC)
    while 0 <= at <= len(data) - protocol.HEADER_SIZE:
        try:
            if protocol.parse_header(data[at:at + protocol.HEADER_SIZE])[0] == protocol.HELLO:
                return at
        except RemoteProtocolError:
            pass
        at = data.find(protocol.MAGIC, at + 1)
    return None


def _printable(data: bytes) -> str:
    """data quoted on one line, what is not printable escaped, cut after SHOWN characters."""
    shown = repr(data.decode("utf-8", "replace"))[1:-1]
    return f"'{shown[:SHOWN]}'" + ("..." if len(shown) > SHOWN else "")


class HelperSession:
    """One running helper: send frames to it, receive frames from it."""

    def __init__(self, channel: Channel, host: str, conn: Optional[SshConnection],
                 job: Optional[str] = None) -> None:
        self.channel = channel
        self.host = host
        self.conn = conn
        self.job = job  # the remote_helper.jobs module shipped for, or None: all of them
        self.hello: dict = {}
        self.noise = 0  # bytes a login script printed on stdout before the helper's HELLO
        self._decoder = protocol.Decoder()
        self._head = b""  # the first bytes on stdout, to show if no HELLO comes
        self._deadline: Optional[threading.Timer] = None
        self._readers: list[threading.Thread] = []  # the Receiver's, the payload's: owns()
        self._hello_lock = threading.Lock()
        # a frame is written whole under it: a delta run's ASKs go from the compressor pool
        # while the sending thread writes the stream
        self._write_lock = threading.Lock()
        self._hello_seen = False
        self._within = HELLO_WITHIN
        self._late = False  # the deadline passed with no HELLO: the channel is closed

    @classmethod
    def start(cls, channel: Channel, host: str, conn: Optional[SshConnection],
              hello: bool = True, hello_within: float = HELLO_WITHIN,
              job: Optional[str] = None) -> "HelperSession":
        """Ship the helper and read its HELLO; with hello=False, neither: the caller starts a
        Receiver, which reads the HELLO as it comes (a login script may print first, more than
        a pipe holds, so its output is read while the helper is shipped), then ship()s the
        helper and sends its OPEN and first frames at once. The channel's window (2 MiB from
        OpenSSH) carries them while the target's login shell and Python start, which on a slow
        link is time the link would otherwise stand idle. Either way, a HELLO that has not
        come within `hello_within` seconds ends the channel, and the wait for it."""
        session = cls(channel, host, conn, job)
        session._watch_hello(hello_within)
        if hello:
            session.greet()
        return session

    def greet(self) -> None:
        """Ship the helper and read its HELLO (what start() does unless hello=False), for a
        caller that waits for the HELLO before its first frame; closed if that fails."""
        try:
            try:
                self.ship()
            except TransferError as closed:
                # What ran in the helper's place may have exited before reading its input:
                # what it wrote, or its exit status, says more than the broken pipe.
                self.read_hello()
                raise closed
            self.read_hello()
        except BaseException:
            self.close()
            raise

    def ship(self) -> None:
        """The helper's code, which the first stage reads from stdin."""
        self.channel.write(helper_payload(self.job))

    @property
    def cipher(self) -> Optional[str]:
        return self.conn.cipher if self.conn else None

    def _watch_hello(self, within: float) -> None:
        self._within = within
        self._deadline = threading.Timer(within, self._hello_overdue)
        self._deadline.name = "hello-deadline"
        self._deadline.daemon = True
        self._deadline.start()

    def owns(self, thread: threading.Thread) -> None:
        """A thread of this session (one that reads its channel, or the payload's builder):
        close() joins it before the connection is closed."""
        self._readers.append(thread)

    def _hello_overdue(self) -> None:
        """No HELLO in time: close the channel, which ends every wait on it (a read for the
        HELLO, a write blocked on a full window), each then raising _never_started."""
        with self._hello_lock:
            if self._hello_seen:
                return
            self._late = True
        self.channel.close()

    def _hello_arrived(self) -> None:
        with self._hello_lock:
            if self._late:  # in the same moment as the deadline, which closed the channel
                raise self._never_started(ended=False)
            self._hello_seen = True
        if self._deadline is not None:
            self._deadline.cancel()

    def read_hello(self) -> dict:
        """The helper's first frame, into self.hello. What a login script printed on stdout
        before the helper started comes first: it is skipped (self.noise counts it)."""
        self._skip_noise()
        frame = self.recv()
        if frame.type != protocol.HELLO:
            raise TransferError(f"{self.host}: expected HELLO from the helper, "
                                f"got {protocol.type_name(frame.type)}")
        hello = self.json(frame)
        if hello.get("protocol") != protocol.PROTOCOL_VERSION:
            raise TransferError(f"{self.host}: the helper speaks protocol version "
                                f"{hello.get('protocol')}, this client {protocol.PROTOCOL_VERSION}")
        self.hello = hello
        return hello

    def _skip_noise(self) -> None:
        """Feed the decoder from the helper's HELLO on, once its header is found (its magic and
        its header checksum). The helper says HELLO before it reads its job, so output that
        ends with none, or goes on past NOISE_LIMIT or the deadline without one, comes from
        something else that ran in its place, and is sure to have written nothing."""
        data = b""  # what may still hold a header: the last chunk, and the bytes before it
        while self.noise < NOISE_LIMIT:
            at = _hello_at(data)
            if at is not None:
                self._hello_arrived()
                self.noise += at
                self._decoder.feed(data[at:])
                return
            keep = data[-(protocol.HEADER_SIZE - 1):]
            self.noise += len(data) - len(keep)
            chunk = self._read_before_hello()
            if not chunk:
                raise self._never_started(ended=True)
            self._head += chunk[:4 * SHOWN - len(self._head)]  # up to 4 UTF-8 bytes a character
            data = keep + chunk
        raise self._never_started(ended=False)

    def _read_before_hello(self) -> bytes:
        """The next bytes of stdout; b"" at its end, or once the deadline closed the channel."""
        try:
            chunk = self.channel.read(1 << 16)
        except TransferError:
            if self._late:
                return b""
            raise
        return b"" if self._late else chunk

    def _never_started(self, ended: bool) -> TransferError:
        """What ran in the helper's place, which never said HELLO: how it ended (or that it
        did not), the last line it wrote on stderr and the first bytes it wrote on stdout."""
        if self._late:
            how = f"no HELLO within {self._within:g} s, and the command is still running"
        elif ended:
            status = self.channel.wait(timeout=5)
            how = (f"the command exited with status {status}" if status != -1
                   else "the command closed its output")
        else:
            how = f"no HELLO in the first {NOISE_LIMIT >> 20} MiB of the command's output"
        lines = [line for line in self.channel.stderr_tail().splitlines() if line.strip()]
        said = ([f"stderr: {lines[-1].strip()}"] if lines else []) + (
            [f"stdout began {_printable(self._head)}"] if self._head else [])
        hint = (" (does the server run a command of its own, a ForceCommand or an "
                "authorized_keys command=?)" if self._late and self.conn is not None else "")
        return TransferError(f"{self.host}: the helper never started: {how}; "
                             f"{'; '.join(said) or 'it wrote nothing'}{hint}")

    def send(self, data: bytes) -> None:
        with self._write_lock:
            self.channel.write(data)

    def send_json(self, frame_type: int, obj: dict) -> None:
        self.send(protocol.encode_json(frame_type, obj))

    def send_block(self, offset: int, size: int, flags: int, payload: bytes) -> None:
        """A DATA frame: the header, then the payload as is (no concatenation copy)."""
        with self._write_lock:
            self.channel.write(protocol.header(protocol.DATA, payload, offset, flags, size))
            self.channel.write(payload)

    def recv(self) -> Frame:
        """The next frame from the helper; a dead helper raises with what it said on stderr."""
        while True:
            try:
                frame = self._decoder.next_frame()
            except RemoteProtocolError as e:
                raise self._broke_protocol(e) from None
            if frame is not None:
                return frame
            data = self.channel.read(1 << 16)
            self._decoder.feed(data)
            if not data and self._decoder.at_eof:
                raise self._died()

    def json(self, frame: Frame) -> dict:
        """The payload of a control frame from the helper, decoded."""
        try:
            return frame.json()
        except RemoteProtocolError as e:
            raise self._broke_protocol(e) from None

    def _broke_protocol(self, error: RemoteProtocolError) -> ProtocolError:
        """The codec's error for bytes the helper sent, naming it (a LocalProtocolError, our
        own misuse of the codec, is a bug and goes on as it is)."""
        return ProtocolError(f"{self.host}: the helper broke the protocol: {error.message}")

    def request(self, frame_type: int, obj: dict, reply: int, where: str) -> dict:
        """Send one control frame and wait for the reply; an ERROR reply raises."""
        self.send_json(frame_type, obj)
        frame = self.recv()
        return self.expect(frame, reply, where)

    def expect(self, frame: Frame, reply: int, where: str) -> dict:
        if frame.type == ERROR:
            raise self.rebuild(self.json(frame), where)
        if frame.type != reply:
            raise ProtocolError(f"{self.host}: expected {protocol.type_name(reply)}, "
                                f"got {protocol.type_name(frame.type)}")
        return self.json(frame)

    def rebuild(self, error: dict, where: str) -> BacpacError:
        return from_remote(str(error.get("kind")), str(error.get("message")), self.host, where)

    def _died(self) -> TransferError:
        status = self.channel.wait(timeout=5)
        tail = self.channel.stderr_tail().strip().splitlines()
        said = f": {tail[-1]}" if tail else ""
        return TransferError(f"{self.host}: the helper exited unexpectedly (status {status}){said}")

    def close(self, hang_up: bool = False) -> None:
        """End the helper's input, let it exit, close the connection. With hang_up, its output
        is closed too: a helper blocked sending frames that nobody will read any more (a
        restore's reader, once the restore failed) then ends at once instead of at the wait's
        deadline. Every thread of the session is joined: the deadline's (its close of the
        channel comes first, if it is at it), then the readers, which the channel's close ends,
        before the connection goes."""
        if self._deadline is not None:
            self._deadline.cancel()
            threads.join((self._deadline,), f"{self.host}: the HELLO deadline")
        try:
            if hang_up:
                self.channel.hang_up()
            else:
                self.channel.close_write()
            self.channel.wait(timeout=10)
        except BacpacError:
            pass  # closing a dead channel: nothing more to learn from it
        self.channel.close()
        threads.join(self._readers, f"{self.host}: the helper's session")
        if self.conn is not None:
            self.conn.close()


class Receiver:
    """Reads the helper's frames during a transfer: progress, then RESULT or ERROR.

    With on_hello, the client sent its OPEN without waiting (HelperSession.start): the helper's
    HELLO comes first, for on_hello to accept or refuse by raising, then its READY, or the
    ERROR that refuses the OPEN before anything is written; `ready` says which it was. With
    ready_first, the HELLO was read already and the READY is still to come (a fan-out waits
    for every host's: wait_ready). With confirm, the helper says PREPARED before its RESULT,
    and waits for the client's COMMIT in between (wait_prepared).
    """

    def __init__(self, session: HelperSession, where: str, on_progress: Callable[[int], None],
                 on_digests: Optional[Callable[[Frame], None]] = None,
                 on_hello: Optional[Callable[[dict], None]] = None,
                 ready_first: bool = False, confirm: bool = False) -> None:
        self._session = session
        self._where = where
        self._on_progress = on_progress
        self._on_digests = on_digests
        self._on_hello = on_hello
        self.ready = on_hello is None and not ready_first  # the helper accepted the OPEN
        self._confirm = confirm
        self.prepared: Optional[dict] = None  # PREPARED's payload, with confirm
        self.result: Optional[dict] = None
        self.error: Optional[BaseException] = None
        # the share of its latest PROGRESS interval the helper spent waiting for input
        self.helper_idle: Optional[float] = None
        self._done = threading.Event()
        self._readied = threading.Event()  # READY came, or the receiver ended
        self._prepared = threading.Event()  # PREPARED came, or the receiver ended
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)
        session.owns(self._thread)  # joined by the session's close()
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._on_hello is not None:
                self._on_hello(self._session.read_hello())
            if not self.ready:
                self._session.expect(self._session.recv(), READY, self._where)
                self.ready = True
            self._readied.set()
            while True:
                frame = self._session.recv()
                if frame.type == PROGRESS:
                    progress = self._session.json(frame)
                    self.helper_idle = float(progress.get("idle", 0.0))
                    self._on_progress(int(progress.get("written", 0)))
                    continue
                if frame.type == DIGESTS and self._on_digests is not None:
                    self._on_digests(frame)
                    continue
                if self._confirm and self.prepared is None and frame.type == RESULT:
                    raise ProtocolError(f"{self._session.host}: the helper said RESULT before "
                                        "PREPARED")
                if frame.type == PREPARED and self._confirm and self.prepared is None:
                    self.prepared = self._session.json(frame)
                    self._prepared.set()
                    continue
                self.result = self._session.expect(frame, RESULT, self._where)
                return
        except BaseException as e:  # handed to the sending thread, which raises it
            self.error = e
        finally:
            self._readied.set()
            self._prepared.set()
            self._done.set()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def send(self, put: Callable[..., None], *args: Any) -> None:
        """put(*args) on the helper's channel. A broken channel usually means the helper
        stopped, and its ERROR frame, or its exit status, says why, but may still be on its way
        when the send fails: wait for it a moment, and raise it rather than the broken pipe."""
        try:
            put(*args)
        except TransferError:
            self._done.wait(HELPER_ACCOUNT_WAIT)
            if self.error is None:
                raise
            raise self.error from None

    def wait_ready(self, within: float) -> None:
        """Until the helper's READY (its checks passed, its outputs open); its error if it
        refused the OPEN or failed; a TransferError after `within` seconds."""
        if not self._readied.wait(within):
            raise TransferError(f"{self._session.host}: no READY from the helper within "
                                f"{within:g} s")
        if not self.ready:
            assert self.error is not None
            raise self.error

    def wait_prepared(self, within: float) -> bool:
        """Whether the helper said PREPARED (or failed: then its error) within `within`
        seconds."""
        if not self._prepared.wait(within):
            return False
        if self.prepared is None:
            assert self.error is not None
            raise self.error
        return True

    def wait(self) -> dict:
        """The helper's RESULT, once it came; its error if it failed."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
