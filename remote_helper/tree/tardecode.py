"""The tar decoder: feed it bytes, ask it for events (after h11); no I/O.

# Strategy: `TarDecoder.feed(data)` appends input, `next_event()` returns the next event it can
# make of what it holds, or None when it needs more: ("entry", Entry) when a member's headers
# are complete, ("data", offset_in_file, memoryview) for each piece of its content as it arrives
# (never more than was fed: a large file is not held; a view of the fed bytes, not a copy: the
# input is held as the bytes fed, never appended to a growing buffer, so content costs no copy
# here), ("end", Entry) when the member is done,
# for every member. It reads what GNU tar writes: ustar and GNU magic, pax extended headers
# ('x', 'g' ignored), GNU long names ('L', 'K'), base-256 numbers, GNU sparse 0.0, 0.1 and
# 1.0, SCHILY xattrs and ACLs. Every header, pax body and sparse map is held whole, so each
# is capped; anything malformed is a TarError that names the member and the byte offset.
"""
import os
from collections import deque
from typing import Any, Deque, Optional  # for the type comments

from remote_helper.tree import acl
from remote_helper.tree.entry import (BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, ROOT, SYMLINK,
                                      Entry)
from remote_helper.tree.tar import BLOCK_SIZE, MAX_PAX, TarError

MAX_EXTENTS = 1 << 20  # extents in one sparse map
_KINDS = {b"0": FILE, b"\0": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK, b"3": CHAR,
          b"4": BLOCK, b"5": DIR, b"6": FIFO}
_ZERO_BLOCK = b"\0" * BLOCK_SIZE


