"""bacpac copy, end to end: the real CLI, push, pull and local, against the session's sshd.

Each copy is checked with find's listing (names, kinds, modes, sizes, mtimes, link targets,
link counts, owners), every file's sha256 and `diff -r`, never with bacpac's own report; the
report's counters are checked against what the test changed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clirun import MiB, Result, allocated, bacpac, helper_pythons, transport_for
from fixtures_tree import SPARSE_SIZE, contents, listing, tree_src, xattrs_of  # noqa: F401

DIRECTIONS = ["local", "push", "pull"]


class Copier:
    """How a test names the two sides of a copy in one direction."""

    def __init__(self, direction: str, request: pytest.FixtureRequest) -> None:
        self.direction = direction
        self.remote = transport_for("local" if direction == "local" else "ssh", request)

    def src(self, path) -> str:
        text = str(path)
        return self.remote.target(text) if self.direction == "pull" else text

    def dest(self, path) -> str:
        return self.remote.target(path) if self.direction == "push" else str(path)

    def run(self, sources, dest, *extra: object) -> Result:
        srcs = [self.src(s) for s in (sources if isinstance(sources, list) else [sources])]
        return bacpac("copy", *self.remote.args(), "--no-progress", "--json", *extra, *srcs,
                      self.dest(dest))

    def ok(self, sources, dest, *extra: object) -> dict:
        run = self.run(sources, dest, *extra)
        assert run.returncode == 0, run.stderr
        assert run.summary["status"] == "ok", run.summary
        return run.summary


@pytest.fixture(params=DIRECTIONS)
def copier(request: pytest.FixtureRequest, no_helper_left) -> Copier:
    return Copier(request.param, request)


def same_tree(src: Path, dst: Path) -> None:
    assert listing(dst) == listing(src)
    assert contents(dst) == contents(src)
    # nodes are in the listing; diff says "X is a fifo while file Y is a fifo" of two FIFOs
    diff = subprocess.run(["diff", "-r", "--no-dereference", "--exclude=fifo",
                           "--exclude=chardev", "--exclude=blockdev", str(src), str(dst)],
                          capture_output=True)
    assert diff.returncode == 0, diff.stdout[-2000:] + diff.stderr[-2000:]


def hard_link_groups(top: Path) -> list:
    groups: dict = {}
    for root, dirs, files in os.walk(os.fsencode(top)):
        for name in files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(os.path.relpath(p, os.fsencode(top)))
    return sorted(sorted(g) for g in groups.values())


def test_copy_gives_the_same_tree(copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    summary = copier.ok(tree_src, dst)
    same_tree(tree_src, dst)
    assert hard_link_groups(dst) == hard_link_groups(tree_src) != []
    assert allocated(dst / "sparse") < SPARSE_SIZE // 4  # holes stayed holes
    assert summary["files_sent"] == summary["files_total"] > 10
    assert summary["files_unchanged"] == 0


def test_unchanged_rerun_sends_no_file(copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copier.ok(tree_src, dst)
    again = copier.ok(f"{tree_src}/", dst)
    assert again["files_sent"] == 0 and again["content_bytes"] == 0
    assert again["files_unchanged"] == again["files_total"]
    assert again["stream_bytes"] < 2 * MiB
    same_tree(tree_src, dst)


def test_changed_rerun_sends_what_changed(copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copier.ok(tree_src, dst)
    changed = tree_src / "special" / "with space.txt"  # one of a hard-link pair
    changed.write_bytes(b"changed, and longer than before\n")
    os.chmod(tree_src / "special" / "mode751" / "exec", 0o700)  # metadata only
    again = copier.ok(f"{tree_src}/", dst)
    assert again["files_sent"] == 1
    assert again["content_bytes"] == len(b"changed, and longer than before\n")
    assert again["files_meta"] == 1
    same_tree(tree_src, dst)
    assert hard_link_groups(dst) == hard_link_groups(tree_src)


def test_copy_into_an_existing_directory_keeps_the_sources_name(
        copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    copier.ok([tree_src / "doc", tree_src / "special"], dst)
    assert sorted(os.listdir(dst)) == ["doc", "special"]
    same_tree(tree_src / "doc", dst / "doc")
    same_tree(tree_src / "special", dst / "special")


def test_a_single_file_becomes_dest(copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    copier.ok(tree_src / "special" / "with space.txt", tmp_path / "one.txt")
    assert (tmp_path / "one.txt").read_bytes() == b"space\n"
    assert (os.stat(tmp_path / "one.txt").st_mtime_ns
            == os.stat(tree_src / "special" / "with space.txt").st_mtime_ns)


def test_delete_removes_only_with_the_flag(copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copier.ok(tree_src, dst)
    (dst / "extra").write_bytes(b"not in the source\n")
    (dst / "special" / "extra dir").mkdir()
    copier.ok(f"{tree_src}/", dst)
    assert (dst / "extra").exists()
    summary = copier.ok(f"{tree_src}/", dst, "--delete")
    assert not (dst / "extra").exists() and not (dst / "special" / "extra dir").exists()
    assert summary["files_deleted"] >= 2
    same_tree(tree_src, dst)


def test_dry_run_writes_nothing(copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    summary = copier.ok(tree_src, dst, "-n")
    assert not dst.exists()
    assert len(summary["would_send"]) == summary["files_total"]
    copier.ok(tree_src, dst)
    (tree_src / "doc" / "new file").write_bytes(b"new\n")
    (dst / "extra").write_bytes(b"extra\n")
    before = listing(dst)
    summary = copier.ok(f"{tree_src}/", dst, "--dry-run", "--delete")
    assert listing(dst) == before
    assert summary["would_send"] == ["doc/new file"]
    assert summary["would_delete"] == ["extra"]


def test_excludes_leave_out_what_they_match(copier: Copier, tree_src: Path,
                                            tmp_path: Path) -> None:
    patterns = tmp_path / "patterns"
    patterns.write_text("# comment\n/special/mode751/\n")
    dst = tmp_path / "dst"
    copier.ok(f"{tree_src}/", dst, "--exclude", "*.gz", "--exclude-from", patterns)
    assert not (dst / "special" / "mode751").exists()
    assert (dst / "special" / "with space.txt").exists()
    assert not [p for p in contents(dst) if p.endswith(b".gz")]
    assert [p for p in contents(tree_src) if p.endswith(b".gz")]  # the test means something


def test_xattrs_and_acls_kept_with_the_flag_only(copier: Copier, tree_src: Path,
                                                 tmp_path: Path) -> None:
    assert xattrs_of(tree_src)  # the test means something
    copier.ok(tree_src, tmp_path / "plain")
    assert xattrs_of(tmp_path / "plain") == {}
    copier.ok(tree_src, tmp_path / "kept", "--xattrs")
    assert xattrs_of(tmp_path / "kept") == xattrs_of(tree_src)


def test_the_oldest_python_runs_both_helpers(tree_src: Path, tmp_path: Path) -> None:
    version, python = next(iter(helper_pythons().items()))
    dst = tmp_path / "dst"
    run = bacpac("copy", "--no-progress", "--json", "--remote-python", python, tree_src, dst)
    assert run.returncode == 0, (version, run.stderr)
    same_tree(tree_src, dst)


def test_checksum_finds_a_change_the_quick_check_misses(copier: Copier, tree_src: Path,
                                                        tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copier.ok(tree_src, dst)
    changed = dst / "special" / "utf8-\xe9t\xe9".encode().decode("utf-8")
    before = os.stat(changed)
    changed.write_bytes(b"UTF8\n")  # same size, then the same mtime: the quick check sees none
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    quick = copier.ok(f"{tree_src}/", dst)
    assert quick["files_sent"] == 0 and changed.read_bytes() == b"UTF8\n"
    summed = copier.ok(f"{tree_src}/", dst, "--checksum")
    assert summed["files_sent"] == 1 and summed["content_bytes"] == 5
    same_tree(tree_src, dst)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_one_file_system_does_not_descend_into_a_mount(tmp_path: Path, no_helper_left) -> None:
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "here").write_bytes(b"here\n")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "mnt")],
                      capture_output=True).returncode:
        pytest.skip("mount -t tmpfs failed here")
    try:
        (src / "mnt" / "there").write_bytes(b"there\n")
        run = bacpac("copy", "--no-progress", "-x", src, tmp_path / "x")
        assert run.returncode == 0, run.stderr
        assert (tmp_path / "x" / "here").exists() and (tmp_path / "x" / "mnt").is_dir()
        assert os.listdir(tmp_path / "x" / "mnt") == []
        run = bacpac("copy", "--no-progress", src, tmp_path / "all")
        assert run.returncode == 0, run.stderr
        assert (tmp_path / "all" / "mnt" / "there").read_bytes() == b"there\n"
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)


def _extracted(saveset: Path, where: Path) -> Path:
    where.mkdir()
    subprocess.run(["tar", "--zstd", "-xpf", str(saveset), "-C", str(where)], check=True,
                   capture_output=True)
    return where


def test_saveset_holds_the_whole_tree_on_a_first_copy_and_a_rerun(
        copier: Copier, tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    first = copier.ok(tree_src, dst, "--saveset", tmp_path / "first.tar.zst")
    again = copier.ok(f"{tree_src}/", dst, "--saveset", tmp_path / "again.tar.zst")
    assert again["files_sent"] == 0
    for name, summary in (("first", first), ("again", again)):
        saveset = tmp_path / f"{name}.tar.zst"
        assert summary["saveset_sha256"]
        assert listing(_extracted(saveset, tmp_path / f"x-{name}")) == listing(tree_src)
        assert contents(tmp_path / f"x-{name}") == contents(tree_src)
        verify = bacpac("verify", "--no-progress", saveset)
        assert verify.returncode == 0, verify.stderr
    data = bytearray((tmp_path / "first.tar.zst").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "first.tar.zst").write_bytes(bytes(data))
    assert bacpac("verify", "--no-progress", tmp_path / "first.tar.zst").returncode == 1


def test_saveset_inside_dest_is_refused(tree_src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    run = bacpac("copy", "--no-progress", "--saveset", dst / "s.tar.zst", tree_src, dst)
    run.one_error_line(2, "inside DEST", alone=False)
    assert os.listdir(dst) == []


def test_a_helper_error_without_a_path_names_the_host_once(request, tmp_path,
                                                           no_helper_left) -> None:
    """A copy with --saveset onto a host whose Python lacks zstandard and whose zstd tool is
    hidden: the helper's message names no path, so the client names host:path, once."""
    remote = transport_for("ssh", request)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a file\n")
    hide = tmp_path / "hide" / "zstandard"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('zstandard hidden by the test')\n")
    places = "; ".join(f"[ ! -e {p}/zstd ] || mount --bind /dev/null {p}/zstd"
                       for p in ("/usr/local/bin", "/usr/bin", "/bin"))
    python = tmp_path / "bare-python"
    python.write_text(f"#!/bin/sh\nexec unshare --mount --map-root-user /bin/sh -c '{places}; "
                      f"PATH=/nonexistent PYTHONPATH={hide.parent} exec {sys.executable} "
                      f"\"$@\"' sh \"$@\"\n")
    python.chmod(0o755)
    dest = tmp_path / "dest"
    run = bacpac("copy", *remote.args(), "--no-progress", "--remote-python", python,
                 "--saveset", tmp_path / "s.tar.zst", f"{src}/", remote.target(dest))
    line = run.one_error_line(2, "zstd is needed")
    assert line.startswith(f"bacpac: {remote.target(dest)}: zstd is needed"), line
