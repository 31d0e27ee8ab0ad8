"""The tree rows of issue 19: `bacpac copy` against `tar | zstd | ssh` and `rsync -aH`.

# Strategy: the tree is real files (documentation and Python trees of this machine, copied,
# never linked, several times over until it holds --tree-files files and --tree-size bytes),
# built once and cached under --work. Three comparisons: a first copy into an empty
# directory; a rerun onto an identical copy (made untimed with `cp -a`, which keeps sizes
# and mtimes, so both tools' quick checks see it unchanged); and a rerun where 1% of the
# files in the copy were overwritten with random bytes of the same size (so their mtimes
# differ, and both tools must send them again). The source is never touched. A copy counts
# when a digest of its names, types, modes, owners, sizes, mtimes (whole seconds: GNU tar's
# default format keeps no more), link targets, link counts and contents equals the source's.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from rows import GROUPS, Context, Job, Skipped, _bacpac, _bytes_sent, _rsync_sent, _ssh, row
from sample import _stage

GROUPS.update({
    "tree-first": "tree of {tree}: first copy",
    "tree-rerun": "tree of {tree}: rerun, nothing changed",
    "tree-changed": "tree of {tree}: rerun, 1% of the files changed",
})
CHANGED_EVERY = 100   # every 100th non-empty file of the copy is changed


def _tree(ctx: Context) -> tuple[str, str, int]:
    """(path, digest, content bytes) of the cached tree."""
    def build(args: Any) -> tuple[str, str, int]:
        root = Path(args.work).resolve() / f"tree-{args.tree_files}-{args.tree_size}"
        manifest = root.with_suffix(".json")
        if not manifest.exists():
            shutil.rmtree(root, ignore_errors=True)
            files = size = copies = 0
            while files < args.tree_files or size < args.tree_size:
                copies += 1
                got = _stage(root / f"copy{copies}", args.tree_size - size,
                             args.tree_files - files, shutil.copy2)
                files, size = files + got[0], size + got[1]
            manifest.write_text(json.dumps({"files": files, "bytes": size}))
        size = json.loads(manifest.read_text())["bytes"]
        return str(root), tree_digest(str(root)), size
    return ctx.inputs.get("tree", build)


def tree_digest(top: str) -> str:
    """sha256 of everything a copy must keep of the tree under `top`, in a fixed order."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in [""] + sorted(filenames + [d for d in dirnames
                                               if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name) if name else dirpath
            h.update(_entry_line(os.path.relpath(path, top), path))
    return h.hexdigest()


