"""Entries and their files in, the bytes of a pax tar archive out: what a tree saveset or a
full tree stream is made of.

# Strategy: the encoder (tar.py) makes headers; this adds the content, read in chunks through
# an `open_file(entry)` the caller gives (so the walker's roots and descriptors stay its own),
# and keeps the archive well formed whatever the file does meanwhile: a member's size is
# promised in its header before its data is read, so a file that shrank is padded with zeros
# and one that grew is cut, as GNU tar does, and its path is noted in `changed` for the caller
# to warn about. A sparse file's extents are read alone, its holes never touched.
"""
from typing import BinaryIO, Callable, Iterator, List  # for the type comments

from .entry import FILE, Entry
from .tar import END_OF_ARCHIVE, encode_header, member_data_size, padding, sparse_map

CHUNK = 1 << 20


class TarStream(object):
    """member(entry) yields one member's bytes; end() the end of the archive."""

    def __init__(self, open_file, chunk=CHUNK):
        # type: (Callable[[Entry], BinaryIO], int) -> None
        self._open = open_file
        self._chunk = chunk
        self.changed = []  # type: List[bytes]  # files whose size changed while read
        self.bytes = 0  # of the archive so far

    def member(self, entry):
        # type: (Entry) -> Iterator[bytes]
        """The header(s), then for a FILE its data (a sparse one's map first) and padding."""
        for piece in self._member(entry):
            self.bytes += len(piece)
            yield piece

    def _member(self, entry):
        # type: (Entry) -> Iterator[bytes]
        yield encode_header(entry)
        if entry.kind != FILE:
            return
        if entry.extents is not None:
            yield sparse_map(entry)
        extents = entry.extents if entry.extents is not None else ((0, entry.size),)
        with self._open(entry) as f:
            for offset, length in extents:
                for piece in self._extent(f, entry, offset, length):
                    yield piece
        yield padding(member_data_size(entry))

    def _extent(self, f, entry, offset, length):
        # type: (BinaryIO, Entry, int, int) -> Iterator[bytes]
        f.seek(offset)
        left = length
        while left:
            data = f.read(min(left, self._chunk))
            if not data:
                self._note(entry)
                while left:
                    n = min(left, self._chunk)
                    yield bytes(n)
                    left -= n
                return
            left -= len(data)
            yield data
        if offset + length == entry.size and f.read(1):
            self._note(entry)

    def _note(self, entry):
        # type: (Entry) -> None
        if not self.changed or self.changed[-1] != entry.path:
            self.changed.append(entry.path)

    def end(self):
        # type: () -> bytes
        self.bytes += len(END_OF_ARCHIVE)
        return END_OF_ARCHIVE
