"""Make a sample disk: an ext4 image about half full of real files from this machine.

    python3 tools/sample_disk.py PATH [SIZE]     SIZE like 256M or 2G (default 256M)

The files are documentation and Python sources (mke2fs -d copies them in), so the image
compresses like a real system disk, not like zeros or random bytes.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

SOURCES = ["/usr/share/doc", "/usr/lib/python3*", "/root/.pyenv/versions/*/lib/python3*",
           "/usr/share/perl*", "/usr/include", "/usr/share/man"]
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in UNITS:
        return int(text[:-1]) * UNITS[text[-1]]
    return int(text)


def fill_directory(directory: str, budget: int) -> int:
    """Copy regular files from SOURCES into directory until budget bytes; returns bytes copied."""
    copied = 0
    for pattern in SOURCES:
        for root_dir in sorted(glob.glob(pattern)):
            for dirpath, _, filenames in os.walk(root_dir):
                for name in filenames:
                    src = os.path.join(dirpath, name)
                    if not os.path.isfile(src) or os.path.islink(src):
                        continue
                    size = os.path.getsize(src)
                    if copied + size > budget:
                        return copied
                    dst = os.path.join(directory, src.lstrip("/"))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(src, dst)
                    copied += size
    return copied


def make_sample_disk(path: str, size: int, fill: float = 0.5) -> int:
    """An ext4 image of `size` bytes, about `fill` of it used by real files; bytes copied in."""
    with tempfile.TemporaryDirectory(prefix="bacpac-sample-") as tree:
        copied = fill_directory(tree, int(size * fill))
        if os.path.exists(path):
            os.unlink(path)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, path,
                        f"{size // 1024}k"], check=True, stdout=subprocess.DEVNULL)
    return copied


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    size = parse_size(argv[2]) if len(argv) == 3 else 256 << 20
    copied = make_sample_disk(argv[1], size)
    print(f"{argv[1]}: {size >> 20} MiB ext4 image holding {copied >> 20} MiB of files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