class TarDecoder(object):
    """A pax/ustar/GNU tar stream in, entries and their data out."""

    def __init__(self):
        # type: () -> None
        self._buf = b""  # the input fed and not yet used, from _at on
        self._at = 0
        self._pos = 0  # stream offset of _buf[_at]
        self._step = self._header  # what to make of the next bytes
        self._pax = {}  # type: dict
        self._long = {}  # type: dict
        self._entry = None  # type: Any
        self._member_size = 0
        self._map_len = 0
        self._map_text = b""
        self._data_left = 0
        self._pad_left = 0
        self._extents = []  # type: list
        self._ext = (b"", 0, 0)
        self._pending = deque()  # type: Deque[tuple]
        self.finished = False  # two zero blocks seen: the end of the archive

    def feed(self, data):
        # type: (bytes) -> None
        """Append input."""
        if self.finished and data.strip(b"\0"):
            raise TarError("data after the end of the tar archive at byte %d" % self._pos)
        if self._at < len(self._buf):  # a header's start waits for its end: a small copy
            self._buf = self._buf[self._at:] + bytes(data)
        else:
            self._buf = bytes(data)
        self._at = 0

    def close(self):
        # type: () -> None
        """Input has ended: an error unless the archive ended where it should."""
        if not self.finished:
            where = ("inside %s" % os.fsdecode(self._entry.path) if self._entry
                     else "between members")
            raise TarError("tar archive truncated %s at byte %d" %
                           (where, self._pos + len(self._buf) - self._at))

    def next_event(self):
        # type: () -> object
        """The next event, or None until more input is fed."""
        while not self._pending:
            if self.finished or not self._step():
                return None
        return self._pending.popleft()

    # ---- input -----------------------------------------------------------------------------

    def _available(self):
        # type: () -> int
        return len(self._buf) - self._at

    def _take(self, n):
        # type: (int) -> Optional[bytes]
        """The next n bytes (a copy: headers are small), or None until they are all in."""
        at = self._at
        if len(self._buf) - at < n:
            return None
        self._at = at + n
        self._pos += n
        return self._buf[at:at + n]

    def _view(self, n):
        # type: (int) -> memoryview
        """The next n bytes, which are in, as a view (content: no copy)."""
        at = self._at
        self._at = at + n
        self._pos += n
        return memoryview(self._buf)[at:at + n]

    def _skip_padding(self, n):
        # type: (int) -> None
        """After n bytes of member data, the padding to a block comes next."""
        self._pad_left = -n % BLOCK_SIZE
        self._step = self._padding

    def _padding(self):
        # type: () -> bool
        if self._take(self._pad_left) is None:
            return False
        self._step = self._header
        return True

    # ---- headers ---------------------------------------------------------------------------

    def _header(self):
        # type: () -> bool
        at = self._pos
        block = self._take(BLOCK_SIZE)
        if block is None:
            return False
        if block == _ZERO_BLOCK:
            self._step = self._second_zero
            return True
        _check_sum(block, at)
        typeflag = block[156:157]
        size = _number(block[124:136], "size", at)
        if typeflag in (b"x", b"g", b"L", b"K"):
            if size > MAX_PAX:
                raise TarError("an extended header of %d bytes at byte %d, over the cap of %d"
                               % (size, at, MAX_PAX))
            self._ext = (typeflag, size, at)
            self._step = self._extended
            return True
        if typeflag not in _KINDS:
            raise TarError("unsupported tar member type %r at byte %d" % (typeflag, at))
        self._member(block, typeflag, size, at)
        return True

    def _second_zero(self):
        # type: () -> bool
        block = self._take(BLOCK_SIZE)
        if block is None:
            return False
        if block != _ZERO_BLOCK:
            raise TarError("a lone zero block at byte %d" % (self._pos - 2 * BLOCK_SIZE))
        self.finished = True
        return True

    def _extended(self):
        # type: () -> bool
        typeflag, size, at = self._ext
        body = self._take(size)
        if body is None:
            return False
        if typeflag == b"x":
            self._pax = _pax_records(body, at)
        elif typeflag in (b"L", b"K"):
            self._long[typeflag] = body.split(b"\0", 1)[0]
        self._skip_padding(size)
        return True

    def _member(self, block, typeflag, size, at):
        # type: (bytes, bytes, int, int) -> None
        pax, self._pax = self._pax, {}
        long, self._long = self._long, {}
        kind = _KINDS[typeflag]
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345:500] != b"\0" * 155:
            name = _cstr(block[345:500]) + b"/" + name
        name = pax.get(b"path", long.get(b"L", name))
        target = pax.get(b"linkpath", long.get(b"K", _cstr(block[157:257])))
        if kind == FILE and name.endswith(b"/") and typeflag != b"0":
            kind = DIR
        size = _int(pax, b"size", size, at)
        major = _number(block[329:337], "devmajor", at) if kind in (CHAR, BLOCK) else 0
        minor = _number(block[337:345], "devminor", at) if kind in (CHAR, BLOCK) else 0
        extents, real_size = None, size
        if kind == FILE and (b"GNU.sparse.major" in pax or b"GNU.sparse.size" in pax
                             or b"GNU.sparse.realsize" in pax):
            name = pax.get(b"GNU.sparse.name", name)
            real_size = _int(pax, b"GNU.sparse.realsize",
                             _int(pax, b"GNU.sparse.size", size, at), at)
            extents = _sparse_0x(pax, at)  # None for 1.0: its map is in the data
            if extents is not None:
                _check_extents(extents, real_size, name)
        self._entry = Entry(
            path=_relative(name), kind=kind,
            mode=_number(block[100:108], "mode", at) & 0o7777,
            uid=_int(pax, b"uid", _number(block[108:116], "uid", at), at),
            gid=_int(pax, b"gid", _number(block[116:124], "gid", at), at),
            uname=_text(pax.get(b"uname", _cstr(block[265:297]))),
            gname=_text(pax.get(b"gname", _cstr(block[297:329]))),
            size=real_size if kind == FILE else 0,
            mtime_ns=_mtime(pax, _number(block[136:148], "mtime", at), at),
            target=_link_target(kind, target),
            rdev=os.makedev(major, minor), xattrs=_xattrs(pax, at), extents=extents)
        # a hard link may carry its file's data (pax -o linkdata): skipped, as GNU tar does
        self._member_size = size if kind in (FILE, HARDLINK) else 0
        self._map_len = 0
        if kind == FILE and pax.get(b"GNU.sparse.major") == b"1":
            self._map_text = b""
            self._step = self._sparse_map
        elif kind == FILE and extents is None and real_size != size:
            raise TarError("%s: sparse member without a map at byte %d" %
                           (os.fsdecode(name), at))
        else:
            self._start_data()
            self._pending.append(("entry", self._entry))

    # ---- data ------------------------------------------------------------------------------

    def _start_data(self):
        # type: () -> None
        e = self._entry
        extents = e.extents if e.extents is not None else [(0, e.size)]
        self._extents = [x for x in extents if x[1]]
        self._data_left = self._member_size - self._map_len
        if sum(n for _, n in self._extents) > self._data_left:
            raise TarError("%s: sparse map claims more data than its member holds" %
                           os.fsdecode(e.path))
        self._step = self._data

    def _data(self):
        # type: () -> bool
        if self._extents:
            offset, length = self._extents[0]
            n = min(length, self._available())
            if n == 0:
                return False
            self._pending.append(("data", offset, self._view(n)))
            self._data_left -= n
            if n == length:
                self._extents.pop(0)
            else:
                self._extents[0] = (offset + n, length - n)
            return True
        if self._data_left:  # bytes the map does not account for: skipped, as GNU tar does
            n = min(self._data_left, self._available())
            self._view(n)
            self._data_left -= n
            return n > 0
        self._pending.append(("end", self._entry))
        self._entry_done()
        return True

    def _entry_done(self):
        # type: () -> None
        size = self._member_size
        self._entry = None
        self._skip_padding(size)

    def _sparse_map(self):
        # type: () -> bool
        """GNU sparse 1.0: the map's decimal lines, then padding to a block, lead the data."""
        at = self._pos
        block = self._take(BLOCK_SIZE)
        if block is None:
            return False
        self._map_text += block
        numbers = self._map_text.split(b"\n")[:-1]
        if not numbers:
            if len(self._map_text) > 32:
                raise TarError("bad sparse map at byte %d" % at)
            return True
        count = _decimal(numbers[0], "sparse map count", at)
        if count > MAX_EXTENTS or len(self._map_text) > 64 * (count + 1) + BLOCK_SIZE:
            raise TarError("a sparse map of %d extents at byte %d, over the cap" % (count, at))
        if len(numbers) < 1 + 2 * count:
            return True
        values = [_decimal(v, "sparse map", at) for v in numbers[1:1 + 2 * count]]
        extents = tuple(zip(values[0::2], values[1::2]))
        _check_extents(extents, self._entry.size, self._entry.path)
        self._entry = self._entry._replace(extents=extents)
        self._map_len = len(self._map_text)
        self._start_data()
        self._pending.append(("entry", self._entry))
        return True


