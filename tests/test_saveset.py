"""The saveset format: stock zstd reads it, verify finds every fault and says where."""
import hashlib
import io
import os
import random
import shutil
import stat
import struct
import subprocess

import pytest
import zstandard

from clirun import MiB
from remote_helper.wire import zstdframe
from remote_helper.errors import HelperError
from remote_helper.saveset.atomic import AtomicFile, MissingDirectory
from remote_helper.saveset.format import NotASaveset, SavesetCorrupt, SavesetWriter
from remote_helper.wire.zstdframe import (compress_frame, decompress_frame, frame_content_size,
                                     frame_has_checksum)
from remote_helper.saveset.reader import SavesetReader, info, verify
from remote_helper.target.imagedigest import ImageDigest

FRAME = MiB
XXH64_EMPTY_LOW = 0x51D8E999


def random_ish(size, seed=7):
    """Half incompressible, half text-like, so frames use raw and compressed blocks."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij ") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(4096) if rng.random() < 0.5 else b" ".join(rng.choices(words, k=600))
    return bytes(out[:size])


CONTENTS = {
    "random": random_ish(10 * MiB + 12345),
    "zero": bytes(10 * MiB + 12345),
}


def metadata(size, frame_size=FRAME):
    return {"kind": "disk", "size": size, "frame_size": frame_size, "source_host": "src",
            "source_path": "/dev/sdz", "bacpac_version": "0.0-test"}


def image_digest(data):
    digest = ImageDigest()
    digest.update(memoryview(data))
    return digest.hexdigest()


def write_saveset(fileobj, data, frame_size=FRAME, level=3):
    writer = SavesetWriter(fileobj, metadata(len(data), frame_size))
    for start in range(0, len(data), frame_size):
        chunk = data[start:start + frame_size]
        writer.add_frame(compress_frame(chunk, level), len(chunk))
    writer.finish(hashlib.sha256(data).hexdigest(), len(data), image_digest(data))


@pytest.fixture(params=sorted(CONTENTS))
def content(request):
    return CONTENTS[request.param]


@pytest.fixture
def saveset_path(tmp_path, content):
    path = tmp_path / "disk.bps"
    with AtomicFile(str(path)) as out:
        write_saveset(out.fileobj, content)
        out.commit()
    return path


@pytest.fixture(scope="module")
def random_saveset():
    buf = io.BytesIO()
    write_saveset(buf, CONTENTS["random"])
    return buf.getvalue()


def data_frames(raw):
    """(index, offset, frame) of each data frame, once proven."""
    return list(SavesetReader(io.BytesIO(raw)).proven_frames(decompress_frame))


def flipped(raw, position):
    damaged = bytearray(raw)
    damaged[position] ^= 0x40
    return bytes(damaged)


def verify_bytes(raw):
    return verify(io.BytesIO(raw))


# --- stock tools ---------------------------------------------------------------------------

def test_stock_zstd_restores_the_image_byte_for_byte(saveset_path, content):
    out = subprocess.run(["zstd", "-d", "-c", str(saveset_path)], capture_output=True, check=True)
    assert out.stdout == content


def test_stock_zstd_lists_the_saveset(saveset_path):
    subprocess.run(["zstd", "-l", str(saveset_path)], capture_output=True, check=True)


def test_a_seekable_zstd_reader_seeks_into_the_saveset(saveset_path, content):
    pyzstd = pytest.importorskip("pyzstd")
    with pyzstd.SeekableZstdFile(str(saveset_path), "rb") as f:
        for offset in (0, FRAME - 10, 3 * FRAME + 77, len(content) - 100):
            f.seek(offset)
            assert f.read(100) == content[offset:offset + 100]


# --- verify ----------------------------------------------------------------------------------

def test_verify_passes_and_returns_the_sha256(saveset_path, content):
    with open(str(saveset_path), "rb") as f:
        summary = verify(f)
    assert summary["sha256"] == hashlib.sha256(content).hexdigest()
    assert summary["frames"] == 11
    assert summary["bytes"] == len(content)
    assert summary["compressed"] == sum(len(frame) for _, _, frame in data_frames(
        saveset_path.read_bytes()))


def test_verify_names_the_frame_and_offset_of_a_flipped_byte(saveset_path):
    raw = saveset_path.read_bytes()
    index, offset, frame = data_frames(raw)[4]
    with pytest.raises(SavesetCorrupt) as caught:
        verify_bytes(flipped(raw, offset + len(frame) // 2))
    assert "frame 4 at byte %d" % offset in str(caught.value)
    assert caught.value.kind == "VerifyError"


def test_verify_reports_a_bad_content_checksum(random_saveset):
    index, offset, frame = data_frames(random_saveset)[2]
    with pytest.raises(SavesetCorrupt, match="frame 2 at byte %d: content checksum" % offset):
        verify_bytes(flipped(random_saveset, offset + len(frame) - 2))


def test_verify_says_truncated_when_the_end_is_cut_off(saveset_path):
    raw = saveset_path.read_bytes()
    cut = 4096 if len(raw) > 3 * 4096 else len(raw) // 3  # all-zero frames are tiny
    with pytest.raises(SavesetCorrupt, match="truncated"):
        verify_bytes(raw[:-cut])


def test_verify_says_truncated_inside_the_metadata(random_saveset):
    with pytest.raises(SavesetCorrupt, match="truncated at byte 20, inside the metadata"):
        verify_bytes(random_saveset[:20])


@pytest.mark.parametrize("cut", [1, 9, 100])
def test_verify_says_seek_table_when_its_end_is_cut_off(random_saveset, cut):
    with pytest.raises(SavesetCorrupt, match="seek table.*truncated"):
        verify_bytes(random_saveset[:-cut])


def test_verify_says_truncated_after_the_last_whole_frame(random_saveset):
    index, offset, frame = data_frames(random_saveset)[5]
    with pytest.raises(SavesetCorrupt, match="truncated at byte %d, after 6 data frames"
                       % (offset + len(frame))):
        verify_bytes(random_saveset[:offset + len(frame)])


def test_verify_refuses_bytes_after_the_seek_table(random_saveset):
    with pytest.raises(SavesetCorrupt, match="follows the seek table"):
        verify_bytes(random_saveset + b"\0")


def test_verify_catches_a_flipped_byte_in_the_trailer(random_saveset):
    reader = SavesetReader(io.BytesIO(random_saveset))
    start = reader.trailer_offset
    sha_at = random_saveset.index(b'"sha256": "', start) + len(b'"sha256": "')
    for position in (start + 2, start + 5, sha_at, sha_at + 63):
        with pytest.raises(SavesetCorrupt, match="trailer"):
            verify_bytes(flipped(random_saveset, position))


def test_verify_catches_a_flipped_byte_in_a_seek_table_entry(random_saveset):
    count = 11 + 2  # the metadata and trailer frames are entries too
    table = len(random_saveset) - 9 - 12 * count
    _, offset, _ = data_frames(random_saveset)[3]
    for field in range(3):  # compressed size, decompressed size, checksum of frame 3
        with pytest.raises(SavesetCorrupt, match="frame 3 at byte %d|seek table" % offset):
            verify_bytes(flipped(random_saveset, table + 12 * 4 + 4 * field))


@pytest.mark.parametrize("from_end", [1, 5, 6, 9, 10, 5 + 12 * 13])
def test_verify_catches_a_flipped_byte_in_the_seek_table_frame(random_saveset, from_end):
    with pytest.raises(SavesetCorrupt, match="seek table|trailer"):
        verify_bytes(flipped(random_saveset, len(random_saveset) - from_end))


def test_verify_refuses_a_frame_the_seek_table_does_not_describe(random_saveset):
    frames = data_frames(random_saveset)
    _, offset, frame = frames[1]
    dropped = random_saveset[:offset] + random_saveset[offset + len(frame):]
    with pytest.raises(SavesetCorrupt):
        verify_bytes(dropped)


def test_verify_works_with_the_zstd_tool_when_zstandard_is_missing(monkeypatch, random_saveset):
    monkeypatch.setattr(zstdframe, "zstandard", None)
    assert verify_bytes(random_saveset)["sha256"] == hashlib.sha256(CONTENTS["random"]).hexdigest()
    index, offset, frame = data_frames(random_saveset)[7]
    with pytest.raises(SavesetCorrupt, match="frame 7 at byte %d: content checksum" % offset):
        verify_bytes(flipped(random_saveset, offset + len(frame) - 3))


def test_verify_says_what_to_install_when_no_zstd_at_all(monkeypatch, random_saveset):
    monkeypatch.setattr(zstdframe, "zstandard", None)
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    with pytest.raises(zstdframe.ZstdMissing, match="install"):
        verify_bytes(random_saveset)


# --- not a saveset ---------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["random", "empty", "plain zst", "skippable, not ours"])
def test_a_file_that_is_no_saveset_is_refused(what):
    raw = {
        "random": os.urandom(100000),
        "empty": b"",
        "plain zst": subprocess.run(["zstd", "-c"], input=b"hello" * 1000, capture_output=True,
                                    check=True).stdout,
        "skippable, not ours": zstdframe.skippable_frame(0x184D2A50, b'{"format": "other"}'),
    }[what]
    for call in (verify, info, SavesetReader):
        with pytest.raises(NotASaveset) as caught:
            call(io.BytesIO(raw))
        assert isinstance(caught.value, HelperError)


# --- the metadata: covered by the trailer's record of its sha256 (format version 2) -----------

V1_SAVESET = os.path.join(os.path.dirname(__file__), "data", "saveset-v1.bacpac")
V1_IMAGE_SHA256 = "6e9e08fc565c09a1b1a832d5584c7ff70de9bb69316e979fea74cb26254b8879"


@pytest.fixture(scope="module")
def small_saveset():
    """A saveset of 200 KiB in 64 KiB frames: small enough to damage byte by byte."""
    buf = io.BytesIO()
    write_saveset(buf, CONTENTS["random"][:200 * 1024], frame_size=64 * 1024)
    return buf.getvalue()


def replaced(raw, old, new):
    assert raw.count(old) == 1 and len(old) == len(new)
    return raw.replace(old, new)


def seek_table_of(raw):
    count = struct.unpack("<I", raw[-9:-5])[0]
    return raw[-(8 + 12 * count + 9):]


def test_the_trailer_records_the_sha256_of_the_metadata_frame(random_saveset):
    reader = SavesetReader(io.BytesIO(random_saveset))
    metadata_frame = random_saveset[:reader.data_offset]
    assert reader.trailer["metadata_sha256"] == hashlib.sha256(metadata_frame).hexdigest()
    assert reader.metadata_checked and reader.metadata["version"] == 3


@pytest.mark.parametrize("old, new", [
    (b'"source_path": "/dev/sdz"', b'"source_path": "/dev/sdy"'),
    (b'"source_host": "src"', b'"source_host": "srd"'),
    (b'"created": "2', b'"created": "3'),
    (b'"frame_size": 65536', b'"frame_size": 95536'),
    (b'"kind": "disk"', b'"kind": "disc"'),
    (b'"size": 204800', b'"size": 204801'),
    (b'"bacpac_version": "0.0-test"', b'"bacpac_version": "9.0-test"'),
], ids=["source_path", "source_host", "created", "frame_size", "kind", "size", "bacpac_version"])
def test_verify_and_info_refuse_a_changed_metadata_field(small_saveset, old, new):
    damaged = replaced(small_saveset, old, new)
    for call in (verify, info, SavesetReader):
        with pytest.raises(SavesetCorrupt, match="^metadata frame at byte 0: damaged"):
            call(io.BytesIO(damaged))


def test_every_byte_of_the_metadata_and_the_trailer_is_checked(small_saveset):
    reader = SavesetReader(io.BytesIO(small_saveset))
    trailer_end = len(small_saveset) - len(seek_table_of(small_saveset))
    positions = list(range(reader.data_offset)) + list(range(reader.trailer_offset, trailer_end))
    for position in positions:
        for bits in (0x01, 0x20):  # a changed digit or letter; whitespace into another one
            damaged = bytearray(small_saveset)
            damaged[position] ^= bits
            with pytest.raises((SavesetCorrupt, NotASaveset)):
                verify_bytes(bytes(damaged))


@pytest.mark.parametrize("older", [b'"version": 1', b'"version": 2'])
def test_a_version_3_saveset_relabelled_older_is_refused(small_saveset, older):
    damaged = replaced(small_saveset, b'"version": 3', older)
    # its trailer's digest fields are unknown to the older version, and its metadata's sha256
    # no longer the trailer's: either way, refused
    with pytest.raises(SavesetCorrupt, match="damaged: (unknown field 'digest'|its sha256)"):
        verify_bytes(damaged)


def test_a_saveset_from_a_newer_bacpac_is_refused_naming_its_version(small_saveset):
    with pytest.raises(SavesetCorrupt, match="saveset version 4: this bacpac reads versions 1, "
                       "2 and 3"):
        verify_bytes(replaced(small_saveset, b'"version": 3', b'"version": 4'))


def test_a_metadata_frame_with_a_damaged_length_is_damaged_not_foreign(small_saveset):
    for position in (4, 5, 7):
        with pytest.raises(SavesetCorrupt, match="metadata frame at byte 0: damaged"):
            verify_bytes(flipped(small_saveset, position))


def test_a_version_1_saveset_is_verified_and_says_its_metadata_is_unchecked():
    with open(V1_SAVESET, "rb") as f:
        summary = verify(f)
        assert (summary["version"], summary["metadata_checked"]) == (1, False)
        assert summary["sha256"] == V1_IMAGE_SHA256
        assert info(f)["metadata_checked"] is False


# --- the image digest: sha256-1m in the trailer (format version 3) ---------------------------

V2_SAVESET = os.path.join(os.path.dirname(__file__), "data", "saveset-v2.bacpac")
V2_IMAGE_SHA256 = "d9a5577cba1c637f175bd4edaa69b3e1d2611394b811379c62baced5bf2616ff"


def stock_digest(image_path):
    """What a user types to get a dup's digest: split -b 1M --filter=sha256sum IMG | sha256sum."""
    out = subprocess.run("split -b 1M --filter=sha256sum %s | sha256sum" % image_path,
                         shell=True, capture_output=True, check=True)
    return out.stdout.split()[0].decode("ascii")


