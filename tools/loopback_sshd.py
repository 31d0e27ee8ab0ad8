"""A throwaway OpenSSH server on 127.0.0.1, for the tests, the quick start and the benchmark.

start_sshd(DIR) starts /usr/sbin/sshd on a free port with throwaway host and user keys, and
writes an ssh_config where `Host testhost` reaches it with the user key and a known_hosts that
holds the server's key. Two keys are authorized: the plain one (key_path) and one locked with a
passphrase (locked_key_path, passphrase), for the SSHPASS path.

    python3 tools/loopback_sshd.py DIR    starts one in DIR and prints its ssh_config path;
                                          it runs until it or its sshd is killed (SIGTERM,
                                          SIGINT or SIGHUP), and then stops both.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import paramiko


class SshdError(Exception):
    """sshd is missing or would not start."""


SSHD = "/usr/sbin/sshd"
PASSPHRASE = "correct horse battery staple"


@dataclass(frozen=True)
class SshServer:
    """A running sshd and the files a client needs to reach it as `testhost`."""

    host: str               # the alias in config_path
    hostname: str           # the listen address, 127.0.0.1 by default
    port: int
    user: str
    config_path: str        # ssh_config with `Host testhost`
    known_hosts: str        # holds "[HOSTNAME]:PORT ssh-ed25519 ..."
    key_path: str           # authorized user key, no passphrase
    locked_key_path: str    # authorized user key (RSA, PEM) locked with `passphrase`
    passphrase: str
    host_key_pub: str       # the server's public host key line
    tmpdir: str
    log_path: str

    def cli_args(self) -> list[str]:
        return ["-F", self.config_path]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    """A fresh throwaway key at path: one left by an earlier run is replaced, not asked about."""
    for old in (path, path.parent / (path.name + ".pub")):
        old.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bacpac-test",
                    "-f", str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text().strip()


def _locked_key(path: Path, passphrase: str) -> str:
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(path), password=passphrase)
    return f"{key.get_name()} {key.get_base64()} bacpac-locked"


def _sshd_config(tmp: Path, port: int, listen: str) -> str:
    return f"""\
Port {port}
ListenAddress {listen}
HostKey {tmp}/ssh_host_ed25519_key
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
"""


def _client_config(tmp: Path, port: int, user: str, listen: str) -> str:
    return f"""\
Host testhost
    HostName {listen}
    Port {port}
    User {user}
    IdentityFile {tmp}/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile {tmp}/known_hosts
    StrictHostKeyChecking yes
"""


def _wait_listening(proc: subprocess.Popen, listen: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshdError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection((listen, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SshdError(f"sshd did not listen on {listen}:{port} within 10 s")


def sshd_available() -> str:
    """"" when a loopback sshd can be started here, else why not."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        return f"{SSHD} or ssh-keygen missing (install openssh-server)"
    return ""


@contextlib.contextmanager
def start_sshd(directory: str, listen: str = "127.0.0.1", prefix: Sequence[str] = (),
               settings: Sequence[str] = ()) -> Iterator[SshServer]:
    """Run sshd on a free port of `listen` until the block ends; files go in `directory`.

    `prefix` goes before sshd's command line, e.g. ["ip", "netns", "exec", NS] for a server in
    a network namespace, which the benchmark reaches over a rate-limited veth pair. `settings`
    are sshd_config lines of the caller's, e.g. "RekeyLimit 1M".
    """
    why_not = sshd_available()
    if why_not:
        raise SshdError(why_not)
    tmp = Path(directory).resolve()  # sshd re-executes from / for every connection
    proc = _launch(tmp, listen, list(prefix), list(settings))
    try:
        yield _server(tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _launch(tmp: Path, listen: str, prefix: list[str], settings: list[str]) -> subprocess.Popen:
    port = _free_port()
    user = "root" if os.getuid() == 0 else os.environ.get("USER", "root")
    host_key = _keygen(tmp / "ssh_host_ed25519_key")
    user_key = _keygen(tmp / "id_ed25519")
    locked_key = _locked_key(tmp / "id_rsa_locked", PASSPHRASE)
    (tmp / "authorized_keys").write_text(f"{user_key}\n{locked_key}\n")
    known_line = f"[{listen}]:{port} {' '.join(host_key.split()[:2])}"
    (tmp / "known_hosts").write_text(known_line + "\n")
    (tmp / "sshd_config").write_text(_sshd_config(tmp, port, listen)
                                     + "".join(line + "\n" for line in settings))
    (tmp / "ssh_config").write_text(_client_config(tmp, port, user, listen))
    (tmp / "listen").write_text(f"{listen}\n")
    (tmp / "port").write_text(f"{port}\n")
    (tmp / "user").write_text(f"{user}\n")
    os.makedirs("/run/sshd", exist_ok=True)
    log = tmp / "sshd.log"
    proc = subprocess.Popen([*prefix, SSHD, "-D", "-e", "-f", str(tmp / "sshd_config"), "-E", str(log)],
                            stdin=subprocess.DEVNULL)
    _wait_listening(proc, listen, port, log)
    return proc


def _server(tmp: Path) -> SshServer:
    return SshServer(
        host="testhost", hostname=(tmp / "listen").read_text().strip(), port=int((tmp / "port").read_text()),
        user=(tmp / "user").read_text().strip(), config_path=str(tmp / "ssh_config"),
        known_hosts=str(tmp / "known_hosts"), key_path=str(tmp / "id_ed25519"),
        locked_key_path=str(tmp / "id_rsa_locked"), passphrase=PASSPHRASE,
        host_key_pub=(tmp / "ssh_host_ed25519_key.pub").read_text().strip(), tmpdir=str(tmp),
        log_path=str(tmp / "sshd.log"))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    os.makedirs(argv[1], exist_ok=True)
    # A signal's default action would end this process without the `with` block's cleanup,
    # leaving sshd running on its own: the quick start kills this process when it is done.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    try:
        with start_sshd(argv[1]) as server:
            print(server.config_path, flush=True)
            pid = int((Path(server.tmpdir) / "sshd.pid").read_text())
            while _running(pid):
                time.sleep(0.5)
        return 0
    except SshdError as e:
        print(f"loopback_sshd: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _running(pid: int) -> bool:
    """False once process `pid` has exited; a zombie has."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][:1] != "Z"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
