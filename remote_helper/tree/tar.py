"""The pax tar encoder: an Entry becomes the header bytes that GNU tar reads back to the same
tree; the decoder is in tardecode.py.

# Strategy: a tree's content travels, and is kept in tree savesets, as a POSIX pax archive, so
# that stock `tar -xpf --xattrs --acls` restores it. Each member is a ustar header, led by a
# pax extended header ('x') whenever ustar cannot say something exactly: a long or non-ASCII
# name (raw bytes, even when they are not UTF-8: GNU tar reads them back to the same bytes and
# warns of hdrcharset, so we do not write it), an mtime with nanoseconds, a size or id too big
# for octal, a non-ASCII owner name, xattrs (SCHILY.xattr.NAME) and ACLs
# (SCHILY.acl.access/default, in the text GNU tar restores). A sparse FILE is GNU sparse format
# 1.0, what GNU tar writes for --format=pax --sparse: GNU.sparse.* records, a placeholder ustar
# name, and the map of data extents at the start of the member's data, padded to a block. No
# I/O here: the caller writes the header, the file's data (the map first, for a sparse file)
# and the padding.
"""
import os
import struct
from typing import Any, Dict, Optional, Tuple  # for the type comments

from remote_helper.errors import ProtocolError
from remote_helper.tree import acl
from remote_helper.tree.entry import (BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, ROOT, SOCKET,
                                      SYMLINK, Entry)

BLOCK_SIZE = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK_SIZE)
MAX_PAX = 1 << 20  # bytes: the largest pax header either side accepts

_TYPEFLAG = {FILE: b"0", HARDLINK: b"1", SYMLINK: b"2", CHAR: b"3", BLOCK: b"4", DIR: b"5",
             FIFO: b"6"}
_OCTAL_MAX = {8: 0o7777777, 12: 0o77777777777}


class TarError(ProtocolError):
    """A tar stream that cannot be encoded or decoded: malformed, truncated, over a cap."""


def padding(n):
    # type: (int) -> bytes
    """The zero bytes that pad n bytes of member data to a whole block."""
    return b"\0" * (-n % BLOCK_SIZE)


def sparse_map(entry):
    # type: (Entry) -> bytes
    """A sparse FILE's map as GNU sparse 1.0 lays it at the start of the data: the number of
    extents, then offset and length of each, one decimal per line, padded to a block."""
    lines = [str(len(entry.extents))]
    for offset, length in entry.extents:
        lines.append(str(offset))
        lines.append(str(length))
    text = ("\n".join(lines) + "\n").encode("ascii")
    return text + padding(len(text))


def member_data_size(entry):
    # type: (Entry) -> int
    """Bytes of data after the member's header(s), a sparse map included, padding excluded."""
    if entry.kind != FILE:
        return 0
    if entry.extents is None:
        return entry.size
    return len(sparse_map(entry)) + entry.data_length()


def encode_header(entry):
    # type: (Entry) -> bytes
    """The pax extended header (when one is needed) and the ustar header of an Entry."""
    if entry.kind == SOCKET:
        raise TarError("%s: a socket cannot be archived" % _show(entry.path))
    pax = []  # type: list
    name = _member_name(entry)
    if entry.extents is not None and entry.kind == FILE:
        pax += [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", entry.path),
                (b"GNU.sparse.realsize", str(entry.size).encode())]
        head, tail = os.path.split(entry.path)
        name = os.path.join(head, b"GNUSparseFile.0", tail)
    fitted = _fit_name(name)
    if fitted is None:
        pax.append((b"path", name))
    ustar_name = fitted or (b"", _ascii_tail(name, 100))
    target = entry.target if entry.kind in (SYMLINK, HARDLINK) else b""
    if len(target) > 100 or not _is_ascii(target):
        pax.append((b"linkpath", target))
        target = _ascii_tail(target, 100)
    size = member_data_size(entry)
    secs, ns = divmod(entry.mtime_ns, 10 ** 9)
    if ns or not 0 <= secs <= _OCTAL_MAX[12]:
        pax.append((b"mtime", _pax_time(entry.mtime_ns)))
    for key, value, width in ((b"size", size, 12), (b"uid", entry.uid, 8),
                              (b"gid", entry.gid, 8)):
        if value > _OCTAL_MAX[width]:
            pax.append((key, str(value).encode()))
    for key, owner in ((b"uname", entry.uname), (b"gname", entry.gname)):
        raw = owner.encode("utf-8", "surrogateescape")
        if len(raw) > 32 or not _is_ascii(raw):
            pax.append((key, raw))
    pax += _xattr_records(entry)
    ustar = _ustar(entry, ustar_name, target, size, secs)
    if not pax:
        return ustar
    body = b"".join(_pax_record(k, v) for k, v in pax)
    if len(body) > MAX_PAX:
        raise TarError("%s: pax header of %d bytes, over the cap of %d" %
                       (_show(entry.path), len(body), MAX_PAX))
    pax_entry = _PaxEntry(entry, len(body))
    pax_name = (b"PaxHeaders", _ascii_tail(os.path.basename(name) or b"root", 100))
    return (_ustar(pax_entry, pax_name, b"", len(body), secs) + body + padding(len(body))
            + ustar)


