"""bacpac copy interrupted: Ctrl-C (SIGINT), a shutdown's SIGTERM and a closed terminal's
SIGHUP end a running copy as they end a dup: one line naming DEST and the signal, exit
128 + signal, the JSON saying so; no helper left, no temporary file in DEST, and a rerun
completes the copy.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from clirun import MiB, finish, random_bytes, start, transport_for, wait_until
from fixtures_sshd import helper_pids
from test_copy import same_tree

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
CASES = [("push", s) for s in SIGNALS] + [("local", signal.SIGINT), ("pull", signal.SIGTERM)]


def slow_source(top: Path) -> Path:
    src = top / "src"
    src.mkdir()
    for n in range(12):  # random: slow to compress at level 19, so the copy can be cut
        (src / f"f{n:02d}").write_bytes(random_bytes(2 * MiB, n))
    return src


def temporaries(top: Path) -> list[str]:
    return [n for n in os.listdir(top) if ".bacpac-" in n] if top.exists() else []


@pytest.mark.parametrize("direction,signum", CASES,
                         ids=[f"{d}-{signal.Signals(s).name}" for d, s in CASES])
def test_an_interrupted_copy_says_so_leaves_nothing_and_reruns(
        tmp_path: Path, direction: str, signum: int, request: pytest.FixtureRequest,
        no_helper_left) -> None:
    remote = transport_for("local" if direction == "local" else "ssh", request)
    src, dst = slow_source(tmp_path), tmp_path / "dst"
    source = remote.target(f"{src}/") if direction == "pull" else f"{src}/"
    dest = remote.target(dst) if direction == "push" else str(dst)
    began = time.monotonic()
    proc = start("copy", *remote.args(), "--no-progress", "--json", "--level", "19", source,
                 dest)
    wait_until(lambda: dst.exists() and any(n.startswith("f") for n in os.listdir(dst)), 60,
               "a first file in DEST", proc)
    proc.send_signal(signum)
    run = finish(proc, began)
    name = signal.Signals(signum).name
    line = run.one_error_line(128 + signum, dest, f"interrupted by {name}", "run the copy again")
    assert run.summary["status"] == "error"
    assert run.summary["error"] == line[len("bacpac: "):]
    wait_until(lambda: not helper_pids(remote.sshd), 10, "every helper gone")
    wait_until(lambda: not temporaries(dst), 10, "no temporary file in DEST")
    done = [n for n in os.listdir(dst) if n.startswith("f")]
    assert 0 < len(done) < 12
    again = start("copy", *remote.args(), "--no-progress", "--json", source, dest)
    rerun = finish(again, time.monotonic())
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.summary["files_sent"] == 12 - len(done)
    same_tree(src, dst)
    assert not temporaries(dst)
