"""The benchmark's rows: one function each, bacpac's and the stock tools' it is measured against.

# Strategy: a row function does its untimed preparation (a fresh target, or the old copy a
# delta starts from) and returns a Job: the command to time, how to read its wire bytes, and
# the files that must then hold the expected content. A row for a bacpac flag that does not
# exist yet raises Skipped, so the table says so instead of failing. Adding a row is one more
# function under @row; its group names the comparison it belongs to (GROUPS: the table's
# sections), and bacpac's row of a group is what that group's stock rows are measured
# against. The rows of issues 19-21 live beside this module: rows_disk.py (delta variants,
# small and sparse disks), rows_tree.py (bacpac copy) and rows_fleet.py (simultaneous dups).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from sample import Sample, sha256_file

CIPHER = "aes128-gcm@openssh.com"
LINKS = ("loopback", "100mbit")


class Skipped(Exception):
    """The row cannot run yet; the message says why."""


@dataclass(frozen=True)
class Context:
    """What a row needs: the host to copy to, the sample, where targets go, bacpac's flags."""

    config_path: str          # ssh_config where `Host testhost` is the target host
    sample: Sample
    target_dir: str
    bacpac_flags: frozenset[str]
    wire_cache: dict[str, Any] = field(compare=False)
    inputs: Inputs = field(compare=False)  # the other rows' inputs, built on demand

    def path(self, name: str) -> str:
        return os.path.join(self.target_dir, name)