def test_verify_and_info_report_the_sha256_1m_a_user_recomputes_with_stock_tools(
        saveset_path, content, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(content)
    with open(str(saveset_path), "rb") as f:
        verified, described = verify(f), info(f)
    assert verified["digest"] == described["digest"] == stock_digest(image)
    assert verified["digest_algorithm"] == described["digest_algorithm"] == "sha256-1m"
    assert verified["sha256"] == described["sha256"] == hashlib.sha256(content).hexdigest()
    assert described["trailer"]["digest"] == stock_digest(image)


def test_verify_refuses_a_trailer_whose_sha256_1m_is_not_the_content_s(small_saveset):
    claimed = SavesetReader(io.BytesIO(small_saveset)).trailer["digest"]
    other = ("0" if claimed[0] != "0" else "1") + claimed[1:]
    damaged = replaced(small_saveset, claimed.encode("ascii"), other.encode("ascii"))
    assert info(io.BytesIO(damaged))["digest"] == other  # info reads the ends only
    with pytest.raises(SavesetCorrupt, match="^trailer at byte [0-9]+: sha256-1m digest %s, "
                       "but the content's is %s$" % (other, claimed)):
        verify_bytes(damaged)


def test_a_flipped_byte_in_a_frame_fails_verify_of_a_version_3_saveset(small_saveset):
    index, offset, frame = data_frames(small_saveset)[1]
    with pytest.raises(SavesetCorrupt, match="^frame 1 at byte %d: " % offset):
        verify_bytes(flipped(small_saveset, offset + len(frame) // 2))


def test_a_disk_saveset_is_not_finished_without_its_image_digest():
    writer = SavesetWriter(io.BytesIO(), metadata(0))
    with pytest.raises(HelperError, match="no sha256-1m digest"):
        writer.finish(hashlib.sha256(b"").hexdigest(), 0)


def test_a_version_2_saveset_is_verified_and_its_digest_computed(tmp_path):
    """Written by bacpac before format 3 (no digest in its trailer): verify computes the
    digest from the content it proves by the trailer's sha256; info has none to tell."""
    image = tmp_path / "v2.img"
    image.write_bytes(subprocess.run(["zstd", "-d", "-c", V2_SAVESET], capture_output=True,
                                     check=True).stdout)
    with open(V2_SAVESET, "rb") as f:
        verified, described = verify(f), info(f)
    assert (verified["version"], verified["metadata_checked"]) == (2, True)
    assert verified["sha256"] == V2_IMAGE_SHA256 == hashlib.sha256(image.read_bytes()).hexdigest()
    assert verified["digest"] == stock_digest(image)
    assert (described["digest"], described["digest_algorithm"]) == (None, None)
    assert described["sha256"] == V2_IMAGE_SHA256


def test_a_version_1_saveset_is_verified_and_its_digest_computed(tmp_path):
    image = tmp_path / "v1.img"
    image.write_bytes(subprocess.run(["zstd", "-d", "-c", V1_SAVESET], capture_output=True,
                                     check=True).stdout)
    with open(V1_SAVESET, "rb") as f:
        assert verify(f)["digest"] == stock_digest(image)


def test_a_version_1_saveset_with_a_damaged_frame_is_refused():
    with open(V1_SAVESET, "rb") as f:
        raw = f.read()
    index, offset, frame = data_frames(raw)[2]
    with pytest.raises(SavesetCorrupt, match="frame 2 at byte %d" % offset):
        verify_bytes(flipped(raw, offset + len(frame) // 2))


def test_verify_names_the_frame_that_lost_bytes(small_saveset):
    index, offset, frame = data_frames(small_saveset)[2]
    cut = offset + len(frame) // 2
    with pytest.raises(SavesetCorrupt, match="^frame 2 at byte %d: " % offset):
        verify_bytes(small_saveset[:cut] + small_saveset[cut + 3:])


def test_restore_and_verify_give_the_same_verdict(small_saveset):
    index, offset, frame = data_frames(small_saveset)[1]
    damaged = flipped(small_saveset, offset + 100)
    with pytest.raises(SavesetCorrupt) as by_verify:
        verify_bytes(damaged)
    sent = []
    with pytest.raises(SavesetCorrupt) as by_restore:
        for index, _, frame in SavesetReader(io.BytesIO(damaged)).proven_frames(
                decompress_frame):
            sent.append(index)
    assert str(by_restore.value) == str(by_verify.value)
    assert sent == [0]  # the damaged frame is never handed on


# --- info ------------------------------------------------------------------------------------

class CountingReader(io.BytesIO):
    def __init__(self, raw):
        io.BytesIO.__init__(self, raw)
        self.bytes_read = 0

    def read(self, size=-1):
        data = io.BytesIO.read(self, size)
        self.bytes_read += len(data)
        return data


def test_info_reads_sizes_from_the_ends_without_walking_the_data():
    data = random_ish(8 * MiB)
    buf = io.BytesIO()
    write_saveset(buf, data, frame_size=4096, level=1)  # 2048 frames
    counting = CountingReader(buf.getvalue())
    summary = info(counting)
    assert summary["frames"] == 2048
    assert summary["size"] == len(data) == summary["metadata"]["size"]
    assert summary["trailer"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary["compressed"] < summary["file_size"] == len(buf.getvalue())
    assert summary["ratio"] == round(len(data) / summary["compressed"], 3)
    assert counting.bytes_read < 2048 * 12 + 4096


def test_info_reports_the_metadata(saveset_path):
    with open(str(saveset_path), "rb") as f:
        meta = info(f)["metadata"]
    assert meta["format"] == "bacpac-saveset" and meta["version"] == 3
    assert (meta["kind"], meta["source_host"], meta["source_path"]) == ("disk", "src", "/dev/sdz")
    assert meta["created"].endswith("Z") and meta["frame_size"] == FRAME


# --- the seek table, by hand -----------------------------------------------------------------

def test_seek_table_follows_the_zstd_seekable_format(random_saveset):
    raw = random_saveset
    assert struct.unpack("<I", raw[-4:])[0] == 0x8F92EAB1  # Seekable_Magic_Number, last
    count, descriptor = struct.unpack("<IB", raw[-9:-4])
    assert descriptor == 0x80  # Checksum_Flag; reserved bits zero
    table_size = 8 + 12 * count + 9
    start = len(raw) - table_size
    magic, frame_size = struct.unpack("<II", raw[start:start + 8])
    assert (magic, frame_size) == (0x184D2A5E, 12 * count + 9)
    entries = [struct.unpack("<III", raw[start + 8 + 12 * i:start + 20 + 12 * i])
               for i in range(count)]
    frames = data_frames(raw)
    assert count == len(frames) + 2
    meta_size = 8 + struct.unpack("<I", raw[4:8])[0]
    assert entries[0] == (meta_size, 0, XXH64_EMPTY_LOW)
    assert entries[-1][1:] == (0, XXH64_EMPTY_LOW)
    assert sum(entry[0] for entry in entries) == start  # running sums are file offsets
    data = CONTENTS["random"]
    position = meta_size
    for (index, offset, frame), entry in zip(frames, entries[1:-1]):
        assert offset == position
        chunk = data[index * FRAME:(index + 1) * FRAME]
        # the checksum is XXH64's low 32 bits of the content: any other compressor agrees
        other = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(chunk)
        assert entry == (len(frame), len(chunk), struct.unpack("<I", other[-4:])[0])
        position += len(frame)


def test_metadata_and_trailer_are_told_apart_by_magic_and_keys(random_saveset):
    assert struct.unpack("<I", random_saveset[:4])[0] == 0x184D2A50
    reader = SavesetReader(io.BytesIO(random_saveset))
    at = reader.trailer_offset
    assert struct.unpack("<I", random_saveset[at:at + 4])[0] == 0x184D2A51
    assert reader.metadata["type"] == "metadata" and reader.trailer["type"] == "trailer"
    assert reader.trailer["frames"] == 11 and reader.trailer["bytes"] == len(CONTENTS["random"])


# --- frames ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 65535, 65535 + 256, 65535 + 257, MiB])
@pytest.mark.parametrize("level", [1, 19])
def test_frame_content_size_reads_every_header_layout(size, level):
    data = random_ish(size, seed=size)
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    frame = cctx.compress(data)
    assert frame_content_size(frame) == size
    assert frame_has_checksum(frame)
    assert decompress_frame(frame, size) == data
    for chunk in (size // 2, size):  # a streamed frame may not say its size
        streamed = zstandard.ZstdCompressor(level=level, write_checksum=False).compressobj()
        out = streamed.compress(data[:chunk]) + streamed.flush()
        assert not frame_has_checksum(out)
        assert frame_content_size(out) in (None, chunk)


def test_frame_content_size_of_a_frame_with_a_dictionary_id():
    samples = [random_ish(2000, seed=i) for i in range(64)]
    dictionary = zstandard.train_dictionary(4096, samples)
    cctx = zstandard.ZstdCompressor(dict_data=dictionary, write_checksum=True,
                                    write_dict_id=True)
    frame = cctx.compress(samples[3])
    assert frame_content_size(frame) == 2000 and frame_has_checksum(frame)


def test_compress_frame_without_zstandard_uses_the_zstd_tool(monkeypatch):
    data = random_ish(300000)
    monkeypatch.setattr(zstdframe, "zstandard", None)
    frame = compress_frame(data, 3)
    assert frame_content_size(frame) == len(data) and frame_has_checksum(frame)
    assert decompress_frame(frame, len(data)) == data


@pytest.mark.parametrize("frame, size, why", [
    (b"not a zstd frame at all", 5, "not a zstd frame"),
    (zstandard.ZstdCompressor(write_checksum=False).compress(b"abc" * 99), 297, "checksum"),
    (compress_frame(b"abc" * 99, 3), 296, "declares 297"),
    (compress_frame(b"abc" * 99, 3) * 2, 297, "bytes but"),
    (compress_frame(b"abc" * 99, 3)[:-1], 297, "cut short|bytes but"),
])
def test_writer_refuses_what_is_not_one_checksummed_frame(frame, size, why):
    writer = SavesetWriter(io.BytesIO(), {"kind": "disk", "size": size, "frame_size": MiB})
    with pytest.raises(HelperError, match=why):
        writer.add_frame(frame, size)


def test_writer_takes_memoryviews_and_refuses_a_wrong_total():
    frame = compress_frame(b"x" * 1000, 3)
    writer = SavesetWriter(io.BytesIO(), {"kind": "disk", "size": 1000, "frame_size": 1000})
    writer.add_frame(memoryview(frame), 1000)
    with pytest.raises(HelperError, match="1000 bytes, the stream 999"):
        writer.finish("0" * 64, 999)


# --- AtomicFile ------------------------------------------------------------------------------

def test_atomic_file_is_private_and_nameless_until_commit(tmp_path):
    final = tmp_path / "disk.bps"
    out = AtomicFile(str(final))
    out.fileobj.write(b"payload")
    assert out.temp_path is None  # O_TMPFILE: a writer killed now leaves nothing at all
    assert os.listdir(str(tmp_path)) == []
    assert stat.S_IMODE(os.fstat(out.fileobj.fileno()).st_mode) == 0o600
    out.commit()
    assert final.read_bytes() == b"payload"
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert os.listdir(str(tmp_path)) == ["disk.bps"]
    out.discard()  # after commit: harmless, and the committed file stays
    assert final.exists()


def test_atomic_file_commit_replaces_an_older_saveset(tmp_path):
    final = tmp_path / "disk.bps"
    final.write_bytes(b"last night's")
    out = AtomicFile(str(final))
    out.fileobj.write(b"tonight's")
    assert final.read_bytes() == b"last night's"
    out.commit()
    assert final.read_bytes() == b"tonight's"
    assert os.listdir(str(tmp_path)) == ["disk.bps"]


def test_atomic_file_uses_a_hidden_temporary_name_without_o_tmpfile(tmp_path, monkeypatch):
    monkeypatch.setattr(AtomicFile, "_open_unnamed", lambda self: None)
    final = tmp_path / "disk.bps"
    out = AtomicFile(str(final))
    out.fileobj.write(b"payload")
    assert os.path.basename(out.temp_path).startswith(".disk.bps.bacpac-tmp-")
    assert stat.S_IMODE(os.stat(out.temp_path).st_mode) == 0o600
    assert not final.exists()
    out.commit()
    assert final.read_bytes() == b"payload"
    assert os.listdir(str(tmp_path)) == ["disk.bps"]


def test_atomic_file_without_o_tmpfile_discard_removes_the_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(AtomicFile, "_open_unnamed", lambda self: None)
    out = AtomicFile(str(tmp_path / "disk.bps"))
    out.fileobj.write(b"half")
    out.discard()
    assert os.listdir(str(tmp_path)) == []


def test_atomic_file_discard_leaves_nothing(tmp_path):
    out = AtomicFile(str(tmp_path / "disk.bps"))
    out.fileobj.write(b"half")
    out.discard()
    out.discard()
    assert os.listdir(str(tmp_path)) == []


def test_atomic_file_discards_when_its_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with AtomicFile(str(tmp_path / "disk.bps")) as out:
            out.fileobj.write(b"half")
            raise RuntimeError("client gone")
    assert os.listdir(str(tmp_path)) == []


def test_atomic_file_says_when_the_directory_is_missing(tmp_path):
    with pytest.raises(MissingDirectory) as caught:
        AtomicFile(str(tmp_path / "nowhere" / "disk.bps"))
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.filename == str(tmp_path / "nowhere")


def test_an_empty_image_makes_a_valid_saveset(tmp_path):
    path = tmp_path / "empty.bps"
    with AtomicFile(str(path)) as out:
        write_saveset(out.fileobj, b"")
        out.commit()
    with open(str(path), "rb") as f:
        assert verify(f) == {"frames": 0, "bytes": 0, "compressed": 0,
                             "sha256": hashlib.sha256(b"").hexdigest(), "version": 3,
                             "digest": hashlib.sha256(b"").hexdigest(),  # no line at all
                             "digest_algorithm": "sha256-1m", "metadata_checked": True}
        assert info(f)["ratio"] is None
    out = subprocess.run(["zstd", "-d", "-c", str(path)], capture_output=True, check=True)
    assert out.stdout == b""


# --- SavesetOutput: the helper's saveset, written back as it grows ---------------------------


def test_saveset_output_starts_writeback_as_it_grows_and_commits_a_valid_saveset(tmp_path,
                                                                                 mocker):
    from remote_helper.saveset import output as saveset_output
    started = []
    mocker.patch.object(saveset_output.libc, "start_writeback",
                        side_effect=lambda fd, offset, length: started.append((offset, length)))
    path = tmp_path / "out.bps"
    output = saveset_output.SavesetOutput(str(path), metadata(88 * MiB, 4 * MiB), 4 * MiB)
    blocks = [os.urandom(4 * MiB) for _ in range(20)]  # incompressible: 80 MiB of frames
    for block in blocks:
        output.add(compress_frame(block, 1), len(block))
    output.add_zeros(80 * MiB, 8 * MiB)
    content = b"".join(blocks) + bytes(8 * MiB)
    output.commit(hashlib.sha256(content).hexdigest(), len(content), image_digest(content))
    # Every 32 MiB added, the range since the last one, with no gap and no overlap.
    assert len(started) == 2
    assert started[0][0] == 0 and started[1][0] == started[0][1]
    assert all(length >= 32 * MiB for _, length in started)
    with open(str(path), "rb") as f:
        summary = verify(f)
    assert summary["sha256"] == hashlib.sha256(content).hexdigest()
    assert summary["bytes"] == len(content)
