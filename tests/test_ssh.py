"""bacpac.transport.ssh against a real OpenSSH server: config, host keys, auth, the channel,
errors."""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import time
import socket
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bacpac.errors import AuthError, ConnectError, HostKeyError, UsageError
from bacpac.transport.ssh.connection import (SshOptions, _WatchedSocket, connect, over_loopback,
                                             parse_o_option)
from bacpac.transport.ssh.config import parse_jump, resolve_host
from clirun import FAIL_WITHIN
from fixtures_sshd import helper_pids

COUNT_STDIN = ("python3 -c 'import sys; r = sys.stdin.buffer.read1; "
               "print(sum(len(b) for b in iter(lambda: r(1 << 20), b\"\")))'")


@pytest.fixture(autouse=True)
def no_agent_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the keys they name: no agent, no $SSHPASS from the caller."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("SSHPASS", raising=False)


def opts(server, *options: str, **kw) -> SshOptions:
    return SshOptions(config_file=server.config_path,
                      options=tuple(parse_o_option(o) for o in options), **kw)


def read_all(chan) -> bytes:
    out = b""
    while chunk := chan.read(65536):
        out += chunk
    return out


def write_config(tmp_path: Path, server, **settings: str) -> str:
    """An ssh_config for `testhost` with the server's settings, overridden by `settings`."""
    base = {"HostName": "127.0.0.1", "Port": str(server.port), "User": server.user,
            "IdentityFile": server.key_path, "IdentitiesOnly": "yes",
            "UserKnownHostsFile": server.known_hosts, "StrictHostKeyChecking": "yes"}
    base.update(settings)
    path = tmp_path / "ssh_config"
    path.write_text("Host testhost\n" + "".join(f"    {k} {v}\n" for k, v in base.items()))
    return str(path)


def test_exec_returns_stdout_stderr_and_exit_status(sshd) -> None:
    with connect(sshd.host, None, opts(sshd), interactive=False) as conn:
        chan = conn.exec("echo hello; echo oops >&2; exit 3")
        assert chan.name == "testhost"
        assert read_all(chan) == b"hello\n"
        assert chan.wait(10) == 3
        assert chan.stderr_tail() == "oops"
        chan.close()


def test_negotiated_cipher_is_aes128_gcm(sshd) -> None:
    with connect(sshd.host, None, opts(sshd), interactive=False) as conn:
        assert conn.cipher == "aes128-gcm@openssh.com"


def test_write_50_mib_arrives_whole(sshd) -> None:
    data = os.urandom(1 << 20) * 50
    with connect(sshd.host, None, opts(sshd), interactive=False) as conn:
        chan = conn.exec(COUNT_STDIN)
        chan.write(memoryview(data))
        chan.close_write()
        assert read_all(chan) == b"%d\n" % len(data)
        assert chan.wait(30) == 0


def test_wait_times_out_with_minus_one(sshd) -> None:
    with connect(sshd.host, None, opts(sshd), interactive=False) as conn:
        chan = conn.exec("sleep 5")
        assert chan.wait(0.2) == -1
        chan.close()


def test_write_to_exited_command_is_transfer_error(sshd) -> None:
    from bacpac.errors import TransferError
    with connect(sshd.host, None, opts(sshd), interactive=False) as conn:
        chan = conn.exec("exit 0")
        assert chan.wait(10) == 0
        with pytest.raises(TransferError, match="^testhost: "):
            for _ in range(100):
                chan.write(b"x" * 65536)


def test_unknown_host_key_is_refused_and_known_hosts_unchanged(sshd, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyError) as e:
        connect(sshd.host, None, opts(sshd, f"UserKnownHostsFile={known}"), interactive=False)
    message = str(e.value)
    assert "host key" in message and "testhost" in message and "\n" not in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in message
    assert "StrictHostKeyChecking=accept-new" in message
    assert known.read_text() == ""


