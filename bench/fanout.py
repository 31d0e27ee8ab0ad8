"""Fan-out against two runs apart (issue 20, item 1): docs/performance.md, section "fanout".

    python3 bench/fanout.py IMAGE ROUNDS loop|slow

Starts two sshds: hosta on loopback, and hostc on loopback (`loop`) or in a network namespace
behind a 100 Mbit/s link (`slow`, bench/netns.py; needs root). Each round, interleaved:
`dup IMAGE hosta:t.img --saveset hostc:s.bps` (one read, two hosts), then the same two outputs
written apart: `dup IMAGE hosta:t.img` and `backup IMAGE hostc:s.bps`. Prints each run and
the medians of the wall time and of the client's CPU (user + system, from wait4).
Everything runs on this machine: the helpers and sshds of both hosts share its cores with
the client.
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from loopback_sshd import start_sshd  # noqa: E402
from bench.netns import rate_limited_netns  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(name: str, args: list[str], times: dict, cpus: dict) -> dict:
    cpu, began = _cpu(), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bacpac", *args, "--no-progress", "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    times.setdefault(name, []).append(time.monotonic() - began)
    cpus.setdefault(name, []).append(_cpu() - cpu)
    if done.returncode != 0:
        raise SystemExit(f"{name}: {done.stderr.strip()}")
    summary = json.loads(done.stdout)
    print(f"{name:8} {times[name][-1]:6.2f} s  cpu {cpus[name][-1]:5.2f} s  "
          f"sent {summary['bytes_sent']}  levels {summary.get('levels')}", flush=True)
    return summary


def main(image: str, rounds: int, slow: bool) -> None:
    work = pathlib.Path(tempfile.mkdtemp(prefix="bacpac-fanout-"))
    a, c = work / "a", work / "c"
    for directory in (a, c, work / "sshd-a", work / "sshd-c"):
        directory.mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        ns = stack.enter_context(rate_limited_netns()) if slow else None
        host_a = stack.enter_context(start_sshd(str(work / "sshd-a")))
        host_c = stack.enter_context(
            start_sshd(str(work / "sshd-c"), listen=ns.address, prefix=ns.prefix) if ns
            else start_sshd(str(work / "sshd-c")))
        config = work / "ssh_config"
        config.write_text(
            pathlib.Path(host_a.config_path).read_text().replace("Host testhost", "Host hosta")
            + "\n" + pathlib.Path(host_c.config_path).read_text().replace("Host testhost",
                                                                          "Host hostc"))
        ssh = ["-F", str(config)]
        times: dict = {}
        cpus: dict = {}

        def clean() -> None:
            for directory in (a, c):
                for path in directory.iterdir():
                    path.unlink()

        for _ in range(rounds):
            clean()
            _run("fan-out", ["dup", *ssh, image, f"hosta:{a}/t.img",
                             "--saveset", f"hostc:{c}/s.bps"], times, cpus)
            clean()
            _run("dup", ["dup", *ssh, image, f"hosta:{a}/t.img"], times, cpus)
            _run("backup", ["backup", *ssh, image, f"hostc:{c}/s.bps"], times, cpus)
        apart = [d + b for d, b in zip(times["dup"], times["backup"])]
        apart_cpu = [d + b for d, b in zip(cpus["dup"], cpus["backup"])]
        print(f"medians of {rounds}: fan-out {statistics.median(times['fan-out']):.2f} s "
              f"(client cpu {statistics.median(cpus['fan-out']):.2f} s); apart "
              f"{statistics.median(apart):.2f} s (cpu {statistics.median(apart_cpu):.2f} s): "
              f"dup {statistics.median(times['dup']):.2f} s, "
              f"backup {statistics.median(times['backup']):.2f} s")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in ("loop", "slow"):
        raise SystemExit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "slow")
