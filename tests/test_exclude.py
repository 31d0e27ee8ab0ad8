"""--exclude patterns: what Excludes keeps is what rsync itself keeps, on the same tree, for
many pattern lists (rsync is run here, not remembered)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from remote_helper.tree.exclude import Excludes, parse, read_patterns

FILES = ["top.txt", "a.txt", "b.txt", "c.txt", "z.txt", "x*y", "x.y", "sub", "deep",
         "a/c.txt", "a/b.txt", "a/b/c.txt", "a/b/deep/c.txt", "a/b/deep/e.log",
         "build/out.o", "build/x.log", "docs/readme.md", "docs/sub/b", "docs/sub/build",
         "docs/a.txt/inner", "x.log", "y.tmp", "long name with spaces.txt"]
DIRS = ["empty", "a/b/empty", "docs/build"]

PATTERN_LISTS = [
    [], ["*.log"], ["/top.txt"], ["top.txt"], ["build/"], ["build"], ["/build"], ["a/b"],
    ["a/b/"], ["/a/b"], ["a/**/c.txt"], ["**/deep"], ["deep/"], ["/a/*"], ["*/b/"], ["*/b"],
    ["?.txt"], ["[ab].txt"], ["[!ab].txt"], ["[^ab].txt"], ["[a-c]*"], ["a/b/***"],
    ["docs/*.md", "*.tmp"], ["a*"], ["**.txt"], ["/a/b/"], ["sub/"], ["sub"], ["x\\*y"],
    ["x?y"], ["c.txt"], ["a/**"], ["/**/c.txt"], ["a/*/c.txt"], ["*"], ["/*"], ["**"],
    ["docs/sub/*"], ["b/deep"], ["*.txt/"], ["a.txt"], ["e*/"], ["long name*"],
    ["*/*/c.txt"], ["deep", "/build/", "*.md"], ["**/c.txt"], ["**/a/c.txt"], ["a**/c.txt"],
    ["x/**/deep"], ["**/b/***"], ["**/"],
]


def make_tree(top: Path) -> None:
    for name in FILES:
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
    for name in DIRS:
        (top / name).mkdir(parents=True, exist_ok=True)


def kept_by_rsync(src: Path, dest: Path, patterns: list) -> set:
    args = ["rsync", "-a", "--dry-run", "--out-format=%n"]
    args += ["--exclude=" + p for p in patterns]
    out = subprocess.run(args + [str(src) + "/", str(dest)], capture_output=True, text=True,
                         check=True).stdout
    return {line.rstrip("/") for line in out.splitlines() if line not in ("./", "")}


def kept_by_excludes(src: Path, patterns: list) -> set:
    excludes = Excludes(patterns)
    kept = set()
    for top, dirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        for name in sorted(dirs + files):
            path = name if rel == "." else rel + "/" + name
            is_dir = name in dirs
            if not excludes.excluded(os.fsencode(path), is_dir):
                kept.add(path)
    return kept


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    top = tmp_path_factory.mktemp("exclude") / "src"
    make_tree(top)
    return top


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync to compare with")
@pytest.mark.parametrize("patterns", PATTERN_LISTS, ids=lambda p: " ".join(p) or "none")
def test_excludes_keep_what_rsync_keeps(tree, tmp_path, patterns):
    assert kept_by_excludes(tree, patterns) == kept_by_rsync(tree, tmp_path / "d", patterns)


def test_an_excluded_directory_excludes_everything_below_it():
    excludes = Excludes(["build/"])
    assert excludes.excluded(b"a/build", True)
    assert excludes.excluded(b"a/build/x/y.o", False)
    assert not excludes.excluded(b"a/build", False)
    assert not excludes.matches(b"a/build/x/y.o", False)


def test_names_that_are_not_utf8_match_byte_for_byte():
    excludes = Excludes([os.fsdecode(b"caf\xe9*")])
    assert excludes.excluded(b"d/caf\xe9 latin-1", False)
    assert not excludes.excluded(b"d/cafe", False)


def test_exclude_from_text_skips_comments_and_blank_lines():
    text = "# a comment\n; another\n\n*.log\n/build/\n"
    assert read_patterns(text) == ["*.log", "/build/"]
    excludes = parse(["*.tmp"], [text])
    assert [r.pattern for r in excludes.rules] == ["*.tmp", "*.log", "/build/"]
    assert not Excludes([]) and excludes
