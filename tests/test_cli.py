"""The command line itself: help, version, and usage errors (exit 2, one line, no traceback)."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from bacpac import cli
from bacpac.ui.events import JobSummary, Sink
from bacpac.commands.jobs import run_tracked
from clirun import bacpac, start


def test_help_lists_dup() -> None:
    proc = bacpac("--help")
    assert proc.returncode == 0
    assert "dup" in proc.stdout


def test_dup_help_shows_its_options() -> None:
    proc = bacpac("dup", "--help")
    assert proc.returncode == 0
    for option in ("--force", "--verify", "--json", "--no-progress", "-F", "-o", "--sudo"):
        assert option in proc.stdout, option


def test_version() -> None:
    proc = bacpac("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("bacpac ")


@pytest.mark.parametrize("args", [
    [],
    ["nosuchcommand"],
    ["dup"],
    ["dup", "only-one-operand"],
    ["dup", "a", "b", "c"],
    ["dup", "--nosuchflag", "a", "b"],
    ["dup", "--level", "0", "a", "b"],
    ["dup", "--block-size", "lots", "a", "b"],
    ["dup", "-p", "port", "a", "host:b"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = bacpac(*args)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr or proc.stderr.startswith("bacpac: ")


@pytest.mark.parametrize("args,words", [
    (["dup", "--block-size", "64M", "a", "b"], "--block-size"),
    (["dup", "disk.img", ":/dev/sdb"], "empty host"),
    (["dup", "disk.img", "host:"], "no path"),
    (["dup", "-o", "Bogus=1", "disk.img", "host:/x"], "unknown ssh option"),
])
def test_validation_errors_are_one_line_exit_2(args: list[str], words: str) -> None:
    proc = bacpac(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("bacpac: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert words in proc.stderr


def test_a_reader_gone_from_stdout_is_one_line_and_exit_1(tmp_path) -> None:
    # `bacpac dup --json ... | head -0`: the copy is made, the summary has nowhere to go.
    data = os.urandom(1 << 20)
    source = tmp_path / "source.img"
    source.write_bytes(data)
    proc = start("dup", "--json", "--no-progress", source, tmp_path / "copy.img")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert err == "bacpac: stdout: Broken pipe (its reader went away)\n"
    assert (tmp_path / "copy.img").read_bytes() == data


@pytest.mark.parametrize("port", ["99999", "0", "-1", "ssh"])
def test_dup_refuses_a_port_out_of_range_as_the_option_it_is(port: str) -> None:
    proc = bacpac("dup", "-p", port, "disk.img", "host:/x")
    assert proc.returncode == 2, proc.stderr
    assert f"argument -p: '{port}' is not a port (1 to 65535)" in proc.stderr.splitlines()[-1]
    assert "ssh_config" not in proc.stderr


@pytest.mark.parametrize("args,words", [
    (["dup", "--json", "-p", "99999", "disk.img", "host:/x"], "argument -p: '99999'"),
    (["dup", "--json", "--nosuchflag", "a", "b"], "unrecognized arguments: --nosuchflag"),
    (["dup", "--json", "only-one-operand"], "the following arguments are required"),
    (["dup", "--json", "-o", "Bogus=1", "disk.img", "host:/x"], "unknown ssh option Bogus"),
    (["dup", "--json", "--block-size", "64M", "a", "host:/x"], "--block-size"),
])
def test_json_answers_a_usage_error_with_one_error_object(args: list[str], words: str) -> None:
    proc = bacpac(*args)
    assert proc.returncode == 2, proc.stderr
    summary = proc.summary
    assert summary["status"] == "error" and summary["exit_code"] == 2, summary
    assert summary["command"] == "dup"
    assert words in summary["error"]
    assert words in proc.stderr  # the usage line or "bacpac: ..." on stderr stays


def test_info_json_answers_a_failure_with_one_error_object(tmp_path) -> None:
    proc = bacpac("info", "--json", tmp_path / "missing.bacpac")
    assert proc.returncode == 1, proc.stderr
    assert proc.summary == {"command": "info", "status": "error", "exit_code": 1,
                            "error": f"{tmp_path / 'missing.bacpac'}: No such file or directory"}


def test_an_internal_error_is_one_line_and_the_error_of_the_json(monkeypatch, capsys) -> None:
    """A bug (no BacpacError) still gets one line, and --json says it too, not "error": null."""
    monkeypatch.delenv("BACPAC_DEBUG", raising=False)

    def buggy(summary: JobSummary) -> None:
        raise RuntimeError("a bug")

    def command(args: argparse.Namespace, sink: Sink) -> None:
        run_tracked(sink, "job", JobSummary(command="dup", source="a", target="b"), buggy)

    args = argparse.Namespace(command="dup", no_progress=True, json=True)
    assert cli.run(command, args) == 1
    out, err = capsys.readouterr()
    message = "internal error: RuntimeError: a bug (set BACPAC_DEBUG=1 for the traceback)"
    assert err == f"bacpac: {message}\n"
    assert json.loads(out)["error"] == message


# A Ctrl-C delivered while `bacpac` is still importing its modules (a good part of its
# start-up): the import hook sends SIGINT to the process itself, as a terminal would, while
# bacpac.cli is being imported.
CTRL_C_DURING_START = """\
import builtins, os, signal, sys
real_import = builtins.__import__
def ctrl_c(name, *args, **kwargs):
    if name == "argparse":
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = ctrl_c
sys.argv = ["bacpac", "info", "--json", "some.saveset"]
from bacpac.__main__ import main
main()
"""


def test_ctrl_c_during_start_up_is_one_line_and_exit_130() -> None:
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", CTRL_C_DURING_START], capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode, run.stderr) == (130, "bacpac: interrupted by SIGINT\n")
    assert json.loads(run.stdout) == {"command": "info", "status": "error",
                                      "error": "interrupted by SIGINT", "exit_code": 130}
