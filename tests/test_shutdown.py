"""Deterministic shutdown: every command, run in this process through the real command line,
leaves no thread, descriptor or child process behind, whether it succeeds, is refused, loses
its helper or is interrupted; and the check that says so does fail when something is left.

The commands run through bacpac.cli.run, as `bacpac` itself runs them, but in this process:
`python -m bacpac` ends its process at once, which would hide anything left running.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from rich.console import Console

from bacpac import cli, threads
from bacpac.commands import dup, savesets
from bacpac.engine import pipeline
from bacpac.ui.live import RichSink
from bacpac.ui.events import JobFinished, JobStarted, JobSummary
from clirun import TRANSPORTS, MiB, Transport, random_image, sha256_of, transport_for
from fixtures_leaks import Leftovers
from fixtures_sshd import helper_pids
from remote_helper.jobs import dup as helper_dup, server
from remote_helper.wire import protocol, zstdframe

SLICED = ("--block-size", "1M")  # several blocks, so that a run can be cut between two


@pytest.fixture(params=TRANSPORTS)
def where(request: pytest.FixtureRequest) -> Transport:
    """Each test locally and over ssh."""
    return transport_for(request.param, request)


def run(*argv: object) -> int:
    """`bacpac ARGV` in this process, as main() runs it, but returning its exit status."""
    args = cli.build_parser().parse_args([str(arg) for arg in argv])
    return cli.run(args.run, args)


def dup_argv(where: Transport, source: Path, target: Path, *extra: object) -> list:
    return ["dup", *where.args(), "--no-progress", *extra, source, where.target(target)]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return random_image(tmp_path / "source.img", 6 * MiB, seed=18)


def test_every_command_leaves_no_thread_descriptor_or_process(
        where: Transport, source: Path, tmp_path: Path, no_leaks: Leftovers) -> None:
    target, saveset = tmp_path / "target.img", tmp_path / "disk.bacpac"
    restored, backup = tmp_path / "restored.img", tmp_path / "backup.bacpac"
    commands = {
        "dup --saveset": dup_argv(where, source, target, "--saveset", saveset),
        "dup --delta": dup_argv(where, source, target, "--delta", "--force"),
        "backup": ["backup", *where.args(), "--no-progress", source, where.target(backup)],
        "verify": ["verify", *where.args(), where.target(saveset)],
        "info": ["info", *where.args(), where.target(saveset)],
        "restore": ["restore", *where.args(), "--no-progress", where.target(saveset), restored],
    }
    for name, argv in commands.items():
        assert run(*argv) == 0, name
        assert no_leaks.leftovers() == [], name
    assert sha256_of(restored) == sha256_of(target) == sha256_of(source)


def test_a_refused_target_leaves_nothing_behind(
        where: Transport, source: Path, no_leaks: Leftovers) -> None:
    assert run(*dup_argv(where, source, source)) == 2  # the source itself


def test_a_refused_host_key_leaves_nothing_behind(
        sshd, source: Path, tmp_path: Path, no_leaks: Leftovers) -> None:
    (tmp_path / "known_hosts").write_text("")
    assert run(*dup_argv(Transport("ssh", sshd), source, tmp_path / "target.img", "-o",
                         f"UserKnownHostsFile={tmp_path / 'known_hosts'}")) == 1


def test_a_connection_with_keepalives_leaves_nothing_behind(
        sshd, source: Path, tmp_path: Path, no_leaks: Leftovers) -> None:
    """ServerAliveInterval starts a watchdog thread, and keepalives on threads of their own."""
    assert run(*dup_argv(Transport("ssh", sshd), source, tmp_path / "target.img", "-o",
                         "ServerAliveInterval=1")) == 0


def test_a_helper_that_dies_mid_transfer_leaves_nothing_behind(
        where: Transport, source: Path, tmp_path: Path, no_leaks: Leftovers, monkeypatch) -> None:
    def kill_the_helper() -> None:
        pids = helper_pids(where.sshd)
        assert pids, "no helper process found by its marker"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    after_the_first_block(monkeypatch, kill_the_helper)
    assert run(*dup_argv(where, source, tmp_path / "target.img", *SLICED)) == 1


def test_an_interrupt_mid_transfer_leaves_nothing_behind(
        where: Transport, source: Path, tmp_path: Path, no_leaks: Leftovers, monkeypatch) -> None:
    """Ctrl-C: the KeyboardInterrupt that SIGINT raises in the main thread, between two sends."""
    def interrupt() -> None:
        raise KeyboardInterrupt()

    after_the_first_block(monkeypatch, interrupt)
    assert run(*dup_argv(where, source, tmp_path / "target.img", *SLICED)) == 128 + signal.SIGINT


@pytest.mark.parametrize("command", ["dup", "verify"])
def test_an_interrupt_while_connecting_names_what_the_job_was_for(
        command: str, source: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C while the helper is still being reached (a slow login): nothing was written,
    and the line still says which host and path the job was for."""
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt()

    module = dup if command == "dup" else savesets
    monkeypatch.setattr(module, "open_session", ctrl_c)
    path = tmp_path / ("target.img" if command == "dup" else "some.saveset")
    argv = [source, f"standby:{path}"] if command == "dup" else [f"standby:{path}"]
    assert run(command, "--no-progress", *argv) == 128 + signal.SIGINT
    assert capsys.readouterr().err == f"bacpac: standby:{path}: interrupted by SIGINT\n"
    assert not path.exists()


