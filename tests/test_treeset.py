"""Tree savesets: stock tar and zstd read them, bacpac info/verify prove them and restore
recreates the tree, locally and over ssh; a damaged or interrupted one never passes."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from clirun import Transport, bacpac, helper_pythons, transport, transport_for  # noqa: F401
from fixtures_tree import build_tree, contents, encode_tree, listing, xattrs_of
from remote_helper.saveset.reader import SavesetReader
from remote_helper.saveset.treeset import TreeSavesetOutput
from remote_helper.wire.zstdframe import compress_frame

FRAME = 1 << 20
META = {"source_host": "testhost", "source_path": "/src", "bacpac_version": "test"}


def write_treeset(path: Path, tar: bytes) -> dict:
    """A tree saveset of `tar` (without its end, which commit() adds), fed both ways: tar bytes
    compressed by the output, and a frame compressed ahead as the wire's would be."""
    out = TreeSavesetOutput(str(path), META, FRAME)
    third = len(tar) // 3
    out.add_tar(tar[:third])
    middle = tar[third:2 * third]
    out.add_frame(compress_frame(middle, 1), middle)
    out.add_tar(tar[2 * third:])
    return out.commit({"entries": 0})


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    top = tmp_path_factory.mktemp("treeset")
    src = top / "src"
    build_tree(src)
    tar = encode_tree(src)[:-1024]  # commit() ends the archive
    saveset = top / "tree.tar.zst"
    result = write_treeset(saveset, tar)
    return {"src": src, "saveset": saveset, "result": result,
            "sha256": hashlib.sha256(tar + b"\0" * 1024).hexdigest()}


def same_tree(a: Path, b: Path) -> None:
    assert listing(b) == listing(a)
    assert contents(b) == contents(a)
    assert xattrs_of(b) == xattrs_of(a)


# ---- stock tools -----------------------------------------------------------------------------

def test_trailer_holds_the_sha256_of_the_tar_stream(made):
    assert made["result"]["sha256"] == made["sha256"]
    with open(made["saveset"], "rb") as f:
        reader = SavesetReader(f)
    assert reader.metadata["kind"] == "tree" and reader.metadata["size"] is None
    assert reader.trailer["sha256"] == made["sha256"]
    assert os.stat(made["saveset"]).st_mode & 0o777 == 0o600


def test_zstd_d_gives_the_tar_itself(made):
    run = subprocess.run(["zstd", "-d", "-c", "-q", str(made["saveset"])], capture_output=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert hashlib.sha256(run.stdout).hexdigest() == made["sha256"]


def test_stock_tar_lists_and_extracts_a_tree_saveset(made, tmp_path):
    run = subprocess.run(["tar", "--zstd", "-tvf", str(made["saveset"])], capture_output=True,
                         timeout=60)
    assert run.returncode == 0 and run.stderr == b"", run.stderr
    assert b" special/symlink -> with space.txt" in run.stdout
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "-xpf",
                          str(made["saveset"])], cwd=out, capture_output=True, timeout=60)
    assert run.returncode == 0 and run.stderr == b"", run.stderr
    same_tree(made["src"], out)


# ---- info, verify, restore -------------------------------------------------------------------

def test_info_says_tree_and_the_tar_size(made, transport: Transport):
    run = bacpac("info", *transport.args(), "--json", transport.target(made["saveset"]))
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert '"kind": "tree"' in text and made["sha256"] in text


def test_verify_passes_a_tree_saveset(made, transport: Transport):
    run = bacpac("verify", *transport.args(), "--no-progress", "--json",
                 transport.target(made["saveset"]))
    assert run.returncode == 0, run.stderr
    assert run.summary["sha256"] == made["sha256"]


