"""POSIX ACLs between the kernel's xattr form and the text GNU tar keeps in a pax header.

# Strategy: Linux stores an ACL in the system.posix_acl_access / system.posix_acl_default
# xattrs as a version word and (tag, perm, id) triples; GNU tar --acls stores the same ACL as
# the text acl_to_text(3) prints, comma-separated ("user::rw-,user:1000:r--,group::r--,
# mask::r--,other::---"), in SCHILY.acl.access / SCHILY.acl.default. We write numeric ids (no
# name lookup: the ids of the copy are the ids of the source) and read names or ids, so that
# what GNU tar wrote restores here and what we write GNU tar restores.
"""
import grp
import pwd
import struct

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
PAX_KEYS = {ACCESS: "SCHILY.acl.access", DEFAULT: "SCHILY.acl.default"}

_VERSION = 2
BASE_SIZE = 4 + 3 * 8  # an ACL of user::, group:: and other:: only: the mode bits
_NOID = 0xFFFFFFFF
_TAGS = ((0x01, "user", False), (0x02, "user", True), (0x04, "group", False),
         (0x08, "group", True), (0x10, "mask", False), (0x20, "other", False))
_TAG_NAME = {tag: (name, named) for tag, name, named in _TAGS}


class AclError(ValueError):
    """An ACL that is neither valid kernel form nor valid text."""


def to_text(value):
    # type: (bytes) -> str
    """The kernel's binary ACL as acl_to_text's comma-separated form, numeric ids."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != _VERSION:
        raise AclError("not a version 2 POSIX ACL (%d bytes)" % len(value))
    parts = []
    for tag, perm, ident in struct.iter_unpack("<HHI", value[4:]):
        if tag not in _TAG_NAME or perm > 7:
            raise AclError("unknown ACL entry tag 0x%x" % tag)
        name, named = _TAG_NAME[tag]
        qualifier = str(ident) if named else ""
        parts.append("%s:%s:%s" % (name, qualifier, _perm_text(perm)))
    return ",".join(parts)


def from_text(text):
    # type: (str) -> bytes
    """acl_to_text's form (names or ids, "," or newline separated, comments allowed) as the
    kernel's binary ACL, entries in the kernel's order (by tag, then id)."""
    entries = []
    for part in text.replace("\n", ",").split(","):
        part = part.split("#", 1)[0].strip()
        if part:
            entries.append(_entry(part))
    entries.sort()
    return struct.pack("<I", _VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _perm_text(perm):
    # type: (int) -> str
    return "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))


def _entry(part):
    # type: (str) -> tuple
    fields = part.split(":")
    if len(fields) == 4:  # star's form: user:NAME:rw-:ID
        fields = [fields[0], fields[3], fields[2]]
    if len(fields) != 3:
        raise AclError("bad ACL entry %r" % part)
    kind, qualifier, perms = fields
    kind = {"u": "user", "g": "group", "m": "mask", "o": "other"}.get(kind, kind)
    perm = 0
    for c in perms:
        bit = {"r": 4, "w": 2, "x": 1, "-": 0}.get(c)
        if bit is None:
            raise AclError("bad ACL permissions in %r" % part)
        perm |= bit
    for tag, name, named in _TAGS:
        if name == kind and named == bool(qualifier):
            ident = _ident(kind, qualifier) if named else _NOID
            return (tag, perm, ident)
    raise AclError("bad ACL entry %r" % part)


def _ident(kind, qualifier):
    # type: (str, str) -> int
    if qualifier.isdigit():
        return int(qualifier)
    try:
        if kind == "user":
            return pwd.getpwnam(qualifier).pw_uid
        return grp.getgrnam(qualifier).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise AclError("no %s named %r for an ACL entry" % (kind, qualifier))
