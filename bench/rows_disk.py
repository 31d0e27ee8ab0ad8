"""The disk rows of issue 21: deltas (smaller disk warm and cold, no-op, digest cache), the
1 MiB dup, and sparse disks whose nominal size dwarfs their data.

# Strategy: each group pits one bacpac row against the stock tool a user would reach for in
# that situation, in the same round: rsync for deltas, `ssh host 'cat > t.img' < t.img` for a
# tiny image (fixed costs), `tar -S` for sparse files (GNU tar skips holes with SEEK_HOLE).
# Their inputs are built on demand (cached under --work), so a run that leaves a group out
# with --only never builds its disk. A sparse disk (the sample's data cut in stretches spread
# over its nominal size) is checked by a digest of its non-zero blocks and their offsets,
# which equals the source's exactly when the contents are equal, without reading 64 GiB of
# holes.
"""
from __future__ import annotations

import hashlib
import os
import random
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from rows import GROUPS, Context, Job, Skipped, _bytes_sent, _dup, _fresh, _sha_of, _ssh, \
    delta_job, row, rsync_job
from sample import Sample, _data_extents, make_sample

GROUPS.update({
    "delta-small": "delta of the {small} disk, 1% changed, page cache dropped",
    "delta-small-warm": "delta of the {small} disk, 1% changed, page cache warm "
                        "(source and old copy read in first)",
    "noop": "no-op delta of the disk (target already identical)",
    "cached": "second delta of the disk with the digest cache in place (built by an untimed "
              "delta just before)",
    "tiny": "dup of a {tiny} image (fixed costs)",
    "sparse-a": "sparse disk of {sparse_a} holding the data of the {sparse_data} disk",
    "sparse-b": "sparse disk of {sparse_b} holding the data of the {sparse_data} disk",
})
LOOPBACK = ("loopback",)
BLOCK = 64 << 10


def small_sample(ctx: Context) -> Sample:
    """The smaller disk (--slow-size), which the loopback host's smaller-disk rows copy."""
    return ctx.inputs.get("small", lambda a: make_sample(Path(a.work), a.slow_size))


@row("bacpac dup --delta, smaller disk, cache dropped", "delta-small", ours=True, links=LOOPBACK)
def bacpac_delta_small(ctx: Context) -> Job:
    return delta_job(ctx, small_sample(ctx), "delta-small.img")


@row("rsync --inplace --no-whole-file, smaller disk, cache dropped", "delta-small",
     links=LOOPBACK)
def rsync_delta_small(ctx: Context) -> Job:
    return rsync_job(ctx, small_sample(ctx), "rsync-small.img")


@row("bacpac dup --delta, smaller disk, cache warm", "delta-small-warm", ours=True,
     links=LOOPBACK)
def bacpac_delta_warm(ctx: Context) -> Job:
    return delta_job(ctx, small_sample(ctx), "delta-warm.img", warm=True)


@row("rsync --inplace --no-whole-file, smaller disk, cache warm", "delta-small-warm",
     links=LOOPBACK)
def rsync_delta_warm(ctx: Context) -> Job:
    return rsync_job(ctx, small_sample(ctx), "rsync-warm.img", warm=True)


@row("bacpac dup --delta, no change", "noop", ours=True, links=LOOPBACK)
def bacpac_noop(ctx: Context) -> Job:
    return delta_job(ctx, ctx.sample, "noop.img", old=ctx.sample.changed)


@row("rsync --inplace --no-whole-file, no change", "noop", links=LOOPBACK)
def rsync_noop(ctx: Context) -> Job:
    return rsync_job(ctx, ctx.sample, "rsync-noop.img", old=ctx.sample.changed)


@row("bacpac dup --delta, second run (digest cache)", "cached", ours=True, links=LOOPBACK)
def bacpac_delta_cached(ctx: Context) -> Job:
    """The nightly case: last night's good run left its digests on the target. An untimed
    delta of the original onto its own copy stands for that run; the timed one sends the day's
    changes and, with a valid cache, should not read the target (its read MiB column). Only
    the two images leave the page cache before it: dropping it all would count the helper's
    Python start among the target's reads."""
    job = delta_job(ctx, ctx.sample, "cached.img")
    target = ctx.path("cached.img")
    prime = _dup(ctx, ctx.sample.original, target, "--delta")
    done = subprocess.run(prime, capture_output=True, text=True)
    if done.returncode != 0:
        raise Skipped(f"the priming delta failed: {done.stderr.strip()[-200:]}")
    return replace(job, evict=(ctx.sample.changed, target))


@row("rsync --inplace --no-whole-file, beside the cached run", "cached", links=LOOPBACK)
def rsync_delta_cached(ctx: Context) -> Job:
    job = rsync_job(ctx, ctx.sample, "rsync-cached.img")
    return replace(job, evict=(ctx.sample.changed, ctx.path("rsync-cached.img")))


