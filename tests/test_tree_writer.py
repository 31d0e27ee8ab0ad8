"""The tree writer: what it writes matches the source byte for byte and in metadata (checked
with find, diff and stat, not with the writer's own word), and nothing it is fed can make it
write outside DEST."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))

from treeutil import allocated, copy, listing, same_tree, walk  # noqa: E402

from remote_helper.errors import HelperError, IntegrityError, Refused  # noqa: E402
from remote_helper.tree.entry import DIR, FILE, HARDLINK, ROOT, SYMLINK, entry  # noqa: E402
from remote_helper.tree.exclude import Excludes  # noqa: E402
from remote_helper.tree.safepath import NotADirectory, UnsafePath  # noqa: E402
from remote_helper.tree.writer import CONTENT, META, SAME, TEMP_NAME, TreeWriter  # noqa: E402

MTIME = 1_600_000_000_123_456_789
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")


def make_source(top: Path) -> Path:
    """A small tree with every kind a copy must keep."""
    top.mkdir()
    (top / "docs").mkdir()
    for i in range(20):
        (top / "docs" / f"page {i}.txt").write_bytes(os.urandom(100 + i * 37))
    (top / "empty").mkdir()
    (top / "locked").mkdir()
    (top / "locked" / "inside").write_bytes(b"in a read-only directory\n")
    os.chmod(top / "locked", 0o555)
    (top / "odd 0751").mkdir(mode=0o751)
    os.chmod(top / "odd 0751", 0o751)
    (top / "docs" / "hard a").write_bytes(b"linked twice\n")
    os.link(top / "docs" / "hard a", top / "hard b")
    os.symlink("does/not/exist", top / "dangling")
    os.symlink("docs", top / "up")
    names = [b"caf\xc3\xa9 \xe2\x82\xac", b"not utf-8 \xff\xfe", b"new\nline", b" lead space"]
    for name in names:
        with open(os.path.join(os.fsencode(str(top)), name), "wb") as f:
            f.write(name * 3)
    with open(top / "sparse", "wb") as f:  # 8 MiB, data at the start and at the end only
        f.write(b"head" * 1024)
        f.seek((8 << 20) - 4096)
        f.write(b"tail" * 1024)
    with open(top / "ends in hole", "wb") as f:
        f.write(b"x" * 4096)
        f.truncate(1 << 20)
    (top / "exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(top / "exec", 0o4755)
    (top / "empty file").write_bytes(b"")
    for path in sorted(top.rglob("*"), reverse=True):
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)
    os.utime(top, ns=(MTIME, MTIME))
    return top


def inode_groups(top: Path) -> list:
    groups: dict = {}
    for path in top.rglob("*"):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            groups.setdefault(st.st_ino, []).append(str(path.relative_to(top)))
    return sorted(sorted(g) for g in groups.values())


def test_copy_matches_the_source_in_find_diff_and_link_groups(tmp_path):
    src = make_source(tmp_path / "src")
    counts = copy(src, tmp_path / "dest")
    same_tree(src, tmp_path / "dest")
    assert inode_groups(src) == inode_groups(tmp_path / "dest")
    assert counts["hardlinks"] == 1 and counts["links"] == 2


def test_sparse_files_keep_their_holes(tmp_path):
    src = make_source(tmp_path / "src")
    copy(src, tmp_path / "dest")
    for name in ("sparse", "ends in hole"):
        assert allocated(tmp_path / "dest" / name) <= allocated(src / name) + 8192
        assert (tmp_path / "dest" / name).read_bytes() == (src / name).read_bytes()
    assert allocated(tmp_path / "dest" / "sparse") < 1 << 20
    du = subprocess.run(["du", "-s", "--block-size=1", str(tmp_path / "dest" / "sparse")],
                        capture_output=True, text=True, check=True).stdout
    assert int(du.split()[0]) < 1 << 20


def test_an_unchanged_rerun_finds_everything_the_same(tmp_path):
    src = make_source(tmp_path / "src")
    copy(src, tmp_path / "dest")
    counts = copy(src, tmp_path / "dest")
    assert set(counts["verdicts"].values()) == {SAME}
    assert counts["files"] == 0
    same_tree(src, tmp_path / "dest")


def test_a_changed_mode_or_mtime_is_meta_and_a_changed_size_is_content(tmp_path):
    src = make_source(tmp_path / "src")
    copy(src, tmp_path / "dest")
    os.chmod(src / "exec", 0o700)
    os.utime(src / "exec", ns=(MTIME, MTIME))
    (src / "docs" / "page 3.txt").write_bytes(b"shorter")
    os.utime(src / "docs" / "page 3.txt", ns=(MTIME, MTIME))
    counts = copy(src, tmp_path / "dest")
    assert counts["verdicts"][b"exec"] == META
    assert counts["verdicts"][b"docs/page 3.txt"] == CONTENT
    assert counts["files"] == 1 and counts["meta"] == 1
    same_tree(src, tmp_path / "dest")


@pytest.mark.parametrize("path", [b"../escape", b"/etc/escape", b"a/../../escape", b"a\0b",
                                  b"", b"a//b", b"./a", b"a/.", b"a/"])
def test_unsafe_names_are_refused_and_nothing_is_written(tmp_path, path):
    dest = tmp_path / "in" / "dest"
    dest.parent.mkdir()
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        for kind in (FILE, DIR, SYMLINK):
            e = entry(path, kind, size=3, target=b"x")
            with pytest.raises(UnsafePath):
                writer.compare(e)
            with pytest.raises(UnsafePath):
                writer.update(e) if kind != FILE else writer.add(e)
        with pytest.raises(UnsafePath):
            writer.update(entry(b"link", HARDLINK, target=path))
    finally:
        writer.close()
    assert sorted(os.listdir(tmp_path)) == ["in"]
    assert os.listdir(tmp_path / "in") == ["dest"] and os.listdir(dest) == []


def test_a_symlink_planted_where_the_source_has_a_directory_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"payload")
    dest = tmp_path / "dest"
    (dest / "a").mkdir(parents=True)
    os.symlink(str(outside), dest / "a" / "b")
    copy(src, dest)
    assert os.listdir(outside) == []
    assert not os.path.islink(dest / "a" / "b")
    assert (dest / "a" / "b" / "f").read_bytes() == b"payload"


def test_a_symlink_on_the_way_to_a_file_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), dest / "a")
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        assert writer.compare(entry(b"a/f", FILE, size=1)) == CONTENT
        with pytest.raises(NotADirectory, match="not a directory.*symlink"):
            writer.add(entry(b"a/f", FILE, size=1))
        with pytest.raises(NotADirectory):
            writer.update(entry(b"a/l", SYMLINK, target=b"x"))
        with pytest.raises(NotADirectory):
            writer.update(entry(b"a/c", DIR))
    finally:
        writer.close()
    assert os.listdir(outside) == []


def test_a_symlink_where_the_source_has_a_file_is_replaced_and_its_target_untouched(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"new content")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), dest / "f")
    copy(src, dest)
    assert outside.read_bytes() == b"precious"
    assert not os.path.islink(dest / "f") and (dest / "f").read_bytes() == b"new content"


def test_a_hard_link_to_a_planted_symlink_links_the_symlink_not_its_target(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), dest / "t")
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        writer.update(entry(b"h", HARDLINK, target=b"t"))
    finally:
        writer.close()
    assert os.path.islink(dest / "h")
    assert os.stat(outside).st_nlink == 1


def test_a_file_where_the_source_has_a_directory_is_replaced(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d").write_bytes(b"was a file")
    copy(src, dest)
    same_tree(src, dest)


def test_a_directory_where_the_source_has_a_file_needs_delete_unless_empty(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "full").write_bytes(b"a file now")
    (src / "empty").write_bytes(b"a file now too")
    dest = tmp_path / "dest"
    (dest / "full").mkdir(parents=True)
    (dest / "full" / "old").write_bytes(b"old")
    (dest / "empty").mkdir()
    with pytest.raises(Refused, match="full: a directory that is not empty.*--delete"):
        copy(src, dest)
    assert (dest / "full" / "old").read_bytes() == b"old"
    assert not [n for n in os.listdir(dest / "full") if TEMP_NAME.match(os.fsencode(n))]
    copy(src, dest, delete=True)
    same_tree(src, dest)


@pytest.mark.parametrize("unnamed", [False, True], ids=["temporary-names", "unnamed-files"])
def test_a_cut_run_leaves_only_temporary_names_and_the_rerun_removes_them(tmp_path, unnamed):
    src = make_source(tmp_path / "src")
    dest = tmp_path / "dest"
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    if unnamed and not writer.unnamed:
        pytest.skip("no O_TMPFILE or no /proc here")
    writer.unnamed = unnamed
    for e in walk(src):
        if e.kind == FILE and e.path == b"docs/page 5.txt":
            sink = writer.add(e)
            sink.write(0, b"half")
            break  # cut here: the process dies with the sink open
        if writer.compare(e) != SAME and e.kind != FILE:
            writer.update(e)
    writer.close()
    left = os.listdir(dest / "docs")
    assert "page 5.txt" not in left
    temps = [n for n in left if TEMP_NAME.match(os.fsencode(n))]
    assert len(temps) == (0 if unnamed else 1)  # an unnamed file vanishes with its process
    counts = copy(src, dest)
    assert counts["temps_removed"] == len(temps)
    same_tree(src, dest)


@pytest.mark.parametrize("unnamed", [False, True], ids=["temporary-names", "unnamed-files"])
def test_a_new_file_replaces_an_old_one_whole_by_either_way_of_naming(tmp_path, unnamed):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").write_bytes(b"old content")
    (dest / "gone").mkdir()
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    writer.unnamed = unnamed and writer.unnamed
    try:
        for path, data in ((b"f", b"new content!"), (b"gone", b"a file now"), (b"g", b"")):
            sink = writer.add(entry(path, FILE, size=len(data)))
            sink.write(0, data)
            sink.commit()
    finally:
        writer.close()
    assert (dest / "f").read_bytes() == b"new content!"
    assert (dest / "gone").read_bytes() == b"a file now"
    assert (dest / "g").read_bytes() == b""
    assert sorted(os.listdir(dest)) == ["f", "g", "gone"]


def test_commit_refuses_a_file_whose_content_is_short_and_leaves_nothing(tmp_path):
    dest = tmp_path / "dest"
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        sink = writer.add(entry(b"f", FILE, size=10))
        sink.write(0, b"12345")
        with pytest.raises(IntegrityError, match="got 5 bytes of content, expected 10"):
            sink.commit()
        sink = writer.add(entry(b"g", FILE, size=4))
        with pytest.raises(IntegrityError, match="beyond its size"):
            sink.write(2, b"1234")
        sink.abort()
    finally:
        writer.close()
    assert os.listdir(dest) == []


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "pread"])
def test_copy_from_base_keeps_unchanged_ranges_of_the_old_file(tmp_path, monkeypatch,
                                                                 kernel_copy):
    if not kernel_copy:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    dest = tmp_path / "dest"
    dest.mkdir()
    old = bytes(range(256)) * 64
    (dest / "big").write_bytes(old)
    new = old[:4096] + b"N" * 4096 + old[8192:]
    e = entry(b"big", FILE, size=len(new), mtime_ns=MTIME)
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        base = writer.old_file(e)
        assert base is not None
        sink = writer.add(e, base=base)
        sink.copy_from_base(0, 4096)
        sink.write(4096, b"N" * 4096)
        sink.copy_from_base(8192, len(new) - 8192)
        sink.commit()
        assert writer.old_file(entry(b"missing", FILE)) is None
        longer = entry(b"big", FILE, size=len(new) + 10)
        sink = writer.add(longer, base=writer.old_file(longer))
        with pytest.raises(IntegrityError, match="the old file ends at %d" % len(new)):
            sink.copy_from_base(0, len(new) + 10)
        sink.abort()
    finally:
        writer.close()
    assert (dest / "big").read_bytes() == new
    assert os.stat(dest / "big").st_mtime_ns == MTIME


def test_delete_removes_what_the_source_lacks_but_keeps_excluded_files(tmp_path):
    src = make_source(tmp_path / "src")
    dest = tmp_path / "dest"
    copy(src, dest)
    (dest / "extra").write_bytes(b"gone")
    (dest / "docs" / "old dir" / "deep").mkdir(parents=True)
    (dest / "docs" / "old dir" / "deep" / "f").write_bytes(b"gone")
    (dest / "docs" / "keep.log").write_bytes(b"excluded, kept")
    (dest / "olddir2").mkdir()
    (dest / "olddir2" / "x.log").write_bytes(b"excluded, so its directory stays")
    excludes = Excludes(["*.log"])
    seen = []
    copy(src, dest, delete=True, dry_run=True, excludes=excludes,
         on_delete=lambda p, k: seen.append((p, k)))
    assert (dest / "extra").exists()
    assert sorted(seen) == sorted([(b"extra", "f"), (b"docs/old dir/deep/f", "f"),
                                   (b"docs/old dir/deep", "d"), (b"docs/old dir", "d")])
    counts = copy(src, dest, delete=True, excludes=excludes)
    assert counts["deleted"] == 4
    assert (dest / "docs" / "keep.log").exists() and (dest / "olddir2" / "x.log").exists()
    (dest / "docs" / "keep.log").unlink()
    (dest / "olddir2" / "x.log").unlink()
    (dest / "olddir2").rmdir()
    copy(src, dest)  # the removals above changed directory mtimes
    same_tree(src, dest)


def test_delete_removes_a_planted_symlink_and_never_what_it_points_to(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    src = tmp_path / "src"
    src.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), dest / "link")
    (dest / "dir").mkdir()
    os.symlink(str(outside), dest / "dir" / "link")
    copy(src, dest, delete=True)
    assert os.listdir(dest) == []
    assert (outside / "precious").read_bytes() == b"keep me"


def test_a_dry_run_writes_nothing_even_where_dest_is_missing(tmp_path):
    src = make_source(tmp_path / "src")
    counts = copy(src, tmp_path / "dest", dry_run=True)
    assert not (tmp_path / "dest").exists()
    assert set(counts["verdicts"].values()) == {CONTENT}
    (tmp_path / "dest").mkdir()
    copy(src, tmp_path / "dest", dry_run=True)
    assert os.listdir(tmp_path / "dest") == []


def test_dest_is_made_when_missing_but_not_its_parents(tmp_path):
    with pytest.raises(HelperError, match="missing/dest: cannot make the directory"):
        TreeWriter(os.fsencode(str(tmp_path / "missing" / "dest")), True, False, False)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(HelperError, match="file: Not a directory"):
        TreeWriter(os.fsencode(str(tmp_path / "file")), True, False, False)


def test_xattrs_and_acls_are_kept_with_xattrs_and_only_then(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.colour", b"blue")
    # A POSIX access ACL: user::rw- user:1234:r-- group::r-- mask::r-- other::---
    acl = (b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff"
           + b"\x02\x00\x04\x00\xd2\x04\x00\x00" + b"\x04\x00\x04\x00\xff\xff\xff\xff"
           + b"\x10\x00\x04\x00\xff\xff\xff\xff" + b"\x20\x00\x00\x00\xff\xff\xff\xff")
    try:
        os.setxattr(f, "system.posix_acl_access", acl)
    except OSError as e:
        pytest.skip("no POSIX ACLs on %s: %s" % (tmp_path, e))
    os.setxattr(src, "user.top", b"on the top directory")
    copy(src, tmp_path / "plain")
    assert os.listxattr(tmp_path / "plain" / "f") == []
    counts = copy(src, tmp_path / "kept", xattrs=True)
    got = tmp_path / "kept" / "f"
    assert os.getxattr(got, "user.colour") == b"blue"
    assert os.getxattr(got, "system.posix_acl_access") == acl
    assert os.getxattr(tmp_path / "kept", "user.top") == b"on the top directory"
    assert stat.S_IMODE(os.stat(got).st_mode) == stat.S_IMODE(os.stat(f).st_mode)
    assert counts["files"] == 1
    os.removexattr(f, "user.colour")
    counts = copy(src, tmp_path / "kept", xattrs=True)
    assert counts["verdicts"][b"f"] == META
    assert "user.colour" not in os.listxattr(got)


@needs_root
def test_owners_are_kept_by_name_else_by_number_as_root(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("by number", "by name"):
        (src / name).write_bytes(name.encode())
    os.chown(src / "by number", 4321, 4322)
    entries = list(walk(src))
    # "by name": the source says daemon:daemon with ids that mean nothing here.
    entries = [e._replace(uname="daemon", gname="daemon", uid=777, gid=778)
               if e.path == b"by name" else e for e in entries]
    copy(src, tmp_path / "dest", entries=entries)
    st = os.stat(tmp_path / "dest" / "by number")
    assert (st.st_uid, st.st_gid) == (4321, 4322)
    import grp
    import pwd
    st = os.stat(tmp_path / "dest" / "by name")
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("daemon").pw_uid,
                                     grp.getgrnam("daemon").gr_gid)
    copy(src, tmp_path / "plain", owners=False)
    assert os.stat(tmp_path / "plain" / "by number").st_uid == 0


@needs_root
def test_device_nodes_fifos_and_sockets_are_made_as_root(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 99))
    os.mkfifo(src / "fifo", 0o640)
    os.mknod(src / "sock", 0o600 | stat.S_IFSOCK)
    os.chown(src / "fifo", 99, 98)
    for p in src.iterdir():
        os.utime(p, ns=(MTIME, MTIME))
    copy(src, tmp_path / "dest")
    assert listing(src) == listing(tmp_path / "dest")  # diff -r calls two FIFOs different
    assert os.stat(tmp_path / "dest" / "null").st_rdev == os.makedev(1, 3)
    assert os.stat(tmp_path / "dest" / "blk").st_rdev == os.makedev(7, 99)
    assert set(copy(src, tmp_path / "dest")["verdicts"].values()) == {SAME}


@needs_root
def test_not_root_a_read_only_directory_still_gets_its_contents(tmp_path):
    # Under a folder that user nobody can reach (pytest's own is 0700).
    tmp_path = Path(tempfile.mkdtemp(prefix="bacpac-nobody-"))
    try:
        _copy_as_nobody(tmp_path)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path)], check=True)


def _copy_as_nobody(tmp_path):
    src = make_source(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    for path in (tmp_path, dest):
        os.chown(path, 65534, 65534)
    script = ("import sys; sys.path[:0] = %r\n"
              "from treeutil import copy; from pathlib import Path\n"
              "print(copy(Path(%r), Path(%r), owners=True)['files'])"
              % ([os.path.dirname(__file__), str(Path(__file__).parent.parent)],
                 str(src), str(dest)))
    os.chmod(tmp_path, 0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(src)], check=True)
    os.chmod(src / "locked", 0o555)
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (dest / "locked" / "inside").read_bytes() == b"in a read-only directory\n"
    assert stat.S_IMODE(os.stat(dest / "locked").st_mode) == 0o555
    assert os.stat(dest / "locked" / "inside").st_uid == 65534
    assert {os.lstat(p).st_uid for p in dest.rglob("*")} == {65534}


def test_root_entry_sets_the_mode_and_mtime_of_dest_itself(tmp_path):
    dest = tmp_path / "dest"
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        writer.update(entry(ROOT, DIR, 0o711, mtime_ns=MTIME))
        writer.update(entry(b"sub", DIR, 0o500, mtime_ns=MTIME + 1))
        sink = writer.add(entry(b"sub/f", FILE, 0o600, size=2, mtime_ns=MTIME + 2))
        sink.write(0, b"ok")
        sink.commit()
        writer.finish()
    finally:
        writer.close()
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o711
    assert os.stat(dest).st_mtime_ns == MTIME
    assert stat.S_IMODE(os.stat(dest / "sub").st_mode) == 0o500
    assert os.stat(dest / "sub").st_mtime_ns == MTIME + 1
    assert os.stat(dest / "sub" / "f").st_mtime_ns == MTIME + 2


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_deep_tree_is_written_and_deleted_without_leaking_descriptors(tmp_path):
    src = tmp_path / "src"
    deep = src
    for i in range(300):
        deep = deep / f"d{i % 10}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"at the bottom")
    before = open_descriptors()
    copy(src, tmp_path / "dest")
    assert open_descriptors() == before
    same_tree(src, tmp_path / "dest")
    empty = tmp_path / "empty"
    empty.mkdir()
    gone = []
    counts = copy(empty, tmp_path / "dest", delete=True, on_delete=lambda p, k: gone.append(p))
    assert counts["deleted"] == 301 and gone[0].endswith(b"/bottom") and gone[-1] == b"d0"
    assert os.listdir(tmp_path / "dest") == [] and open_descriptors() == before


def test_an_aborted_sink_and_a_failed_commit_release_their_descriptors(tmp_path):
    before = open_descriptors()
    writer = TreeWriter(os.fsencode(str(tmp_path / "dest")), True, False, False)
    for _ in range(3):
        sink = writer.add(entry(b"f", FILE, size=4))
        sink.write(0, b"ab")
        with pytest.raises(IntegrityError):
            sink.commit()
        writer.add(entry(b"g", FILE, size=1)).abort()
    writer.close()
    assert open_descriptors() == before
    assert os.listdir(tmp_path / "dest") == []


# The writer runs in the helper, on the target's Python: 3.6 and up. A copy loop in the
# oldest syntax, with a walk of its own, run by the oldest Python this machine has.
OLD_PYTHON_COPY = r"""
import os, stat, sys
sys.path.insert(0, sys.argv[1])
from remote_helper.tree.entry import entry, ROOT, DIR, FILE, SYMLINK, HARDLINK
from remote_helper.tree.writer import TreeWriter, CONTENT, SAME
src, dest = os.fsencode(sys.argv[2]), os.fsencode(sys.argv[3])
kinds = {stat.S_IFDIR: DIR, stat.S_IFREG: FILE, stat.S_IFLNK: SYMLINK}
links = {}
def one(path):
    full = src if path == ROOT else src + b"/" + path
    st = os.lstat(full)
    kind = kinds[stat.S_IFMT(st.st_mode)]
    if kind == FILE and st.st_nlink > 1:
        if st.st_ino in links:
            return entry(path, HARDLINK, target=links[st.st_ino]), full
        links[st.st_ino] = path
    target = os.readlink(full) if kind == SYMLINK else b""
    size = st.st_size if kind == FILE else 0
    return entry(path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, "", "", size,
                 st.st_mtime_ns, target), full
