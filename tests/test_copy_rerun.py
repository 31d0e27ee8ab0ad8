"""A rerun's short cuts keep rsync's quick check exactly: the writer's compare of a file in
one lstat, the manifest's decoding of the common row in one expression; and the remote side's
helper session begun early (docs/performance.md, copy-rerun)."""
from __future__ import annotations

import json
import os
import random
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from treeutil import walk  # noqa: E402

from remote_helper.errors import RemoteProtocolError  # noqa: E402
from remote_helper.tree import manifest  # noqa: E402
from remote_helper.tree.entry import DIR, FILE, HARDLINK, ROOT, SYMLINK, entry  # noqa: E402
from remote_helper.tree.writer import CONTENT, META, SAME, TreeWriter  # noqa: E402

MTIME = 1_600_000_000_123_456_789
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners)")


def _dest(tmp_path: Path) -> Path:
    """DEST holding d/f (5 bytes), d/g and a file at the top, each with MTIME."""
    top = tmp_path / "dest"
    (top / "d").mkdir(parents=True)
    for path in (top / "d" / "f", top / "d" / "g", top / "top"):
        path.write_bytes(b"12345")
        os.chmod(path, 0o644)
        os.utime(path, ns=(MTIME, MTIME))
    return top


def _file(path: bytes, size: int = 5, mtime: int = MTIME, mode: int = 0o644, uid: int = -1,
          gid: int = -1):
    return entry(path, FILE, mode, os.geteuid() if uid == -1 else uid,
                 os.getegid() if gid == -1 else gid, size=size, mtime_ns=mtime)


def _verdicts(top: Path, items, owners: bool = False, **kw) -> list:
    writer = TreeWriter(os.fsencode(top), owners, False, False, **kw)
    try:
        return [writer.compare(item) for item in items]
    finally:
        writer.close()


def test_a_file_of_equal_size_and_mtime_is_not_sent_even_if_its_bytes_differ(tmp_path):
    top = _dest(tmp_path)
    (top / "d" / "f").write_bytes(b"54321")
    os.utime(top / "d" / "f", ns=(MTIME, MTIME))
    assert _verdicts(top, [entry(b"d", DIR), _file(b"d/f"), _file(b"d/g"), _file(b"top")]) \
        == [META, SAME, SAME, SAME]  # the directory's mtime is not the entry's


def test_a_file_changed_in_size_but_not_mtime_is_sent(tmp_path):
    top = _dest(tmp_path)
    assert _verdicts(top, [_file(b"d/f", size=6), _file(b"d/g", size=4), _file(b"top", 0)]) \
        == [CONTENT, CONTENT, CONTENT]


def test_a_file_changed_in_mtime_alone_is_sent(tmp_path):
    top = _dest(tmp_path)
    assert _verdicts(top, [_file(b"d/f", mtime=MTIME + 1), _file(b"top", mtime=MTIME - 1000)]) \
        == [CONTENT, CONTENT]


def test_a_file_changed_in_mode_alone_gets_its_metadata(tmp_path):
    top = _dest(tmp_path)
    assert _verdicts(top, [_file(b"d/f", mode=0o600), _file(b"d/g", mode=0o4644)]) \
        == [META, META]


@needs_root
def test_a_file_changed_in_owner_alone_gets_its_metadata_as_root(tmp_path):
    top = _dest(tmp_path)
    assert _verdicts(top, [_file(b"d/f", uid=1234), _file(b"d/g", gid=5678), _file(b"top")],
                     owners=True) == [META, META, SAME]
    # not kept: the owner is not compared
    assert _verdicts(top, [_file(b"d/f", uid=1234)], owners=False) == [SAME]


def test_a_directory_symlink_or_missing_name_where_src_has_a_file_is_sent(tmp_path):
    top = _dest(tmp_path)
    (top / "d" / "f").unlink()
    (top / "d" / "f").mkdir()
    os.utime(top / "d" / "f", ns=(MTIME, MTIME))
    (top / "d" / "g").unlink()
    (top / "d" / "g").symlink_to(top / "top")  # its target has the entry's size and mtime
    assert _verdicts(top, [_file(b"d/f", size=(top / "d" / "f").stat().st_size),
                           _file(b"d/g"), _file(b"d/missing"), _file(b"nodir/f")]) \
        == [CONTENT, CONTENT, CONTENT, CONTENT]


