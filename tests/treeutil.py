"""Helpers for the tree writer's tests: a small walker of a real tree into Entries, a copy
through TreeWriter, and the stock tools' view of a tree (find -printf, diff -r)."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from remote_helper.tree.entry import (BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, ROOT, SOCKET,
                                      SYMLINK, Entry, entry)
from remote_helper.tree.meta import read_xattrs
from remote_helper.tree.writer import CONTENT, SAME, TreeWriter

KIND_OF = {stat.S_IFDIR: DIR, stat.S_IFREG: FILE, stat.S_IFLNK: SYMLINK, stat.S_IFCHR: CHAR,
           stat.S_IFBLK: BLOCK, stat.S_IFIFO: FIFO, stat.S_IFSOCK: SOCKET}


def extents(fd: int, size: int):
    """Data extents of a file by SEEK_DATA/SEEK_HOLE, None when it has no hole."""
    found, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        found.append((start, end - start))
        offset = end
    if found == [(0, size)] or (size == 0 and not found):
        return None
    if not found or found[-1][0] + found[-1][1] < size:
        found.append((size, 0))
    return tuple(found)


def walk(top: Path, xattrs: bool = False):
    """Entries of top in walk order (a directory before its contents), hard links found."""
    seen: dict = {}

    def one(path: bytes, full: bytes):
        st = os.lstat(full)
        kind = KIND_OF[stat.S_IFMT(st.st_mode)]
        target, ext, size = b"", None, 0
        if kind == SYMLINK:
            target = os.readlink(full)
        if kind == FILE:
            size = st.st_size
            if st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen:
                return entry(path, HARDLINK, target=seen[(st.st_dev, st.st_ino)])
            seen[(st.st_dev, st.st_ino)] = path
            fd = os.open(full, os.O_RDONLY)
            try:
                ext = extents(fd, size)
            finally:
                os.close(fd)
        xa = read_xattrs(full, follow=False) if xattrs and kind != SYMLINK else ()
        return entry(path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, "", "", size,
                     st.st_mtime_ns, target, st.st_rdev if kind in (CHAR, BLOCK) else 0, xa, ext)

    def walk_dir(path: bytes, full: bytes):
        for name in sorted(os.listdir(full)):
            sub, subfull = (name if path == ROOT else path + b"/" + name), full + b"/" + name
            e = one(sub, subfull)
            yield e
            if e.kind == DIR:
                yield from walk_dir(sub, subfull)

    top_b = os.fsencode(str(top))
    yield one(ROOT, top_b)
    yield from walk_dir(ROOT, top_b)


def content(top: Path, e: Entry):
    """(offset, bytes) pieces of a file's data, extents only."""
    with open(os.path.join(os.fsencode(str(top)), e.path), "rb") as f:
        for offset, length in (e.extents or ((0, e.size),)):
            f.seek(offset)
            yield offset, f.read(length)


def copy(src: Path, dest: Path, entries=None, **options) -> dict:
    """Copy src to dest through a TreeWriter, as a copy job would; the verdicts and counts."""
    opts = dict(owners=True, xattrs=False, delete=False)
    opts.update(options)
    writer = TreeWriter(os.fsencode(str(dest)), **opts)
    verdicts = {}
    try:
        for e in (entries if entries is not None else walk(src, opts["xattrs"])):
            verdict = writer.compare(e)
            verdicts[e.path] = verdict
            if e.kind == FILE and verdict == CONTENT:
                sink = writer.add(e)
                for offset, data in content(src, e):
                    sink.write(offset, data)
                sink.commit()
            elif verdict != SAME:
                writer.update(e)
        counts = writer.finish()
    finally:
        writer.close()
    counts["verdicts"] = verdicts
    return counts


def listing(top: Path) -> str:
    """What find sees of a tree: names, types, modes, owners, sizes, mtimes, links, targets."""
    out = subprocess.run(["find", str(top), "-mindepth", "0", "-printf",
                          "%P|%y|%m|%U|%G|%s|%T@|%n|%l\\0"], check=True,
                         capture_output=True).stdout
    rows = out.split(b"\0")[:-1]
    return "\n".join(sorted(r.decode("utf-8", "backslashreplace") for r in rows))


def same_tree(a: Path, b: Path) -> None:
    assert listing(a) == listing(b)
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512