# ---- fields --------------------------------------------------------------------------------

def _check_sum(block, at):
    # type: (bytes, int) -> None
    stored = _number(block[148:156], "checksum", at)
    unsigned = sum(block) - sum(block[148:156]) + 256
    if stored == unsigned:  # what every tar writes: the signed sum only for old ones
        return
    signed = unsigned - 2 * sum(c for c in block[:148] + block[156:] if c > 127)
    if stored not in (unsigned, signed):
        raise TarError("bad tar header checksum at byte %d (not a tar archive, or corrupt)" % at)


def _number(field, what, at):
    # type: (bytes, str, int) -> int
    """An octal field, or GNU's base-256 form (first byte 0x80 or 0xff)."""
    if field[0] >= 0x80:
        if field[:1] not in (b"\x80", b"\xff"):
            raise TarError("bad %s field %r in the tar header at byte %d" % (what, field, at))
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[:1] == b"\xff" else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarError("bad %s field %r in the tar header at byte %d" % (what, text, at))


def _decimal(text, what, at):
    # type: (bytes, str, int) -> int
    if not text.isdigit() or len(text) > 20:
        raise TarError("bad %s value %r at byte %d" % (what, text[:40], at))
    return int(text)


def _int(pax, key, default, at):
    # type: (dict, bytes, int, int) -> int
    return _decimal(pax[key], key.decode(), at) if key in pax else default


