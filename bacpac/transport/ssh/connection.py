"""SSH with Paramiko, and Paramiko only here: connect, check the host key, log in, run commands.

# Strategy: connect() walks the steps OpenSSH walks, each mapping its failures to one bacpac
# error that names the host: resolve the options (config.py), open a TCP socket (or a
# direct-tcpip channel through a ProxyJump host), negotiate a tuned transport, check the host
# key against known_hosts before anything else is sent, then authenticate (agent, key files,
# keys with passphrases, password). The transport is tuned for one long upload: aes128-gcm
# first, no Paramiko compression, a large window, and rekey limits so high that OpenSSH starts
# the rekeys (Paramiko's own rekey stalls the sender). SshChannel is the Channel of ../channel.py
# over an exec channel; any Paramiko or socket error there becomes a TransferError.
"""
from __future__ import annotations

import contextlib
import getpass
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
import warnings
from typing import Any, Callable, Optional

from . import knownhosts
from ... import lazy, threads
from ..channel import Buffer, StderrTail
from ...errors import AuthError, ConnectError, HostKeyError, TransferError, UsageError
from .config import (HostConfig, SshOptions, parse_jump, parse_o_option, password_variable,
                     resolve_host)

# Paramiko imports invoke for its ssh_config's `Match exec` alone, which bacpac never runs
# (config_file.py reads ssh_config): deferred here, where bacpac first imports Paramiko; and
# its version is read without importlib.metadata's import (lazy.py).
lazy.defer("invoke")

with lazy.quick_version():
    import paramiko  # noqa: E402

from .algorithms import Transport, no_match  # noqa: E402
from .packets import BatchWriter  # noqa: E402

__all__ = ["SshOptions", "SshConnection", "SshChannel", "connect", "parse_o_option"]

# Paramiko's threads log their failures with tracebacks; ours are reported as one line instead.
logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)
logging.getLogger("paramiko").addHandler(logging.NullHandler())

PREFERRED_CIPHER = "aes128-gcm@openssh.com"
WINDOW_SIZE = 16 * 2**20
MAX_PACKET_SIZE = 2**17
_NO_REKEY = 2**62  # so high that only OpenSSH starts rekeys
_MAX_JUMPS = 8
_TRANSFER_ERRORS = (paramiko.SSHException, EOFError, OSError)


def connect(host: str, user: Optional[str], opts: SshOptions, *, interactive: bool,
            on_route: Optional[Callable[[bool], None]] = None,
            resolved: Optional[HostConfig] = None) -> SshConnection:
    """An authenticated connection to `host`, configured as `ssh host` would be (`resolved`:
    resolve_host's answer for it, if the caller has it already). on_route, if given, is told
    as soon as the connection is made, before its handshake, whether it stays on this host
    (over_loopback)."""
    cfg = resolved if resolved is not None else resolve_host(host, user, opts)
    return _connect(cfg, opts.config_file, interactive, 0, on_route)


def _connect(cfg: HostConfig, config_file: Optional[str], interactive: bool,
             depth: int, on_route: Optional[Callable[[bool], None]] = None) -> SshConnection:
    jump = _connect_jump(cfg, config_file, interactive, depth) if cfg.proxy_jump else None
    transport = None
    try:
        raw = _open_socket(cfg, jump)
        if on_route is not None:
            on_route(over_loopback(raw))
        sock = _WatchedSocket(raw)
        transport = _start_transport(cfg, sock)
        _check_host_key(cfg, transport)
        _authenticate(cfg, transport, _Secrets(interactive and not cfg.batch_mode, cfg.alias))
        return SshConnection(cfg, transport, sock, jump)
    except BaseException as e:
        if transport is not None:
            _close_transport(transport, cfg.alias)
        if jump is not None:
            jump.close()
        if isinstance(e, _TRANSFER_ERRORS):
            raise ConnectError(f"{cfg.alias}: SSH session setup failed: {_reason(e)}") from None
        raise


