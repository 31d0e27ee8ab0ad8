"""The test tree of issue 19: real files plus every special case a tree copy must carry.

`build_tree(top)` makes it under `top` (bytes or str) and returns the sparse file's path;
`tree_src` is the pytest fixture (a fresh tree in tmp_path, built once per test); `listing(top)`
is what `find -printf` says of a tree, so two trees compare as text; `contents(top)` maps each
regular file's relative path to its sha256.

Kept small (about 2 MiB of files taken from /usr/share/doc, plus one 64 MiB sparse file that
holds 1 MiB of data at its end) so that every test using it stays fast on 2 cores.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from treeutil import extents

DOC = "/usr/share/doc"
DOC_BYTES = 2 << 20  # bytes of real files copied from /usr/share/doc
SPARSE_SIZE = 64 << 20
SPARSE_TAIL = 1 << 20  # data at the end of the sparse file
NS_MTIME = 1_600_000_000_123_456_789  # an mtime with nanoseconds
IS_ROOT = os.geteuid() == 0


def _acl(entries: list) -> bytes:
    """A POSIX ACL as the kernel stores it in system.posix_acl_*: version 2, then
    (tag u16, perm u16, id u32) per entry."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


NOID = 0xFFFFFFFF
# user::rw- user:1000:r-- group::r-- mask::r-- other::---
ACL_ACCESS = _acl([(0x01, 6, NOID), (0x02, 4, 1000), (0x04, 4, NOID), (0x10, 4, NOID),
                   (0x20, 0, NOID)])
# a default ACL on a directory: user::rwx group::r-x other::r-x
ACL_DEFAULT = _acl([(0x01, 7, NOID), (0x04, 5, NOID), (0x20, 5, NOID)])


def _copy_docs(dst: Path) -> None:
    """Copy regular files from /usr/share/doc, keeping their layout, up to DOC_BYTES."""
    total = 0
    for root, dirs, files in os.walk(DOC):
        dirs.sort()
        for name in sorted(files):
            src = os.path.join(root, name)
            if not os.path.isfile(src) or os.path.islink(src):
                continue
            size = os.path.getsize(src)
            if total + size > DOC_BYTES:
                return
            rel = os.path.relpath(src, DOC)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
            total += size