def test_a_file_behind_a_planted_symlink_is_sent_not_followed(tmp_path):
    top = _dest(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f").write_bytes(b"12345")
    os.utime(elsewhere / "f", ns=(MTIME, MTIME))
    (top / "link").symlink_to(elsewhere)
    assert _verdicts(top, [_file(b"link/f")]) == [CONTENT]


def test_a_file_whose_dest_is_a_directory_replaces_it_when_sent(tmp_path):
    top = _dest(tmp_path)
    (top / "d" / "f").unlink()
    (top / "d" / "f").mkdir()
    item = _file(b"d/f")
    writer = TreeWriter(os.fsencode(top), False, False, False)
    try:
        assert writer.compare(item) == CONTENT
        sink = writer.add(item)
        sink.write(0, b"abcde")
        sink.commit()
        writer.finish()
    finally:
        writer.close()
    assert (top / "d" / "f").read_bytes() == b"abcde"
    assert (top / "d" / "f").stat().st_mtime_ns == MTIME


def test_unsafe_paths_of_files_are_refused_by_the_short_compare(tmp_path):
    top = _dest(tmp_path)
    for path in (b"../top", b"d/../top", b"/etc/passwd", b"d//f", b"d/f\0", b"d/.", b"d/.."):
        with pytest.raises(Exception) as caught:
            _verdicts(top, [entry(b"d", DIR), _file(path)])
        assert "unsafe" in str(caught.value), path


def test_a_copy_of_a_tree_compares_the_same_as_a_full_walk(tmp_path):
    """Every entry of a real tree, against a copy of itself: all SAME (directories too,
    the hard link to its own inode)."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for n in range(30):
        (src / "a" / ("f%d" % n)).write_bytes(b"x" * n)
    (src / "a" / "b" / "g").write_bytes(b"g")
    os.link(src / "a" / "b" / "g", src / "a" / "hard")
    (src / "a" / "sym").symlink_to("b/g")
    dest = tmp_path / "dest"
    os.system("cp -a %s %s" % (src, dest))
    items = list(walk(src))
    assert {i.kind for i in items} >= {DIR, FILE, HARDLINK, SYMLINK}
    assert set(_verdicts(dest, items, owners=os.geteuid() == 0)) == {SAME}
    assert items[0].path == ROOT


# --- the manifest's rows ------------------------------------------------------------------

def _random_entry(rng: random.Random):
    kind = rng.choice([FILE, FILE, DIR, SYMLINK, HARDLINK])
    return entry(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))), kind,
                 mode=rng.randrange(0o10000), uid=rng.randrange(1 << 32),
                 gid=rng.randrange(1 << 32), uname=rng.choice(["", "root", "\u00e9l\u00e8ve"]),
                 gname=rng.choice(["", "staff"]), size=rng.randrange(1 << 40),
                 mtime_ns=rng.randrange(-(1 << 62), 1 << 62),
                 target=bytes(rng.randrange(256) for _ in range(rng.randrange(20))),
                 xattrs=[(b"user.a", b"\x00\xff")] if rng.random() < 0.2 else [],
                 extents=((0, 5), (9, 0)) if kind == FILE and rng.random() < 0.2 else None)


def test_rows_round_trip_through_both_decoders():
    rng = random.Random(3)
    items = [_random_entry(rng) for _ in range(3000)]
    windows = list(manifest.windows((None, i) for i in items))
    assert [e for _, payload in windows for e in manifest.decode_window(payload)] == items
    for item in items:  # the long way agrees with the short one on every row
        row = json.loads(json.dumps(manifest.entry_row(item)))
        assert manifest._checked_row(row) == manifest.decode_row(row) == item


@pytest.mark.parametrize("field, value", [
    (0, 5), (0, None), (0, "\u0100"), (1, "x"), (1, None), (2, True), (2, -1), (2, 1.5),
    (3, -1), (4, "0"), (5, None), (6, 7), (7, -5), (7, False), (8, 1.0), (8, None),
    (9, 3), (9, "\u0100"), (10, -1), (11, None), (11, [["a"]]), (12, [[1, -1]]), (12, "x"),
])
def test_a_bad_field_is_a_protocol_error(field, value):
    row = manifest.entry_row(entry(b"d/f", FILE, size=3, mtime_ns=MTIME))
    row[field] = value
    payload = zlib.compress(json.dumps([row]).encode())
    with pytest.raises(RemoteProtocolError):
        manifest.decode_window(payload)


# --- the remote side's session begun early (cli._begin_copy_early) -------------------------

def _cli(capsys, *argv: object) -> tuple[int, str]:
    from bacpac import cli

    args = cli.build_parser().parse_args([str(arg) for arg in argv])
    code = cli.run(args.run, args)
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_copy_through_an_early_session_copies_and_leaves_nothing(
        direction, sshd, tmp_path, capsys, no_leaks) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"content")
    dest = tmp_path / "dest"
    remote = (lambda p: f"testhost:{p}")
    paths = [f"{src}/", remote(dest)] if direction == "push" else [remote(f"{src}/"), dest]
    for _ in range(2):  # a first copy, then a rerun
        code, said = _cli(capsys, "copy", "-F", sshd.config_path, "--no-progress", *paths)
        assert code == 0, said
        assert (dest / "d" / "f").read_bytes() == b"content"
    assert no_leaks.leftovers() == []


def test_a_copy_whose_source_is_missing_closes_its_early_session(
        sshd, tmp_path, capsys, no_leaks) -> None:
    code, said = _cli(capsys, "copy", "-F", sshd.config_path, "--no-progress",
                      tmp_path / "missing", f"testhost:{tmp_path / 'dest'}")
    assert code == 2 and said.startswith("bacpac: ") and "missing" in said, said
    assert not (tmp_path / "dest").exists()
    assert no_leaks.leftovers() == []


def test_an_early_copy_connection_that_fails_gives_its_one_line_error(
        sshd, tmp_path, capsys, no_leaks) -> None:
    import subprocess

    (tmp_path / "src").mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True)
    other_key = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other_key}\n")
    code, said = _cli(capsys, "copy", "-F", sshd.config_path, "-o",
                      f"UserKnownHostsFile={known_hosts}", "--no-progress", tmp_path / "src",
                      f"testhost:{tmp_path / 'dest'}")
    assert code == 1, said
    assert said.startswith("bacpac: ") and "testhost" in said and "host key" in said, said
    assert not (tmp_path / "dest").exists()
    assert no_leaks.leftovers() == []
