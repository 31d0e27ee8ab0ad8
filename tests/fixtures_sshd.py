"""Fixtures: a real OpenSSH server on 127.0.0.1, and a check that no helper is left behind.

`sshd` (session scope) starts /usr/sbin/sshd on a free port with throwaway host and user keys,
and writes an ssh_config where `Host testhost` reaches it with the user key and a known_hosts
that holds the server's key. Two keys are authorized: the plain one (key_path) and one locked
with a passphrase (locked_key_path, passphrase), for the SSHPASS path.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import paramiko
import pytest

__all__ = ["SshServer", "sshd", "helper_processes", "no_helper_left", "HELPER_MARKER"]

SSHD = "/usr/sbin/sshd"
HELPER_MARKER = "bacpac_stage1"


@dataclass(frozen=True)
class SshServer:
    """A running sshd and the files a client needs to reach it as `testhost`."""

    host: str               # the alias in config_path
    hostname: str           # 127.0.0.1
    port: int
    user: str
    config_path: str        # ssh_config with `Host testhost`
    known_hosts: str        # holds "[127.0.0.1]:PORT ssh-ed25519 ..."
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
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bacpac-test",
                    "-f", str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text().strip()


def _locked_key(path: Path, passphrase: str) -> str:
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(path), password=passphrase)
    return f"{key.get_name()} {key.get_base64()} bacpac-locked"


def _sshd_config(tmp: Path, port: int) -> str:
    return f"""\
Port {port}
ListenAddress 127.0.0.1
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


def _client_config(tmp: Path, port: int, user: str) -> str:
    return f"""\
Host testhost
    HostName 127.0.0.1
    Port {port}
    User {user}
    IdentityFile {tmp}/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile {tmp}/known_hosts
    StrictHostKeyChecking yes
"""


def _wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within 10 s")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 for the whole session."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        pytest.skip(f"{SSHD} or ssh-keygen missing (install openssh-server)")
    tmp = tmp_path_factory.mktemp("sshd")
    port = _free_port()
    user = "root" if os.getuid() == 0 else os.environ.get("USER", "root")
    host_key = _keygen(tmp / "ssh_host_ed25519_key")
    user_key = _keygen(tmp / "id_ed25519")
    passphrase = "correct horse battery staple"
    locked_key = _locked_key(tmp / "id_rsa_locked", passphrase)
    (tmp / "authorized_keys").write_text(f"{user_key}\n{locked_key}\n")
    known_line = f"[127.0.0.1]:{port} {' '.join(host_key.split()[:2])}"
    (tmp / "known_hosts").write_text(known_line + "\n")
    (tmp / "sshd_config").write_text(_sshd_config(tmp, port))
    (tmp / "ssh_config").write_text(_client_config(tmp, port, user))
    os.makedirs("/run/sshd", exist_ok=True)
    log = tmp / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config"), "-E", str(log)],
                            stdin=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, log)
        yield SshServer(
            host="testhost", hostname="127.0.0.1", port=port, user=user,
            config_path=str(tmp / "ssh_config"), known_hosts=str(tmp / "known_hosts"),
            key_path=str(tmp / "id_ed25519"), locked_key_path=str(tmp / "id_rsa_locked"),
            passphrase=passphrase, host_key_pub=host_key, tmpdir=str(tmp), log_path=str(log))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def helper_processes() -> list[str]:
    """Command lines of live processes that carry the helper's marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue  # gone while we looked
        if HELPER_MARKER in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


@pytest.fixture
def no_helper_left() -> Iterator[None]:
    """Fail the test if a helper it started is still alive 10 s after it.

    Helpers alive before the test are not its doing (another test session on this machine).
    """
    before = set(helper_processes())
    yield
    deadline = time.monotonic() + 10
    while left := [p for p in helper_processes() if p not in before]:
        if time.monotonic() > deadline:
            pytest.fail("helper processes left behind: " + "; ".join(left))
        time.sleep(0.1)
