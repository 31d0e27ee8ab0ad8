"""A large file with 1% changed, copied again: bacpac copy's block delta against rsync's.
`python3 bench/copy_delta.py --help`.

# Strategy: one loopback sshd; a random file (incompressible, so the wire bytes are the
# delta's own); a first copy by each tool into its own DEST; then, each round, 1% of the
# source's bytes rewritten in scattered spots (--spot) (new ones each round, so each tool's DEST
# is one change behind), and each tool run once, in alternating order: bacpac copy (its
# `bytes_sent`, the compressed bytes on the channel) and `rsync -aH --no-whole-file` (its
# --stats "Total bytes sent"), each timed by the wall clock. Medians of the rounds; the load
# (uptime) is printed with them, since this machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))
sys.path.insert(0, str(HERE))

from loopback_sshd import start_sshd  # noqa: E402
from sample import parse_size  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="the file's size (default 1G)")
    p.add_argument("--changed", type=float, default=1.0, help="percent changed per round")
    p.add_argument("--spot", default="64K", help="bytes of each changed spot (default 64K)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to make the files (default: a temp dir)")
    args = p.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        (Path(tmp) / "sshd").mkdir()
        with start_sshd(str(Path(tmp) / "sshd")) as server:
            got = _rounds(Path(tmp), server.config_path, size, args.changed,
                          parse_size(args.spot), args.rounds)
    print(f"{args.size} file, {args.changed:g}% changed in {args.spot} spots, {args.rounds} "
          "rounds; "
          f"load: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} cores")
    for name, rows in got.items():
        secs = statistics.median(r[0] for r in rows)
        wire = statistics.median(r[1] for r in rows)
        print(f"{name:7s} {secs:6.2f} s  {wire / 2**20:8.2f} MiB sent   rounds: "
              + ", ".join(f"{s:.2f} s/{b / 2**20:.1f} MiB" for s, b in rows))
    return 0


def _rounds(work: Path, config: str, size: int, changed: float, spot: int,
            rounds: int) -> dict[str, list[tuple[float, int]]]:
    """(seconds, bytes sent) of each tool, each round."""
    src = work / "src"
    src.mkdir()
    _random_file(src / "big", size)
    tools = {"bacpac": lambda: _bacpac(config, src, work / "dst-bacpac"),
             "rsync": lambda: _rsync(config, src, work / "dst-rsync")}
    for run in tools.values():
        run()  # the first copies
    got: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
    rng = random.Random(1)
    for n in range(rounds):
        _change(src / "big", size, changed, spot, rng)
        order = list(tools) if n % 2 == 0 else list(reversed(tools))
        for name in order:
            got[name].append(tools[name]())
    _same(src / "big", work / "dst-bacpac" / "big", work / "dst-rsync" / "big")
    return got


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


def _change(path: Path, size: int, percent: float, spot: int, rng: random.Random) -> None:
    """percent of the file's bytes rewritten, in spots of `spot` bytes at random offsets."""
    spots = max(1, int(size * percent / 100) // spot)
    with open(path, "r+b") as f:
        for at in rng.sample(range(size // spot - 1), spots):  # none past the end
            f.seek(at * spot + rng.randrange(spot))
            f.write(os.urandom(spot))
    os.utime(path, ns=(time.time_ns(), time.time_ns()))


def _bacpac(config: str, src: Path, dst: Path) -> tuple[float, int]:
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "bacpac", "copy", "-F", config, "--no-progress",
                          "--json", f"{src}/", f"testhost:{dst}"], capture_output=True,
                         text=True, cwd=HERE.parent, check=True).stdout
    return time.monotonic() - began, int(json.loads(out)["bytes_sent"])


def _rsync(config: str, src: Path, dst: Path) -> tuple[float, int]:
    began = time.monotonic()
    out = subprocess.run(["rsync", "-aH", "--no-whole-file", "--stats", "-e", f"ssh -F {config}",
                          f"{src}/", f"testhost:{dst}/"], capture_output=True, text=True,
                         check=True).stdout
    sent = re.search(r"Total bytes sent: ([\d,.]+)", out)
    assert sent, out
    return time.monotonic() - began, int(re.sub(r"[,.]", "", sent.group(1)))


def _same(*paths: Path) -> None:
    sums = {subprocess.run(["sha256sum", str(p)], capture_output=True, text=True,
                           check=True).stdout.split()[0] for p in paths}
    assert len(sums) == 1, "the copies differ from the source"


if __name__ == "__main__":
    sys.exit(main())
