"""The writer's short cuts on a first copy keep every promise: a new file whose mode or owner
is not what its inode starts with still gets it, and a directory this run made (whose
entries are not looked up) cannot be used to plant a symlink the writer would follow."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from treeutil import copy, same_tree  # noqa: E402

from remote_helper.tree.entry import DIR, FILE, entry  # noqa: E402
from remote_helper.tree.writer import CONTENT, TreeWriter  # noqa: E402

MTIME = 1_600_000_000_123_456_789
MODES = (0o644, 0o664, 0o600, 0o444, 0o400, 0o777, 0o755, 0o640, 0o4755, 0o2750, 0o1644, 0o000)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners)")


def _files(top: Path, modes=MODES, owners=None) -> Path:
    top.mkdir()
    for i, mode in enumerate(modes):
        path = top / f"m{mode:04o}"
        path.write_bytes(b"x" * (i + 1))
        if owners:
            os.chown(path, *owners[i % len(owners)])
        os.chmod(path, mode)  # after chown, which clears set-id bits
        os.utime(path, ns=(MTIME, MTIME))
    os.utime(top, ns=(MTIME, MTIME))
    return top


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_every_mode_is_kept_whatever_the_umask(tmp_path, umask):
    src = _files(tmp_path / "src")
    old = os.umask(umask)
    try:
        copy(src, tmp_path / "dest")
    finally:
        os.umask(old)
    for mode in MODES:
        assert stat.S_IMODE(os.stat(tmp_path / "dest" / f"m{mode:04o}").st_mode) == mode
    same_tree(src, tmp_path / "dest")


@needs_root
def test_owners_as_root_are_kept_the_ones_a_new_inode_has_and_the_others(tmp_path):
    owners = [(0, 0), (1234, 5678), (0, 5678), (1234, 0)]
    src = _files(tmp_path / "src", owners=owners)
    copy(src, tmp_path / "dest")
    for i, mode in enumerate(MODES):
        st = os.stat(tmp_path / "dest" / f"m{mode:04o}")
        assert (st.st_uid, st.st_gid) == owners[i % len(owners)]
        assert stat.S_IMODE(st.st_mode) == mode  # chown cleared no set-id bit for good
    same_tree(src, tmp_path / "dest")


@needs_root
def test_a_file_in_a_set_group_id_directory_gets_the_group_of_its_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "sgid").mkdir()
    os.chown(src / "sgid", 0, 5678)
    os.chmod(src / "sgid", 0o2775)
    (src / "sgid" / "root's").write_bytes(b"group 0, where the directory would give 5678")
    os.chown(src / "sgid" / "root's", 0, 0)
    (src / "sgid" / "theirs").write_bytes(b"group 5678")
    os.chown(src / "sgid" / "theirs", 0, 5678)
    for path in (src / "sgid" / "root's", src / "sgid" / "theirs", src / "sgid", src):
        os.utime(path, ns=(MTIME, MTIME))
    copy(src, tmp_path / "dest")
    assert os.stat(tmp_path / "dest" / "sgid" / "root's").st_gid == 0
    assert os.stat(tmp_path / "dest" / "sgid" / "theirs").st_gid == 5678
    same_tree(src, tmp_path / "dest")


def test_a_directory_with_a_default_acl_does_not_decide_a_files_mode(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    # a default ACL that gives new files no group or other bits at all
    acl = (b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff"
           + b"\x04\x00\x00\x00\xff\xff\xff\xff" + b"\x20\x00\x00\x00\xff\xff\xff\xff")
    try:
        os.setxattr(dest, "system.posix_acl_default", acl)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e}")
    src = _files(tmp_path / "src", modes=(0o644, 0o755))
    copy(src, dest)
    assert stat.S_IMODE(os.stat(dest / "m0644").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(dest / "m0755").st_mode) == 0o755


def test_a_symlink_planted_in_a_directory_this_run_made_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    writer = TreeWriter(os.fsencode(str(dest)), True, False, False)
    try:
        d = entry(b"d", DIR, mode=0o777, mtime_ns=MTIME)
        assert writer.compare(d) == CONTENT
        writer.update(d)
        # planted after the directory was made, before its entries come
        os.symlink(str(outside), dest / "d" / "sub")
        os.symlink(str(outside / "f"), dest / "d" / "f")
        sub = entry(b"d/sub", DIR, mode=0o755, mtime_ns=MTIME)
        assert writer.compare(sub) == CONTENT
        writer.update(sub)
        f = entry(b"d/f", FILE, size=5, mtime_ns=MTIME)
        assert writer.compare(f) == CONTENT
        sink = writer.add(f)
        sink.write(0, b"hello")
        sink.commit()
        g = entry(b"d/sub/g", FILE, size=2, mtime_ns=MTIME)
        assert writer.compare(g) == CONTENT
        sink = writer.add(g)
        sink.write(0, b"hi")
        sink.commit()
        writer.finish()
    finally:
        writer.close()
    assert os.listdir(outside) == []
    assert not os.path.islink(dest / "d" / "sub") and (dest / "d" / "sub" / "g").read_bytes() == b"hi"
    assert not os.path.islink(dest / "d" / "f") and (dest / "d" / "f").read_bytes() == b"hello"


def test_a_rerun_into_directories_made_by_the_first_run_finds_everything_the_same(tmp_path):
    src = _files(tmp_path / "src")
    first = copy(src, tmp_path / "dest")
    assert set(first["verdicts"].values()) == {CONTENT}
    again = copy(src, tmp_path / "dest")
    assert again["files"] == 0 and CONTENT not in again["verdicts"].values()


def test_the_descriptor_chain_names_the_right_directory_after_an_open_failed_half_way(tmp_path):
    from remote_helper.tree.safepath import DirStack, NotADirectory
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    os.symlink(str(tmp_path / "a"), tmp_path / "c" / "planted")
    stack = DirStack(os.fsencode(str(tmp_path)))
    try:
        fd, name = stack.parent(b"a/b/x")
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "a" / "b")) and name == b"x"
        with pytest.raises(NotADirectory):
            stack.parent(b"c/planted/x")  # "c" opened, then the symlink refused
        for path, where in ((b"x", tmp_path), (b"c/x", tmp_path / "c"),
                            (b"a/b/y", tmp_path / "a" / "b"), (b"y", tmp_path)):
            fd, name = stack.parent(path)
            assert os.path.samestat(os.fstat(fd), os.stat(where)), path
        for bad in (b"/x", b"..", b".", b"", b"a/b/..", b"a\0b"):
            with pytest.raises(Exception):
                stack.parent(bad)
    finally:
        stack.close()


def test_an_unchanged_rerun_writes_no_directory_inode_and_a_changed_one_is_fixed(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"f")
    os.chmod(src / "a", 0o751)
    for path in (src / "a" / "b" / "f", src / "a" / "b", src / "a", src):
        os.utime(path, ns=(MTIME, MTIME))
    dest = tmp_path / "dest"
    copy(src, dest)
    ctimes = {p: os.stat(dest / p).st_ctime_ns for p in (".", "a", "a/b")}
    copy(src, dest)
    assert {p: os.stat(dest / p).st_ctime_ns for p in ctimes} == ctimes
    os.chmod(dest / "a", 0o700)
    os.utime(dest / "a" / "b", ns=(MTIME + 10**9, MTIME + 10**9))
    copy(src, dest)
    same_tree(src, dest)