def build_tree(top) -> bytes:
    """Build the issue's test tree under `top`; return the sparse file's path (bytes)."""
    t = os.fsencode(top)
    base = Path(os.fsdecode(t))
    base.mkdir(parents=True, exist_ok=True)
    _copy_docs(base / "doc")
    j = lambda *parts: os.path.join(t, *parts)  # noqa: E731
    os.mkdir(j(b"special"))
    s = lambda name: j(b"special", name)  # noqa: E731
    for name, data in ((b"with space.txt", b"space\n"), (b"new\nline", b"newline\n"),
                       (b"latin1-\xe9\xff", b"not utf-8\n"), (b"utf8-\xc3\xa9t\xc3\xa9", b"utf8\n"),
                       (b"n" * 200, b"a 200-byte name\n"), (b"empty", b"")):
        with open(s(name), "wb") as f:
            f.write(data)
    deep = s(b"/".join([b"d" * 60] * 3))  # a path of more than 200 bytes
    os.makedirs(deep)
    with open(os.path.join(deep, b"f" * 90), "wb") as f:
        f.write(b"deep\n")
    os.mkdir(s(b"empty dir"))
    os.mkdir(s(b"mode751"))
    os.chmod(s(b"mode751"), 0o751)
    with open(s(b"mode751/exec"), "wb") as f:
        f.write(b"#!/bin/sh\necho hi\n")
    os.chmod(s(b"mode751/exec"), 0o4751)
    os.link(s(b"with space.txt"), s(b"hardlink"))
    os.symlink(b"with space.txt", s(b"symlink"))
    os.symlink(b"/nonexistent/\xff target", s(b"dangling"))
    with open(s(b"xattrs"), "wb") as f:
        f.write(b"xattrs\n")
    os.setxattr(s(b"xattrs"), b"user.bacpac", b"value \x00\xff")
    os.setxattr(s(b"xattrs"), b"system.posix_acl_access", ACL_ACCESS)
    os.setxattr(s(b"mode751"), b"system.posix_acl_default", ACL_DEFAULT)
    os.mkfifo(s(b"fifo"), 0o640)
    if IS_ROOT:
        os.mknod(s(b"chardev"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(s(b"blockdev"), 0o600 | stat.S_IFBLK, os.makedev(7, 200))
        os.chown(s(b"empty"), 1234, 5678)
    os.utime(s(b"with space.txt"), ns=(NS_MTIME, NS_MTIME))
    os.utime(s(b"symlink"), ns=(NS_MTIME, NS_MTIME), follow_symlinks=False)
    sparse = j(b"sparse")
    with open(sparse, "wb") as f:
        f.truncate(SPARSE_SIZE - SPARSE_TAIL)
        f.seek(SPARSE_SIZE - SPARSE_TAIL)
        f.write(hashlib.sha256(b"tail").digest() * (SPARSE_TAIL // 32))
    for d in (deep, s(b"empty dir"), s(b""), t):  # directory mtimes last: writes change them
        os.utime(d, ns=(NS_MTIME, NS_MTIME))
    os.utime(s(b"mode751"), ns=(NS_MTIME, NS_MTIME))
    return sparse


@pytest.fixture
def tree_src(tmp_path) -> Path:
    """A fresh copy of the issue's test tree, at tmp_path/src."""
    top = tmp_path / "src"
    build_tree(top)
    return top


def listing(top, mtime_dirs: bool = True) -> list:
    """Every entry of a tree as find prints it (kind, mode, size, mtime, link target, link
    count, path), sorted; directory sizes are left out (they depend on the filesystem),
    and so are directory mtimes when mtime_dirs is false."""
    fmt = "%y %m %s %T@ %l %n %U:%G %P\\0"
    out = subprocess.run(["find", os.fsencode(top), "-mindepth", "1", "-printf", fmt],
                         check=True, capture_output=True).stdout
    rows = []
    for row in out.split(b"\0")[:-1]:
        kind, mode, size, mtime, rest = row.split(b" ", 4)
        if kind == b"d":
            size = b"-"
            if not mtime_dirs:
                mtime = b"-"
        rows.append(b" ".join((kind, mode, size, mtime, rest)))
    return sorted(rows)


def contents(top) -> dict:
    """Relative path (bytes) → sha256 hex of every regular file under top."""
    t = os.fsencode(top)
    found = {}
    for root, _dirs, files in os.walk(t):
        for name in files:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    found[os.path.relpath(p, t)] = hashlib.sha256(f.read()).hexdigest()
    return found


def xattrs_of(top) -> dict:
    """Relative path (bytes) → sorted (name, value) xattrs of every entry that has some."""
    t = os.fsencode(top)
    found = {}
    for root, dirs, files in os.walk(t):
        for name in dirs + files:
            p = os.path.join(root, name)
            names = sorted(os.listxattr(p, follow_symlinks=False))
            if names:
                found[os.path.relpath(p, t)] = [
                    (os.fsencode(n), os.getxattr(p, n, follow_symlinks=False)) for n in names]
    return found


def entries_of(top) -> list:
    """The Entries of a tree read with lstat, a directory before what it holds, names in byte
    order, hard links and sparse extents found: a small stand-in for the walker, so that the
    codec's tests depend on nothing but the codec."""
    from remote_helper.tree.entry import ROOT, entry
    t = os.fsencode(top)
    kinds = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
             stat.S_IFBLK: "b", stat.S_IFIFO: "p"}
    seen: dict = {}
    found = []

    def visit(rel: bytes) -> None:
        path = t if rel == ROOT else os.path.join(t, rel)
        st = os.lstat(path)
        kind = kinds[stat.S_IFMT(st.st_mode)]
        target, extents = b"", None
        if kind == "l":
            target = os.readlink(path)
        if kind == "f" and st.st_nlink > 1:
            first = seen.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                kind, target = "h", first
        if kind == "f" and st.st_blocks * 512 < st.st_size:
            extents = _extents(path, st.st_size)
        xattrs = sorted((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False))
                        for n in os.listxattr(path, follow_symlinks=False))
        found.append(entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                           "root" if st.st_uid == 0 else "", "root" if st.st_gid == 0 else "",
                           st.st_size if kind == "f" else 0, st.st_mtime_ns, target,
                           st.st_rdev if kind in "cb" else 0, xattrs, extents))
        if kind == "d":
            for name in sorted(os.listdir(path)):
                visit(name if rel == ROOT else rel + b"/" + name)

    visit(ROOT)
    return found


def _extents(path: bytes, size: int) -> tuple:
    """Data extents of the file at path, ((0, size),) when it has no hole."""
    fd = os.open(path, os.O_RDONLY)
    try:
        found = extents(fd, size)
    finally:
        os.close(fd)
    return found if found is not None else ((0, size),)


def encode_tree(top) -> bytes:
    """The tree under top as a pax archive made by our encoder (header, data, padding per
    entry, then the end of the archive): what a tree copy or a tree saveset carries."""
    from remote_helper.tree.tarstream import TarStream
    t = os.fsencode(top)
    stream = TarStream(lambda e: open(os.path.join(t, e.path), "rb"))
    out = [piece for e in entries_of(top) for piece in stream.member(e)]
    out.append(stream.end())
    return b"".join(out)
