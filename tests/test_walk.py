"""The walker and the manifest's wire form, in process: order, hard links across roots, sparse
extents, excludes; windows that round-trip any name and refuse a hostile payload."""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from remote_helper.errors import RemoteProtocolError
from remote_helper.tree import manifest
from remote_helper.tree.entry import DIR, FILE, HARDLINK, ROOT, SYMLINK, entry
from remote_helper.tree.walk import WalkError, Walker, walk


def _tree(top: Path) -> None:
    (top / "b").mkdir(parents=True)
    (top / "a").write_bytes(b"a")
    (top / "b" / "c").write_bytes(b"c")
    os.link(top / "a", top / "b" / "a-link")
    os.symlink("nowhere", top / "b" / "dangling")
    (top / "b" / "\xe9t\xe9".encode().decode("utf-8")).write_bytes(b"")
    with open(os.path.join(os.fsencode(top), b"b", b"bad-\xff"), "wb") as f:
        f.write(b"x")


def test_walk_yields_a_directory_before_its_contents_in_byte_order(tmp_path: Path) -> None:
    _tree(tmp_path / "t")
    paths = [(e.path, e.kind) for e in walk([(os.fsencode(tmp_path / "t") + b"/", ROOT)])]
    assert paths == [(ROOT, DIR), (b"a", FILE), (b"b", DIR), (b"b/a-link", HARDLINK),
                     (b"b/bad-\xff", FILE), (b"b/c", FILE), (b"b/dangling", SYMLINK),
                     ("b/\xe9t\xe9".encode(), FILE)]


def test_hard_links_are_found_across_roots(tmp_path: Path) -> None:
    _tree(tmp_path / "t")
    roots = [(os.fsencode(tmp_path / "t" / "b"), b"one"), (os.fsencode(tmp_path / "t"), b"two")]
    found = {e.path: e for e in walk(roots)}
    assert found[b"one/a-link"].kind == FILE
    assert found[b"two/a"].kind == HARDLINK and found[b"two/a"].target == b"one/a-link"
    assert found[b"one/dangling"].target == b"nowhere"


def test_a_sparse_file_has_its_data_extents(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"x" * 4096)
    item, = walk([(os.fsencode(path), b"s")])
    assert item.extents is not None
    assert item.extents[-1] == (8 << 20, 0)  # ends in a hole
    assert sum(length for _, length in item.extents) < 1 << 20


def test_excludes_skip_a_directory_and_its_contents(tmp_path: Path) -> None:
    _tree(tmp_path / "t")

    class Skip:
        def excluded(self, path: bytes, is_dir: bool) -> bool:
            return path == b"b" and is_dir

    found = [e.path for _, e in Walker(excludes=Skip()).walk(
        [(os.fsencode(tmp_path / "t") + b"/", ROOT)])]
    assert found == [ROOT, b"a"]


def test_a_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WalkError, match="missing"):
        list(walk([(os.fsencode(tmp_path / "missing"), b"m")]))


def test_windows_round_trip_any_name(tmp_path: Path) -> None:
    items = [entry(b"d", DIR), entry(b"d/\xff\x00\n name", FILE, size=3, mtime_ns=-5,
                                     xattrs=((b"user.x", b"\x00\xff"),),
                                     extents=((0, 1), (9, 0))),
             entry(b"d/l", SYMLINK, target=b"../\xfe")]
    (batch, payload), = manifest.windows((None, i) for i in items)
    assert [e for _, e in batch] == items
    assert manifest.decode_window(payload) == items


def test_windows_are_cut_within_the_cap() -> None:
    items = [(None, entry(b"f%06d" % n + b"x" * 200, FILE)) for n in range(20000)]
    windows = list(manifest.windows(items))
    assert len(windows) > 1
    assert all(len(payload) < 1 << 20 for _, payload in windows)
    assert sum(len(batch) for batch, _ in windows) == 20000


