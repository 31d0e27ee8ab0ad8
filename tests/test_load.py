"""Load: twenty dups started at once against one host all finish, byte for byte, and leave
no helper behind (the test sshd allows MaxStartups 100 and MaxSessions 100)."""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pytest

from clirun import MiB, bacpac_env, digest_of, finish, start

RUNS = 20
LOAD_WITHIN = 90.0  # seconds for all of them, on 2 cores


def _image(path: Path, seed: int) -> Path:
    """12 MiB: 1 MiB of random data, a hole, 2 MiB of numbered lines, a hole; unique per seed."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rng.randbytes(MiB))
        f.seek(4 * MiB)
        lines = b"".join(b"image %d line %d\n" % (seed, n) for n in range(200000))
        f.write(lines[:2 * MiB])
        f.truncate(12 * MiB)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
    base = tmp_path_factory.mktemp("load")
    return [_image(base / f"src{n}.img", n) for n in range(RUNS)]


def test_twenty_dups_at_once_all_complete_identical(no_helper_left, sshd, images,
                                                     tmp_path) -> None:
    targets = [tmp_path / f"t{n}.img" for n in range(RUNS)]
    began = time.monotonic()
    procs = [start("dup", *sshd.cli_args(), "--no-progress", "--json", source,
                   f"testhost:{target}", env=bacpac_env())
             for source, target in zip(images, targets)]
    runs = [finish(proc, began, timeout=LOAD_WITHIN) for proc in procs]
    failed = [(n, run.stderr) for n, run in enumerate(runs) if run.returncode != 0]
    assert failed == []
    for source, target, run in zip(images, targets, runs):
        want = hashlib.sha256(source.read_bytes()).hexdigest()
        assert hashlib.sha256(target.read_bytes()).hexdigest() == want, target
        assert json.loads(run.stdout)["digest"] == digest_of(source)
