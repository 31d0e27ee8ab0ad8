"""Running bacpac's command line from tests, and the small helpers every CLI test file needs.

Every end-to-end test runs `python -m bacpac ...` as a subprocess of this checkout, so what it
checks is what a user sees: the exit code, the "bacpac: ..." line on stderr, the JSON summary
on stdout, and the bytes on disk. Test files import from here, never from each other.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

KiB = 1 << 10
MiB = 1 << 20
REPO = str(Path(__file__).resolve().parents[1])  # run this checkout's bacpac
TRANSPORTS = ["local", "ssh"]
RUN_WITHIN = 120.0  # seconds: a run that should succeed, on 2 cores
FAIL_WITHIN = 30.0  # seconds: every fault must end the run within this
SMALL_WITHIN = 30.0  # seconds: a run of a few MiB that should succeed; only a hang guard
SLOW = ("--level", "19", "--block-size", "1M")  # about 3 MB/s of random data on 2 cores


# ---- one run of the command line -------------------------------------------------------------

@dataclass
class Result:
    """A finished bacpac run: what a user saw, and how long it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    @property
    def summary(self) -> dict:
        """The one JSON line that --json prints on stdout."""
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, self.stdout
        return json.loads(lines[0])

    @property
    def error_line(self) -> str:
        """The last stderr line: where bacpac says why it failed."""
        lines = self.stderr.strip().splitlines()
        assert lines, "no error line on stderr"
        return lines[-1]

    def one_error_line(self, code: int, *words: str, alone: bool = True) -> str:
        """The "bacpac: ..." line of a failed run, holding each of `words`: the only line on
        stderr, or (not `alone`) the last, after the log lines a non-terminal gets."""
        assert self.returncode == code, self
        lines = self.stderr.strip().splitlines()
        if alone:
            assert len(lines) == 1, self.stderr
        line = self.error_line
        assert line.startswith("bacpac: "), self.stderr
        for word in words:
            assert word in line, (word, line)
        return line


def bacpac_env(**extra: str) -> dict:
    """This environment without what would let a run pass by luck (an agent, a passphrase, an
    unbuffered stdout, which would hide a missing flush) or change its output (debug
    tracebacks); plus `extra`."""
    env = dict(os.environ)
    for name in ("SSH_AUTH_SOCK", "BACPAC_DEBUG", "SSHPASS", "PYTHONUNBUFFERED"):
        env.pop(name, None)
    env.update(extra)
    return env