def walk(path):
    e, full = one(path)
    yield e, full
    if e.kind == DIR:
        for name in sorted(os.listdir(full)):
            for item in walk(name if path == ROOT else path + b"/" + name):
                yield item
w = TreeWriter(dest, True, False, False)
for e, full in walk(ROOT):
    verdict = w.compare(e)
    if e.kind == FILE and verdict == CONTENT:
        sink = w.add(e)
        with open(full, "rb") as f:
            sink.write(0, f.read())
        sink.commit()
    elif verdict != SAME:
        w.update(e)
print(w.finish()["files"])
w.close()
"""


def test_the_writer_runs_on_the_oldest_helper_python(tmp_path):
    from clirun import helper_pythons
    version, python = next(iter(helper_pythons().items()))
    if version != "3.6":
        pytest.skip(f"no Python 3.6 here (oldest: {version}); pyenv install 3.6 brings one")
    src = tmp_path / "src"
    src.mkdir()
    (src / "sub dir").mkdir(mode=0o750)
    (src / "sub dir" / "f").write_bytes(b"written by python 3.6")
    os.link(src / "sub dir" / "f", src / "hard")
    os.symlink("sub dir/f", src / "link")
    with open(os.path.join(os.fsencode(str(src)), b"\xff name"), "wb") as f:
        f.write(os.urandom(5000))
    for path in sorted(src.rglob("*"), reverse=True):
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)
    root = str(Path(__file__).resolve().parent.parent)
    run = subprocess.run([python, "-c", OLD_PYTHON_COPY, root, str(src), str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2"
    same_tree(src, tmp_path / "d")
    assert inode_groups(src) == inode_groups(tmp_path / "d")


AS_NOBODY = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from remote_helper.tree.entry import entry, ROOT, DIR, FILE, CHAR, FIFO
from remote_helper.tree.writer import TreeWriter
w = TreeWriter(os.fsencode(sys.argv[2]), True, False, False)
w.update(entry(ROOT, DIR, 0o755))
w.update(entry(b"null", CHAR, 0o666, rdev=os.makedev(1, 3)))
w.update(entry(b"fifo", FIFO, 0o640))
sink = w.add(entry(b"f", FILE, 0o644, uid=0, gid=0, uname="root", gname="root", size=2))
sink.write(0, b"ok")
sink.commit()
counts = w.finish()
w.close()
print(json.dumps({"counts": counts, "skipped": w.skipped}))
"""


