"""bacpac copy's refusals and hostile input: nothing is ever written outside DEST, every bad
command line is one `bacpac:` line with exit 2 and nothing written, and a cut copy rerun
completes.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from clirun import MiB, bacpac, finish, random_bytes, start, wait_until
from fixtures_tree import contents, listing, tree_src  # noqa: F401
from remote_helper.tree import manifest, tar
from remote_helper.tree.entry import DIR, FILE, ROOT, entry
from remote_helper.wire import protocol
from remote_helper.wire.protocol import DATA, END, ERROR, MANIFEST, OPEN, READY, WANTS
from test_copy import Copier, copier, same_tree  # noqa: F401
from test_hostile import LocalHelper



# ---- a planted symlink, a crafted stream --------------------------------------------------

def test_a_symlink_planted_in_dest_is_not_followed(copier: Copier, tree_src: Path,
                                                   tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copier.ok(tree_src, dst)
    outside = tmp_path / "outside"
    outside.mkdir()
    (dst / "special" / "mode751" / "exec").unlink()
    for planted in (dst / "special", dst / "doc"):
        os.rename(planted, str(planted) + ".old")
        os.symlink(outside, planted)
    copier.ok(f"{tree_src}/", dst)
    assert os.listdir(outside) == []
    assert not (dst / "special").is_symlink() and not (dst / "doc").is_symlink()
    assert listing(dst / "special") == listing(tree_src / "special")
    assert contents(dst / "doc") == contents(tree_src / "doc")


def _write_tree_helper(dest: Path) -> LocalHelper:
    helper = LocalHelper()
    helper.send(protocol.encode_json(OPEN, {
        "protocol": protocol.PROTOCOL_VERSION, "job": "write_tree", "dest": str(dest),
        "roots": [{"path": "/src/", "kind": "d", "contents": True, "name": "src"}],
        "source": {}, "delete": False, "dry_run": False, "xattrs": False, "excludes": []}))
    ready = helper.recv()
    assert ready.type == READY, ready
    return helper


def _window(*items) -> bytes:
    (_, payload), = manifest.windows((None, item) for item in items)
    return protocol.encode(MANIFEST, payload, 0, 0, len(items))


@pytest.mark.parametrize("name", [b"../evil", b"a/../../evil", b"/tmp/evil", b"a//b", b"a/./b",
                                  b"sub/\0evil"])
def test_a_manifest_naming_a_path_outside_dest_is_refused(name: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "dst" / "inner"
    dest.parent.mkdir()
    helper = _write_tree_helper(dest)
    try:
        helper.send(_window(entry(ROOT, DIR, 0o755), entry(name, FILE, size=5)))
        frame = helper.recv()
        assert frame.type == ERROR, frame
        helper.proc.stdin.close()  # as the client does once it has the ERROR
        assert helper.proc.wait(timeout=10) == 1
    finally:
        helper.close()
    found = [os.path.join(r, n) for r, ds, fs in os.walk(tmp_path) for n in ds + fs]
    assert found == [str(tmp_path / "dst"), str(dest)]


def test_a_tar_member_named_outside_dest_is_refused(tmp_path: Path) -> None:
    """The manifest is innocent, the content's tar member names ../evil: refused, and the
    wanted file is not made either."""
    dest = tmp_path / "dst"
    helper = _write_tree_helper(dest)
    try:
        helper.send(_window(entry(ROOT, DIR, 0o755), entry(b"good", FILE, size=5)))
        wants = helper.recv()
        assert wants.type == WANTS and wants.json()["want"] == [1]
        evil = entry(b"../evil", FILE, size=5)
        data = tar.encode_header(evil) + b"evil\n" + tar.padding(5) + tar.END_OF_ARCHIVE
        helper.send(protocol.encode(DATA, data, 0, protocol.CODEC_RAW, len(data)))
        # a frame is decoded while the next one is unpacked: END, as a reader sends, is next
        helper.send(protocol.encode_json(END, {"bytes": len(data), "sha256": "0" * 64}))
        frame = helper.recv()
        assert frame.type == ERROR and "evil" in frame.json()["message"], frame
        helper.proc.stdin.close()
        assert helper.proc.wait(timeout=10) == 1
    finally:
        helper.close()
    assert not (tmp_path / "evil").exists()
    assert os.listdir(dest) == []


# ---- bad command lines: exit 2, one line, nothing written ------------------------------------

def test_a_missing_source_is_refused(copier: Copier, tmp_path: Path) -> None:
    run = copier.run(tmp_path / "missing", tmp_path / "dst")
    run.one_error_line(2, "missing", "No such file", alone=False)
    assert not (tmp_path / "dst").exists()


def test_several_sources_into_a_file_are_refused(copier: Copier, tree_src: Path,
                                                 tmp_path: Path) -> None:
    dest = tmp_path / "file"
    dest.write_bytes(b"keep\n")
    run = copier.run([tree_src / "doc", tree_src / "special"], dest)
    run.one_error_line(2, str(dest), "not a directory", alone=False)
    assert dest.read_bytes() == b"keep\n"


def test_a_device_as_dest_is_refused(tree_src: Path) -> None:
    run = bacpac("copy", "--no-progress", tree_src / "special" / "empty", "/dev/null")
    run.one_error_line(2, "/dev/null", "refusing", alone=False)


def test_dest_inside_the_source_is_refused(tree_src: Path) -> None:
    before = listing(tree_src)
    run = bacpac("copy", "--no-progress", tree_src, tree_src / "doc" / "copy")
    run.one_error_line(2, "inside the source", alone=False)
    assert listing(tree_src) == before


def test_source_inside_dest_is_refused(tree_src: Path) -> None:
    run = bacpac("copy", "--no-progress", tree_src / "doc", tree_src)
    run.one_error_line(2, "inside DEST", alone=False)


@pytest.mark.parametrize("args, words", [
    (["host1:/a", "host2:/b"], ["one side must be local"]),
    (["/a", "host1:/b", "/c"], ["same host"]),
    (["/a"], ["SRC", "DEST"]),
])
def test_bad_command_lines_exit_2_in_one_line(args: list, words: list) -> None:
    run = bacpac("copy", "--no-progress", *args)
    run.one_error_line(2, *words)


# ---- a cut copy, run again ---------------------------------------------------------------

def test_a_cut_copy_rerun_completes(tmp_path: Path, no_helper_left) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for n in range(12):  # random: slow to compress at level 19, so the copy can be cut
        (src / f"f{n:02d}").write_bytes(random_bytes(2 * MiB, n))
    dst = tmp_path / "dst"
    began = time.monotonic()
    proc = start("copy", "--no-progress", "--level", "19", src, dst)
    wait_until(lambda: dst.exists() and any(n.startswith("f") for n in os.listdir(dst)), 60,
               "a first file in DEST", proc)
    proc.send_signal(signal.SIGKILL)
    finish(proc, began)
    run = bacpac("copy", "--no-progress", "--json", f"{src}/", dst)
    assert run.returncode == 0, run.stderr
    assert 0 < run.summary["files_sent"] < 12
    same_tree(src, dst)
    assert not [n for n in os.listdir(dst) if "bacpac" in n]  # no temporary file left