class Inputs:
    """What the rows beyond the first sample read, built (and cached under --work) only when a
    selected row asks: the smaller disk, the 1 MiB image, the sparse disks, the tree."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self._built: dict[str, Any] = {}

    def get(self, name: str, build: Callable[[Any], Any]) -> Any:
        if name not in self._built:
            self._built[name] = build(self.args)
        return self._built[name]


@dataclass(frozen=True)
class Job:
    """One timed command, and how to judge it."""

    argv: list[str]
    wire_bytes: Callable[[str], int | None]  # from the command's stdout; None: not known
    outputs: dict[str, Callable[[], str]]  # name → sha256 of what the run produced
    expect_sha: str
    data_bytes: int = 0        # what the run copies, for MB/s and CPU per GiB (0: the sample)
    warm: tuple[str, ...] = ()  # read these into the page cache instead of dropping it
    evict: tuple[str, ...] = ()  # drop only these from the page cache, not the whole cache


@dataclass(frozen=True)
class Row:
    name: str
    kind: str        # its group (GROUPS): a tool row is compared with bacpac's row of its group
    ours: bool
    prepare: Callable[[Context], Job]
    links: tuple[str, ...] = LINKS


ROWS: list[Row] = []
GROUPS: dict[str, str] = {
    "full": "full copy of the disk",
    "delta": "delta of the disk, 1% changed, page cache dropped",
}


def row(name: str, kind: str, ours: bool = False,
        links: tuple[str, ...] = LINKS) -> Callable[[Callable[[Context], Job]],
                                                    Callable[[Context], Job]]:
    """Register a row function, in table order."""
    def register(fn: Callable[[Context], Job]) -> Callable[[Context], Job]:
        ROWS.append(Row(name, kind, ours, fn, links))
        return fn
    return register


def bacpac_flags() -> frozenset[str]:
    """The long options `bacpac dup --help` lists."""
    out = subprocess.run([*_bacpac(), "dup", "--help"], capture_output=True, text=True).stdout
    return frozenset(re.findall(r"--[a-z][a-z-]*", out))


def _bacpac() -> list[str]:
    # The interpreter itself, not the `bacpac` found on PATH: a version manager's shim there
    # (pyenv's is a bash script) would add its own start-up time to every bacpac row.
    return [sys.executable, "-m", "bacpac"]


def _require(ctx: Context, flag: str) -> None:
    if flag not in ctx.bacpac_flags:
        raise Skipped(f"`bacpac dup --help` lists no {flag} yet")


def _fresh(path: str) -> str:
    if os.path.exists(path):
        os.unlink(path)
    return path


def _old_copy(ctx: Context, path: str, old: str = "") -> str:
    """A copy of `old` (default: the original image) at `path`: what a delta run starts from."""
    subprocess.run(["cp", "--sparse=always", old or ctx.sample.original, _fresh(path)],
                   check=True)
    return path


def _sha_of(path: str) -> Callable[[], str]:
    return lambda: sha256_file(path)


def _bytes_sent(stdout: str) -> int:
    summary = json.loads(stdout.strip().splitlines()[-1])
    if summary.get("status") != "ok":
        raise ValueError(f"bacpac reports {summary.get('status')}: {summary.get('error')}")
    return int(summary["bytes_sent"])


def _dup(ctx: Context, source: str, target: str, *flags: str) -> list[str]:
    # The target is this machine (or a namespace of it): its python3 on PATH may be a version
    # manager's shim, so name the interpreter itself, as a user would with --remote-python.
    return [*_bacpac(), "dup", source, f"testhost:{target}", *flags, "--json",
            "--no-progress", "-F", ctx.config_path, "--remote-python", sys.executable]


def _ssh(ctx: Context) -> str:
    return f"ssh -F {shlex.quote(ctx.config_path)} -c {CIPHER}"


def _pipeline(ctx: Context, producer: str, remote: str) -> list[str]:
    remote_cmd = shlex.quote(remote)
    return ["bash", "-o", "pipefail", "-c", f"{producer} | {_ssh(ctx)} testhost {remote_cmd}"]


def _zstd_size(ctx: Context, level: int) -> int:
    """Bytes `zstd -LEVEL -T0` makes of the image, measured once and untimed."""
    key = f"zstd-{level}:{ctx.sample.original}"
    if key not in ctx.wire_cache:
        with subprocess.Popen(["zstd", f"-{level}", "-T0", "-q", "-c", ctx.sample.original],
                              stdout=subprocess.PIPE) as zstd:
            count = subprocess.run(["wc", "-c"], stdin=zstd.stdout, capture_output=True, text=True)
        if zstd.returncode != 0:
            raise subprocess.CalledProcessError(zstd.returncode, zstd.args)
        ctx.wire_cache[key] = int(count.stdout)
    return ctx.wire_cache[key]


@row("bacpac dup", "full", ours=True)
def bacpac_dup(ctx: Context) -> Job:
    target = _fresh(ctx.path("dup.img"))
    return Job(_dup(ctx, ctx.sample.original, target), _bytes_sent,
               {"target": _sha_of(target)}, ctx.sample.sha_original)


@row("bacpac dup --saveset", "full", ours=True)
def bacpac_dup_saveset(ctx: Context) -> Job:
    _require(ctx, "--saveset")
    target, saveset = _fresh(ctx.path("dup.img")), _fresh(ctx.path("dup.saveset"))
    return Job(_dup(ctx, ctx.sample.original, target, "--saveset", saveset), _bytes_sent,
               {"target": _sha_of(target), "saveset": lambda: _zstd_d_sha(saveset)},
               ctx.sample.sha_original)


def _zstd_d_sha(saveset: str) -> str:
    """sha256 of what stock `zstd -d` restores from a saveset: the saveset's own promise."""
    restored = saveset + ".restored"
    try:
        subprocess.run(["zstd", "-d", "-q", "-f", "--sparse", saveset, "-o", restored], check=True)
        return sha256_file(restored)
    finally:
        _fresh(restored)


@row("cat | ssh 'cat > t.img'", "full")
def cat_ssh(ctx: Context) -> Job:
    target = _fresh(ctx.path("cat.img"))
    argv = _pipeline(ctx, f"cat {shlex.quote(ctx.sample.original)}", f"cat > {target}")
    return Job(argv, lambda _: ctx.sample.size, {"target": _sha_of(target)},
               ctx.sample.sha_original)


def _zstd_ssh(ctx: Context, level: int, synced: bool = False) -> Job:
    target = _fresh(ctx.path(f"zstd{level}{'-synced' if synced else ''}.img"))
    producer = f"zstd -{level} -T0 -q -c {shlex.quote(ctx.sample.original)}"
    receiver = f"zstd -d -q --sparse -f -o {target}"
    if synced:
        receiver += f" && sync {target}"  # coreutils' sync FILE: an fsync of that file
    argv = _pipeline(ctx, producer, receiver)
    return Job(argv, lambda _: _zstd_size(ctx, level), {"target": _sha_of(target)},
               ctx.sample.sha_original)


