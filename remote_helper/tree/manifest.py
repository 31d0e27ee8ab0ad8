"""The manifest's wire form: a window of entries as one zlib-compressed JSON list.

# Strategy: the reading side sends every entry of the copy in windows; the writing side answers
# each window with the indices whose content it wants. An entry is a JSON array in Entry's
# field order; bytes (paths, link targets, xattr names and values) travel as latin-1 text,
# which maps each byte to one character and back, so any name survives and JSON stays valid.
# A window is capped before and after compression, and decoding checks every field's type: a
# peer's bad window is a RemoteProtocolError, never a traceback nor unbounded memory.
"""
import json
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple  # for the type comments

from ..errors import RemoteProtocolError
from .entry import KINDS, Entry

# Raw JSON of one window at most: its compressed form then always fits a control frame.
WINDOW_BYTES = 768 << 10
WINDOW_ENTRIES = 4096
# The first window's entries at most, doubled each window up to WINDOW_ENTRIES: the writer
# begins to compare once the walk has made a small window, not a full one.
FIRST_ENTRIES = 256
MAX_RAW = 4 << 20  # what a received window may inflate to
# zlib's level: 1 costs a third of 6's CPU for a fifth more bytes (about 13 bytes an entry;
# docs/performance.md, copy-rerun), and a rerun sends little else.
LEVEL = 1


def _text(data):
    # type: (bytes) -> str
    return data.decode("latin-1")


def entry_row(item, digest=None):
    # type: (Entry, Optional[str]) -> list
    """The entry as a JSON array; with --checksum a FILE's sha256 (hex) follows as a 14th."""
    row = list(item)  # Entry's field order; then what JSON cannot carry as it is
    row[0] = item.path.decode("latin-1")
    row[9] = item.target.decode("latin-1")
    row[11] = [[_text(n), _text(v)] for n, v in item.xattrs] if item.xattrs else []
    if item.extents is not None:
        row[12] = [list(e) for e in item.extents]
    if digest is not None:
        row.append(digest)
    return row


def encode_window(rows):
    # type: (List[list]) -> bytes
    """A window's payload from its entries' rows (entry_row)."""
    return zlib.compress(_dumps(rows).encode("ascii"), LEVEL)


def _dumps(rows):
    # type: (list) -> str
    return json.dumps(rows, separators=(",", ":"))


# What a row's JSON costs besides its names, at most: the mode (4 digits), uid and gid (10
# each), size, mtime_ns and rdev (20 each, a sign included), the kind, the brackets, commas and
# quotes, the empty xattrs and the null extents.
_ROW_FIXED = 4 + 2 * 10 + 3 * 20 + 3 + 2 + 12 + 8 + 2 + 4
_OWNER_COST = {}  # type: Dict[str, int]  # an owner's name -> its length in JSON


def _bound(item, digest):
    # type: (Entry, Optional[str]) -> int
    """An upper bound of the entry's row in JSON, cheap: a name's byte counts 6 (an escape)
    where it is not printable ASCII or is a quote or a backslash, 1 elsewhere."""
    cost = (_ROW_FIXED + _text_bound(item.path) + _text_bound(item.target)
            + _owner_cost(item.uname) + _owner_cost(item.gname))
    for name, value in item.xattrs:
        cost += _text_bound(name) + _text_bound(value) + 8
    if item.extents is not None:
        cost += 44 * len(item.extents)
    if digest is not None:
        cost += len(digest) + 3
    return cost


def _owner_cost(name):
    # type: (str) -> int
    cost = _OWNER_COST.get(name)
    if cost is None:
        cost = len(json.dumps(name))
        if len(_OWNER_COST) < 4096:
            _OWNER_COST[name] = cost
    return cost


_PLAIN = bytes(c for c in range(32, 127) if c not in b'"\\')


def _text_bound(data):
    # type: (bytes) -> int
    return len(data) + 5 * len(data.translate(None, _PLAIN)) + 2


def windows(pairs, digest_of=None):
    # type: (Iterable[Tuple[Any, Entry]], Optional[Callable[[Any, Entry], Optional[str]]]) -> Iterator[tuple]
    """(batch, payload) per window of the walk's (anything, entry) pairs (the reader's disk
    path, say), each window within the caps; the batch holds the pairs. A window is cut by an
    upper bound of its rows' JSON, then made in one json.dumps (not one a row)."""
    batch = []  # type: List[Tuple[Any, Entry]]
    rows = []  # type: List[list]
    size = 0
    most = FIRST_ENTRIES
    for pair in pairs:
        item = pair[1]
        digest = digest_of(pair[0], item) if digest_of is not None else None
        row = entry_row(item, digest)
        bound = _bound(item, digest)
        if bound > WINDOW_BYTES and len(_dumps(row)) > WINDOW_BYTES:
            raise ValueError("%s: too much metadata (%d bytes) for one entry"
                             % (item.path.decode("utf-8", "replace"), len(_dumps(row))))
        if batch and (size + bound > WINDOW_BYTES or len(batch) >= most):
            yield batch, encode_window(rows)
            batch, rows, size = [], [], 0
            most = min(2 * most, WINDOW_ENTRIES)
        batch.append(pair)
        rows.append(row)
        size += min(bound, WINDOW_BYTES) + 1
    if batch:
        yield batch, encode_window(rows)


