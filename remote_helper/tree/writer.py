"""The writer of a tree on the writing host: safe paths, temp names, metadata, --delete.

# Strategy: entries come in walk order (a directory before its contents). compare() tells the
# caller what an entry needs (rsync's quick check); update() makes a directory, symlink, hard
# link or node, or fixes an existing inode's metadata; add() returns a FileSink for a file's
# content. Every name is reached through safepath's descriptors (never a symlink followed, never
# a "..", never outside DEST). A file, symlink, link or node is made under a temporary name
# `.NAME.bacpac-XXXXXXXX` in its own directory, gets its metadata there, and is renamed over
# the final name only when complete (sink.py): a cut run leaves temporary names only, and the next run
# removes them when it first meets their directory. A file's content goes, where Linux allows,
# into an unnamed inode (O_TMPFILE) that is linked under its name when whole: no temporary name
# to create, rename or leave behind, and half the directory updates (a first copy's largest
# cost: docs/performance.md, copy-speed). Directories are made at once (mode with the
# owner's rwx added, so a read-only directory can still be filled) and get their final mode and
# mtime in finish(), deepest first, after everything in them (a directory already right is
# left alone). finish() also does --delete.
# A first copy's short cuts (docs/performance.md, copy-writer): what lies in a directory this
# run made is new, so its compare looks nothing up and its directories get no interim
# metadata; an unnamed file is made with its final mode, and its owner and mode are set only
# where the new inode does not have them already (umask, set-group-id directory, default ACL).
# Whatever stands in the way after all (planted, or a path sent twice) is met by the same
# code as on a rerun: replaced, never followed.
# A TreeWriter is used from one thread (its descriptor chain is not shared); its writeback
# thread (writeback.py) only syncs the file system.
"""
import errno
import os
import re
import stat
import time
from typing import Callable, Dict, List, Optional, Set, Tuple  # for the type comments

from ..errors import HelperError, Refused
from . import meta
from .entry import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, ROOT, SOCKET, SYMLINK, Entry
from .remove import Remover, kind_of
from .safepath import DirStack, NotADirectory, UnsafePath, listdir_at, lstat_at, show, split
from .sink import FileSink, temp_name, unlink_quietly
from .writeback import Writeback, sync_fs

SAME = "same"        # nothing to do
META = "meta"        # content is the same; update() fixes mode, owner, mtime, xattrs
CONTENT = "content"  # missing or different: add() a FILE, update() anything else

TEMP_NAME = re.compile(br"^\..+\.bacpac-[0-9a-f]{8}$", re.DOTALL)
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
UNNAMED_FLAGS = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC
# open() of an unnamed file where the kernel or the file system has none
_NO_UNNAMED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)
_NODE_TYPES = {CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK, FIFO: stat.S_IFIFO, SOCKET: stat.S_IFSOCK}


