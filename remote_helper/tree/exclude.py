"""--exclude patterns with rsync's common rules.

# Strategy: each pattern is compiled once to a regular expression over bytes paths (relative
# to the top of the copy, as rsync's transfer root). rsync's rules: `*` matches anything but
# "/", `**` anything including "/", `?` one character but "/", `[...]` a class (`!` or `^`
# negates), a backslash quotes the next character; a trailing "/" matches directories only; a
# leading "/" anchors at the top of the copy; a pattern with no "/" (and no "**") matches the
# last component at any depth; any other pattern matches the end of the path at a component
# boundary (a leading "**/" may match no directory); "dir/***" matches dir and everything below it. An excluded directory's contents are
# excluded too: excluded() checks the ancestors (cached per directory), matches() the path
# alone, for a walker that prunes as it goes. Include rules ("+ ") are not supported.
"""
import os
import re
from typing import Dict, Iterable, List, Optional, Pattern, Tuple  # for the type comments


def _translate(pattern):
    # type: (str) -> bytes
    """The regular expression (bytes) for a glob, without anchors."""
    raw = os.fsencode(pattern)
    out = []  # type: List[bytes]
    i, n = 0, len(raw)
    while i < n:
        c = raw[i:i + 1]
        if c == b"*":
            if raw[i:i + 2] == b"**":
                out.append(b".*")
                while i < n and raw[i:i + 1] == b"*":
                    i += 1
                continue
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(b"[^/]")
        elif c == b"[":
            end, cls = _char_class(raw, i)
            if end < 0:
                out.append(re.escape(c))
            else:
                out.append(cls)
                i = end
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(raw[i:i + 1]))
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


def _char_class(raw, start):
    # type: (bytes, int) -> Tuple[int, bytes]
    """(index of the closing "]", the class as a regex), or (-1, b"") if it is not closed."""
    i = start + 1
    negate = raw[i:i + 1] in (b"!", b"^")
    if negate:
        i += 1
    body = []  # type: List[bytes]
    first = True
    while i < len(raw):
        c = raw[i:i + 1]
        if c == b"]" and not first:
            return i, b"[" + (b"^" if negate else b"") + b"".join(body) + b"]"
        if c == b"\\" and i + 1 < len(raw):
            i += 1
            c = raw[i:i + 1]
        body.append(c if c == b"-" else re.escape(c))
        first = False
        i += 1
    return -1, b""


class Rule(object):
    """One exclude pattern, compiled."""

    def __init__(self, pattern):
        # type: (str) -> None
        self.pattern = pattern
        text = pattern
        self.dirs_only = text.endswith("/") and not text.endswith("\\/")
        text = text.rstrip("/") if self.dirs_only else text
        self.anchored = text.startswith("/")
        text = text.lstrip("/") if self.anchored else text
        self.with_contents = text.endswith("/***")
        if self.with_contents:
            text = text[:-4]
        self.last_component = "/" not in text and "**" not in text and not self.anchored
        if not self.anchored and text.startswith("**/"):
            # rsync lets an unanchored leading "**/" match no directory at all: "**/deep"
            # matches "deep" at the top ("/**/deep", anchored, does not).
            body = b"(?:.*/)?" + _translate(text[3:])
        else:
            body = _translate(text)
        # "dir/***": dir itself (a directory only, as "dir/" would) or anything below it.
        body += b"(?P<below>/.*)?" if self.with_contents else b""
        start = b"\\A" if self.anchored or self.last_component else b"(?:\\A|/)"
        self.regex = re.compile(start + body + b"\\Z", re.DOTALL)  # type: Pattern[bytes]

    def matches(self, path, is_dir):
        # type: (bytes, bool) -> bool
        if self.dirs_only and not is_dir:
            return False
        if self.last_component:
            found = self.regex.match(path.rsplit(b"/", 1)[-1])
        elif self.anchored:
            found = self.regex.match(path)
        else:
            found = self.regex.search(path)
        if found is None:
            return False
        return is_dir or not self.with_contents or found.group("below") is not None


class Excludes(object):
    """A list of rsync exclude patterns: excluded(path, is_dir) for paths below the top."""

    def __init__(self, patterns):
        # type: (Iterable[str]) -> None
        self.rules = [Rule(p) for p in patterns if p]
        self._dirs = {}  # type: Dict[bytes, bool]

    def __bool__(self):
        # type: () -> bool
        return bool(self.rules)

    def matches(self, path, is_dir):
        # type: (bytes, bool) -> bool
        """Whether a pattern matches path itself (its directories not looked at)."""
        return any(rule.matches(path, is_dir) for rule in self.rules)

    def excluded(self, path, is_dir):
        # type: (bytes, bool) -> bool
        """Whether path or a directory above it is excluded."""
        if not self.rules or path == b".":
            return False
        slash = path.rfind(b"/")
        if slash > 0 and self._dir_excluded(path[:slash]):
            return True
        return self.matches(path, is_dir)

    def _dir_excluded(self, path):
        # type: (bytes) -> bool
        known = self._dirs.get(path)
        if known is None:
            if len(self._dirs) > 4096:
                self._dirs.clear()
            known = self.excluded(path, True)
            self._dirs[path] = known
        return known


def read_patterns(text):
    # type: (str) -> List[str]
    """The patterns of an --exclude-from file: one a line, blank lines and lines starting
    with "#" or ";" skipped (as rsync reads them)."""
    return [line for line in text.splitlines() if line.strip() and line[0] not in "#;"]


def parse(patterns, files_text=None):
    # type: (Iterable[str], Optional[Iterable[str]]) -> Excludes
    """Excludes from --exclude patterns and the texts of --exclude-from files."""
    found = list(patterns)
    for text in files_text or ():
        found.extend(read_patterns(text))
    return Excludes(found)
