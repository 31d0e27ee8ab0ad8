"""The helper's whole path on every Python from 3.6 up that this machine has.

The helper runs on the target's python3, which may be far older or newer than the client's
(design: 3.6 and newer). Each interpreter clirun.helper_pythons() finds (pyenv keeps several
here) carries a dup with a saveset and --verify, a --delta dup of a changed source, `verify` of
the saveset and a `restore` of it, over the local subprocess path and over ssh, through
`--remote-python`; the test id names the version. Small images keep the whole matrix within
seconds per interpreter, and every run has SMALL_WITHIN to finish: a helper that hangs on one
Python fails its test instead of holding up the suite. Most of these Pythons lack the
zstandard module: their helper decompresses through the zstd tool, which this path covers too.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clirun import (SMALL_WITHIN, TRANSPORTS, MiB, Result, bacpac, helper_pythons, sha256_of,
                    transport_for, write_file)

PYTHONS = helper_pythons()
SIZE = 6 * MiB + 4321  # not a multiple of the 4 MiB frame


def test_this_machine_has_pythons_other_than_the_clients_for_the_helper() -> None:
    if len(PYTHONS) < 2:
        pytest.skip(f"only {', '.join(PYTHONS)} here: no other Python for the helper "
                    "(pyenv install 3.6 brings one)")


def source_image(path: Path) -> Path:
    """Random data, a hole, text and an odd tail: every kind of frame a dup sends."""
    text = b"a line the helper writes on every python\n" * (MiB // 42)
    return write_file(path, SIZE, {0: os.urandom(2 * MiB), 4 * MiB: text,
                                   SIZE - 4321: os.urandom(4321)})


def ok(run: Result) -> dict:
    assert run.returncode == 0, run.stderr
    summary = run.summary
    assert summary["status"] == "ok", summary
    return summary


@pytest.mark.parametrize("where", TRANSPORTS)
@pytest.mark.parametrize("version", list(PYTHONS), ids=[f"python{v}" for v in PYTHONS])
def test_dup_delta_saveset_verify_and_restore_through_the_helper_on_python(
        version, where, request, tmp_path, no_helper_left) -> None:
    transport = transport_for(where, request)
    python = ("--remote-python", PYTHONS[version])
    source, target = source_image(tmp_path / "source.img"), tmp_path / "target.img"
    saveset, restored = tmp_path / "disk.bacpac", tmp_path / "restored.img"
    first = sha256_of(source)

    dup = ok(bacpac(*transport.dup_args(source, target, *python, "--saveset", saveset,
                                        "--verify"), timeout=SMALL_WITHIN))
    assert dup["helper_python"].startswith(version + "."), dup
    assert sha256_of(target) == first == dup["sha256"]

    write_file(source, SIZE, {5 * MiB: b"changed since the first dup"}, keep=True)
    delta = ok(bacpac(*transport.dup_args(source, target, *python, "--delta", "--verify"),
                      timeout=SMALL_WITHIN))
    assert sha256_of(target) == sha256_of(source) != first
    assert delta["blocks_matched"] > 0, delta

    checked = ok(bacpac("verify", *transport.args(), "--json", *python,
                        transport.target(saveset), timeout=SMALL_WITHIN))
    assert checked["sha256"] == first
    restore = bacpac("restore", *transport.args(), "--no-progress", "--json", *python,
                     saveset, transport.target(restored), timeout=SMALL_WITHIN)
    ok(restore)
    assert sha256_of(restored) == first


def an_old_python() -> str:
    """A Python older than the helper's 3.6 (pyenv's 2.7 here), or a skip."""
    for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.*/bin/python"))) + [
            shutil.which("python2")]:  # a pyenv shim may name a version it lacks: run it
        if path and subprocess.run([path, "-c", "import sys; assert sys.version_info < (3, 6)"],
                                   capture_output=True, timeout=30).returncode == 0:
            return path
    pytest.skip("no Python older than 3.6 on this machine (pyenv install 2.7 brings one)")


@pytest.mark.parametrize("where", TRANSPORTS)
def test_a_python_older_than_3_6_is_named_with_its_version(where, request, tmp_path,
                                                           no_helper_left) -> None:
    """`--remote-python /usr/bin/python` on an old host: the line says which Python the helper
    needs and which it found, not the first stage's AttributeError."""
    transport = transport_for(where, request)
    python = an_old_python()
    source, target = source_image(tmp_path / "source.img"), tmp_path / "target.img"
    run = bacpac(*transport.dup_args(source, target, "--remote-python", python),
                 timeout=SMALL_WITHIN)
    line = run.one_error_line(1, "the helper needs Python 3.6 or newer", f"{python} is 2.7")
    assert "Error" not in line, line
    assert not target.exists()