@needs_root
def test_not_root_device_nodes_are_skipped_and_owners_not_given_away(tmp_path):
    top = Path(tempfile.mkdtemp(prefix="bacpac-nobody-"))
    try:
        os.chmod(top, 0o755)
        dest = top / "dest"
        dest.mkdir()
        os.chown(dest, 65534, 65534)
        root = str(Path(__file__).resolve().parent.parent)
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", AS_NOBODY, root, str(dest)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["counts"]["skipped"] == 1 and result["counts"]["nodes"] == 1
        assert result["skipped"] == [str(dest / "null") + ": device node skipped (not root)"]
        assert sorted(os.listdir(dest)) == ["f", "fifo"]
        assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
        st = os.stat(dest / "f")
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=True)


@needs_root
def test_a_file_delete_cannot_remove_is_one_error_naming_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    dest = tmp_path / "dest"
    (dest / "extra").mkdir(parents=True)
    stuck = dest / "extra" / "immutable"
    stuck.write_bytes(b"x")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode:
        pytest.skip("chattr +i does not work on %s" % tmp_path)
    try:
        with pytest.raises(HelperError, match="dest/extra/immutable: cannot delete: "
                                              "Operation not permitted"):
            copy(src, dest, delete=True)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)


@needs_root
def test_not_root_a_directory_it_cannot_enter_is_one_error_naming_it(tmp_path):
    top = Path(tempfile.mkdtemp(prefix="bacpac-nobody-"))
    try:
        os.chmod(top, 0o755)
        dest = top / "dest"
        (dest / "closed").mkdir(parents=True)
        os.chmod(dest / "closed", 0o700)  # root's, so nobody cannot look inside
        os.chmod(dest, 0o755)
        script = ("import os, sys; sys.path.insert(0, sys.argv[1])\n"
                  "from remote_helper.tree.entry import entry, FILE\n"
                  "from remote_helper.tree.writer import TreeWriter\n"
                  "from remote_helper.errors import HelperError\n"
                  "w = TreeWriter(os.fsencode(sys.argv[2]), True, False, False)\n"
                  "try:\n"
                  "    w.compare(entry(b'closed/f', FILE))\n"
                  "except HelperError as e:\n"
                  "    print(e)\n")
        root = str(Path(__file__).resolve().parent.parent)
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", script, root, str(dest)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == str(dest / "closed" / "f") + ": Permission denied"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=True)


