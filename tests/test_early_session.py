"""A dup's helper session begun early (cli._begin_early, transport.helper.EarlySession): the
connection is made while the engine is imported, and every outcome is the one a session begun
in its place gave: the same copy, the same one-line error and exit code, and nothing left
behind when the command fails before it takes the session."""
from __future__ import annotations

import subprocess

import pytest

from bacpac import cli
from bacpac.spec import parse_endpoint
from bacpac.transport.helper import ConnectOptions, EarlySession, open_session
from bacpac.transport.ssh.connection import SshOptions
from clirun import MiB, write_file
from fixtures_leaks import Leftovers


def _run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    """bacpac's command line in this process, as `bacpac` runs it: the exit code and the
    last stderr line."""
    args = cli.build_parser().parse_args([str(arg) for arg in argv])
    code = cli.run(args.run, args)
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def test_a_dup_through_an_early_session_copies_and_leaves_nothing(
        sshd, tmp_path, capsys, no_leaks: Leftovers) -> None:
    source = write_file(tmp_path / "disk.img", 3 * MiB, {0: b"data", 2 * MiB: b"more"})
    target = tmp_path / "copy.img"
    code, said = _run(capsys, "dup", "-F", sshd.config_path, "--no-progress", source,
                      f"testhost:{target}")
    assert code == 0, said
    assert target.read_bytes() == source.read_bytes()
    assert no_leaks.leftovers() == []


def test_a_missing_source_is_told_first_and_the_early_session_is_closed(
        sshd, tmp_path, capsys, no_leaks: Leftovers) -> None:
    missing = tmp_path / "missing.img"
    target = tmp_path / "copy.img"
    code, said = _run(capsys, "dup", "-F", sshd.config_path, "--no-progress", missing,
                      f"testhost:{target}")
    assert code == 2 and said.startswith("bacpac: ") and str(missing) in said, said
    assert "No such file" in said, said
    assert not target.exists()
    assert no_leaks.leftovers() == []  # the early session's thread, channel and helper


def test_an_early_connection_that_fails_gives_its_one_line_error(
        sshd, tmp_path, capsys, no_leaks: Leftovers) -> None:
    """A host key that changed: refused where the connection is taken, exit 1, one line."""
    source = write_file(tmp_path / "disk.img", MiB, {0: b"data"})
    target = tmp_path / "copy.img"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True)
    other_key = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other_key}\n")
    code, said = _run(capsys, "dup", "-F", sshd.config_path, "-o",
                      f"UserKnownHostsFile={known_hosts}", "--no-progress", source,
                      f"testhost:{target}")
    assert code == 1, said
    assert said.startswith("bacpac: ") and "testhost" in said and "host key" in said, said
    assert not target.exists()
    assert no_leaks.leftovers() == []


def test_an_early_session_is_taken_once_and_only_for_its_own_job(sshd, no_leaks) -> None:
    target = parse_endpoint("testhost:/nonexistent/t.img")
    options = ConnectOptions(ssh=SshOptions(config_file=sshd.config_path))
    early = EarlySession(target, options, "dup")
    with_early = ConnectOptions(ssh=options.ssh, early=early)
    routes: list[bool] = []
    assert early.take(target, options, "copy", None) is None  # another job's session
    session = open_session(target, with_early, hello=False, on_route=routes.append, job="dup")
    try:
        assert routes == [True]  # told what the connection found: this host
        assert early.take(target, options, "dup", None) is None  # taken already
    finally:
        session.close()
    early.discard()  # after a take: nothing to close
    assert no_leaks.leftovers() == []