@pytest.mark.parametrize("payload", [
    b"not zlib", zlib.compress(b"{}"), zlib.compress(b"[[1]]"),
    zlib.compress(json.dumps([["a", "x", 0, 0, 0, "", "", 0, 0, "", 0, [], None]]).encode()),
    zlib.compress(json.dumps([["\u0100", "f", 0, 0, 0, "", "", 0, 0, "", 0, [], None]]).encode()),
    zlib.compress(json.dumps([["a", "f", -1, 0, 0, "", "", 0, 0, "", 0, [], None]]).encode()),
    zlib.compress(b"[" + b" " * (5 << 20) + b"]"),
])
def test_a_bad_window_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        manifest.decode_window(payload)


def test_windows_carry_a_digest_per_file_with_checksum() -> None:
    items = [entry(b"d", DIR), entry(b"d/f", FILE, size=1)]
    (_, payload), = manifest.windows(((None, i) for i in items),
                                     lambda disk, item: "ab" * 32 if item.kind == FILE else None)
    assert manifest.decode_window_digests(payload) == (items, [None, "ab" * 32])
    bad = zlib.compress(json.dumps([manifest.entry_row(items[1]) + ["short"]]).encode())
    with pytest.raises(RemoteProtocolError):
        manifest.decode_window(bad)


def test_a_directory_over_the_stat_ahead_walks_the_same(tmp_path: Path, monkeypatch) -> None:
    from remote_helper.tree import walk as walk_module

    _tree(tmp_path / "t")
    top = [(os.fsencode(tmp_path / "t") + b"/", ROOT)]
    listed = [(e.path, e.kind, e.size, e.mtime_ns, e.target) for e in walk(top)]
    monkeypatch.setattr(walk_module, "STAT_AHEAD", 1)  # every directory holds names alone
    assert [(e.path, e.kind, e.size, e.mtime_ns, e.target) for e in walk(top)] == listed


def test_a_child_gone_between_listing_and_lstat_is_left_out(tmp_path: Path,
                                                           monkeypatch) -> None:
    from remote_helper.tree import walk as walk_module

    _tree(tmp_path / "t")
    real = walk_module.Walker._list

    def listing_then_removal(self, disk):
        children = real(self, disk)
        if disk.endswith(b"/b"):
            os.unlink(disk + b"/c")
        return children

    for ahead in (4096, 1):
        if (tmp_path / "t").exists():
            import shutil
            shutil.rmtree(tmp_path / "t")
        _tree(tmp_path / "t")
        monkeypatch.setattr(walk_module, "STAT_AHEAD", ahead)
        monkeypatch.setattr(walk_module.Walker, "_list", listing_then_removal)
        walker = Walker()
        paths = [e.path for _, e in walker.walk([(os.fsencode(tmp_path / "t") + b"/", ROOT)])]
        assert b"b/a-link" in paths and walker.problems == []
        # listed with its lstat taken: it is sent as it was; without: left out, no problem
        assert (b"b/c" in paths) == (ahead > 1)


def test_a_rows_bound_is_never_under_its_json() -> None:
    import random

    rng = random.Random(7)
    owners = ["", "root", "\u00e9l\u00e8ve", "\U0001f600x", "a\"b\\c"]
    for n in range(2000):
        name = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        item = entry(name, rng.choice([FILE, DIR, SYMLINK, HARDLINK]),
                     mode=rng.randrange(0o10000), uid=rng.randrange(1 << 32),
                     gid=rng.randrange(1 << 32), uname=rng.choice(owners),
                     gname=rng.choice(owners), size=rng.randrange(1 << 63),
                     mtime_ns=rng.randrange(-(1 << 63), 1 << 63),
                     target=bytes(rng.randrange(256) for _ in range(rng.randrange(50))),
                     rdev=rng.randrange(1 << 64),
                     xattrs=[(b"user.\"\\\x00", bytes(range(256)))] if n % 7 == 0 else [],
                     extents=((0, 1 << 62), (1 << 63, 0)) if n % 5 == 0 else None)
        digest = "ab" * 32 if n % 3 == 0 else None
        row = json.dumps(manifest.entry_row(item, digest), separators=(",", ":"))
        assert manifest._bound(item, digest) >= len(row), (item, row)
