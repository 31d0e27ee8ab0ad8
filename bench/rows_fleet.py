"""The fleet row of issue 20: N simultaneous dups from one controller.

# Strategy: one shell on the controller starts N `bacpac dup` processes at once, each copying
# the smaller disk (--slow-size) to a target of its own on the loopback host, and waits for
# them all; it fails when any fails. wait4 on that shell sums the CPU of every dup it reaped,
# so the row's client CPU is the controller's, and its MB/s the total throughput (N disks
# over the wall time). There is no stock tool to compare with: the rows for N = 1, 2, 4 are
# compared with each other, to say how many disks one controller drives.
"""
from __future__ import annotations

import json
import shlex

from rows import GROUPS, Context, Job, _dup, _fresh, _sha_of, row
from rows_disk import small_sample

GROUPS["fleet"] = "fleet: N simultaneous dups of the {small} disk from one controller"
FLEET = (1, 2, 4)


def _fleet(ctx: Context, n: int) -> Job:
    sample = small_sample(ctx)
    targets = [_fresh(ctx.path(f"fleet-{i}.img")) for i in range(n)]
    starts = " ".join(f"{shlex.join(_dup(ctx, sample.original, t))} & pids+=($!);"
                      for t in targets)
    script = f"pids=(); {starts} s=0; for p in ${{pids[@]}}; do wait $p || s=1; done; exit $s"
    return Job(["bash", "-c", script], lambda out: _all_sent(out, n),
               {t: _sha_of(t) for t in targets}, sample.sha_original, n * sample.size)


def _all_sent(stdout: str, n: int) -> int:
    """The sum of every dup's bytes_sent (one JSON line each)."""
    summaries = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if len(summaries) != n:
        raise ValueError(f"{len(summaries)} JSON summaries from {n} dups")
    bad = [s for s in summaries if s.get("status") != "ok"]
    if bad:
        raise ValueError(f"bacpac reports {bad[0].get('status')}: {bad[0].get('error')}")
    return sum(int(s["bytes_sent"]) for s in summaries)


def _register(n: int) -> None:
    row(f"bacpac dup ×{n} at once", "fleet", ours=True, links=("loopback",))(
        lambda ctx: _fleet(ctx, n))


for _n in FLEET:
    _register(_n)
