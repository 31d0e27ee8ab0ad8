"""Starting the helper: the interpreter, sudo, and what the helper says first (HELLO).

A stand-in "python" that speaks a scripted HELLO shows the client's checks of that first frame
without a real helper: a helper of another protocol version, and something that prints to stdout
in the helper's place, are each refused with a message that says so.
"""
from __future__ import annotations

import marshal
import os
import platform
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bacpac.transport import helper
from bacpac.transport.channel import LocalChannel
from bacpac.errors import TransferError
from clirun import bacpac, helper_pythons
from remote_helper.wire import protocol


def fake_python(tmp_path: Path, stdout: bytes) -> Path:
    """An executable that reads nothing, writes `stdout` and exits: a helper that lies."""
    data = tmp_path / "says.bin"
    data.write_bytes(stdout)
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\ncat {data}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(1 << 20))
    return path


def test_helper_of_another_protocol_version_is_refused_naming_both(tmp_path, image) -> None:
    hello = protocol.encode_json(protocol.HELLO, {"protocol": 99, "codecs": ["zstd"]})
    python = fake_python(tmp_path, hello)
    run = bacpac("dup", "--no-progress", "--remote-python", python, image, tmp_path / "t.img")
    line = run.one_error_line(1, alone=False)
    assert "protocol version 99" in line and f"this client {protocol.PROTOCOL_VERSION}" in line
    assert not (tmp_path / "t.img").exists()


HELLO = {"protocol": protocol.PROTOCOL_VERSION, "python": "3.6.15", "codecs": ["zstd", "zlib"],
         "zstd": "zstandard", "uid": 0, "hostname": "standby-1", "boot_id": "b", "pid": 1}
BROKEN_STREAMS = {
    "corrupt_header": (protocol.encode_json(protocol.HELLO, HELLO)
                       + b"BK" + bytes(30), "corrupt frame header (checksum mismatch)"),
    "hello_not_json": (protocol.encode(protocol.HELLO, b"{protocol: 1"), "bad HELLO payload"),
    "cut_inside_a_frame": (protocol.encode_json(protocol.HELLO, HELLO)
                           + protocol.encode_json(protocol.READY, {"kind": "file"})[:40],
                           "stream truncated in the middle of a READY payload"),
}


@pytest.mark.parametrize("said,why", BROKEN_STREAMS.values(), ids=list(BROKEN_STREAMS))
def test_a_helper_that_breaks_the_protocol_is_named_as_the_one_that_broke_it(
        tmp_path, image, said: bytes, why: str) -> None:
    python = fake_python(tmp_path, said)
    run = bacpac("dup", "--no-progress", "--remote-python", python, image, tmp_path / "t.img")
    line = run.one_error_line(1, alone=False)
    assert f"localhost: the helper broke the protocol: {why}" in line
    assert not (tmp_path / "t.img").exists()


def test_a_helper_that_never_says_hello_is_told_by_what_it_printed(tmp_path, image) -> None:
    python = fake_python(tmp_path, b"Welcome to standby-1!\n" + b"x" * 64)
    run = bacpac("dup", "--no-progress", "--remote-python", python, image, tmp_path / "t.img")
    run.one_error_line(1, "localhost: the helper never started: the command exited with status "
                       "0; stdout began 'Welcome to standby-1!\\nxxxx", alone=False)
    assert not (tmp_path / "t.img").exists()


def test_a_command_that_never_says_hello_is_ended_at_the_deadline() -> None:
    # It reads nothing, so the helper's code fills the pipe and the send blocks: the deadline
    # must end that wait too.
    channel = LocalChannel(["/bin/sh", "-c", "echo busy >&2; exec sleep 60"])
    with pytest.raises(TransferError, match=r"^localhost: the helper never started: no HELLO "
                       r"within 1 s, and the command is still running; stderr: busy$"):
        helper.HelperSession.start(channel, "localhost", None, hello_within=1)
    assert channel.wait(10) != -1  # ended, not left behind