def _int(value):
    # type: (object) -> int
    if type(value) is not int or value < 0:
        raise RemoteProtocolError("bad manifest: %r is not a count" % (value,))
    return value


def _bytes(value):
    # type: (object) -> bytes
    if not isinstance(value, str):
        raise RemoteProtocolError("bad manifest: %r is not a name" % (value,))
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise RemoteProtocolError("bad manifest: %r is not latin-1 text" % (value,))


def _str(value):
    # type: (object) -> str
    if not isinstance(value, str):
        raise RemoteProtocolError("bad manifest: %r is not text" % (value,))
    return value


def decode_row(row):
    # type: (object) -> Entry
    """The entry of a row. The common row (no xattrs, not sparse, every field of its type) is
    checked in one expression (a rerun decodes every entry: docs/performance.md,
    copy-rerun); any other goes through _checked_row, which names what is wrong."""
    try:
        if type(row) is list and 13 <= len(row) <= 14:
            path, kind, mode, uid, gid, uname, gname, size, mtime, target, rdev, xattrs, \
                ext = row[:13]
            if kind in KINDS and type(mode) is int and type(uid) is int and type(gid) is int \
                    and type(size) is int and type(mtime) is int and type(rdev) is int \
                    and (mode | uid | gid | size | rdev) >= 0 and type(uname) is str \
                    and type(gname) is str and ext is None and type(xattrs) is list \
                    and not xattrs:
                return Entry(path.encode("latin-1"), kind, mode & 0o7777, uid, gid, uname,
                             gname, size, mtime, target.encode("latin-1"), rdev, (), None)
    except (AttributeError, TypeError, UnicodeEncodeError):
        pass  # a name that is no latin-1 text: said below
    return _checked_row(row)


def _checked_row(row):
    # type: (object) -> Entry
    if not isinstance(row, list) or len(row) not in (13, 14):
        raise RemoteProtocolError("bad manifest entry: %r" % (row,))
    kind = row[1]
    if kind not in KINDS:
        raise RemoteProtocolError("bad manifest entry kind %r" % (kind,))
    xattrs = row[11]
    if not isinstance(xattrs, list) or not all(isinstance(p, list) and len(p) == 2
                                               for p in xattrs):
        raise RemoteProtocolError("bad manifest xattrs %r" % (xattrs,))
    ext = row[12]
    extents = None
    if ext is not None:
        if not isinstance(ext, list) or not all(isinstance(e, list) and len(e) == 2 for e in ext):
            raise RemoteProtocolError("bad manifest extents %r" % (ext,))
        extents = tuple((_int(a), _int(b)) for a, b in ext)
    return Entry(_bytes(row[0]), kind, _int(row[2]) & 0o7777, _int(row[3]), _int(row[4]),
                 _str(row[5]), _str(row[6]), _int(row[7]), int(row[8]) if type(row[8]) is int
                 else _int(row[8]), _bytes(row[9]), _int(row[10]),
                 tuple((_bytes(n), _bytes(v)) for n, v in xattrs), extents)


def decode_window(payload):
    # type: (bytes) -> List[Entry]
    """The entries of a window."""
    return decode_window_digests(payload)[0]


def digest_of_row(row):
    # type: (list) -> Optional[str]
    if len(row) < 14 or row[13] is None:
        return None
    if not isinstance(row[13], str) or len(row[13]) != 64:
        raise RemoteProtocolError("bad manifest digest %r" % (row[13],))
    return row[13]


def decode_window_digests(payload):
    # type: (bytes) -> Tuple[List[Entry], List[Optional[str]]]
    """The entries of a window, and the sha256 of each (None where none was sent)."""
    z = zlib.decompressobj()
    try:
        raw = z.decompress(payload, MAX_RAW)
    except zlib.error as e:
        raise RemoteProtocolError("bad manifest window: %s" % e)
    if z.unconsumed_tail or not z.eof:
        raise RemoteProtocolError("bad manifest window: cut short or over %d bytes" % MAX_RAW)
    try:
        rows = json.loads(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RemoteProtocolError("bad manifest window: %s" % e)
    if not isinstance(rows, list):
        raise RemoteProtocolError("bad manifest window: not a list")
    entries = [decode_row(r) for r in rows]
    return entries, [digest_of_row(r) for r in rows]