def _connect_jump(cfg: HostConfig, config_file: Optional[str], interactive: bool,
                  depth: int) -> SshConnection:
    """The last hop of ProxyJump; the hops before it become that hop's own ProxyJump."""
    if depth >= _MAX_JUMPS:
        raise UsageError(f"{cfg.alias}: more than {_MAX_JUMPS} ProxyJump hops (a loop?)")
    assert cfg.proxy_jump
    *before, last = cfg.proxy_jump.split(",")
    user, host, port = parse_jump(last.strip())
    # As with ssh -J: the jump host gets the config file, not this host's -p/-i/-o.
    options = (("ProxyJump", ",".join(before)),) if before else ()
    jump_opts = SshOptions(config_file=config_file, port=port, options=options)
    return _connect(resolve_host(host, user, jump_opts), config_file, interactive, depth + 1)


def _reason(e: BaseException) -> str:
    """One line of cause, without Paramiko's tuple reprs."""
    if isinstance(e, EOFError):  # Paramiko's word for a peer that hung up
        return "the server closed the connection"
    text = getattr(e, "strerror", None) or getattr(e, "text", None) or str(e)
    return text.splitlines()[0] if text.strip() else type(e).__name__


def _open_socket(cfg: HostConfig, jump: Optional[SshConnection]) -> Any:
    """A byte stream to the server: TCP, a ProxyCommand, or a channel through the jump host."""
    where = f"{cfg.alias}: cannot connect to {cfg.hostname} port {cfg.port}"
    if jump is not None:
        return jump.open_tunnel(cfg.hostname, cfg.port, cfg.connect_timeout, where)
    if cfg.proxy_command:
        try:
            return paramiko.ProxyCommand(cfg.proxy_command)
        except _TRANSFER_ERRORS as e:
            raise ConnectError(f"{where}: ProxyCommand failed: {_reason(e)}") from None
    try:
        sock = socket.create_connection((cfg.hostname, cfg.port), timeout=cfg.connect_timeout)
    except socket.gaierror:
        named = "" if cfg.hostname == cfg.alias.lower() else f" {cfg.hostname}"
        raise ConnectError(f"{cfg.alias}: cannot resolve host name{named}") from None
    except OSError as e:
        timed_out = isinstance(e, socket.timeout) and cfg.connect_timeout
        reason = f"timed out after {cfg.connect_timeout:g} s" if timed_out else _reason(e)
        raise ConnectError(f"{where}: {reason}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def over_loopback(sock: Any) -> bool:
    """Whether a connection stays inside this host's kernel: a TCP socket whose peer is a
    loopback address (127.0.0.0/8, ::1) or this very end's own address, as when a host
    connects to one of its own addresses, which Linux routes through the loopback device. A
    ProxyCommand or a jump host's tunnel is never taken for one."""
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
        return False
    try:
        peer, local = sock.getpeername()[0], sock.getsockname()[0]
        return peer == local or ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except (OSError, ValueError):
        return False


class _WatchedSocket:
    """Wraps the transport's socket to note when bytes last arrived, for the dead-peer watchdog.

    On a TCP socket it also acknowledges every read at once. sshd leaves Nagle's algorithm on for
    a session without a terminal, so a small reply that follows another small one waits for the
    first one's ACK, and Linux delays that ACK up to 40 ms: the first channel open after
    authentication waited that delay out (docs/performance.md). TCP_QUICKACK is not sticky,
    hence per read.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.last_recv = time.monotonic()
        self._quickack = (isinstance(sock, socket.socket) and hasattr(socket, "TCP_QUICKACK")
                          and sock.family in (socket.AF_INET, socket.AF_INET6))

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        self.last_recv = time.monotonic()
        if self._quickack:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:  # closed under us; the next recv says so in its own words
                self._quickack = False
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _start_transport(cfg: HostConfig, sock: _WatchedSocket) -> paramiko.Transport:
    """Negotiate a transport tuned for bulk upload (docs/performance.md)."""
    transport = Transport(
        sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE)
    transport.use_compression(False)
    security = transport.get_security_options()
    security.ciphers = (PREFERRED_CIPHER,) + tuple(
        c for c in security.ciphers if c != PREFERRED_CIPHER)
    known_types = _known_key_types(cfg)
    if known_types:
        # Ask for a key type we already know, as OpenSSH does, so a host with several keys is
        # not refused for offering one we have never seen.
        security.key_types = tuple(t for t in known_types if t in security.key_types) + tuple(
            t for t in security.key_types if t not in known_types)
    packetizer = transport.packetizer
    packetizer.REKEY_BYTES = packetizer.REKEY_PACKETS = _NO_REKEY
    packetizer.REKEY_BYTES_OVERFLOW_MAX = packetizer.REKEY_PACKETS_OVERFLOW_MAX = _NO_REKEY
    timeout = cfg.connect_timeout or 60
    # Only to end the transport's thread: start_client's own timeout below speaks first.
    transport.banner_timeout = timeout + 5
    where = f"{cfg.alias}: SSH handshake with {cfg.hostname} port {cfg.port}"
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as e:
        _close_transport(transport, cfg.alias)
        raise ConnectError(f"{where} failed: {no_match(transport) or _reason(e)}") from None
    if not transport.completion_event.is_set():
        # start_client() returns quietly when its timeout passes: a server that accepted the
        # connection and never spoke would surface later as "No existing session".
        _close_transport(transport, cfg.alias)
        raise ConnectError(f"{where} timed out after {timeout:g} s (the server accepted the "
                           "connection but did not answer)")
    return transport


def _close_transport(transport: paramiko.Transport, host: str) -> None:
    """Close the transport and join its thread, which Paramiko's close() does not wait for
    (it stops waiting once it has closed the socket). The socket is shut down first: the
    thread's read then returns at once, instead of at the end of its 0.1 s poll, which every
    run would otherwise wait out."""
    with contextlib.suppress(OSError, EOFError):
        transport.sock.shutdown(socket.SHUT_RDWR)
    transport.close()
    threads.join((transport,), f"{host}: the SSH transport")


# ---- host keys ---------------------------------------------------------------------------

def _known_keys(cfg: HostConfig) -> list[knownhosts.KnownKey]:
    return knownhosts.lookup(cfg.known_hosts_files + cfg.global_known_hosts_files,
                             cfg.known_hosts_name)


def _known_key_types(cfg: HostConfig) -> tuple[str, ...]:
    types: list[str] = []
    for entry in _known_keys(cfg):
        if entry.marker is None:
            rsa = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
            types += rsa if entry.key_type == "ssh-rsa" else [entry.key_type]
    return tuple(dict.fromkeys(types))


def _check_host_key(cfg: HostConfig, transport: paramiko.Transport) -> None:
    """Refuse a revoked key always, a changed one unless StrictHostKeyChecking=no, and an
    unknown one unless accept-new or no, as ssh does."""
    key = transport.get_remote_server_key()
    name = cfg.known_hosts_name
    entries = _known_keys(cfg)
    blob = key.asbytes()
    for entry in entries:
        if entry.marker == knownhosts.REVOKED and entry.blob == blob:
            raise HostKeyError(
                f"{cfg.alias}: the {key.get_name()} host key for {name} ({key.fingerprint}) "
                f"is marked as revoked in {entry.path} line {entry.line}: this could mean "
                "that a stolen key is being used to impersonate this host; not connecting")
    if cfg.strict == "no":
        return
    plain = [entry for entry in entries if entry.marker is None]
    if any(entry.blob == blob for entry in plain):
        return
    known_hosts = cfg.known_hosts_files[0]
    if plain:
        raise HostKeyError(
            f"{cfg.alias}: the host key of {name} has changed (the server now offers "
            f"{key.get_name()} {key.fingerprint}); if that is expected, remove the old line "
            f"with: ssh-keygen -f {known_hosts} -R '{name}'")
    if cfg.strict == "accept-new":
        _add_known_host(known_hosts, name, key, cfg.hash_known_hosts)
        return
    port = f"-p {cfg.port} " if cfg.port != 22 else ""
    keyscan = f"ssh-keyscan {port}{cfg.hostname} >> {known_hosts}"
    authority = next((e for e in entries if e.marker == knownhosts.CERT_AUTHORITY), None)
    if authority is not None:
        raise HostKeyError(
            f"{cfg.alias}: {name} is known only through the certificate authority in "
            f"{authority.path} line {authority.line}, and bacpac does not check host "
            f"certificates; after checking the host's key ({key.get_name()} "
            f"{key.fingerprint}), add it as a plain line with: {keyscan}")
    raise HostKeyError(
        f"{cfg.alias}: the host key of {name} is not known ({key.get_name()} "
        f"{key.fingerprint}); after checking it, accept it with: {keyscan}  "
        "(or use -o StrictHostKeyChecking=accept-new)")


def _add_known_host(path: str, name: str, key: paramiko.PKey, hashed: bool) -> None:
    """Append the key as OpenSSH's accept-new does; a failure to write is not fatal there."""
    field = paramiko.HostKeys.hash_host(name) if hashed else name
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(f"{field} {key.get_name()} {key.get_base64()}\n")
    except OSError:
        pass


# ---- authentication ----------------------------------------------------------------------

class _Secrets:
    """Passphrases and passwords: getpass on a terminal, else the host's own variable
    (password_variable: BACPAC_PASSWORD_<ALIAS>), else $SSHPASS (as sshpass -e)."""

    def __init__(self, interactive: bool, alias: str = "") -> None:
        self.prompts = interactive and sys.stdin is not None and sys.stdin.isatty()
        self.variable = password_variable(alias)

    def failed(self) -> str:
        """Why no passphrase opened a key: where it came from, or where none was found."""
        if self.prompts:
            return "no passphrase from the terminal opens it"
        for name in (self.variable, "SSHPASS"):
            if name in os.environ:
                return f"no passphrase in {name} opens it"
        return f"neither {self.variable} nor SSHPASS is set"

    def ask(self, prompt: str) -> Optional[str]:
        if not self.prompts:
            return os.environ.get(self.variable, os.environ.get("SSHPASS"))
        try:
            return getpass.getpass(prompt)
        except EOFError:
            return None


def _authenticate(cfg: HostConfig, transport: paramiko.Transport, secrets: _Secrets) -> None:
    """Try the agent, the key files, the locked key files, then a password, as ssh does."""
    tried: list[str] = []
    auth = _Auth(cfg, transport, tried)
    if not (cfg.identities_only and cfg.identity_files) and auth.agent_keys():
        return
    locked: list[str] = []
    for path in cfg.identity_files:
        key = _load_key(path, None, locked)
        if key is not None and auth.key(key):
            return
    undecrypted: list[str] = []
    for path in locked:
        passphrase = secrets.ask(f"Enter passphrase for key '{path}': ")
        key = _load_key(path, passphrase, []) if passphrase is not None else None
        if key is None:
            undecrypted.append(path)
        elif auth.key(key):
            return
    if cfg.password_auth and auth.allows("password"):
        password = secrets.ask(f"{cfg.user}@{cfg.hostname}'s password: ")
        if password is not None and auth.password(password):
            return
    methods = ", ".join(dict.fromkeys(tried)) or "nothing the server accepts"
    # Never the passphrase itself: only which key it failed to open, and where it came from.
    locked_note = "".join(f"; key {path} is locked and {secrets.failed()}"
                          for path in undecrypted)
    raise AuthError(f"{cfg.user}@{cfg.alias}: authentication failed (tried: {methods})"
                    f"{locked_note}")


def _load_key(path: str, passphrase: Optional[str], locked: list[str]) -> Optional[paramiko.PKey]:
    """A private key, or None when it is missing, unreadable or locked (then noted in `locked`)."""
    secret = passphrase.encode() if passphrase is not None else None
    try:
        with warnings.catch_warnings():  # cryptography's deprecation of DSA keys, on stderr
            warnings.simplefilter("ignore")
            return paramiko.PKey.from_path(path, secret)
    except paramiko.PasswordRequiredException:
        locked.append(path)
    except TypeError:
        # cryptography's loaders say "password-protected" with a TypeError.
        if secret is None:
            locked.append(path)
    except (paramiko.SSHException, paramiko.UnknownKeyType, OSError, ValueError):
        # ssh skips an identity it cannot load; a bad passphrase lands here too, and a key
        # type Paramiko does not know (DSA, security keys: among ssh's default identities).
        pass
    return None


class _Auth:
    """One login attempt after another on a transport, noting what was tried."""

    def __init__(self, cfg: HostConfig, transport: paramiko.Transport, tried: list[str]) -> None:
        self._user = cfg.user
        self._where = f"{cfg.user}@{cfg.alias}"
        self._transport = transport
        self._tried = tried
        self._allowed: Optional[list[str]] = None  # unknown until the server refuses a method

    def allows(self, method: str) -> bool:
        return self._allowed is None or method in self._allowed or (
            method == "password" and "keyboard-interactive" in self._allowed)

    def agent_keys(self) -> bool:
        try:
            agent = paramiko.Agent()
        except paramiko.SSHException:
            return False
        try:
            return any(self.key(key) for key in agent.get_keys())
        finally:
            agent.close()

    def key(self, key: paramiko.PKey) -> bool:
        if not self.allows("publickey"):
            return False
        return self._attempt("publickey", lambda: self._transport.auth_publickey(self._user, key))

    def password(self, password: str) -> bool:
        return self._attempt("password", lambda: self._transport.auth_password(
            self._user, password, fallback=True))

    def _attempt(self, method: str, call: Callable[[], Any]) -> bool:
        self._tried.append(method)
        try:
            call()
        except paramiko.BadAuthenticationType as e:
            self._allowed = list(e.allowed_types)
            return False
        except paramiko.AuthenticationException:
            return False
        except _TRANSFER_ERRORS as e:
            # sshd hangs up after MaxAuthTries ("Too many authentication failures").
            methods = ", ".join(dict.fromkeys(self._tried))
            raise AuthError(f"{self._where}: authentication failed (tried: {methods}); the "
                            f"server closed the connection: {_reason(e)}") from None
        return self._transport.is_authenticated()


# ---- the connection and its channels -----------------------------------------------------

class SshConnection:
    """An authenticated SSH connection; exec() opens a Channel to a command."""

    def __init__(self, cfg: HostConfig, transport: paramiko.Transport, sock: _WatchedSocket,
                 jump: Optional[SshConnection]) -> None:
        self.host = cfg.alias
        self.cipher = transport.local_cipher
        self.connect_timeout = cfg.connect_timeout
        self._transport = transport
        self._jump = jump
        self._lost: Optional[str] = None
        self._closing = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._probes: list[threading.Thread] = []  # keepalives sent by the watchdog
        if cfg.alive_interval > 0:
            self._watcher = threading.Thread(target=self._watchdog, args=(sock, cfg),
                                             daemon=True, name=f"ssh-alive-{self.host}")
            self._watcher.start()

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(self, command: str) -> SshChannel:
        """Run `command` on an exec channel without a PTY (a PTY mangles binary data)."""
        try:
            chan = self._transport.open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=60)
            chan.exec_command(command)
        except _TRANSFER_ERRORS as e:
            if self.alive:
                raise TransferError(f"{self.host}: the server refused to run the command: "
                                    f"{_reason(e)}") from None
            raise self.lost(e) from None
        return SshChannel(self, chan, BatchWriter.for_channel(self._transport, chan))

    def open_tunnel(self, hostname: str, port: int, timeout: Optional[float], where: str) -> Any:
        """A direct-tcpip channel to hostname:port, to run another transport over (ProxyJump)."""
        try:
            return self._transport.open_channel(
                "direct-tcpip", (hostname, port), ("127.0.0.1", 0), timeout=timeout or 60)
        except _TRANSFER_ERRORS as e:
            raise ConnectError(f"{where} through {self.host}: {_reason(e)}") from None

    def lost(self, cause: Optional[BaseException]) -> TransferError:
        """The error for a connection that broke under us."""
        reason = self._lost or (_reason(cause) if cause else "the server closed the connection")
        return TransferError(f"{self.host}: connection lost: {reason}")

    @property
    def alive(self) -> bool:
        return self._transport.is_active() and self._lost is None

    def _watchdog(self, sock: _WatchedSocket, cfg: HostConfig) -> None:
        """ServerAliveInterval/CountMax as ssh does them: probe each silent interval, and drop
        the connection when CountMax probes in a row got no answer."""
        missed, seen = 0, sock.last_recv
        while not self._closing.wait(cfg.alive_interval) and self._transport.is_active():
            if sock.last_recv != seen:
                missed, seen = 0, sock.last_recv
                continue
            if missed >= cfg.alive_count_max:
                idle = time.monotonic() - seen
                self._lost = f"no answer from the server for {idle:.0f} s"
                self._transport.close()
                return
            missed += 1
            # want_reply=True, so even OpenSSH's refusal counts as a sign of life.
            probe = threading.Thread(target=self._transport.global_request, daemon=True,
                                     args=("keepalive@openssh.com",), kwargs={"wait": True},
                                     name=f"ssh-keepalive-{self.host}")
            self._probes = [p for p in self._probes if p.is_alive()] + [probe]
            probe.start()

    def close(self) -> None:
        """Close the transport (and the jump host's) and join every thread of the connection
        (a keepalive's wait ends with the transport); safe to call twice."""
        self._closing.set()
        _close_transport(self._transport, self.host)
        if self._watcher is not None:
            threads.join((self._watcher,), f"{self.host}: the keepalive watchdog")
        # Complete once the watchdog is gone: it alone starts them.
        threads.join(self._probes, f"{self.host}: the keepalives")
        if self._jump is not None:
            self._jump.close()


