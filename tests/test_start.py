"""Starting the helper against servers set up in other ways: a key exchange known by its RFC
name only, algorithms with nothing in common, a remote command that runs in the helper's place
(ForceCommand), login noise over a missing python3.

Each server is a real OpenSSH server with lines of its own in sshd_config (sshd_with). Every run
must end within seconds, with one line that says what the server did.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from bacpac.transport.ssh.algorithms import no_match
from clirun import FAIL_WITHIN, MiB, assert_failed_in_one_line, bacpac, random_image, sha256_of


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return random_image(tmp_path_factory.mktemp("start") / "source.img", 4 * MiB, seed=17)


def dup(server, source: Path, target: Path, *extra: str):
    return bacpac("dup", *server.cli_args(), "--no-progress", *extra, source,
                  f"testhost:{target}", timeout=FAIL_WITHIN)


# ---- key exchange and algorithms --------------------------------------------------------------

def test_a_server_that_allows_only_the_standard_curve25519_name_is_reached(
        sshd_with, image, tmp_path) -> None:
    server = sshd_with("KexAlgorithms curve25519-sha256")
    target = tmp_path / "t.img"
    run = dup(server, image, target)
    assert run.returncode == 0, run.stderr
    assert sha256_of(target) == sha256_of(image)


NOTHING_IN_COMMON = {
    "key_exchange": ("KexAlgorithms sntrup761x25519-sha512@openssh.com",
                     "no key exchange in common: the server offers "
                     "sntrup761x25519-sha512@openssh.com; bacpac supports ", "curve25519-sha256"),
    "cipher": ("Ciphers chacha20-poly1305@openssh.com",
               "no cipher in common: the server offers chacha20-poly1305@openssh.com; "
               "bacpac supports aes128-gcm@openssh.com, ", "aes128-ctr"),
    "mac": ("MACs umac-64-etm@openssh.com",
            "no MAC in common: the server offers umac-64-etm@openssh.com; bacpac supports ",
            "hmac-sha2-256"),
}


@pytest.mark.parametrize("setting,says,supported", NOTHING_IN_COMMON.values(),
                         ids=list(NOTHING_IN_COMMON))
def test_a_handshake_with_nothing_in_common_names_both_sides_algorithms(
        sshd_with, image, tmp_path, setting: str, says: str, supported: str) -> None:
    target = tmp_path / "t.img"
    run = dup(sshd_with(setting), image, target)
    assert_failed_in_one_line(run, "testhost", "SSH handshake", says, supported)
    assert not target.exists()


def test_no_match_names_the_host_key_types_of_both_sides() -> None:
    # A server whose host keys are all of a type Paramiko lacks, which no sshd here can be
    # made to be: the transport's lists stand in for it.
    transport = SimpleNamespace(
        offered={"kex_algo_list": ["curve25519-sha256", "kex-strict-s-v00@openssh.com"],
                 "server_key_algo_list": ["sk-ssh-ed25519@openssh.com"],
                 "client_encrypt_algo_list": ["aes128-ctr"],
                 "server_encrypt_algo_list": ["aes128-ctr"],
                 "client_mac_algo_list": ["hmac-sha2-256"],
                 "server_mac_algo_list": ["hmac-sha2-256"]},
        preferred_kex=("curve25519-sha256",), preferred_keys=("ssh-ed25519", "rsa-sha2-512"),
        preferred_ciphers=("aes128-ctr",), preferred_macs=("hmac-sha2-256",))
    assert no_match(transport) == ("no host key type in common: the server offers "
                                   "sk-ssh-ed25519@openssh.com; bacpac supports ssh-ed25519, "
                                   "rsa-sha2-512")
    transport.offered["server_key_algo_list"] = ["ssh-ed25519"]
    assert no_match(transport) is None


# ---- a remote command in the helper's place ---------------------------------------------------

# The sleep's length is this test run's own, so that ending it ends no other run's.
@pytest.mark.parametrize("command", ["cat > /dev/null", f"/bin/sleep 90.{os.getpid()}"],
                         ids=["swallows_its_input", "reads_nothing"])
def test_a_command_that_never_exits_in_the_helpers_place_fails_at_the_connect_timeout(
        sshd_with, image, tmp_path, command: str) -> None:
    target = tmp_path / "t.img"
    run = dup(sshd_with(f"ForceCommand {command}"), image, target, "-o", "ConnectTimeout=2")
    try:
        assert_failed_in_one_line(
            run, "testhost: the helper never started: no HELLO within 2 s, and the command "
            "is still running; it wrote nothing", "ForceCommand")
        assert not target.exists()
    finally:  # sshd leaves a command that ignores its closed pipes running: end it here
        subprocess.run(["pkill", "-f", f"^{command}$"], check=False)


def test_a_server_that_allows_only_sftp_is_quoted(sshd_with, image, tmp_path) -> None:
    target = tmp_path / "t.img"
    run = dup(sshd_with("ForceCommand internal-sftp"), image, target)
    assert_failed_in_one_line(
        run, "testhost: the helper never started: the command exited with status 1; "
        "stdout began 'This service allows sftp connections only.\\n'")
    assert not target.exists()


@pytest.fixture(scope="module")
def greeting_shell_without_python(tmp_path_factory) -> str:
    """A login that prints a greeting on stdout, as an `echo` in ~/.bashrc does, and then runs
    the command with a PATH that holds no python3."""
    script = tmp_path_factory.mktemp("login") / "greeting-shell"
    script.write_text("#!/bin/sh\necho 'Welcome to standby-1!'\n"
                      "PATH=/nonexistent exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n")
    script.chmod(0o755)
    return str(script)


def test_login_noise_does_not_hide_a_missing_python(sshd_with, greeting_shell_without_python,
                                                   image, tmp_path) -> None:
    target = tmp_path / "t.img"
    run = dup(sshd_with(f"ForceCommand {greeting_shell_without_python}"), image, target)
    assert_failed_in_one_line(
        run, "testhost: the helper never started: the command exited with status 127; "
        "stderr: /bin/sh: 1: python3: not found; stdout began 'Welcome to standby-1!\\n'")
    assert not target.exists()


def test_a_long_login_greeting_is_shown_cut_short_on_one_line(
        sshd_with, tmp_path_factory, image, tmp_path) -> None:
    script = tmp_path_factory.mktemp("banner") / "banner-shell"
    script.write_text("#!/bin/sh\nprintf '\\033[1mNOTICE\\033[0m\\r\\n'\nseq 1000\nexit 3\n")
    script.chmod(0o755)
    run = dup(sshd_with(f"ForceCommand {script}"), image, tmp_path / "t.img")
    line = assert_failed_in_one_line(run, "exited with status 3; stdout began "
                                     "'\\x1b[1mNOTICE\\x1b[0m\\r\\n1\\n2\\n3\\n")
    assert line.endswith("...")
    assert len(line) < 200