def after_the_first_block(monkeypatch, action) -> None:
    """Make the dup's sender call action() once, right after its first DATA frame."""
    send = dup.SessionSender.block
    done = []

    def block(self, *args) -> None:
        send(self, *args)
        if not done:
            done.append(True)
            action()

    monkeypatch.setattr(dup.SessionSender, "block", block)


def test_the_live_display_stops_its_refresh_thread(no_leaks: Leftovers) -> None:
    sink = RichSink(Console(file=io.StringIO(), force_terminal=True))
    sink.emit(JobStarted("job", "dup", "source.img", "target.img", None, MiB))
    sink.emit(JobFinished("job", JobSummary("dup", "source.img", "target.img", status="ok")))
    sink.close()


def test_a_thread_that_does_not_stop_in_time_is_told_on_stderr(capsys) -> None:
    stop = threading.Event()
    stuck = threading.Thread(target=stop.wait, name="stuck")
    stuck.start()
    try:
        assert not threads.join([stuck], "the test", within=0.05)
    finally:
        stop.set()
        stuck.join()
    assert capsys.readouterr().err == (
        "bacpac: warning: the test: the stuck thread did not stop within 0.05 s; its "
        "descriptors stay open until bacpac exits\n")


# ---- the check can fail ------------------------------------------------------------------------

def test_the_leak_check_reports_a_thread_a_job_leaves_running(
        source: Path, tmp_path: Path, monkeypatch) -> None:
    stop = threading.Event()
    stray = threading.Thread(target=stop.wait, name="stray", daemon=True)
    transfer = dup._transfer

    def transfer_and_leave_a_thread(*args, **kwargs) -> None:
        stray.start()
        transfer(*args, **kwargs)

    monkeypatch.setattr(dup, "_transfer", transfer_and_leave_a_thread)
    before = Leftovers.now()
    try:
        assert run(*dup_argv(Transport("local"), source, tmp_path / "target.img")) == 0
        assert before.leftovers() == ["thread stray"]
    finally:
        stop.set()
        stray.join()
    assert before.leftovers() == []


def test_the_leak_check_reports_a_descriptor_and_a_child_a_job_leaves(
        source: Path, tmp_path: Path, monkeypatch) -> None:
    kept: list = []
    monkeypatch.setattr(dup, "close_source", kept.append)  # the source is never closed
    transfer = dup._transfer

    def transfer_and_leave_a_child(*args, **kwargs) -> None:
        kept.append(subprocess.Popen(["sleep", "60"]))
        transfer(*args, **kwargs)

    monkeypatch.setattr(dup, "_transfer", transfer_and_leave_a_child)
    before = Leftovers.now()
    try:
        assert run(*dup_argv(Transport("local"), source, tmp_path / "target.img")) == 0
        source_fd, child = kept[1].fd, kept[0]
        assert sorted(before.leftovers()) == [
            f"child process {child.pid} (sleep)", f"descriptor {source_fd} on {source}"]
    finally:
        for thing in kept:
            if isinstance(thing, subprocess.Popen):
                thing.kill()
                thing.wait()
            else:
                os.close(thing.fd)
    assert before.leftovers() == []


def test_a_source_whose_reader_does_not_stop_stays_open(
        source: Path, tmp_path: Path, monkeypatch) -> None:
    """Closed under a reader still running, its number could go to the next file opened."""
    close = pipeline.ImageStream.close

    def still_running(self) -> bool:
        close(self)
        return False

    monkeypatch.setattr(pipeline.ImageStream, "close", still_running)
    before = Leftovers.now()
    assert run(*dup_argv(Transport("local"), source, tmp_path / "target.img")) == 0
    left = before.leftovers()
    assert len(left) == 1 and left[0].endswith(f" on {source}"), left
    os.close(int(left[0].split()[1]))


# ---- the helper ---------------------------------------------------------------------------------

def test_the_helper_joins_its_writer_before_closing_a_target_it_refuses_midway(
        tmp_path: Path) -> None:
    """A frame out of order after the first block: the helper fails the job, and its writer
    thread is stopped and joined before the target is closed."""
    block = os.urandom(MiB)
    frames = (protocol.encode(protocol.DATA, zstdframe.compress_frame(block), 0,
                              protocol.CODEC_ZSTD, MiB)
              + protocol.encode_hole(3 * MiB, MiB))  # expected at 1 MiB
    job = {"size": 4 * MiB, "path": str(tmp_path / "target.img"), "check": "sha256",
           "codec": "zstd", "source": {}}
    with open(tmp_path / "frames.out", "wb") as sent:
        before = Leftovers.now()
        with pytest.raises(server.ProtocolError, match="expected offset"):
            helper_dup.run_dup(job, server.Input(io.BytesIO(frames)), server.Output(sent.fileno()))
        assert before.leftovers() == []
    assert (tmp_path / "frames.out").read_bytes().startswith(protocol.MAGIC)
