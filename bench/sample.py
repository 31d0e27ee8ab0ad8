"""The benchmark's sample disks: an ext4 image of real files, and a copy with 1% changed.

# Strategy: real data compresses like real data, so the image holds documentation and Python
# trees from this machine (hard-linked into a staging directory, copied where linking fails)
# until its content reaches the budget, and `mke2fs -d` builds the file system from them. The
# changed copy overwrites scattered 50 KiB runs with random bytes, each inside a stretch that
# holds data, as a day of changes would. Images are cached under the work directory, keyed by
# size and by a manifest written last, so a rerun does not rebuild them.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

SOURCE_GLOBS = ["/usr/share/doc", "/usr/lib/python3*", "/root/.pyenv/versions/*/lib/python3*"]
CONTENT_SHARE = 0.40    # of the image size; ext4's metadata and block rounding bring it to ~half
CHANGED_SHARE = 0.01
RUN_BYTES = 50 * 1024


@dataclass(frozen=True)
class Sample:
    """The two images and what the report says about them."""

    original: str
    changed: str
    size: int
    used_bytes: int         # blocks in use in the file system
    file_bytes: int         # content of the files copied in
    files: int
    changed_runs: int
    sha_original: str
    sha_changed: str


def sha256_file(path: str) -> str:
    """sha256 of a file's whole content, holes read as zeros."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_sample(work: Path, size: int) -> Sample:
    """The cached sample of `size` bytes under `work`, built first if missing."""
    work = work.resolve()
    manifest = work / f"sample-{size}.json"
    if manifest.exists():
        sample = Sample(**json.loads(manifest.read_text()))
        if os.path.exists(sample.original) and os.path.exists(sample.changed):
            return sample
    sample = _build(work, size)
    manifest.write_text(json.dumps(asdict(sample), indent=1))
    return sample


def make_image(path: Path, size: int) -> tuple[int, int]:
    """An ext4 image of `size` bytes at path, about half full of real files; (files, bytes)."""
    stage = path.parent / f".stage-{path.name}"
    shutil.rmtree(stage, ignore_errors=True)
    files, file_bytes = _stage(stage, int(size * CONTENT_SHARE))
    path.unlink(missing_ok=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(stage), str(path),
                    f"{size // 1024}k"], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(stage)
    return files, file_bytes


def _build(work: Path, size: int) -> Sample:
    original = work / f"sample-{size}.img"
    changed = work / f"sample-{size}.changed.img"
    files, file_bytes = make_image(original, size)
    subprocess.run(["cp", "--sparse=always", str(original), str(changed)], check=True)
    runs = _scatter_changes(str(changed), size, random.Random(size))
    return Sample(str(original), str(changed), size, _used_bytes(original), file_bytes, files,
                  runs, sha256_file(str(original)), sha256_file(str(changed)))


def _source_files() -> Iterator[tuple[Path, Path]]:
    """(root, file) for every regular file or symlink under the source trees, in a fixed order."""
    for pattern in SOURCE_GLOBS:
        for root in sorted(glob.glob(pattern)):
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(root), Path(dirpath) / name


def _stage(stage: Path, budget: int, files_wanted: int = 0,
           place: Callable[[Path, Path], object] | None = None) -> tuple[int, int]:
    """Link source files under `stage` (or `place` them, e.g. copy) until their content reaches
    `budget` and their number `files_wanted`; (files, bytes)."""
    files = total = 0
    for root, path in _source_files():
        if total >= budget and files >= files_wanted:
            break
        dest = stage / root.relative_to("/") / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            os.symlink(os.readlink(path), dest)
            continue
        if not path.is_file():
            continue
        (place or _link_or_copy)(path, dest)
        files += 1
        total += dest.stat().st_size
    return files, total


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another file system, or protected_hardlinks
        shutil.copy2(src, dest)


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of every stretch of the file that holds data."""
    extents, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            break
        pos = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, pos))
    return extents


def _scatter_changes(path: str, size: int, rng: random.Random) -> int:
    """Overwrite 1% of the image in RUN_BYTES runs of random bytes, each over non-zero data."""
    wanted = max(1, round(size * CHANGED_SHARE / RUN_BYTES))
    fd = os.open(path, os.O_RDWR)
    try:
        extents = [e for e in _data_extents(fd, size) if e[1] - e[0] >= RUN_BYTES]
        weights = [end - start for start, end in extents]
        done = 0
        while done < wanted:
            start, end = rng.choices(extents, weights)[0]
            offset = rng.randrange(start, end - RUN_BYTES + 1)
            if not any(os.pread(fd, RUN_BYTES, offset)):
                continue  # zeroed metadata, not files: a change lands where data lives
            os.pwrite(fd, rng.randbytes(RUN_BYTES), offset)
            done += 1
    finally:
        os.close(fd)
    return wanted


def _used_bytes(image: Path) -> int:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                         check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    blocks, free = int(fields["Block count"]), int(fields["Free blocks"])
    return (blocks - free) * int(fields["Block size"])


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text[-1:].upper() in units:
            return int(float(text[:-1]) * units[text[-1].upper()])
        return int(text)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 2G, 512M)") from None



def main(argv: list[str]) -> int:
    """python3 bench/sample.py PATH [SIZE]: one sample image (the quick start's disk)."""
    if len(argv) not in (2, 3):
        print("usage: python3 bench/sample.py PATH [SIZE, e.g. 512M]", file=sys.stderr)
        return 2
    size = parse_size(argv[2] if len(argv) == 3 else "512M")
    path = Path(argv[1]).resolve()
    files, file_bytes = make_image(path, size)
    print(f"{argv[1]}: {size >> 20} MiB ext4 image holding {files} files, {file_bytes >> 20} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
