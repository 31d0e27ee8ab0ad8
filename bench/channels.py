"""Is one SSH channel bacpac's limit? `python3 bench/channels.py --help`.

# Strategy: against a throwaway loopback sshd, push incompressible bytes to `cat > /dev/null`
# through bacpac's own channel writer: over one channel, over two channels of one connection,
# and over two connections, in interleaved rounds; then OpenSSH's `cat | ssh` for scale. When
# parallel channels carry no more than one, the machine, not the channel, is the limit, and a
# stream needing far less than one channel's rate gains nothing from more.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tools"))

from bacpac.transport.ssh.connection import SshOptions, connect  # noqa: E402
from loopback_sshd import SshServer, start_sshd  # noqa: E402
from sample import parse_size  # noqa: E402

CHUNK = memoryview(os.urandom(4 << 20))  # random, as compressed frames are
SHAPES = [(1, 1), (1, 2), (2, 1)]  # (connections, channels on each)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="bytes per measurement (default 1G)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    total = parse_size(args.size)
    rates: dict[tuple[int, int], list[float]] = {shape: [] for shape in SHAPES}
    with tempfile.TemporaryDirectory() as tmp, start_sshd(tmp) as server:
        for _ in range(args.rounds):
            for shape in SHAPES:
                rates[shape].append(_rate(server, total, *shape))
        openssh = statistics.median(_openssh(server, total) for _ in range(args.rounds))
    for (conns, chans), got in rates.items():
        print(f"{conns} connection(s) x {chans} channel(s): "
              f"{statistics.median(got) / 1e6:.0f} MB/s (rounds: "
              + ", ".join(f"{r / 1e6:.0f}" for r in got) + ")")
    print(f"OpenSSH cat | ssh -c aes128-gcm@openssh.com: {openssh / 1e6:.0f} MB/s")
    return 0


def _rate(server: SshServer, total: int, conns: int, chans: int) -> float:
    """Payload bytes per second through conns x chans channels at once."""
    connections = [connect("testhost", None, SshOptions(config_file=server.config_path),
                           interactive=False) for _ in range(conns)]
    try:
        channels = [c.exec("cat > /dev/null") for c in connections for _ in range(chans)]
        share = total // len(channels)
        start = time.monotonic()
        pumps = [threading.Thread(target=_pump, args=(ch, share)) for ch in channels]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        return share * len(channels) / (time.monotonic() - start)
    finally:
        for c in connections:
            c.close()


def _pump(channel, size: int) -> None:
    for _ in range(size // len(CHUNK)):
        channel.write(CHUNK)
    channel.close_write()
    if channel.wait(60) != 0:
        raise RuntimeError(f"cat on the target failed: {channel.stderr_tail()}")


def _openssh(server: SshServer, total: int) -> float:
    start = time.monotonic()
    subprocess.run(f"head -c {total} /dev/zero | ssh -F {server.config_path} "
                   "-c aes128-gcm@openssh.com testhost 'cat > /dev/null'", shell=True, check=True)
    return total / (time.monotonic() - start)


if __name__ == "__main__":
    sys.exit(main())