class TreeWriter(object):
    """Writes a tree below dest (bytes), creating dest itself if missing (not its parents).

    owners: keep owner and group (as root; not root, only a group the user is in);
    xattrs: keep extended attributes and POSIX ACLs; delete: finish() removes what was not
    seen, except what `excludes` (an Excludes or None) matches; dry_run: write nothing, report
    deletions through on_delete(path, kind); fsync: finish() syncs the file system of dest.
    """

    def __init__(self, dest, owners, xattrs, delete, excludes=None, dry_run=False,
                 fsync=True, on_delete=None):
        # type: (bytes, bool, bool, bool, object, bool, bool, Optional[Callable[[bytes, str], None]]) -> None
        self.dest = dest
        self.owners = meta.Owners(owners)
        self.xattrs = xattrs
        self.delete = delete
        self.excludes = excludes
        self.dry_run = dry_run
        self.fsync = fsync
        self.on_delete = on_delete
        # new files as unnamed inodes, linked by /proc/self/fd when whole (sink.py); turned
        # off at the first refusal, and by tests that exercise temporary names
        self.unnamed = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self.counts = {"files": 0, "dirs": 0, "links": 0, "hardlinks": 0, "nodes": 0,
                       "meta": 0, "deleted": 0, "temps_removed": 0, "skipped": 0}
        self.skipped = []  # type: List[str]
        self._dirs = {}  # type: Dict[bytes, Entry]
        # The hashes of the paths seen, for --delete: less memory than the paths. Two paths
        # with one hash (about 1 in 10**7 for a million paths) keep an extraneous file, never
        # delete a wanted one.
        self._seen = set()  # type: Set[int]
        # The hashes of the directories this run made: what is in them is new, so its compare
        # needs no lstat (a first copy's). A hash shared with another path only costs that
        # path a compare that says CONTENT: whatever then stands in the way is replaced, as a
        # rerun replaces a changed file.
        self._fresh = set()  # type: Set[int]
        # what a new file's inode gets in the directory last written to (_inode_facts)
        self._facts = None  # type: Optional[Tuple[bytes, Optional[Tuple[int]]]]
        self._umask = meta.umask()
        self._stack = self._open_dest()
        # the writeback of what is written starts while the copy goes on (writeback.py)
        self._writeback = (Writeback(self._stack.root_fd) if fsync and not dry_run
                           and self._stack is not None else None)  # type: Optional[Writeback]

    def _open_dest(self):
        # type: () -> Optional[DirStack]
        try:
            return DirStack(self.dest)
        except FileNotFoundError:
            if self.dry_run:
                return None
        except OSError as e:
            raise HelperError("%s: %s" % (show(self.dest, ROOT), e.strerror), e.errno)
        try:
            os.mkdir(self.dest, 0o700)
        except OSError as e:
            raise HelperError("%s: cannot make the directory: %s" % (
                show(self.dest, ROOT), e.strerror), e.errno)
        self._fresh.add(hash(ROOT))
        return DirStack(self.dest)

    @property
    def stack(self):
        # type: () -> DirStack
        """The descriptors of DEST (missing only in a dry run whose DEST does not exist)."""
        if self._stack is None:
            raise HelperError("%s: not open" % show(self.dest, ROOT))
        return self._stack

    # -- what an entry needs ------------------------------------------------------------------

    def compare(self, entry):
        # type: (Entry) -> str
        """SAME, META or CONTENT for entry against what DEST holds (size+mtime quick check)."""
        try:
            if entry.kind == FILE:
                return self._compare_file(entry)
            self._note(entry)
            return self._compare(entry)
        except OSError as e:
            raise HelperError("%s: %s" % (show(self.dest, entry.path), e.strerror), e.errno)

    def _compare_file(self, entry):
        # type: (Entry) -> str
        """compare() of a FILE, most of a rerun's entries: one lstat, and Python kept short
        (docs/performance.md, copy-rerun). The path is checked by DirStack.parent (split()
        where it is not in the directory last used); the rest is _note's and _compare's."""
        path = entry.path
        if self.delete:
            self._seen.add(hash(path))
        if path in self._dirs:
            del self._dirs[path]  # the same path again, as no directory: the last wins
        stack = self._stack
        if stack is None or path == ROOT or (self._fresh and
                                             hash(_parent_of(path)) in self._fresh):
            split(path)
            return self._compare(entry)
        try:
            fd, name = stack.parent(path)
        except (FileNotFoundError, NotADirectory):
            return CONTENT
        st = lstat_at(fd, name)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != entry.size \
                or st.st_mtime_ns != entry.mtime_ns:
            return CONTENT
        uid, gid = self.owners.ids(entry)
        if stat.S_IMODE(st.st_mode) != entry.mode or (uid != -1 and st.st_uid != uid) \
                or (gid != -1 and st.st_gid != gid):
            return META
        if self.xattrs and meta.differs(st, entry, self.owners, True, self._xattr_target(entry)):
            return META
        return SAME

    def _compare(self, entry):
        # type: (Entry) -> str
        if self._fresh and hash(_parent_of(entry.path)) in self._fresh:
            return CONTENT  # in a directory this run made: not there yet
        st = self._lstat(entry.path)
        if st is None:
            return CONTENT
        if entry.kind == HARDLINK:
            target = self._lstat(entry.target)
            same = target is not None and (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino)
            return SAME if same else CONTENT
        if kind_of(st.st_mode) != entry.kind or not self._same_content(entry, st):
            return CONTENT
        if meta.differs(st, entry, self.owners, self.xattrs, self._xattr_target(entry)):
            return META
        return SAME

    def _same_content(self, entry, st):
        # type: (Entry, os.stat_result) -> bool
        if entry.kind == FILE:
            return st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns
        if entry.kind == SYMLINK:
            fd, name = self.stack.parent(entry.path)
            return os.readlink(name, dir_fd=fd) == entry.target
        if entry.kind in (CHAR, BLOCK):
            return st.st_rdev == entry.rdev
        return True

    def _xattr_target(self, entry):
        # type: (Entry) -> Optional[object]
        if not self.xattrs or entry.kind == SYMLINK:
            return None  # a symlink's attributes are set, not compared (Linux keeps few)
        if entry.path == ROOT:
            return meta.proc_path(self.stack.root_fd)
        parent, name = self.stack.parent(entry.path)
        return os.fsencode(meta.proc_path(parent)) + b"/" + name

    def _lstat(self, path):
        # type: (bytes) -> Optional[os.stat_result]
        """lstat of DEST/path; None when it or a directory on the way is missing or no
        directory (the entries before this one will make the way)."""
        if self._stack is None:
            split(path)
            return None
        try:
            if path == ROOT:
                return os.fstat(self.stack.root_fd)
            fd, name = self.stack.parent(path)
        except (FileNotFoundError, NotADirectory):
            return None
        return lstat_at(fd, name)

    def _note(self, entry):
        # type: (Entry) -> None
        """Remember entry as seen (for --delete) and a directory for finish(); the first time a
        directory is met, the temporary names a cut run left in it go."""
        split(entry.path)
        if self.delete:
            self._seen.add(hash(entry.path))
        if entry.kind == DIR:
            first = entry.path not in self._dirs
            self._dirs[entry.path] = entry
            if first and not self.dry_run and hash(_parent_of(entry.path)) not in self._fresh:
                self._remove_temps(entry)
        elif entry.path in self._dirs:
            del self._dirs[entry.path]  # the same path again, as no directory: the last wins

    def _remove_temps(self, entry):
        # type: (Entry) -> None
        """Remove what a cut run left in the directory entry. A directory whose mtime is the
        source's has had nothing made in it since the writer set that mtime (at its making and
        in finish()), so it holds no temporary name: not listed (an unchanged rerun's)."""
        path = entry.path
        st = self._lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode) or st.st_mtime_ns == entry.mtime_ns:
            return
        try:
            fd = self.stack.open(split(path))
        except (FileNotFoundError, NotADirectory):
            return
        for name in listdir_at(fd):
            if TEMP_NAME.match(name):
                st = lstat_at(fd, name)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=fd)
                    self.counts["temps_removed"] += 1

    # -- making things ------------------------------------------------------------------------

    def update(self, entry):
        # type: (Entry) -> None
        """Make a DIR, SYMLINK, HARDLINK or node, or fix the metadata of an existing one (a
        FILE whose content is the same included)."""
        self._note(entry)
        if self.dry_run:
            return
        try:
            self._update(entry)
        except OSError as e:
            raise HelperError("%s: %s" % (show(self.dest, entry.path), e.strerror), e.errno)
        except ValueError as e:  # a NUL in a link's target or an attribute's name
            raise UnsafePath("%s: %s" % (show(self.dest, entry.path), e))

    def _update(self, entry):
        # type: (Entry) -> None
        if entry.kind == DIR:
            self._make_dir(entry)
        elif entry.kind == FILE:
            self._fix_file(entry)
        elif entry.kind == SYMLINK:
            self._make(entry, lambda fd, tmp: os.symlink(entry.target, tmp, dir_fd=fd))
            self.counts["links"] += 1
        elif entry.kind == HARDLINK:
            self._make_hardlink(entry)
        elif entry.kind in _NODE_TYPES:
            self._make_node(entry)
        else:
            raise Refused("%s: unknown kind %r" % (show(self.dest, entry.path), entry.kind))

    def _make_dir(self, entry):
        # type: (Entry) -> None
        if entry.path == ROOT:
            fd = self.stack.root_fd
            os.fchmod(fd, meta.mode_of(entry, True))
            return
        parent, name = self.stack.parent(entry.path)
        self._facts = None
        if hash(_parent_of(entry.path)) in self._fresh and self._mkdir(parent, name, entry.path):
            return  # made 0700, its owner's, as the interim mode wants: finish() does the rest
        st = lstat_at(parent, name)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)  # a file or a (planted) symlink: replaced, not followed
            self._fresh.discard(hash(entry.path))
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=parent)
            self.counts["dirs"] += 1
            self._fresh.add(hash(entry.path))
        meta.apply_at(parent, name, entry, self.owners, False, interim=True)

    def _mkdir(self, parent, name, path):
        # type: (int, bytes, bytes) -> bool
        """mkdir where nothing is expected (a directory this run made); False when something
        is there after all (planted, or a path sent twice): the caller looks at it."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            return False
        self.counts["dirs"] += 1
        self._fresh.add(hash(path))
        return True

    def _fix_file(self, entry):
        # type: (Entry) -> None
        parent, name = self.stack.parent(entry.path)
        st = lstat_at(parent, name)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise Refused("%s: no file to update, its content must be sent" % (
                show(self.dest, entry.path)))
        meta.apply_at(parent, name, entry, self.owners, self.xattrs)
        self.counts["meta"] += 1

    def _make(self, entry, create, keep_meta=True):
        # type: (Entry, Callable[[int, bytes], None], bool) -> None
        """create(dir_fd, temp) an inode under a temporary name, give it entry's metadata,
        and rename it over entry's name."""
        parent, name = self.stack.parent(entry.path)
        tmp = temp_name(name)
        create(parent, tmp)
        try:
            if keep_meta:
                meta.apply_at(parent, tmp, entry, self.owners, self.xattrs)
            self._clear_for(parent, name, entry.path)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            unlink_quietly(parent, tmp)
            raise

    def _make_hardlink(self, entry):
        # type: (Entry) -> None
        tparent, tname = self.stack.parent(entry.target)
        target_fd = os.dup(tparent)
        try:
            st = lstat_at(target_fd, tname)
            if st is None or stat.S_ISDIR(st.st_mode):
                raise Refused("%s: hard link to %s, which is not there (yet)" % (
                    show(self.dest, entry.path), show(self.dest, entry.target)))
            self._make(entry, lambda fd, tmp: os.link(
                tname, tmp, src_dir_fd=target_fd, dst_dir_fd=fd, follow_symlinks=False),
                keep_meta=False)
        finally:
            os.close(target_fd)
        self.counts["hardlinks"] += 1

    def _make_node(self, entry):
        # type: (Entry) -> None
        if entry.kind in (CHAR, BLOCK) and not self.owners.root:
            self.counts["skipped"] += 1
            if len(self.skipped) < 100:
                self.skipped.append("%s: device node skipped (not root)" % (
                    show(self.dest, entry.path)))
            return
        mode = _NODE_TYPES[entry.kind] | 0o600
        self._make(entry, lambda fd, tmp: os.mknod(tmp, mode, entry.rdev, dir_fd=fd))
        self.counts["nodes"] += 1

    def _clear_for(self, parent, name, path):
        # type: (int, bytes, bytes) -> None
        """Make room for a non-directory at name: rename() replaces a file, link or node
        atomically, but not a directory. An empty directory goes; a full one only with
        --delete (rsync's rule without --force)."""
        st = lstat_at(parent, name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        self.stack.forget(path)
        self._fresh.discard(hash(path))
        self._facts = None
        try:
            os.rmdir(name, dir_fd=parent)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not self.delete:
                raise Refused("%s: a directory that is not empty is where the source has no "
                              "directory; --delete replaces it" % show(self.dest, path))
        remover = Remover(self.excludes, self.on_delete, dest=self.dest)
        if not remover.tree(parent, name, path):
            raise Refused("%s: a directory holding excluded files is where the source has "
                          "no directory" % show(self.dest, path))
        self.counts["deleted"] += remover.removed

    def add(self, entry, base=None):
        # type: (Entry, Optional[int]) -> FileSink
        """A sink for a FILE's content, written under a temporary name. base: a descriptor
        of the old content (old_file()) that copy_from_base() reads; the sink closes it."""
        self._note(entry)
        if entry.kind != FILE:
            raise Refused("%s: only a file has content to add" % show(self.dest, entry.path))
        if self.dry_run:
            return FileSink(self, entry, -1, b"", b"", -1, base)
        try:
            parent, name = self.stack.parent(entry.path)
            dir_fd = os.dup(parent)
        except OSError as e:
            raise HelperError("%s: %s" % (show(self.dest, entry.path), e.strerror), e.errno)
        try:
            fd, tmp, has = self._create(dir_fd, name, entry)
        except OSError as e:
            os.close(dir_fd)
            raise HelperError("%s: %s" % (show(self.dest, entry.path), e.strerror), e.errno)
        return FileSink(self, entry, dir_fd, name, tmp, fd, base, has)

    def _create(self, dir_fd, name, entry):
        # type: (int, bytes, Entry) -> tuple
        """(descriptor, temporary name, what the inode has) of a new file for name: an
        unnamed one (no name: None) where the system allows, else one under a temporary
        name. What it has: (uid, gid, mode) where known, for meta.apply_fd to leave alone."""
        if self.unnamed:
            # Unnamed, nobody can open it: it may have its final mode at once (but for the
            # set-id bits, which chown clears, and an owner's rw, which check() needs).
            mode = entry.mode if entry.mode & 0o7600 == 0o600 else 0o600
            try:
                fd = self._open(dir_fd, b".", UNNAMED_FLAGS, mode)
            except OSError as e:
                if e.errno not in _NO_UNNAMED:
                    raise
                self.unnamed = False
            else:
                return fd, None, self._inode_facts(dir_fd, entry.path, mode)
        tmp = temp_name(name)
        return self._open(dir_fd, tmp, FILE_FLAGS, 0o600), tmp, None

    def _inode_facts(self, dir_fd, path, mode):
        # type: (int, bytes, int) -> Optional[Tuple[int, int, int]]
        """(uid, gid, mode) a new inode made with `mode` in dir_fd has, or None where a
        default ACL decides its mode. Looked at once per directory: the writer changes a
        directory only in _make_dir, _clear_for and finish(), which forget it."""
        parent = _parent_of(path)
        facts = self._facts
        if facts is None or facts[0] != parent:
            facts = self._facts = (parent, meta.new_inode_gid(dir_fd))
        gid = facts[1]
        if gid is None:
            return None
        return os.geteuid(), gid[0], mode & ~self._umask

    def _open(self, dir_fd, name, flags, mode):
        # type: (int, bytes, int, int) -> int
        try:
            return os.open(name, flags, mode, dir_fd=dir_fd)
        except PermissionError:
            if self.owners.root:
                raise
        # Not root, in a read-only directory of our own: open it up until finish().
        os.fchmod(dir_fd, stat.S_IMODE(os.fstat(dir_fd).st_mode) | 0o700)
        return os.open(name, flags, mode, dir_fd=dir_fd)

    def old_file(self, entry):
        # type: (Entry) -> Optional[int]
        """A read descriptor of the file DEST holds at entry's path (for a delta), or None."""
        if self._stack is None:
            return None
        try:
            fd, name = self.stack.parent(entry.path)
            old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                          dir_fd=fd)
        except (OSError, NotADirectory):
            return None
        if not stat.S_ISREG(os.fstat(old).st_mode):
            os.close(old)
            return None
        return old

    # -- the end ------------------------------------------------------------------------------

    def finish(self):
        # type: () -> Dict[str, int]
        """--delete, then directory modes and mtimes deepest first, then sync; the counts."""
        dirs = sorted(self._dirs, key=lambda p: -1 if p == ROOT else p.count(b"/"), reverse=True)
        if self.delete and self._stack is not None:
            self._delete(dirs)
        finished = dict(self.counts)
        if not self.dry_run:
            for path in dirs:
                self._finish_dir(self._dirs[path])
            self._end_writeback(finished)
            if self.fsync:
                started = time.monotonic()
                sync_fs(self.stack.root_fd)
                finished["sync_ms"] = int((time.monotonic() - started) * 1000)
        return finished

    def wrote(self, size):
        # type: (int) -> None
        """A file of `size` content bytes is whole under its name (for the writeback)."""
        self.counts["files"] += 1
        if self._writeback is not None:
            self._writeback.wrote(size)

    def _end_writeback(self, finished):
        # type: (Dict[str, int]) -> None
        if self._writeback is not None:
            self._writeback.close()
            finished["writeback_syncs"] = self._writeback.flushes
            finished["writeback_ms"] = int(self._writeback.seconds * 1000)
            self._writeback = None

    def _delete(self, dirs):
        # type: (List[bytes]) -> None
        remover = Remover(self.excludes, self.on_delete, self.dry_run, self.dest)
        for path in dirs:
            try:
                fd = self.stack.open(split(path))
            except (FileNotFoundError, NotADirectory):
                continue
            except OSError as e:
                raise HelperError("%s: %s" % (show(self.dest, path), e.strerror), e.errno)
            remover.extraneous(fd, path, lambda p: hash(p) in self._seen or TEMP_NAME.match(
                p.rsplit(b"/", 1)[-1]) is not None)
        self.counts["deleted"] += remover.removed

    def _finish_dir(self, entry):
        # type: (Entry) -> None
        self._facts = None
        try:
            if entry.path == ROOT:
                fd = self.stack.root_fd
                if self._differs(os.fstat(fd), entry):
                    meta.apply_at(fd, b".", entry, self.owners, self.xattrs)
                return
            parent, name = self.stack.parent(entry.path)
            st = lstat_at(parent, name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return  # never made (a failed copy), or replaced since: nothing to finish
            if self._differs(st, entry):
                meta.apply_at(parent, name, entry, self.owners, self.xattrs)
        except (FileNotFoundError, NotADirectory):
            return  # never made (a dry run, a failed copy): nothing to finish
        except OSError as e:
            raise HelperError("%s: %s" % (show(self.dest, entry.path), e.strerror), e.errno)

    def _differs(self, st, entry):
        # type: (os.stat_result, Entry) -> bool
        """Whether a directory's metadata is not yet the source's: one that nothing changed
        (an unchanged rerun's) is left alone, its inode not written."""
        return meta.differs(st, entry, self.owners, self.xattrs, self._xattr_target(entry))

    def close(self):
        # type: () -> None
        if self._writeback is not None:
            self._writeback.close()
            self._writeback = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def _parent_of(path):
    # type: (bytes) -> bytes
    """The path of the directory that holds path (ROOT for a name at the top)."""
    head, _, _ = path.rpartition(b"/")
    return head or ROOT

