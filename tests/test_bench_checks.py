"""The benchmark's own checks: a row counts only when its copy holds what the source does, so
the digests that judge sparse disks and trees must see every difference a copy could make,
and the report must read what the commands print."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from rows_disk import content_digest  # noqa: E402
from rows_fleet import _all_sent  # noqa: E402
from rows_tree import tree_digest  # noqa: E402


def _sparse(path: Path, size: int, writes: dict[int, bytes]) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return str(path)


def test_a_sparse_disk_and_its_dense_copy_have_one_content_digest(tmp_path):
    sparse = _sparse(tmp_path / "s.img", 8 << 20, {1 << 20: b"data" * 1000, 7 << 20: b"end"})
    dense = tmp_path / "d.img"
    dense.write_bytes(Path(sparse).read_bytes())  # every zero written out
    assert content_digest(sparse) == content_digest(str(dense))


@pytest.mark.parametrize("change", ["one byte", "a byte moved", "longer"])
def test_the_content_digest_sees_any_change(tmp_path, change):
    writes = {1 << 20: b"data" * 1000}
    size = 8 << 20
    if change == "one byte":
        writes[5 << 20] = b"\x01"
    elif change == "a byte moved":
        writes = {(1 << 20) + 65536: b"data" * 1000}
    else:
        size += 1
    base = _sparse(tmp_path / "a.img", 8 << 20, {1 << 20: b"data" * 1000})
    other = _sparse(tmp_path / "b.img", size, writes)
    assert content_digest(base) != content_digest(other)


def _tree(top: Path) -> Path:
    (top / "dir").mkdir(parents=True)
    (top / "dir" / "file").write_bytes(b"content")
    os.symlink("file", top / "dir" / "link")
    os.link(top / "dir" / "file", top / "hard")
    return top


@pytest.mark.parametrize("change", ["content", "mode", "link target", "hard link", "extra"])
def test_the_tree_digest_sees_what_a_copy_must_keep(tmp_path, change):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    for top in (a, b):  # equal mtimes, as a copy keeps them
        os.utime(top / "dir" / "file", ns=(10**18, 10**18))
    assert tree_digest(str(a)) == tree_digest(str(b))
    if change == "content":
        (b / "dir" / "file").write_bytes(b"contenT")
        os.utime(b / "dir" / "file", ns=(10**18, 10**18))
    elif change == "mode":
        os.chmod(b / "dir", 0o751)
    elif change == "link target":
        os.unlink(b / "dir" / "link")
        os.symlink("elsewhere", b / "dir" / "link")
    elif change == "hard link":
        os.unlink(b / "hard")
        (b / "hard").write_bytes(b"content")
        os.utime(b / "hard", ns=(10**18, 10**18))
    else:
        (b / "dir" / "new").write_bytes(b"")
    assert tree_digest(str(a)) != tree_digest(str(b))


def test_the_fleet_row_sums_every_dup_and_refuses_a_missing_one():
    lines = '{"status": "ok", "bytes_sent": 5}\n{"status": "ok", "bytes_sent": 7}\n'
    assert _all_sent(lines, 2) == 12
    with pytest.raises(ValueError, match="1 JSON summaries from 2 dups"):
        _all_sent(lines.splitlines()[0], 2)
