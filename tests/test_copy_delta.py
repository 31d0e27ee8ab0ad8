"""bacpac copy of a large file that changed: only its changed blocks cross (docs/wire.md,
"A tree copy", BLOCKS), and a file that cannot be read does not fail the others.

Checked on the result's bytes (sha256 against the source) and on the compressed bytes that
crossed (`bytes_sent`), with random content that zstd cannot shrink, so a whole-file send
is told apart from a delta by its size alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from clirun import MiB, bacpac, random_bytes, sha256_of, transport_for

SIZE = 8 * MiB
SPOTS = (100_000, 3 * MiB + 5, 7 * MiB + 12_345)  # three changed 4 KiB spots


class Copier:
    def __init__(self, direction: str, request: pytest.FixtureRequest) -> None:
        self.direction = direction
        self.remote = transport_for("local" if direction == "local" else "ssh", request)

    def run(self, src: Path, dest: Path, *extra: object):
        contents = f"{src}/"
        source = self.remote.target(contents) if self.direction == "pull" else contents
        target = self.remote.target(str(dest)) if self.direction == "push" else str(dest)
        return bacpac("copy", *self.remote.args(), "--no-progress", "--json", *extra, source,
                      target)

    def ok(self, src: Path, dest: Path, *extra: object) -> dict:
        run = self.run(src, dest, *extra)
        assert run.returncode == 0, run.stderr
        return run.summary


@pytest.fixture(params=["local", "push", "pull"])
def copier(request: pytest.FixtureRequest, no_helper_left) -> Copier:
    return Copier(request.param, request)


def change(path: Path, spots, seed: int) -> None:
    with open(path, "r+b") as f:
        for n, at in enumerate(spots):
            f.seek(at)
            f.write(random_bytes(4096, seed + n))
    os.utime(path, ns=(1, 1_700_000_000_123_456_789 + seed))


def two_trees(tmp_path: Path, size: int = SIZE) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big").write_bytes(random_bytes(size, 1))
    (src / "small").write_bytes(b"small file\n")
    return src, dst


def test_a_changed_large_file_sends_only_its_changed_blocks(copier: Copier,
                                                            tmp_path: Path) -> None:
    src, dst = two_trees(tmp_path)
    first = copier.ok(src, dst)
    assert first["bytes_sent"] > SIZE  # the first copy sends it whole
    change(src / "big", SPOTS, 10)
    summary = copier.ok(src, dst)
    assert sha256_of(dst / "big") == sha256_of(src / "big")
    assert (dst / "big").stat().st_mtime_ns == (src / "big").stat().st_mtime_ns
    assert summary["files_sent"] == 1
    assert summary["delta_files"] == 1
    assert summary["bytes_sent"] < 3 * 2 * 64 * 1024 + 64 * 1024  # at most 2 blocks a spot
    assert not [p for p in os.listdir(dst) if "bacpac-" in p]


def test_whole_file_sends_the_changed_file_whole(tmp_path: Path, no_helper_left) -> None:
    src, dst = two_trees(tmp_path)
    assert bacpac("copy", "--no-progress", f"{src}/", dst).returncode == 0
    change(src / "big", SPOTS, 20)
    run = bacpac("copy", "--no-progress", "--json", "--whole-file", f"{src}/", dst)
    assert run.returncode == 0, run.stderr
    assert run.summary["bytes_sent"] > SIZE
    assert run.summary["delta_files"] == 0
    assert sha256_of(dst / "big") == sha256_of(src / "big")


@pytest.mark.parametrize("new_size", [5 * MiB + 777, 11 * MiB + 3])
def test_a_shrunk_or_grown_file_is_rebuilt_exactly(tmp_path: Path, new_size: int,
                                                   no_helper_left) -> None:
    src, dst = two_trees(tmp_path)
    assert bacpac("copy", "--no-progress", f"{src}/", dst).returncode == 0
    old = (src / "big").read_bytes()
    data = old[:new_size] if new_size < len(old) else old + random_bytes(new_size - len(old), 3)
    (src / "big").write_bytes(data)
    run = bacpac("copy", "--no-progress", "--json", f"{src}/", dst)
    assert run.returncode == 0, run.stderr
    assert sha256_of(dst / "big") == sha256_of(src / "big")
    assert (dst / "big").stat().st_size == new_size
    assert run.summary["delta_files"] == 1
    assert run.summary["bytes_sent"] < max(0, new_size - SIZE) + 256 * 1024