def test_verify_fails_a_flipped_byte(made, transport: Transport, tmp_path):
    data = bytearray(made["saveset"].read_bytes())
    data[len(data) // 2] ^= 0x40
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(bytes(data))
    run = bacpac("verify", *transport.args(), "--no-progress", transport.target(bad))
    assert run.returncode == 1, run.stdout
    assert str(bad) in run.error_line and "frame" in run.error_line


def test_restore_recreates_the_tree(made, transport: Transport, tmp_path):
    dest = tmp_path / "restored"
    run = bacpac("restore", *transport.args(), "--no-progress", "--json",
                 str(made["saveset"]), transport.target(dest))
    assert run.returncode == 0, run.stderr
    assert run.summary["sha256"] == made["sha256"]
    same_tree(made["src"], dest)
    assert os.stat(dest / "sparse").st_blocks * 512 < 4 << 20  # holes stay holes


def test_restore_from_the_saveset_host_over_ssh(made, request, tmp_path, no_helper_left):
    ssh = transport_for("ssh", request)
    dest = tmp_path / "restored"
    run = bacpac("restore", *ssh.args(), "--no-progress", ssh.target(made["saveset"]), str(dest))
    assert run.returncode == 0, run.stderr
    same_tree(made["src"], dest)


def test_restore_and_verify_with_the_oldest_python_as_helper(made, tmp_path, no_helper_left):
    version, python = next(iter(helper_pythons().items()))
    dest = tmp_path / "restored"
    for args in (("verify",), ("restore",)):
        run = bacpac(*args, "--no-progress", "--json", "--remote-python", python,
                     str(made["saveset"]), *([str(dest)] if args[0] == "restore" else []))
        assert run.returncode == 0, run.stderr
        assert run.summary["sha256"] == made["sha256"]
    assert version == "3.6" or not os.path.exists(os.path.expanduser("~/.pyenv/versions/3.6.15"))
    same_tree(made["src"], dest)


def test_restore_into_an_existing_directory_adds_the_tree(made, tmp_path, no_helper_left):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "kept").write_bytes(b"mine\n")
    run = bacpac("restore", "--no-progress", str(made["saveset"]), str(dest))
    assert run.returncode == 0, run.stderr
    assert (dest / "kept").read_bytes() == b"mine\n"
    assert contents(dest)[b"special/with space.txt"] == contents(made["src"])[
        b"special/with space.txt"]


@pytest.mark.parametrize("what", ["file", "device"])
def test_restore_refuses_a_non_directory(made, transport: Transport, tmp_path, what):
    target = tmp_path / "file" if what == "file" else Path("/dev/null")
    if what == "file":
        target.write_bytes(b"keep")
    run = bacpac("restore", *transport.args(), "--no-progress", str(made["saveset"]),
                 transport.target(target))
    assert run.returncode == 2, run.stderr
    line = run.one_error_line(2, str(target))
    assert ("is a device" if what == "device" else "exists and is not a directory") in line
    if what == "file":
        assert target.read_bytes() == b"keep"


def test_restore_refuses_a_missing_parent(made, tmp_path, no_helper_left):
    dest = tmp_path / "no" / "dest"
    run = bacpac("restore", "--no-progress", str(made["saveset"]), str(dest))
    assert run.returncode == 2
    assert "does not exist" in run.one_error_line(2, str(dest))
    assert not (tmp_path / "no").exists()


def test_restore_of_a_damaged_tree_saveset_fails_before_the_damage(made, tmp_path,
                                                                     no_helper_left):
    data = bytearray(made["saveset"].read_bytes())
    data[-200] ^= 0xFF  # inside the seek table: refused before anything is written
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    run = bacpac("restore", "--no-progress", str(bad), str(dest))
    assert run.returncode == 1
    assert str(bad) in run.error_line
    assert not dest.exists()


# ---- writing ---------------------------------------------------------------------------------

def test_an_interrupted_tree_saveset_leaves_no_final_name(tmp_path):
    path = tmp_path / "t.tar.zst"
    out = TreeSavesetOutput(str(path), META, FRAME)
    out.add_tar(os.urandom(3 * FRAME))
    out.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_frame_not_matching_its_content_is_refused(tmp_path):
    out = TreeSavesetOutput(str(tmp_path / "t.tar.zst"), META, FRAME)
    try:
        with pytest.raises(Exception, match="content bytes"):
            out.add_frame(compress_frame(b"x" * 100, 1), b"x" * 99)
    finally:
        out.discard()
    assert list(tmp_path.iterdir()) == []