def test_missing_remote_python_says_the_helper_cannot_start(sshd, tmp_path, image) -> None:
    run = bacpac("dup", "-F", sshd.config_path, "--no-progress", "--remote-python",
                 "/opt/no/python3", image, f"testhost:{tmp_path / 't.img'}")
    line = run.one_error_line(1, alone=False)
    assert "testhost: the helper never started: the command exited with status 127" in line
    assert "/opt/no/python3" in line
    assert not (tmp_path / "t.img").exists()


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed (tools/setup.sh "
                    "installs it)")
def test_sudo_runs_the_helper_through_sudo(sshd, tmp_path, image, no_helper_left) -> None:
    target = tmp_path / "t.img"
    run = bacpac("dup", "-F", sshd.config_path, "--no-progress", "--sudo", image,
                 f"testhost:{target}")
    assert run.returncode == 0, run.stderr
    assert target.read_bytes() == image.read_bytes()


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed (tools/setup.sh "
                    "installs it)")
def test_sudo_is_really_in_the_command(sshd, tmp_path, image) -> None:
    """Only sudo itself words a missing program this way: proof that --sudo put it there."""
    run = bacpac("dup", "-F", sshd.config_path, "--no-progress", "--sudo", "--remote-python",
                 "/opt/no/python3", image, f"testhost:{tmp_path / 't.img'}")
    line = run.one_error_line(1, alone=False)
    assert "the helper never started" in line and "stderr: sudo: " in line


# --- the helper's stdin pipe ------------------------------------------------------------------

F_GETPIPE_SZ = 1032


def test_the_helper_widens_its_input_pipe_to_a_mebibyte() -> None:
    from remote_helper.jobs.server import PIPE_SIZE, widen_pipe
    import fcntl
    read_end, write_end = os.pipe()
    try:
        assert fcntl.fcntl(read_end, F_GETPIPE_SZ) == 64 << 10
        widen_pipe(read_end)
        assert fcntl.fcntl(read_end, F_GETPIPE_SZ) == PIPE_SIZE == 1 << 20
        # The writer's side sees the same pipe: a MiB now goes in without a reader.
        os.set_blocking(write_end, False)
        assert os.write(write_end, bytes(1 << 20)) == 1 << 20
    finally:
        os.close(read_end)
        os.close(write_end)


def test_widening_leaves_what_is_not_a_pipe_alone(tmp_path) -> None:
    from remote_helper.jobs.server import widen_pipe
    with open(tmp_path / "f", "wb") as f:
        widen_pipe(f.fileno())  # a file: no pipe size to set, and no error
    widen_pipe(9999)  # not even open: nothing to do either


# --- the helper's code: compiled here, or on the target ---------------------------------------

def other_pythons() -> list[str]:
    """Interpreters of other versions than this one on this machine, oldest first."""
    return [path for version, path in helper_pythons().items()
            if version != "3.%d" % sys.version_info[1]]