def _mtime(pax, default, at):
    # type: (dict, int, int) -> int
    if b"mtime" not in pax:
        return default * 10 ** 9
    text = pax[b"mtime"]
    sign = -1 if text.startswith(b"-") else 1
    secs, _, frac = text.lstrip(b"-").partition(b".")
    if not secs.isdigit() or (frac and not frac.isdigit()) or len(secs) > 20:
        raise TarError("bad pax mtime %r at byte %d" % (text[:40], at))
    return sign * (int(secs) * 10 ** 9 + int((frac + b"000000000")[:9]))


def _cstr(field):
    # type: (bytes) -> bytes
    return field.split(b"\0", 1)[0]


def _text(raw):
    # type: (bytes) -> str
    return raw.decode("utf-8", "surrogateescape")


def _relative(name):
    # type: (bytes) -> bytes
    """A member name as an Entry path: no "./" lead, no trailing "/", the top as ROOT."""
    while name.startswith(b"./"):
        name = name[2:]
    name = name.rstrip(b"/")
    return name if name and name != b"." else ROOT


def _link_target(kind, target):
    # type: (str, bytes) -> bytes
    """A symlink's target as it is; a hard link's as an Entry path, like the member's name."""
    if kind == SYMLINK:
        return target
    return _relative(target) if kind == HARDLINK else b""


def _pax_records(body, at):
    # type: (bytes, int) -> dict
    """"LENGTH KEY=VALUE\\n" records as a dict; GNU sparse 0.0's repeated offset/numbytes
    keys are kept in order under b"GNU.sparse.offsets"."""
    records = {}  # type: dict
    pairs = []
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos, pos + 21)
        length = _decimal(body[pos:space], "pax record length", at) if space > pos else 0
        record = body[space + 1:pos + length]
        if length <= 0 or pos + length > len(body) or not record.endswith(b"\n") \
                or b"=" not in record:
            raise TarError("bad pax extended header at byte %d" % at)
        key, value = record[:-1].split(b"=", 1)
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            pairs.append(value)
        else:
            records[key] = value
        pos += length
    if pairs:
        records[b"GNU.sparse.offsets"] = pairs
    return records


def _sparse_0x(pax, at):
    # type: (dict, int) -> Optional[tuple]
    """The map of GNU sparse 0.0 (offset/numbytes records) or 0.1 (GNU.sparse.map)."""
    if b"GNU.sparse.map" in pax:
        values = pax[b"GNU.sparse.map"].split(b",") if pax[b"GNU.sparse.map"] else []
    elif b"GNU.sparse.offsets" in pax:
        values = pax[b"GNU.sparse.offsets"]
    else:
        return None
    if len(values) % 2 or len(values) > 2 * MAX_EXTENTS:
        raise TarError("bad GNU sparse map at byte %d" % at)
    numbers = [_decimal(v, "sparse map", at) for v in values]
    return tuple(zip(numbers[0::2], numbers[1::2]))


def _check_extents(extents, size, path):
    # type: (tuple, int, bytes) -> None
    end = 0
    for offset, length in extents:
        if offset < end or offset + length > size:
            raise TarError("%s: sparse map out of order or past the file's size %d" %
                           (os.fsdecode(path), size))
        end = offset + length


def _xattrs(pax, at):
    # type: (dict, int) -> tuple
    """SCHILY.xattr.* as they are, and the ACLs of SCHILY.acl.* unless the raw xattr came too
    (GNU tar --xattrs-include='*' writes both); an access ACL of the three base entries only is
    the mode bits, which the kernel keeps as no xattr, so it is dropped."""
    if not pax:
        return ()
    found = {}
    for key, value in pax.items():
        if key.startswith(b"SCHILY.xattr."):
            found[key[len(b"SCHILY.xattr."):]] = value
    for name, key in acl.PAX_KEYS.items():
        text = pax.get(key.encode())
        if text and name not in found:
            try:
                found[name] = acl.from_text(_text(text))
            except acl.AclError as error:
                raise TarError("%s at byte %d" % (error, at))
    if len(found.get(acl.ACCESS, b"")) == acl.BASE_SIZE:
        del found[acl.ACCESS]
    return tuple(sorted(found.items()))