def _tiny(ctx: Context) -> tuple[str, str]:
    """(path, sha256) of random bytes of --tiny-size: what a dup's fixed costs carry."""
    def build(args: Any) -> tuple[str, str]:
        path = Path(args.work).resolve() / f"tiny-{args.tiny_size}.img"
        data = random.Random(args.tiny_size).randbytes(args.tiny_size)
        path.write_bytes(data)
        return str(path), hashlib.sha256(data).hexdigest()
    return ctx.inputs.get("tiny", build)


@row("bacpac dup, tiny image", "tiny", ours=True)
def bacpac_tiny(ctx: Context) -> Job:
    source, sha = _tiny(ctx)
    target = _fresh(ctx.path("tiny.img"))
    return Job(_dup(ctx, source, target), _bytes_sent, {"target": _sha_of(target)}, sha,
               os.path.getsize(source))


@row("ssh host 'cat > t.img' < t.img", "tiny")
def ssh_cat_tiny(ctx: Context) -> Job:
    source, sha = _tiny(ctx)
    target = _fresh(ctx.path("tiny-cat.img"))
    remote = shlex.quote(f"cat > {target}")
    argv = ["bash", "-c", f"{_ssh(ctx)} testhost {remote} < {shlex.quote(source)}"]
    size = os.path.getsize(source)
    return Job(argv, lambda _: size, {"target": _sha_of(target)}, sha, size)


def content_digest(path: str) -> str:
    """sha256 over the size and every non-zero 64 KiB block with its offset: equal for two files
    exactly when their contents are, and it reads only the extents that hold data."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(size.to_bytes(8, "little"))
        done = -1  # the last block hashed, as two extents may share one
        for start, end in _data_extents(f.fileno(), size):
            for offset in range(start - start % BLOCK, end, BLOCK):
                if offset <= done:
                    continue
                block = os.pread(f.fileno(), BLOCK, offset)
                done = offset
                if block.count(0) != len(block):
                    h.update(offset.to_bytes(8, "little") + block)
    return h.hexdigest()


SPREAD = 16  # stretches of the sample, spread evenly over a sparse disk


def _sparse(ctx: Context, which: int) -> tuple[str, str, int]:
    """(path, content digest, size) of the which-th --sparse-sizes disk: the --sparse-data
    sample's image cut in SPREAD stretches, each written (holes kept) at an even share of
    that size, so that holes lie between data all over the disk, as on a real one."""
    def build(args: Any) -> tuple[str, str, int]:
        size = args.sparse_sizes[which]
        data = make_sample(Path(args.work), args.sparse_data)
        path = Path(args.work).resolve() / f"sparse-{size}-{args.sparse_data}-spread.img"
        if not path.exists():  # built under another name first: a cut build is not reused
            part = path.with_suffix(".part")
            part.write_bytes(b"")  # a cut build's stretches are not kept
            os.truncate(part, size)
            stretch = -(-args.sparse_data // (SPREAD << 20))  # MiB, rounded up: all of it
            for n in range(SPREAD):
                subprocess.run(["dd", f"if={data.original}", f"of={part}", "bs=1M",
                                f"skip={n * stretch}", f"seek={n * (size // SPREAD >> 20)}",
                                f"count={stretch}", "conv=sparse,notrunc", "status=none"],
                               check=True)
            part.rename(path)
        return str(path), content_digest(str(path)), size
    return ctx.inputs.get(f"sparse-{which}", build)


def _bacpac_sparse(ctx: Context, which: int) -> Job:
    source, digest, size = _sparse(ctx, which)
    target = _fresh(ctx.path(f"sparse-{which}.img"))
    return Job(_dup(ctx, source, target), _bytes_sent, {"target": lambda: content_digest(target)},
               digest, size)


def _tar_sparse(ctx: Context, which: int) -> Job:
    source, digest, size = _sparse(ctx, which)
    name = os.path.basename(source)
    target = _fresh(ctx.path(name))
    remote = shlex.quote(f"tar -C {ctx.target_dir} -xf -")
    argv = ["bash", "-o", "pipefail", "-c",
            f"tar -S -C {shlex.quote(os.path.dirname(source))} -cf - {shlex.quote(name)} "
            f"| {_ssh(ctx)} testhost {remote}"]
    return Job(argv, lambda _: None, {"target": lambda: content_digest(target)}, digest, size)


def _sparse_rows(which: int) -> None:
    """The pair of rows of one sparse disk: bacpac dup and tar -S."""
    letter = "AB"[which]
    group = f"sparse-{letter.lower()}"
    row(f"bacpac dup, sparse disk {letter}", group, ours=True, links=LOOPBACK)(
        lambda ctx: _bacpac_sparse(ctx, which))
    row(f"tar -S | ssh | tar -x, sparse disk {letter}", group, links=LOOPBACK)(
        lambda ctx: _tar_sparse(ctx, which))


_sparse_rows(0)
_sparse_rows(1)