def start(*args: object, env: Optional[dict] = None, stdout: int = subprocess.PIPE,
          stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """Start `bacpac ARGS` as a user would; output captured as text unless sent elsewhere.

    SIGINT, SIGTERM and SIGHUP are reset to their defaults, as in a shell's foreground job: a
    suite started in the background (`pytest &`, `nohup`) inherits some ignored, and the
    interrupt tests would then see none (bacpac leaves an ignored signal ignored)."""
    return subprocess.Popen([sys.executable, "-m", "bacpac", *map(str, args)], stdout=stdout,
                            stderr=stderr, universal_newlines=True, env=env or bacpac_env(),
                            cwd=REPO, preexec_fn=_default_signals)


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def finish(proc: subprocess.Popen, began: float, timeout: float = RUN_WITHIN) -> Result:
    """Wait for a started run (killing it if it outlives `timeout`); never a traceback."""
    try:
        out, err = proc.communicate(timeout=max(0.1, began + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"bacpac still running after {timeout:.0f} s: {err[-2000:]}")
    assert "Traceback" not in err, err
    return Result(proc.returncode, out, err, time.monotonic() - began)


def bacpac(*args: object, env: Optional[dict] = None, timeout: float = RUN_WITHIN) -> Result:
    """Run the CLI to the end as a user would; never a traceback, whatever happened."""
    began = time.monotonic()
    return finish(start(*args, env=env), began, timeout)


def assert_failed_in_one_line(run: Result, *words: str, code: int = 1) -> str:
    """Exit `code` within FAIL_WITHIN, the last stderr line 'bacpac: ...' holding `words`."""
    assert run.seconds < FAIL_WITHIN, run
    return run.one_error_line(code, *words, alone=False)


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               proc: Optional[subprocess.Popen] = None) -> None:
    """Poll `condition` every 20 ms; fail naming `what` after `timeout` or if `proc` ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"bacpac ended (status {proc.returncode}) before {what}: "
                        f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.02)


# ---- the Pythons a helper may run on ----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def helper_pythons() -> dict[str, str]:
    """Every Python from 3.6 up on this machine (pyenv keeps several; python3.N on the PATH),
    one per minor version, this interpreter for its own: {"3.6": path, ...}, oldest first."""
    found = {"3.%d" % sys.version_info[1]: sys.executable}
    for minor in range(6, 20):
        version = f"3.{minor}"
        candidates = [shutil.which(f"python{version}")] + sorted(glob.glob(
            os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
        for path in filter(None, candidates):  # a pyenv shim may name a version it lacks
            if version not in found and _python_version(path) == version:
                found[version] = path
    return dict(sorted(found.items(), key=lambda item: int(item[0].split(".")[1])))


def _python_version(python: str) -> str:
    try:
        done = subprocess.run([python, "-c", "import sys; print('3.%d' % sys.version_info[1])"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


# ---- where a target lives ----------------------------------------------------------------------

@dataclass
class Transport:
    """How a test names a path: "local" (no HOST: part) or "ssh" (testhost:PATH through the
    session's sshd, which runs on this machine, so a test reads remote files back directly)."""

    name: str
    sshd: Optional[object] = None

    def target(self, path) -> str:
        """The path as the command line takes it, and as error messages name it."""
        return str(path) if self.name == "local" else f"testhost:{path}"

    def args(self) -> list[str]:
        return [] if self.sshd is None else ["-F", self.sshd.config_path]

    def dup_args(self, source, target_path, *extra: object) -> list[str]:
        return ["dup", *self.args(), "--no-progress", "--json", *extra, str(source),
                self.target(target_path)]

    def dup(self, source, target_path, *extra: object) -> Result:
        return bacpac(*self.dup_args(source, target_path, *extra))

    def delta(self, source, target_path, *extra: object) -> Result:
        """A --delta dup that must succeed; returns its run."""
        result = self.dup(source, target_path, "--delta", *extra)
        assert result.returncode == 0, result.stderr
        assert result.summary["status"] == "ok", result.summary
        return result


def transport_for(name: str, request: pytest.FixtureRequest) -> Transport:
    """A Transport by name; "ssh" starts (or reuses) the session's sshd."""
    return Transport(name, request.getfixturevalue("sshd") if name == "ssh" else None)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, no_helper_left) -> Transport:
    """Each test twice, locally and over ssh, failing if it leaves a helper behind.
    Import it into a test module to use it."""
    return transport_for(request.param, request)


# ---- files, images and their bytes -------------------------------------------------------------

def sha256_of(path, size: Optional[int] = None) -> str:
    """sha256 of a file or device, or of its first `size` bytes (which must all be there)."""
    digest = hashlib.sha256()
    remaining = size if size is not None else -1  # -1: to the end (a device has no st_size)
    with open(path, "rb") as f:
        while remaining:
            chunk = f.read(4 * MiB if remaining < 0 else min(4 * MiB, remaining))
            if not chunk:
                assert size is None, f"{path} ended before {size} bytes"
                break
            digest.update(chunk)
            remaining -= len(chunk) if remaining > 0 else 0
    return digest.hexdigest()


def digest_of(path, size: Optional[int] = None) -> str:
    """The image digest bacpac reports (remote_helper/target/imagedigest.py): the sha256 of the
    lines `HEX  -` of each 1 MiB piece's sha256, written out here with hashlib alone."""
    outer = hashlib.sha256()
    remaining = size if size is not None else -1
    with open(path, "rb") as f:
        while remaining:
            piece = f.read(MiB if remaining < 0 else min(MiB, remaining))
            if not piece:
                assert size is None, f"{path} ended before {size} bytes"
                break
            outer.update(hashlib.sha256(piece).hexdigest().encode() + b"  -\n")
            remaining -= len(piece) if remaining > 0 else 0
    return outer.hexdigest()


def allocated(path) -> int:
    """Bytes the file system holds for `path` (0 if it is gone): holes take none."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def random_image(path: Path, size: int, seed: int = 0) -> Path:
    """An incompressible image of whole MiBs: the wire carries every byte."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(rng.randbytes(MiB))
    return path


def write_file(path, size: int, data: dict[int, bytes], keep: bool = False) -> Path:
    """A file of `size` bytes holding `data` ({offset: bytes}); holes elsewhere unless `keep`,
    which changes an existing file in place and keeps the rest of its content."""
    with open(path, "r+b" if keep else "wb") as f:
        f.truncate(size)
        for offset, chunk in data.items():
            f.seek(offset)
            f.write(chunk)
    return Path(path)
