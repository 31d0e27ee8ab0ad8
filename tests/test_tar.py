"""The pax tar codec against GNU tar: what we write GNU tar lists and extracts to the same tree,
what GNU tar writes we decode to the same entries and bytes; malformed input is a TarError."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from fixtures_tree import (IS_ROOT, SPARSE_SIZE, SPARSE_TAIL, build_tree, contents, encode_tree,
                           entries_of, listing, tree_src, xattrs_of)  # noqa: F401
from remote_helper.tree import acl, tar
from remote_helper.tree.entry import FILE, HARDLINK, ROOT, SOCKET, entry
from remote_helper.tree.tardecode import TarDecoder

ZEROS = b"\0" * (1 << 20)


def decode(data: bytes, chunk: int = 1 << 16) -> list:
    """(Entry, sha256 of its content with holes as zeros, bytes of data that travelled) for
    every member, feeding the decoder chunk bytes at a time."""
    decoder = TarDecoder()
    members = []
    current = None
    for start in range(0, len(data), chunk):
        decoder.feed(data[start:start + chunk])
        event = decoder.next_event()
        while event is not None:
            if event[0] == "entry":
                current = [event[1], hashlib.sha256(), 0, 0]
            elif event[0] == "data":
                _, offset, piece = event
                assert offset >= current[2]
                _zeros(current[1], offset - current[2])
                current[1].update(piece)
                current[2] = offset + len(piece)
                current[3] += len(piece)
            else:
                assert event[1] == current[0]
                _zeros(current[1], current[0].size - current[2])
                members.append((current[0], current[1].hexdigest(), current[3]))
            event = decoder.next_event()
    decoder.close()
    return members


def _zeros(h, n: int) -> None:
    if n > 1 << 30:  # a huge hole in a synthetic entry: not worth hashing
        h.update(b"%d zeros" % n)
        return
    while n > 0:
        h.update(ZEROS[:min(n, len(ZEROS))])
        n -= len(ZEROS)


def normalized(entries: list, shas: dict) -> dict:
    """path → what a tree copy must keep of it; a hard link reads as the file it links to, so
    two archivers that chose a different first name still compare equal."""
    by_path = {e.path: e for e in entries}
    out = {}
    for e in entries:
        f = by_path[e.target] if e.kind == HARDLINK else e
        out[e.path] = (f.kind, f.mode, f.uid, f.gid, f.size, f.mtime_ns,
                       f.target if f.kind != FILE else b"", f.rdev, f.xattrs,
                       shas.get(f.path, ""))
    return out


def disk_shas(top) -> dict:
    return contents(top)


def gnu_tar(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["tar", *args], cwd=cwd, capture_output=True, timeout=60)


# ---- our encoder, GNU tar reading ------------------------------------------------------------

def test_gnu_tar_lists_our_archive_without_complaint(tree_src, tmp_path):
    archive = tmp_path / "ours.tar"
    archive.write_bytes(encode_tree(tree_src))
    run = gnu_tar("--numeric-owner", "-tvf", str(archive))
    assert run.returncode == 0 and run.stderr == b""
    lines = run.stdout.split(b"\n")
    assert any(line.endswith(b" special/new\\nline") for line in lines)
    assert any(b" special/latin1-\\351\\377" in line for line in lines)
    assert any(line.endswith(b" sparse") and b" 67108864 " in line for line in lines)
    assert any(b"special/symlink -> with space.txt" in line for line in lines)
    assert any(line.endswith(b"special/" + b"n" * 200) for line in lines)


def test_gnu_tar_extracts_our_archive_to_the_same_tree(tree_src, tmp_path):
    archive = tmp_path / "ours.tar"
    archive.write_bytes(encode_tree(tree_src))
    out = tmp_path / "out"
    out.mkdir()
    run = gnu_tar("--xattrs", "--xattrs-include=*", "--acls", "-xpf", str(archive), cwd=out)
    assert run.returncode == 0, run.stderr
    assert run.stderr == b""
    assert listing(out) == listing(tree_src)
    assert contents(out) == contents(tree_src)
    assert xattrs_of(out) == xattrs_of(tree_src)
    assert os.stat(out / "sparse").st_blocks * 512 < 2 * SPARSE_TAIL  # holes stay holes


def test_archive_of_a_sparse_file_carries_only_its_data(tree_src):
    data = encode_tree(tree_src)
    assert len(data) < 8 << 20  # 64 MiB apparent, 1 MiB of data, ~3 MiB of docs
    sparse = [m for m in decode(data) if m[0].path == b"sparse"]
    assert sparse[0][0].size == SPARSE_SIZE
    assert sparse[0][2] == SPARSE_TAIL
    assert sparse[0][0].extents[-1] == (SPARSE_SIZE - SPARSE_TAIL, SPARSE_TAIL)


# ---- GNU tar's archives, our decoder ---------------------------------------------------------

def test_decodes_what_gnu_tar_writes_with_pax_sparse_xattrs_acls(tree_src, tmp_path):
    run = gnu_tar("--format=pax", "--sparse", "--xattrs", "--xattrs-include=*", "--acls",
                  "-cf", "-", ".", cwd=tree_src)
    assert run.returncode == 0, run.stderr
    members = decode(run.stdout)
    ours = entries_of(tree_src)
    decoded = [m[0] for m in members]
    theirs = normalized(decoded, {m[0].path: m[1] for m in members if m[0].kind == FILE})
    assert theirs == normalized(ours, disk_shas(tree_src))
    sparse = [m for m in members if m[0].path == b"sparse"][0]
    assert sparse[0].extents is not None and sparse[2] <= SPARSE_TAIL


@pytest.mark.parametrize("sparse_version", ["0.0", "0.1", "1.0"])
def test_decodes_every_gnu_sparse_version(tmp_path, sparse_version):
    top = tmp_path / "t"
    top.mkdir()
    with open(top / "holes", "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(b"a" * 70000)
        f.seek(5 << 20)
        f.write(b"b" * 5000)
    run = gnu_tar("--format=pax", "--sparse", "--sparse-version=" + sparse_version, "-cf", "-",
                  "holes", cwd=top)
    assert run.returncode == 0, run.stderr
    (member,) = decode(run.stdout, chunk=4096)
    assert member[0].path == b"holes" and member[0].size == 8 << 20
    assert member[1] == hashlib.sha256((top / "holes").read_bytes()).hexdigest()
    assert member[2] < 200000


def test_decodes_gnu_format_long_names(tmp_path):
    top = tmp_path / "t"
    (top / ("d" * 150)).mkdir(parents=True)
    (top / ("d" * 150) / ("f" * 150)).write_bytes(b"long\n")
    os.symlink("x" * 150, top / "l")
    run = gnu_tar("--format=gnu", "-cf", "-", ".", cwd=top)
    members = {m[0].path: m for m in decode(run.stdout)}
    name = b"d" * 150 + b"/" + b"f" * 150
    assert members[name][1] == hashlib.sha256(b"long\n").hexdigest()
    assert members[b"l"][0].target == b"x" * 150
    assert members[ROOT][0].kind == "d"


def test_decoder_fed_one_byte_at_a_time_agrees(tmp_path):
    build_tree(tmp_path / "t")
    special = tmp_path / "t" / "special"
    data = encode_tree(special)
    assert decode(data, chunk=1) == decode(data)


def test_our_archive_decodes_to_the_entries_it_was_made_of(tree_src):
    ours = entries_of(tree_src)
    members = decode(encode_tree(tree_src))
    assert [m[0] for m in members] == ours
    shas = {m[0].path: m[1] for m in members if m[0].kind == FILE}
    assert shas == {p: s for p, s in disk_shas(tree_src).items() if p in shas}


def test_big_ids_sizes_and_old_or_negative_times_round_trip():
    odd = [entry(b"big", "f", uid=3000000, gid=2 ** 32 - 2, uname="\u00e9l\u00e8ve",
                 gname="g" * 40, mtime_ns=-1500000000, size=0),
           entry(b"z" * 300, "l", target=b"t" * 300, mtime_ns=5 * 10 ** 9),
           entry(b"sparse-empty", "f", size=10 ** 12, extents=((10 ** 12, 0),))]
    data = b""
    for e in odd:
        data += tar.encode_header(e) + (tar.sparse_map(e) if e.extents else b"")
        data += tar.padding(tar.member_data_size(e))
    members = decode(data + tar.END_OF_ARCHIVE)
    assert [m[0] for m in members] == odd
    run = subprocess.run(["tar", "--numeric-owner", "-tvf", "-"], capture_output=True,
                         input=data + tar.END_OF_ARCHIVE, timeout=60)
    assert run.returncode == 0, run.stderr
    assert b"3000000/4294967294" in run.stdout


def test_a_socket_cannot_be_encoded():
    with pytest.raises(tar.TarError, match="sock: a socket cannot be archived"):
        tar.encode_header(entry(b"sock", SOCKET))


def test_acl_text_round_trips_and_reads_names():
    from fixtures_tree import ACL_ACCESS, ACL_DEFAULT
    for value in (ACL_ACCESS, ACL_DEFAULT):
        assert acl.from_text(acl.to_text(value)) == value
    assert acl.to_text(ACL_ACCESS) == "user::rw-,user:1000:r--,group::r--,mask::r--,other::---"
    assert acl.from_text("user::rw-\nuser:root:r--\t#effective:r--\ngroup::r--\n"
                         "mask::r--\nother::---") == acl.from_text(
        "user::rw-,user:0:r--,group::r--,mask::r--,other::---")
    with pytest.raises(acl.AclError):
        acl.from_text("user:nosuchuserhere:r--")


# ---- malformed input -------------------------------------------------------------------------

def small_archive() -> bytes:
    e = entry(b"hello", "f", size=5, mtime_ns=10 ** 9)
    return tar.encode_header(e) + b"world" + tar.padding(5) + tar.END_OF_ARCHIVE


def test_truncated_archive_is_an_error():
    data = small_archive()
    for cut in (100, 512, 515, 1024, 1536):
        with pytest.raises(tar.TarError, match="truncated"):
            decode(data[:cut])


def test_bad_checksum_is_an_error():
    data = bytearray(small_archive())
    data[0] ^= 1
    with pytest.raises(tar.TarError, match="bad tar header checksum at byte 0"):
        decode(bytes(data))


def test_not_a_tar_archive_is_an_error():
    with pytest.raises(tar.TarError, match="checksum|bad"):
        decode(os.urandom(4096))


def test_oversized_pax_header_is_refused_before_it_is_read():
    big = entry(b"x", "f", xattrs=((b"user.big", b"v" * (tar.MAX_PAX + 1)),))
    with pytest.raises(tar.TarError, match="over the cap"):
        tar.encode_header(big)
    header = bytearray(tar.encode_header(entry(b"x", "f", mtime_ns=1)))[:512]
    header[124:136] = b"%011o\0" % (tar.MAX_PAX + 1)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    decoder = TarDecoder()
    decoder.feed(bytes(header))
    with pytest.raises(tar.TarError, match="extended header of 1048577 bytes at byte 0, over"):
        decoder.next_event()


def test_sparse_map_past_the_file_size_is_an_error():
    e = entry(b"s", "f", size=100, extents=((0, 10),))
    bad = e._replace(extents=((90, 20),))
    data = tar.encode_header(e) + tar.sparse_map(bad) + b"x" * 10 + tar.padding(
        tar.member_data_size(e)) + tar.END_OF_ARCHIVE
    with pytest.raises(tar.TarError, match="sparse map out of order or past"):
        decode(data)


def test_unsupported_member_type_is_an_error():
    header = bytearray(small_archive()[:512])
    header[156:157] = b"V"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    with pytest.raises(tar.TarError, match="unsupported tar member type"):
        decode(bytes(header) + tar.END_OF_ARCHIVE)


@pytest.mark.skipif(not IS_ROOT, reason="device nodes need root")
def test_device_numbers_survive(tree_src):
    members = {m[0].path: m[0] for m in decode(encode_tree(tree_src))}
    assert members[b"special/blockdev"].rdev == os.makedev(7, 200)
    assert members[b"special/chardev"].rdev == os.makedev(1, 3)


def test_a_hard_link_carrying_data_is_skipped_over():
    link = entry(b"b", HARDLINK, target=b"a")
    header = bytearray(tar.encode_header(link))
    header[124:136] = b"%011o\0" % 5
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    after = entry(b"c", "f", size=2)
    data = (bytes(header) + b"hello" + tar.padding(5) + tar.encode_header(after) + b"hi"
            + tar.padding(2) + tar.END_OF_ARCHIVE)
    members = decode(data)
    assert [(m[0].path, m[2]) for m in members] == [(b"b", 0), (b"c", 2)]


def test_tar_stream_keeps_the_archive_whole_when_a_file_changes_size(tmp_path):
    from remote_helper.tree.tarstream import TarStream
    for name, data in ((b"shrank", b"abc"), (b"grew", b"0123456789"), (b"same", b"12345")):
        (tmp_path / name.decode()).write_bytes(data)
    promised = [entry(b"shrank", "f", size=6), entry(b"grew", "f", size=4),
                entry(b"same", "f", size=5)]
    stream = TarStream(lambda e: open(tmp_path / e.path.decode(), "rb"), chunk=2)
    data = b"".join(p for e in promised for p in stream.member(e)) + stream.end()
    assert stream.changed == [b"shrank", b"grew"]
    assert stream.bytes == len(data)
    members = decode(data)
    assert [m[1] for m in members] == [hashlib.sha256(d).hexdigest()
                                       for d in (b"abc\0\0\0", b"0123", b"12345")]
    run = subprocess.run(["tar", "-tvf", "-"], input=data, capture_output=True, timeout=60)
    assert run.returncode == 0 and run.stderr == b""


def test_damaged_headers_with_valid_checksums_only_ever_raise_tar_error(tmp_path):
    """Bytes changed in a header or its pax body, the checksum made right again: the decoder
    says TarError or decodes something, never another exception (a traceback for a user)."""
    import random
    build_tree(tmp_path / "t")
    base = encode_tree(tmp_path / "t" / "special")
    heads = [i for i in range(0, len(base), 512) if base[i + 257:i + 263] == b"ustar\0"]
    rng = random.Random(19)
    for _ in range(1500):
        data = bytearray(base)
        head = rng.choice(heads)
        for _ in range(rng.randint(1, 4)):
            at = head + rng.randrange(1024)
            data[at] = rng.choice([rng.randrange(256), ord("0"), ord(" "), ord("="), 10, 0])
        block = data[head:head + 512]
        block[148:156] = b" " * 8
        data[head + 148:head + 156] = b"%06o\0 " % sum(block)
        try:
            decode(bytes(data), chunk=700)
        except tar.TarError:
            pass