class _PaxEntry(object):
    """What the ustar header of a pax extended header says: the member's owner and mode."""

    def __init__(self, entry, size):
        # type: (Entry, int) -> None
        self.kind = "x"
        self.mode = 0o644
        self.uid = min(entry.uid, _OCTAL_MAX[8])
        self.gid = min(entry.gid, _OCTAL_MAX[8])
        self.uname = ""
        self.gname = ""
        self.rdev = 0
        self.size = size


def _member_name(entry):
    # type: (Entry) -> bytes
    if entry.path == ROOT:
        return b"./"
    return entry.path + b"/" if entry.kind == DIR else entry.path


# A ustar header's fields, NUL-padded by struct: name, mode, uid, gid, size, mtime, checksum,
# typeflag, linkname, magic and version, uname, gname, devmajor, devminor, prefix, padding.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")
_MAGIC = b"ustar\x0000"
_FIXED_SUM = sum(_MAGIC) + 8 * ord(" ")  # the checksum counts its own field as spaces


def _ustar(entry, name, target, size, mtime):
    # type: (Any, Tuple[bytes, bytes], bytes, int, int) -> bytes
    """One header block, its checksum summed over the fields themselves (the NULs that pad
    them add nothing): this runs for every member of a tree."""
    prefix, base = name
    typeflag = b"x" if entry.kind == "x" else _TYPEFLAG[entry.kind]
    major = minor = 0
    if entry.kind in (CHAR, BLOCK):
        major, minor = os.major(entry.rdev), os.minor(entry.rdev)
    mode = b"%07o\0" % (entry.mode & 0o7777)
    uid = b"%07o\0" % min(entry.uid, _OCTAL_MAX[8])
    gid = b"%07o\0" % min(entry.gid, _OCTAL_MAX[8])
    size_field = b"%011o\0" % min(size, _OCTAL_MAX[12])
    mtime_field = b"%011o\0" % min(max(mtime, 0), _OCTAL_MAX[12])
    uname = _owner(entry.uname)
    gname = _owner(entry.gname)
    devmajor = b"%07o\0" % major
    devminor = b"%07o\0" % minor
    checksum = _FIXED_SUM + sum(b"".join((base, mode, uid, gid, size_field, mtime_field,
                                          typeflag, target, uname, gname, devmajor, devminor,
                                          prefix)))
    return _USTAR.pack(base, mode, uid, gid, size_field, mtime_field, b"%06o\0 " % checksum,
                       typeflag, target, _MAGIC, uname, gname, devmajor, devminor, prefix, b"")


_OWNERS = {}  # type: Dict[str, bytes]  # owner name -> its ustar field (b"" if it does not fit)


def _owner(name):
    # type: (str) -> bytes
    field = _OWNERS.get(name)
    if field is None:
        raw = name.encode("utf-8", "surrogateescape")
        field = raw if len(raw) <= 32 and _is_ascii(raw) else b""
        if len(_OWNERS) < 4096:
            _OWNERS[name] = field
    return field


def _fit_name(name):
    # type: (bytes) -> Optional[Tuple[bytes, bytes]]
    """(prefix, name) for a name that ustar holds as is, else None."""
    if not _is_ascii(name):
        return None
    if len(name) <= 100:
        return (b"", name)
    cut = name.rfind(b"/", 0, 156)
    while cut > 0:
        if len(name) - cut - 1 <= 100 and name[cut + 1:]:
            return (name[:cut], name[cut + 1:])
        cut = name.rfind(b"/", 0, cut)
    return None


def _ascii_tail(name, width):
    # type: (bytes, int) -> bytes
    """A stand-in for a name ustar cannot hold, for readers that ignore pax: ASCII, fits."""
    return bytes(c if 32 <= c < 127 else 0x5F for c in name)[-width:]


_PRINTABLE = bytes(range(32, 127))


def _is_ascii(raw):
    # type: (bytes) -> bool
    """Printable ASCII only (in C: this runs for every name of a tree)."""
    return not raw.translate(None, _PRINTABLE)


def _pax_time(mtime_ns):
    # type: (int) -> bytes
    sign = b"-" if mtime_ns < 0 else b""
    secs, ns = divmod(abs(mtime_ns), 10 ** 9)
    return sign + (b"%d.%09d" % (secs, ns) if ns else b"%d" % secs)


def _xattr_records(entry):
    # type: (Entry) -> list
    records = []
    for name, value in entry.xattrs:
        if name in acl.PAX_KEYS:
            try:
                text = acl.to_text(value)
            except acl.AclError as error:
                raise TarError("%s: %s: %s" % (_show(entry.path), name.decode(), error))
            records.append((acl.PAX_KEYS[name].encode(), text.encode("ascii")))
        else:
            records.append((b"SCHILY.xattr." + name, value))
    return records


def _pax_record(key, value):
    # type: (bytes, bytes) -> bytes
    """One pax record, "LENGTH KEY=VALUE\\n", LENGTH counting its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):
        length += 1
    return str(length).encode() + body


def _show(path):
    # type: (bytes) -> str
    return os.fsdecode(path)