def _entry_line(rel: str, path: str) -> bytes:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    line = f"{rel!r} {kind:o} {st.st_uid}:{st.st_gid}"
    if stat.S_ISLNK(kind):
        line += " -> " + os.readlink(path)
    else:
        line += f" {stat.S_IMODE(st.st_mode):o}"
    if stat.S_ISREG(kind):
        line += f" {st.st_size} {int(st.st_mtime)} {st.st_nlink} {_file_sha(path)}"
    return line.encode("utf-8", "surrogateescape") + b"\n"


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dest(ctx: Context, name: str) -> str:
    path = ctx.path(name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def _copy_of(source: str, dest: str, change: bool) -> None:
    """An untimed copy of the tree at dest, with every CHANGED_EVERY-th non-empty file
    overwritten by random bytes of its size when `change`."""
    subprocess.run(["cp", "-a", source, dest], check=True)
    if not change:
        return
    rng, seen = random.Random(1), 0
    for dirpath, dirnames, filenames in os.walk(dest):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.getsize(path):
                continue
            seen += 1
            if seen % CHANGED_EVERY == 0:
                with open(path, "r+b") as f:
                    f.write(rng.randbytes(os.path.getsize(path)))


def _bacpac_copy(ctx: Context, name: str, prepared: str = "") -> Job:
    if not re.search(r"^\s+copy\s", ctx.wire_cache.setdefault("commands", _commands()), re.M):
        raise Skipped("`bacpac --help` lists no copy command yet")
    source, digest, size = _tree(ctx)
    dest = _dest(ctx, name)
    if prepared:
        _copy_of(source, dest, prepared == "changed")
    argv = [*_bacpac(), "copy", source + "/", f"testhost:{dest}", "--json", "--no-progress",
            "-F", ctx.config_path, "--remote-python", sys.executable]
    return Job(argv, _bytes_sent, {"tree": lambda: tree_digest(dest)}, digest, size)


def _commands() -> str:
    return subprocess.run([*_bacpac(), "--help"], capture_output=True, text=True).stdout


def _rsync(ctx: Context, name: str, prepared: str = "", synced: bool = False) -> Job:
    """rsync -aH of the tree; synced: then a syncfs of DEST's file system, through a second
    ssh (rsync runs no command after its own; the second login is in the time)."""
    source, digest, size = _tree(ctx)
    dest = _dest(ctx, name)
    if prepared:
        _copy_of(source, dest, prepared == "changed")
    argv = ["rsync", "-aH", "--stats", "-e", _ssh(ctx), source + "/", f"testhost:{dest}/"]
    if synced:
        sync = f"{_ssh(ctx)} testhost {shlex.quote(f'sync -f {dest}')}"
        argv = ["bash", "-o", "pipefail", "-c", f"{shlex.join(argv)} && {sync}"]
    return Job(argv, _rsync_sent, {"tree": lambda: tree_digest(dest)}, digest, size)


@row("bacpac copy, first copy", "tree-first", ours=True)
def bacpac_tree_first(ctx: Context) -> Job:
    return _bacpac_copy(ctx, "tree-bacpac")


@row("tar -c | zstd -T0 | ssh | zstd -d | tar -x", "tree-first")
def tar_zstd_tree(ctx: Context) -> Job:
    return _tar_zstd(ctx, "tree-tar")


# bacpac's copy is durable when it returns (a syncfs of DEST's file system); tar's and rsync's
# are not: their writeback happens after the clock stops. These rows time them with it.
@row("tar -c | zstd -T0 | ssh | zstd -d | tar -x && sync -f", "tree-first")
def tar_zstd_tree_synced(ctx: Context) -> Job:
    return _tar_zstd(ctx, "tree-tar-synced", synced=True)


def _tar_zstd(ctx: Context, name: str, synced: bool = False) -> Job:
    source, digest, size = _tree(ctx)
    dest = _dest(ctx, name)
    producer = f"tar -C {shlex.quote(source)} -cf - . | zstd -T0 -q"
    sync = f" && sync -f {dest}" if synced else ""  # coreutils' sync -f: syncfs()
    remote = shlex.quote(f"mkdir {dest} && zstd -d -q | tar -C {dest} -xf -{sync}")
    argv = ["bash", "-o", "pipefail", "-c", f"{producer} | {_ssh(ctx)} testhost {remote}"]
    return Job(argv, lambda _: _stream_size(ctx, producer), {"tree": lambda: tree_digest(dest)},
               digest, size)


def _stream_size(ctx: Context, producer: str) -> int:
    """Bytes the producer writes, measured once and untimed (zstd's output is deterministic)."""
    if producer not in ctx.wire_cache:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", f"{producer} | wc -c"],
                              capture_output=True, text=True, check=True)
        ctx.wire_cache[producer] = int(done.stdout)
    return int(ctx.wire_cache[producer])


@row("rsync -aH, first copy", "tree-first")
def rsync_tree_first(ctx: Context) -> Job:
    return _rsync(ctx, "tree-rsync")


@row("rsync -aH, first copy && ssh sync -f", "tree-first")
def rsync_tree_first_synced(ctx: Context) -> Job:
    return _rsync(ctx, "tree-rsync-synced", synced=True)


def _reruns(group: str, what: str, prepared: str) -> None:
    """The pair of rows of one rerun: bacpac copy and rsync -aH onto a prepared copy."""
    row(f"bacpac copy, {what}", group, ours=True)(
        lambda ctx: _bacpac_copy(ctx, "tree-bacpac", prepared))
    row(f"rsync -aH, {what}", group)(lambda ctx: _rsync(ctx, "tree-rsync", prepared))


_reruns("tree-rerun", "unchanged rerun", "same")
_reruns("tree-changed", "1% of files changed", "changed")