def test_a_symlink_the_stream_makes_cannot_be_written_through_afterwards(tmp_path):
    # The classic tar attack: a member makes a link out of DEST, a later member writes
    # through it. The link is made (it is data), the write through it is refused.
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        writer.update(entry(b"a", SYMLINK, target=os.fsencode(str(outside))))
        writer.update(entry(b"up", SYMLINK, target=b".."))
        for path in (b"a/f", b"up/dest2/f", b"a/sub/f"):
            with pytest.raises(NotADirectory):
                writer.add(entry(path, FILE, size=1))
            with pytest.raises(NotADirectory):
                writer.update(entry(path, SYMLINK, target=b"x"))
        with pytest.raises(NotADirectory):
            writer.update(entry(b"a/d", DIR))
        with pytest.raises(NotADirectory):
            writer.update(entry(b"h", HARDLINK, target=b"a/anything"))
        writer.finish()
    finally:
        writer.close()
    assert os.listdir(outside) == []
    assert sorted(os.listdir(tmp_path)) == ["dest", "outside"]
    assert sorted(os.listdir(dest)) == ["a", "up"]


# ---- any sequence of entries, fuzzed -----------------------------------------------------------

COMPONENTS = [b"a", b"b", b"..", b".", b"", b"c\0", b"dest", b"outside"]
TARGETS = [b"..", b"../..", b"a", b"a/b", b"../outside", b"/", b"../../outside/x"]
hostile_paths = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map(b"/".join)
hostile_entries = st.lists(st.tuples(
    st.sampled_from([FILE, DIR, SYMLINK, HARDLINK, "p"]), hostile_paths,
    st.one_of(st.sampled_from(TARGETS), hostile_paths), st.booleans()), max_size=12)