def _counted_pipeline(ctx: Context, producer: str, remote: str) -> list[str]:
    """_pipeline with the producer's output counted on the way (its size depends on the run,
    as zstd --adapt's does on the link): the count is the command's last line of stdout."""
    remote_cmd = shlex.quote(remote)
    script = (f"{producer} | tee >(wc -c >&3) | {_ssh(ctx)} testhost {remote_cmd}; "
              "s=$?; exec 3>&-; wait; exit $s")
    return ["bash", "-o", "pipefail", "-c", f"{{ {script}; }} 3>&1"]


@row("zstd -1 -T0 | ssh | zstd -d", "full")
def zstd1_ssh(ctx: Context) -> Job:
    return _zstd_ssh(ctx, 1)


@row("zstd -6 -T0 | ssh | zstd -d", "full")
def zstd6_ssh(ctx: Context) -> Job:
    return _zstd_ssh(ctx, 6)


@row("zstd -3 -T0 | ssh | zstd -d", "full")
def zstd3_ssh(ctx: Context) -> Job:
    return _zstd_ssh(ctx, 3)


@row("zstd --adapt -T0 | ssh | zstd -d", "full")
def zstd_adapt_ssh(ctx: Context) -> Job:
    """zstd's own adaptive level, which follows how fast its output is taken (the link)."""
    target = _fresh(ctx.path("zstd-adapt.img"))
    producer = f"zstd --adapt -T0 -q -c {shlex.quote(ctx.sample.original)}"
    argv = _counted_pipeline(ctx, producer, f"zstd -d -q --sparse -f -o {target}")
    return Job(argv, lambda out: int(out.split()[-1]), {"target": _sha_of(target)},
               ctx.sample.sha_original)


@row("rsync -z (full copy)", "full")
def rsync_z(ctx: Context) -> Job:
    target = _fresh(ctx.path("rsync-z.img"))
    argv = ["rsync", "-z", "--sparse", "--stats", "-e", _ssh(ctx), ctx.sample.original,
            f"testhost:{target}"]
    return Job(argv, _rsync_sent, {"target": _sha_of(target)}, ctx.sample.sha_original)


@row("zstd -1 -T0 | ssh | zstd -d && sync", "full")
def zstd1_ssh_synced(ctx: Context) -> Job:
    """The zstd -1 pipeline with its copy on the disk when it returns, as bacpac's is: without
    the sync, its writing happens after the clock stops."""
    return _zstd_ssh(ctx, 1, synced=True)


def delta_job(ctx: Context, sample: Sample, name: str, *flags: str, old: str = "",
              warm: bool = False) -> Job:
    """`bacpac dup --delta` of the sample's changed image onto `old` (default: the original)."""
    _require(ctx, "--delta")
    target = _old_copy(ctx, ctx.path(name), old or sample.original)
    return Job(_dup(ctx, sample.changed, target, "--delta", *flags), _bytes_sent,
               {"target": _sha_of(target)}, sample.sha_changed, sample.size,
               (sample.changed, target) if warm else ())


def rsync_job(ctx: Context, sample: Sample, name: str, old: str = "",
              warm: bool = False) -> Job:
    """rsync's delta of the sample's changed image onto `old` (default: the original)."""
    target = _old_copy(ctx, ctx.path(name), old or sample.original)
    # -I: compare content even if size and mtime happen to match the old copy's
    argv = ["rsync", "--inplace", "--no-whole-file", "-I", "--stats", "-e", _ssh(ctx),
            sample.changed, f"testhost:{target}"]
    return Job(argv, _rsync_sent, {"target": _sha_of(target)}, sample.sha_changed, sample.size,
               (sample.changed, target) if warm else ())


@row("bacpac dup --delta (1% changed)", "delta", ours=True)
def bacpac_delta(ctx: Context) -> Job:
    return delta_job(ctx, ctx.sample, "delta.img")


@row("rsync --inplace --no-whole-file (1% changed)", "delta")
def rsync_delta(ctx: Context) -> Job:
    return rsync_job(ctx, ctx.sample, "rsync.img")


def _rsync_sent(stdout: str) -> int:
    found = re.search(r"Total bytes sent: ([\d,]+)", stdout)
    if not found:
        raise ValueError("rsync --stats printed no 'Total bytes sent'")
    return int(found.group(1).replace(",", ""))