def test_restore_of_a_saveset_whose_tar_is_damaged_says_so(tmp_path, no_helper_left):
    build_tree(tmp_path / "src")
    tar = bytearray(encode_tree(tmp_path / "src")[:-1024])
    tar[2048:2560] = b"junk" * 128  # a header: frames and sha256 agree, the tar does not
    saveset = tmp_path / "bad.tar.zst"
    write_treeset(saveset, bytes(tar))
    dest = tmp_path / "dest"
    run = bacpac("restore", "--no-progress", str(saveset), str(dest))
    line = run.one_error_line(1, str(dest))
    assert "tar stream is damaged" in line and "at byte 1536" in line
    assert not [p for p in dest.rglob("*") if p.is_file()]


def test_a_tree_saveset_made_member_by_member_is_the_tree(tmp_path):
    """As a copy's --saveset makes it: TarStream members of the entries, through add_tar."""
    from fixtures_tree import entries_of
    from remote_helper.tree.tarstream import TarStream
    src = tmp_path / "src"
    build_tree(src)
    saveset = tmp_path / "t.tar.zst"
    out = TreeSavesetOutput(str(saveset), META, FRAME)
    stream = TarStream(lambda e: open(os.path.join(os.fsencode(src), e.path), "rb"))
    for e in entries_of(src):
        for piece in stream.member(e):
            out.add_tar(piece)
    result = out.commit()
    run = subprocess.run(["zstd", "-d", "-c", "-q", str(saveset)], capture_output=True,
                         timeout=60)
    assert run.stdout == encode_tree(src)
    assert hashlib.sha256(run.stdout).hexdigest() == result["sha256"]


def test_restore_of_a_tree_refuses_verify(made, tmp_path, no_helper_left):
    dest = tmp_path / "dest"
    run = bacpac("restore", "--no-progress", "--verify", str(made["saveset"]), str(dest))
    assert "--verify re-reads a disk image" in run.one_error_line(2, str(made["saveset"]))
    assert not dest.exists()


def test_a_copy_saveset_restores_to_the_source_tree(transport: Transport, tmp_path):
    """copy --saveset on the writing host, then restore from there: the source again, xattrs
    and ACLs included; info calls it a tree."""
    src, dst, saveset = tmp_path / "src", tmp_path / "dst", tmp_path / "copy.tar.zst"
    build_tree(src)
    run = bacpac("copy", *transport.args(), "--no-progress", "--json", "--xattrs",
                 "--saveset", str(saveset), f"{src}/", transport.target(dst))
    assert run.returncode == 0, run.stderr
    info = bacpac("info", *transport.args(), "--json", transport.target(saveset))
    assert info.returncode == 0 and '"kind": "tree"' in info.stdout, info.stderr
    restored = tmp_path / "restored"
    run = bacpac("restore", *transport.args(), "--no-progress", transport.target(saveset),
                 str(restored))
    assert run.returncode == 0, run.stderr
    same_tree(src, restored)


def test_verify_decodes_the_tar_of_a_tree_saveset(made, tmp_path, no_helper_left):
    run = bacpac("verify", "--no-progress", "--json", str(made["saveset"]))
    assert run.returncode == 0, run.stderr
    assert run.summary["entries"] == len(listing(made["src"])) + 1  # and the top, "./"
    tar = bytearray(encode_tree(made["src"])[:-1024])
    tar[2048:2560] = b"junk" * 128  # a header: frames and sha256 agree, the tar does not
    bad = tmp_path / "bad.tar.zst"
    write_treeset(bad, bytes(tar))
    run = bacpac("verify", "--no-progress", str(bad))
    line = run.one_error_line(1, str(bad))
    assert "tar stream in its frames is damaged: bad pax extended header at byte 1536" in line
