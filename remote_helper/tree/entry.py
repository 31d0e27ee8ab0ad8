"""One entry of a tree: what the walker reads, the wire and the tar carry, and the writer makes.

# Strategy: a tree travels as a sequence of entries in walk order (a directory before what it
# holds). An entry is a plain record with no behaviour, so the walker (client or helper), the
# tar codec, the wire and the writer all speak it and none of them owns it. Paths are bytes
# relative to the top of the copy, components joined by b"/", because a name on Linux is any
# bytes but "/" and NUL: nothing is decoded, so names that are not UTF-8 survive. The writer
# never trusts a path: it checks every component (see writer.py).
"""
from collections import namedtuple

# Kinds of entry: one letter each, as find -printf %y prints them, plus "h" for a hard link
# to an earlier entry of the same copy.
FILE = "f"
DIR = "d"
SYMLINK = "l"
HARDLINK = "h"
CHAR = "c"
BLOCK = "b"
FIFO = "p"
SOCKET = "s"
KINDS = (FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO, SOCKET)

# The root of a copy whose source ends in "/" (rsync's meaning): its metadata goes on DEST.
ROOT = b"."


class Entry(namedtuple("Entry", "path kind mode uid gid uname gname size mtime_ns target "
                                "rdev xattrs extents")):
    """One file, directory, link or node of a tree.

    path      bytes, relative, components joined by b"/" (ROOT for the top directory itself)
    kind      one of KINDS
    mode      permission bits, st_mode & 0o7777
    uid, gid  numeric owner; uname, gname the names (str, "" when the id has no name)
    size      bytes of content (a FILE's apparent size; 0 for anything else)
    mtime_ns  modification time in nanoseconds since the epoch
    target    bytes: a SYMLINK's target, a HARDLINK's earlier path; b"" otherwise
    rdev      a CHAR or BLOCK node's device number; 0 otherwise
    xattrs    tuple of (name bytes, value bytes), sorted by name; POSIX ACLs are the
              system.posix_acl_access and system.posix_acl_default attributes
    extents   None for a dense FILE; for a sparse one, a tuple of (offset, length) data
              extents in order (the rest is holes), ending with a (size, 0) extent when the
              file ends in a hole, as GNU tar's sparse maps do
    """

    __slots__ = ()

    @property
    def is_sparse(self):
        # type: () -> bool
        return self.extents is not None

    def data_length(self):
        # type: () -> int
        """Bytes of content that travel: a sparse file's extents only."""
        if self.kind != FILE:
            return 0
        if self.extents is None:
            return self.size
        return sum(length for _, length in self.extents)


def entry(path, kind, mode=0o644, uid=0, gid=0, uname="", gname="", size=0, mtime_ns=0,
          target=b"", rdev=0, xattrs=(), extents=None):
    # type: (bytes, str, int, int, int, str, str, int, int, bytes, int, tuple, object) -> Entry
    """An Entry with the defaults a test or a synthetic entry wants."""
    return Entry(path, kind, mode, uid, gid, uname, gname, size, mtime_ns, target, rdev,
                 tuple(xattrs), extents)