def snapshot(top: Path) -> list:
    return sorted((str(p), os.lstat(p).st_mtime_ns, os.lstat(p).st_mode)
                  for p in [top, *top.rglob("*")])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_entries)
def test_no_sequence_of_entries_writes_outside_dest(tmp_path_factory, items):
    top = tmp_path_factory.mktemp("fuzz")
    (top / "outside").mkdir()
    (top / "outside" / "x").write_bytes(b"keep")
    (top / "dest").mkdir()
    os.symlink("../outside", top / "dest" / "b")  # planted
    before = snapshot(top / "outside")
    writer = TreeWriter(os.fsencode(str(top / "dest")), True, False, delete=True)
    try:
        for kind, path, target, commit in items:
            e = entry(path, kind, size=3, target=target)
            try:
                writer.compare(e)
                if kind == FILE:
                    sink = writer.add(e)
                    sink.write(0, b"abc")
                    sink.commit() if commit else sink.abort()
                else:
                    writer.update(e)
            except HelperError:
                pass
        writer.finish()
    finally:
        writer.close()
    assert snapshot(top / "outside") == before
    assert sorted(os.listdir(top)) == ["dest", "outside"]


def test_a_nul_in_a_link_target_or_an_attribute_name_is_refused(tmp_path):
    writer = TreeWriter(os.fsencode(str(tmp_path / "dest")), True, True, False)
    try:
        with pytest.raises(UnsafePath, match="embedded null"):
            writer.update(entry(b"l", SYMLINK, target=b"a\0b"))
        sink = writer.add(entry(b"f", FILE, size=1, xattrs=[(b"user.a\0b", b"v")]))
        sink.write(0, b"x")
        with pytest.raises(UnsafePath, match="embedded null"):
            sink.commit()
    finally:
        writer.close()
    assert os.listdir(tmp_path / "dest") == []