class SshChannel:
    """The Channel protocol of ../channel.py over an SSH exec channel."""

    def __init__(self, conn: SshConnection, chan: paramiko.Channel,
                 batch: Optional[BatchWriter] = None) -> None:
        self.name = conn.host
        self._conn = conn
        self._chan = chan
        self._batch = batch  # the lean path for bulk data, where the cipher allows it
        self._stderr = StderrTail(chan.recv_stderr)

    @property
    def batched(self) -> bool:
        """Whether writes go out in batches of packets (packets.py) rather than one by one."""
        return self._batch is not None and self._batch.usable()

    def read(self, n: int) -> bytes:
        try:
            data = self._chan.recv(n)
        except _TRANSFER_ERRORS as e:
            raise self._conn.lost(e) from None
        if not data and self._chan.exit_status == -1 and not self._conn.alive:
            raise self._conn.lost(None)
        return data

    def write(self, data: Buffer) -> None:
        # Packets taken off a memoryview: sendall(bytes) re-slices (quadratic).
        view = memoryview(data).cast("B")
        # Checked once a write: a key exchange that changes the cipher later on is handled by
        # the batch writer itself.
        send = self._batch.send if self._batch is not None and self.batched else self._chan.send
        pos = 0
        while pos < len(view):
            try:
                sent = send(view[pos:])
            except _TRANSFER_ERRORS as e:
                raise self._closed_error(e) from None
            if sent == 0:
                raise self._closed_error(None)
            pos += sent

    def _closed_error(self, cause: Optional[BaseException]) -> TransferError:
        # A cut connection closes the channel a moment before the transport says it is dead:
        # give it a second to tell, unless the helper's exit status shows it really ended.
        deadline = time.monotonic() + 1.0
        while (self._conn.alive and self._chan.exit_status == -1
               and time.monotonic() < deadline):
            time.sleep(0.02)
        if self._conn.alive:
            return TransferError(f"{self.name}: the helper closed its input")
        return self._conn.lost(cause)

    def close_write(self) -> None:
        try:
            self._chan.shutdown_write()
        except _TRANSFER_ERRORS:
            pass  # the channel is gone already; wait() will say how it ended

    def wait(self, timeout: float | None = None) -> int:
        if not self._chan.status_event.wait(timeout):
            return -1
        self._stderr.join(1.0)
        status = self._chan.exit_status
        if status == -1:
            # No exit-status: killed by a signal (ssh says 255 too), or the connection died.
            if not self._conn.alive:
                raise self._conn.lost(None)
            return 255
        return status

    def stderr_tail(self) -> str:
        return self._stderr.text()

    def hang_up(self) -> None:
        """Closing the channel makes sshd close the helper's pipes (and its status is lost)."""
        try:
            self._chan.close()
        except _TRANSFER_ERRORS:
            pass

    def close(self) -> None:
        self.hang_up()
        self._stderr.finish(f"{self.name}: the helper's stderr")