def test_accept_new_adds_the_key_then_connects(sshd, tmp_path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    options = opts(sshd, f"UserKnownHostsFile={known}", "StrictHostKeyChecking=accept-new")
    with connect(sshd.host, None, options, interactive=False) as conn:
        assert read_all(conn.exec("echo ok")) == b"ok\n"
    line = known.read_text()
    assert line.startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    assert line.split()[2] == sshd.host_key_pub.split()[1]
    assert known.stat().st_mode & 0o777 == 0o600
    strict = opts(sshd, f"UserKnownHostsFile={known}")
    connect(sshd.host, None, strict, interactive=False).close()


def test_changed_host_key_is_refused_even_with_accept_new(sshd, tmp_path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    impostor = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    known.write_text(f"[127.0.0.1]:{sshd.port} {impostor}\n")
    before = known.read_text()
    options = opts(sshd, f"UserKnownHostsFile={known}", "StrictHostKeyChecking=accept-new")
    with pytest.raises(HostKeyError) as e:
        connect(sshd.host, None, options, interactive=False)
    message = str(e.value)
    assert "host key" in message and "changed" in message and "SHA256:" in message
    assert f"ssh-keygen -f {known} -R '[127.0.0.1]:{sshd.port}'" in message
    assert known.read_text() == before


def test_hashed_known_hosts_entry_is_recognised(sshd, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(Path(sshd.known_hosts).read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert known.read_text().startswith("|1|")
    connect(sshd.host, None, opts(sshd, f"UserKnownHostsFile={known}"), interactive=False).close()


def other_key(tmp_path: Path, name: str = "other") -> str:
    """The "type base64" of a fresh key that no server here holds."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
                   check=True)
    return " ".join((tmp_path / f"{name}.pub").read_text().split()[:2])


def test_marker_and_malformed_lines_do_not_stop_other_hosts(sshd, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    key = other_key(tmp_path)
    known.write_text(f"@cert-authority *.example.com {key}\n"
                     f"@revoked * {key}\n"
                     f"@no-such-marker * {key}\n"
                     "garbage\n"
                     f"[127.0.0.1]:{sshd.port} ssh-ed25519 not-base64!\n"
                     + Path(sshd.known_hosts).read_text())
    connect(sshd.host, None, opts(sshd, f"UserKnownHostsFile={known}"), interactive=False).close()


@pytest.mark.parametrize("strict", ["yes", "no"])
def test_revoked_host_key_is_refused_even_with_strict_no(sshd, tmp_path, strict) -> None:
    known = tmp_path / "known_hosts"
    server_key = " ".join(sshd.host_key_pub.split()[:2])
    known.write_text(Path(sshd.known_hosts).read_text() + f"@revoked * {server_key}\n")
    options = opts(sshd, f"UserKnownHostsFile={known}", f"StrictHostKeyChecking={strict}")
    with pytest.raises(HostKeyError) as e:
        connect(sshd.host, None, options, interactive=False)
    assert str(e.value).startswith(
        f"testhost: the ssh-ed25519 host key for [127.0.0.1]:{sshd.port} (SHA256:")
    assert f"is marked as revoked in {known} line 2: " in str(e.value)
    assert "impersonate" in str(e.value) and "\n" not in str(e.value)


def test_host_known_only_through_a_certificate_authority_is_refused(sshd, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority [127.0.0.1]:* {other_key(tmp_path, 'ca')}\n")
    before = known.read_text()
    with pytest.raises(HostKeyError) as e:
        connect(sshd.host, None, opts(sshd, f"UserKnownHostsFile={known}"), interactive=False)
    message = str(e.value)
    assert message.startswith(f"testhost: [127.0.0.1]:{sshd.port} is known only through the "
                              f"certificate authority in {known} line 1, and bacpac does not "
                              "check host certificates; ")
    assert message.endswith(f"add it as a plain line with: ssh-keyscan -p {sshd.port} "
                            f"127.0.0.1 >> {known}")
    assert known.read_text() == before


def test_strict_no_connects_without_known_key(sshd, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    options = opts(sshd, f"UserKnownHostsFile={known}", "StrictHostKeyChecking=no")
    with connect(sshd.host, None, options, interactive=False) as conn:
        assert read_all(conn.exec("echo ok")) == b"ok\n"
    assert not known.exists()


def test_wrong_key_is_auth_error(sshd, tmp_path) -> None:
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    config = write_config(tmp_path, sshd, IdentityFile=str(wrong))
    with pytest.raises(AuthError) as e:
        connect("testhost", None, SshOptions(config_file=config), interactive=False)
    assert str(e.value) == f"{sshd.user}@testhost: authentication failed (tried: publickey)"


def test_locked_key_opens_with_sshpass(sshd, tmp_path, monkeypatch) -> None:
    config = write_config(tmp_path, sshd, IdentityFile=sshd.locked_key_path)
    monkeypatch.setenv("SSHPASS", sshd.passphrase)
    with connect("testhost", None, SshOptions(config_file=config), interactive=False) as conn:
        assert read_all(conn.exec("echo ok")) == b"ok\n"


def test_locked_key_without_passphrase_is_auth_error(sshd, tmp_path, monkeypatch) -> None:
    config = write_config(tmp_path, sshd, IdentityFile=sshd.locked_key_path)
    monkeypatch.setenv("SSHPASS", "wrong passphrase")
    with pytest.raises(AuthError) as e:
        connect("testhost", None, SshOptions(config_file=config), interactive=False)
    assert "authentication failed" in str(e.value)
    assert "wrong passphrase" not in str(e.value)


def test_locked_key_with_no_secret_set_names_the_hosts_own_variable(sshd, tmp_path,
                                                                      monkeypatch) -> None:
    """Neither BACPAC_PASSWORD_TESTHOST nor SSHPASS is set: the message must say where the
    passphrase is looked for, the host's own variable first, not blame SSHPASS alone."""
    config = write_config(tmp_path, sshd, IdentityFile=sshd.locked_key_path)
    monkeypatch.delenv("BACPAC_PASSWORD_TESTHOST", raising=False)
    with pytest.raises(AuthError) as e:
        connect("testhost", None, SshOptions(config_file=config), interactive=False)
    assert str(e.value).endswith(f"key {sshd.locked_key_path} is locked and neither "
                                 "BACPAC_PASSWORD_TESTHOST nor SSHPASS is set")


def test_identity_file_option_is_used(sshd, tmp_path) -> None:
    config = write_config(tmp_path, sshd, IdentityFile=str(tmp_path / "missing"))
    options = SshOptions(config_file=config, identity_files=(sshd.key_path,))
    connect("testhost", None, options, interactive=False).close()


def test_a_key_type_paramiko_does_not_know_is_skipped(sshd, tmp_path, capfd) -> None:
    """ssh -G lists id_dsa and the security-key files among its default identities."""
    dsa = tmp_path / "id_dsa"
    made = subprocess.run(["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(dsa)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("this ssh-keygen makes no DSA keys")
    options = SshOptions(config_file=sshd.config_path, identity_files=(str(dsa),))
    connect(sshd.host, None, options, interactive=False).close()
    assert capfd.readouterr().err == ""


def test_unresolvable_host_is_connect_error(sshd) -> None:
    with pytest.raises(ConnectError) as e:
        connect("no-such-host.invalid", None, opts(sshd), interactive=False)
    assert str(e.value) == "no-such-host.invalid: cannot resolve host name"


def test_closed_port_is_connect_error(sshd) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError) as e:
        connect(sshd.host, None, opts(sshd, port=port), interactive=False)
    assert str(e.value) == (
        f"testhost: cannot connect to 127.0.0.1 port {port}: Connection refused")


def test_proxy_jump_through_the_same_server(sshd) -> None:
    logins_before = Path(sshd.log_path).read_text().count("Accepted publickey")
    with connect(sshd.host, None, opts(sshd, "ProxyJump=testhost"), interactive=False) as conn:
        chan = conn.exec("echo jumped")
        assert read_all(chan) == b"jumped\n"
        assert chan.wait(10) == 0
    # One login for the jump host, one for the target through its direct-tcpip channel.
    assert Path(sshd.log_path).read_text().count("Accepted publickey") == logins_before + 2


def test_proxy_jump_to_closed_port_is_connect_error(sshd) -> None:
    with pytest.raises(ConnectError, match="through testhost"):
        connect(sshd.host, None, opts(sshd, "ProxyJump=testhost", port=1), interactive=False)


def test_the_route_is_told_before_the_handshake_and_a_jump_is_not_this_host(sshd) -> None:
    routes: list[tuple[bool, int]] = []

    def logins() -> int:
        return Path(sshd.log_path).read_text().count("Accepted publickey")

    def noted(here: bool) -> None:
        routes.append((here, logins()))

    before = logins()
    with connect(sshd.host, None, opts(sshd), interactive=False, on_route=noted) as conn:
        assert read_all(conn.exec("echo here")) == b"here\n"
    assert routes == [(True, before)]  # 127.0.0.1, told before the login
    routes.clear()
    with connect(sshd.host, None, opts(sshd, "ProxyJump=testhost"), interactive=False,
                 on_route=noted) as conn:
        assert read_all(conn.exec("echo jumped")) == b"jumped\n"
    # Through a jump host's tunnel the route is not known to stay here, whatever its end is.
    assert [here for here, _ in routes] == [False]


class _Addressed(socket.socket):
    """A connected TCP socket that reports the addresses it is given, as one to another host
    would (no second host is at hand in a test)."""

    def getpeername(self):
        return (self.peer, 22)

    def getsockname(self):
        return (self.local, 40000)


def test_over_loopback_knows_a_connection_that_stays_on_this_host() -> None:
    for address in ("127.0.0.1", "127.0.0.2"):
        with socket.create_server((address, 0)) as server:
            with socket.create_connection(server.getsockname()) as client:
                assert over_loopback(client), address
                server.accept()[0].close()
    with socket.create_server(("127.0.0.1", 0)) as server:
        with _Addressed(fileno=socket.create_connection(server.getsockname()).detach()) as sock:
            sock.peer, sock.local = "10.213.77.2", "10.213.77.1"
            assert not over_loopback(sock)  # another host, as the benchmark's namespace is
            sock.peer = sock.local = "192.0.2.7"  # one of this host's own addresses
            assert over_loopback(sock)
            sock.peer = "fe80::1%eth0"
            assert not over_loopback(sock)
    left, right = socket.socketpair()  # a ProxyCommand's pipe, or a jump host's channel
    with left, right:
        assert not over_loopback(left)
    assert not over_loopback(object())


class _SpiedSocket(socket.socket):
    """A socket whose setsockopt calls are recorded (socket.socket itself has no __dict__)."""

    def setsockopt(self, *args) -> None:
        self.calls = getattr(self, "calls", []) + [args]
        super().setsockopt(*args)


def test_transport_socket_acknowledges_each_read_at_once() -> None:
    """sshd leaves Nagle on, so each read is ACKed at once rather than after Linux's 40 ms."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with peer, _SpiedSocket(fileno=client.detach()) as spied:
            watched = _WatchedSocket(spied)
            peer.sendall(b"SSH-2.0-x\r\n")
            assert watched.recv(64) == b"SSH-2.0-x\r\n"
            assert spied.calls == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)]
    left, right = socket.socketpair()  # not TCP: a ProxyCommand's or a test's pipe
    with left, right:
        right.sendall(b"x")
        assert _WatchedSocket(left).recv(1) == b"x"


def test_server_alive_watchdog_keeps_a_live_connection(sshd) -> None:
    options = opts(sshd, "ServerAliveInterval=1", "ServerAliveCountMax=2")
    with connect(sshd.host, None, options, interactive=False) as conn:
        chan = conn.exec("sleep 4; echo done")
        assert read_all(chan) == b"done\n"
        assert chan.wait(10) == 0


@pytest.mark.parametrize("text, expected", [
    ("Port=2222", ("Port", "2222")),
    ("StrictHostKeyChecking accept-new", ("StrictHostKeyChecking", "accept-new")),
    ("  ConnectTimeout = 5 ", ("ConnectTimeout", "5")),
    ("UserKnownHostsFile=/tmp/a b", ("UserKnownHostsFile", "/tmp/a b")),
    ("ForwardAgent=no", ("ForwardAgent", "no")),
])
def test_o_option_parses(text, expected) -> None:
    assert parse_o_option(text) == expected


@pytest.mark.parametrize("text, says", [
    ("Port", "expected Key=Value"),
    ("=yes", "expected Key=Value"),
    ("Port=", "expected Key=Value"),
    ("NoSuchOption=1", "unknown ssh option NoSuchOption"),
    ("Host=x", "unknown ssh option Host"),
    ("Port=http", "port must be a number"),
    ("StrictHostKeyChecking=maybe", "StrictHostKeyChecking must be"),
    ("BatchMode=perhaps", "batchmode must be yes or no"),
])
def test_o_option_rejects_malformed(text, says) -> None:
    with pytest.raises(UsageError) as e:
        parse_o_option(text)
    assert says in str(e.value) and text.strip() in str(e.value)
    assert e.value.exit_code == 2


@pytest.fixture(params=["ssh -G", "own parser"])
def config_reader(request, monkeypatch, tmp_path) -> str:
    """A config test twice: resolved by OpenSSH's `ssh -G`, and by bacpac's own parser, which
    serves hosts without the OpenSSH client (here, a PATH without ssh)."""
    if request.param == "own parser":
        monkeypatch.setenv("PATH", str(tmp_path / "no-ssh-here"))
    elif shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    return request.param


def test_command_line_beats_config_and_first_config_value_wins(tmp_path, config_reader) -> None:
    config = tmp_path / "config"
    config.write_text("Host alias\n  HostName Example.ORG\n  Port 1000\n  User first\n"
                      "Host *\n  Port 2000\n  User second\n  ConnectTimeout 7\n")
    cfg = resolve_host("alias", None, SshOptions(config_file=str(config)))
    assert (cfg.hostname, cfg.port, cfg.user, cfg.connect_timeout) == ("example.org", 1000,
                                                                      "first", 7.0)
    cli = SshOptions(config_file=str(config), port=2222, login_name="cli",
                     options=(("Port", "3333"), ("User", "o-user")))
    cfg = resolve_host("alias", None, cli)
    assert (cfg.port, cfg.user) == (2222, "cli")
    assert resolve_host("alias", "spec", cli).user == "spec"
    assert resolve_host("alias", None, SshOptions(config_file=str(config), options=(
        ("Port", "3333"),))).port == 3333


def test_identity_files_accumulate_from_command_line_and_config(tmp_path,
                                                                config_reader) -> None:
    config = tmp_path / "config"
    config.write_text("Host h\n  IdentityFile ~/.ssh/%r_at_%h\n  User bob\n")
    key = tmp_path / "k"
    key.write_text("")  # ssh drops a -i file that is not there
    cfg = resolve_host("h", None, SshOptions(config_file=str(config), identity_files=(str(key),)))
    assert sorted(cfg.identity_files) == sorted((str(key), os.path.expanduser("~/.ssh/bob_at_h")))
    assert cfg.known_hosts_name == "h" and cfg.strict == "yes"


def test_local_fqdn_is_looked_up_only_for_a_value_that_uses_it(tmp_path, monkeypatch,
                                                              config_reader) -> None:
    """Paramiko resolves %l, the local FQDN, for every key that allows it: seconds where the
    local name does not resolve. Only a value holding %l may cost that lookup."""
    lookups = []
    monkeypatch.setattr(socket, "getfqdn", lambda *a: lookups.append(a) or "box.example")
    config = tmp_path / "config"
    config.write_text("Host h\n  IdentityFile ~/.ssh/%r_at_%h\n  User bob\n"
                      "Host l\n  IdentityFile /keys/%l/%h\n")
    cfg = resolve_host("h", None, SshOptions(config_file=str(config)))
    assert cfg.identity_files == (os.path.expanduser("~/.ssh/bob_at_h"),)
    assert lookups == []
    cfg = resolve_host("l", None, SshOptions(config_file=str(config)))
    assert cfg.identity_files == ("/keys/box.example/l",)
    assert len(lookups) == 1


def test_bad_value_in_config_file_is_one_line_usage_error(tmp_path, config_reader) -> None:
    config = tmp_path / "config"
    config.write_text("Host h\n  Port twenty-two\n")
    with pytest.raises(UsageError) as e:
        resolve_host("h", None, SshOptions(config_file=str(config)))
    message = str(e.value)
    assert "\n" not in message and str(config) in message
    ssh_words = f"h: ssh refused the configuration: {config} line 2: Bad port 'twenty-two'"
    own_words = "port must be a number"
    assert (ssh_words if config_reader == "ssh -G" else own_words) in message


def test_missing_config_file_is_usage_error(tmp_path, config_reader) -> None:
    with pytest.raises(UsageError, match="cannot read ssh config"):
        resolve_host("h", None, SshOptions(config_file=str(tmp_path / "nope")))


def test_include_with_a_glob_is_followed(tmp_path, config_reader) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-lab.conf").write_text("Host lab\n  HostName 10.1.2.3\n")
    (tmp_path / "conf.d" / "20-all.conf").write_text("Host *\n  Port 2022\n  User first\n")
    config = tmp_path / "config"
    config.write_text(f"Include {tmp_path}/conf.d/*.conf {tmp_path}/missing.conf\n"
                      "Host *\n  User second\n  ConnectTimeout 9\n")
    cfg = resolve_host("lab", None, SshOptions(config_file=str(config)))
    assert (cfg.hostname, cfg.port, cfg.user, cfg.connect_timeout) == ("10.1.2.3", 2022,
                                                                      "first", 9.0)


def test_own_parser_finds_a_relative_include_in_dot_ssh(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-ssh-here"))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "hosts.conf").write_text("Host lab\n  HostName 10.1.2.3\n")
    config = tmp_path / "elsewhere.conf"
    config.write_text("Include hosts.conf\n")
    cfg = resolve_host("lab", None, SshOptions(config_file=str(config)))
    assert cfg.hostname == "10.1.2.3"


def test_ssh_g_follows_an_include_inside_a_host_block(tmp_path) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    (tmp_path / "lab.conf").write_text("HostName 10.1.2.3\nHost other\n  Port 2000\n")
    config = tmp_path / "config"
    config.write_text(f"Host lab\n  Include {tmp_path}/lab.conf\n  Port 2022\n")
    cfg = resolve_host("lab", None, SshOptions(config_file=str(config)))
    assert (cfg.hostname, cfg.port) == ("10.1.2.3", 2022)
    assert resolve_host("other", None, SshOptions(config_file=str(config))).port == 22


def test_own_parser_refuses_an_include_inside_a_host_block(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-ssh-here"))
    config = tmp_path / "config"
    config.write_text(f"Host lab\n  Include {tmp_path}/lab.conf\n")
    with pytest.raises(UsageError) as e:
        resolve_host("lab", None, SshOptions(config_file=str(config)))
    assert str(e.value).startswith(f"{config} line 2: an Include inside 'Host lab' is read "
                                   "only by the OpenSSH client (ssh), which is not installed")


def test_match_and_tokens_are_honoured(tmp_path, config_reader) -> None:
    config = tmp_path / "config"
    config.write_text("Match originalhost lab user root\n  HostName 10.1.2.3\n"
                      f"Host *\n  UserKnownHostsFile {tmp_path}/known_%h_%p\n")
    cfg = resolve_host("lab", "root", SshOptions(config_file=str(config), port=2200))
    assert cfg.hostname == "10.1.2.3"
    assert cfg.known_hosts_files == (f"{tmp_path}/known_10.1.2.3_2200",)


def test_match_criteria_negation_quotes_and_equals_signs(tmp_path, config_reader) -> None:
    config = tmp_path / "config"
    config.write_text('Host = "lab" other\n  HostName="10.1.2.3"\n'
                      "Match !originalhost lab\n  Port 2000\n"
                      "Match host 10.1.2.*,!10.1.2.9 localuser *\n  User second\n"
                      'Match exec "test %n = other"\n  ConnectTimeout 7\n'
                      'Match all\n  IdentityFile "/keys/a key"\n')

    def resolved(host: str) -> tuple:
        cfg = resolve_host(host, None, SshOptions(config_file=str(config)))
        return cfg.hostname, cfg.port, cfg.user, cfg.connect_timeout, cfg.identity_files

    local = resolve_host("x", None, SshOptions()).user
    assert resolved("lab") == ("10.1.2.3", 22, "second", None, ("/keys/a key",))
    assert resolved("other") == ("10.1.2.3", 2000, "second", 7.0, ("/keys/a key",))
    assert resolved("third") == ("third", 2000, local, None, ("/keys/a key",))


def test_own_parser_refuses_a_match_criterion_it_does_not_know(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-ssh-here"))
    config = tmp_path / "config"
    config.write_text("Match tagged backup\n  Port 2000\n")
    with pytest.raises(UsageError) as e:
        resolve_host("lab", None, SshOptions(config_file=str(config)))
    assert str(e.value) == (f"{config}: Match tagged in the line 'Match tagged backup' is read "
                            "only by the OpenSSH client (ssh), which is not installed here: "
                            "install it")


def test_own_parser_ends_a_match_exec_that_hangs_at_its_deadline(tmp_path, monkeypatch) -> None:
    import bacpac.transport.ssh.config_file
    monkeypatch.setenv("PATH", str(tmp_path / "no-ssh-here"))
    monkeypatch.setattr(bacpac.transport.ssh.config_file, "MATCH_EXEC_TIMEOUT", 1.0)
    config = tmp_path / "config"
    config.write_text('Match exec "/bin/sleep 60"\n  Port 2200\n')
    with pytest.raises(UsageError) as e:
        resolve_host("lab", None, SshOptions(config_file=str(config)))
    assert str(e.value) == f"{config}: Match exec '/bin/sleep 60' did not finish within 1 s"


def test_ssh_g_that_hangs_in_match_exec_ends_at_its_deadline(tmp_path, monkeypatch) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    import bacpac.transport.ssh.config
    monkeypatch.setattr(bacpac.transport.ssh.config, "SSH_G_TIMEOUT", 1.0)
    config = tmp_path / "config"
    config.write_text('Match exec "sleep 60"\n  Port 2200\n')
    with pytest.raises(UsageError, match=r"^lab: ssh -G did not print the configuration within 1 s"):
        resolve_host("lab", None, SshOptions(config_file=str(config)))


@pytest.mark.parametrize("spec, expected", [
    ("jump", (None, "jump", None)),
    ("me@jump:2200", ("me", "jump", 2200)),
    ("ssh://me@[::1]:22", ("me", "::1", 22)),
])
def test_parse_jump(spec, expected) -> None:
    assert parse_jump(spec) == expected


def test_server_alive_watchdog_drops_a_silent_server(sshd) -> None:
    from bacpac.errors import TransferError
    options = opts(sshd, "ServerAliveInterval=1", "ServerAliveCountMax=2")
    with connect(sshd.host, None, options, interactive=False) as conn:
        chan = conn.exec("echo $PPID; exec sleep 60")
        session = int(chan.read(100))  # the sshd process serving this connection
        os.kill(session, signal.SIGSTOP)
        try:
            # On a thread, with a deadline: a watchdog that never fires would hang the read.
            read = concurrent.futures.ThreadPoolExecutor(1).submit(chan.read, 100)
            with pytest.raises(TransferError, match="^testhost: connection lost: no answer "
                               "from the server for"):
                read.result(timeout=FAIL_WITHIN)
        finally:
            # The killed session may be reaped at once by its parent sshd: nothing to wake.
            with contextlib.suppress(ProcessLookupError):
                os.kill(session, signal.SIGKILL)
                os.kill(session, signal.SIGCONT)


def test_connect_timeout_is_connect_error(sshd) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never routed, so the connect either hangs or fails at once.
    with pytest.raises(ConnectError, match=r"^testhost: cannot connect to 192\.0\.2\.1 port "):
        connect(sshd.host, None, opts(sshd, "HostName=192.0.2.1", "ConnectTimeout=1"),
                interactive=False)


def test_accept_new_with_hash_known_hosts_writes_a_hashed_line(sshd, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    options = opts(sshd, f"UserKnownHostsFile={known}", "StrictHostKeyChecking=accept-new",
                   "HashKnownHosts=yes")
    connect(sshd.host, None, options, interactive=False).close()
    line = known.read_text()
    assert line.startswith("|1|") and f"{sshd.port}" not in line
    connect(sshd.host, None, opts(sshd, f"UserKnownHostsFile={known}"), interactive=False).close()


def test_host_key_alias_names_the_known_hosts_entry(sshd, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"standby-disk {' '.join(sshd.host_key_pub.split()[:2])}\n")
    options = opts(sshd, f"UserKnownHostsFile={known}", "HostKeyAlias=standby-disk")
    connect(sshd.host, None, options, interactive=False).close()


def test_helper_pids_sees_the_marker_until_the_helper_exits(sshd, no_helper_left) -> None:
    with connect(sshd.host, None, opts(sshd), interactive=False) as conn:
        chan = conn.exec("python3 -c 'import sys; sys.stdin.read()' bacpac_stage1")
        deadline = time.monotonic() + 5
        while not helper_pids(sshd) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert helper_pids(sshd)
        chan.close_write()
        assert chan.wait(10) == 0


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except ConnectionRefusedError:
        return False


@pytest.mark.parametrize("kill", ["wrapper", "sshd"])
def test_loopback_sshd_command_leaves_no_server_behind(sshd, tmp_path, kill) -> None:
    """The quick start kills `tools/loopback_sshd.py DIR` when it is done: its sshd must stop
    too. And an sshd killed on its own ends the command."""
    tool = Path(__file__).resolve().parent.parent / "tools" / "loopback_sshd.py"
    proc = subprocess.Popen([sys.executable, str(tool), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == str(tmp_path / "ssh_config")
        port = int((tmp_path / "port").read_text())
        assert _listening(port)
        pid = int((tmp_path / "sshd.pid").read_text())
        os.kill(proc.pid if kill == "wrapper" else pid, signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not _listening(port)
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        proc.kill()
        proc.wait()


def test_loopback_sshd_command_starts_again_in_the_directory_of_an_earlier_run(tmp_path) -> None:
    """Its throwaway keys are made anew, not asked about (ssh-keygen's "Overwrite (y/n)?")."""
    tool = Path(__file__).resolve().parent.parent / "tools" / "loopback_sshd.py"
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, str(tool), str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == str(tmp_path / "ssh_config"), \
                proc.stderr.read() if proc.poll() is not None else ""
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            proc.kill()
            proc.wait()