def helper_says(python: str) -> tuple[int, bytes, bytes]:
    """Start the helper with `python` as bacpac does and end its input at once: (exit status,
    stdout, stderr). A helper that started says HELLO, then, its input ended before any job,
    exits 1 without a word."""
    done = subprocess.run(helper.helper_argv(python, False), input=helper.helper_payload(),
                          capture_output=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def poisoned_code(monkeypatch):
    """A payload whose compiled code for remote_helper.errors exits 42 when it is run."""
    real = helper._module_code

    def module_code(name: str, file: Path) -> bytes:
        if name == "remote_helper.errors":
            return marshal.dumps(compile("raise SystemExit(42)", "poison", "exec"))
        return real(name, file)

    helper._payload.cache_clear()
    monkeypatch.setattr(helper, "_module_code", module_code)
    yield
    helper._payload.cache_clear()


def test_the_helper_runs_the_code_compiled_here_when_its_python_is_this_one(poisoned_code):
    status, _, _ = helper_says(sys.executable)
    assert status == 42  # the poisoned code ran: the helper compiled nothing itself


def test_the_helper_compiles_its_source_when_its_python_is_another(poisoned_code):
    others = other_pythons()
    if not others:
        pytest.skip("no python3 of another version on this machine")
    status, stdout, stderr = helper_says(others[0])
    assert (status, stderr) == (1, b"")  # not 42: the poisoned code was never run
    decoder = protocol.Decoder()
    decoder.feed(stdout)
    hello = decoder.next_frame()
    assert hello.type == protocol.HELLO
    assert hello.json()["python"] != platform.python_version()


def test_a_dup_through_the_oldest_python_the_helper_supports(tmp_path, image) -> None:
    old = helper_pythons().get("3.6")
    if old is None:
        pytest.skip("no python3.6 on this machine (pyenv install 3.6 brings one)")
    target = tmp_path / "t.img"
    image.write_bytes(image.read_bytes() * 2)  # and at level 9, the second MiB goes as a copy
    run = bacpac("dup", "--json", "--no-progress", "--level", "9", "--remote-python", old,
                 image, target)
    assert run.returncode == 0, run.stderr
    assert run.summary["helper_python"].startswith("3.6.")
    assert run.summary["bytes_copied"] == 1 << 20
    assert target.read_bytes() == image.read_bytes()


def test_the_helper_command_is_ready_before_its_payload_is_built(monkeypatch) -> None:
    """The payload's length travels on stdin ahead of it, not in the command: the command can
    go out while the payload is still being built."""
    def not_yet(name: str, file: Path) -> bytes:
        raise AssertionError("the command waited for the payload")

    helper._payload.cache_clear()
    monkeypatch.setattr(helper, "_module_code", not_yet)
    try:
        argv = helper.helper_argv(sys.executable, False)
    finally:
        helper._payload.cache_clear()
    assert argv[-1] == helper.MARKER and helper.STAGE1 in argv


def test_a_payload_that_cannot_be_built_is_an_error_of_the_caller_not_a_thread(monkeypatch):
    def unreadable(name: str, file: Path) -> bytes:
        raise OSError(13, "Permission denied", str(file))

    raised_in_threads = []
    monkeypatch.setattr(threading, "excepthook", raised_in_threads.append)  # else: a traceback
    helper._payload.cache_clear()
    monkeypatch.setattr(helper, "_module_code", unreadable)
    try:
        thread = helper.prepare_payload()
        with pytest.raises(OSError, match="Permission denied"):
            helper.helper_payload()  # waits for the thread's try, then fails on its own
        thread.join()
    finally:
        helper._payload.cache_clear()
    assert raised_in_threads == []


class _HelperOutput:
    """A running helper's output: `said` arrives only once the client's send has broken (the
    race of a helper that writes ERROR and exits, breaking the client's send just before the
    frame is read); after it, or when it says nothing, silence until the test is over."""

    def __init__(self, said: bytes, send_broke: threading.Event,
                 test_over: threading.Event) -> None:
        self._said = said
        self._send_broke = send_broke
        self._test_over = test_over

    def read(self, n: int) -> bytes:
        said, self._said = self._said, b""
        if said:
            self._send_broke.wait(10)
            return said
        self._test_over.wait()
        return b""

    def wait(self, timeout: float) -> int:
        return 0

    def stderr_tail(self) -> str:
        return ""


@pytest.fixture
def helper_saying():
    """Factory: helper_saying(said) -> (a Receiver on a helper whose output is `said`, and a
    send that breaks, as a helper's exit breaks the channel)."""
    send_broke, test_over = threading.Event(), threading.Event()

    def broken_send(*args) -> None:
        send_broke.set()
        raise TransferError("host: the helper closed its input")

    def make(said: bytes) -> tuple:
        output = _HelperOutput(said, send_broke, test_over)
        receiver = helper.Receiver(helper.HelperSession(output, "host", None), "/t.img",
                                   lambda written: None)
        return receiver, broken_send

    yield make
    test_over.set()


def test_a_broken_send_is_explained_by_the_helpers_error_even_when_it_arrives_later(
        helper_saying) -> None:
    said = protocol.encode_json(protocol.ERROR, {"kind": "io", "message": "No space left on device"})
    receiver, broken_send = helper_saying(said)
    with pytest.raises(TransferError, match="^host:/t.img: No space left on device$"):
        receiver.send(broken_send, b"frame")


def test_a_broken_send_the_helper_does_not_explain_says_so_itself(monkeypatch,
                                                                   helper_saying) -> None:
    monkeypatch.setattr(helper, "HELPER_ACCOUNT_WAIT", 0.2)
    silent, broken_send = helper_saying(b"")
    with pytest.raises(TransferError, match="^host: the helper closed its input$"):
        silent.send(broken_send, b"frame")
