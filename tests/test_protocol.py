"""The frame codec: every frame type round trips, fed whole or a byte at a time, and any
corruption, truncation or hostile length is a RemoteProtocolError, never a wrong frame; a
misuse of the codec itself is a LocalProtocolError."""
from __future__ import annotations

import hashlib
import os
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remote_helper.wire import protocol
from remote_helper.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from remote_helper.wire.protocol import (
    CODEC_ZSTD, COPY, DATA, DIGESTS, END, ERROR, HEADER, HEADER_SIZE, HELLO, HOLE, MATCH, MAX_CONTROL,
    MAX_PAYLOAD, OPEN, PROGRESS, READY, RESULT, Decoder, Frame)
from remote_helper.wire.protocol import COMMIT, PREPARED

CONTROL = {
    HELLO: {"protocol": 1, "python": "3.6.15", "codecs": ["zstd", "zlib"], "uid": 0},
    OPEN: {"job": "dup", "path": "/dev/sdb", "size": 1 << 40, "force": True},
    READY: {"kind": "block", "created": False},
    END: {"bytes": 12345, "sha256": "ab" * 32},
    RESULT: {"bytes_written": 12345, "sha256": "cd" * 32},
    ERROR: {"kind": "RefusedError", "errno": 16, "message": "/dev/sdb: busy é"},
    PROGRESS: {"written": 4 << 20},
    PREPARED: {"bytes_written": 12345, "check": "frames"},
    COMMIT: {},
}


def sample_frames() -> list[tuple[bytes, Frame]]:
    """(encoded bytes, the frame they must decode to) for every frame type."""
    frames = []
    for frame_type, obj in CONTROL.items():
        encoded = protocol.encode_json(frame_type, obj)
        frames.append((encoded, Frame(frame_type, 0, 0, 0, encoded[HEADER_SIZE:])))
    payload = os.urandom(5000)
    frames.append((protocol.encode(DATA, payload, offset=8 << 30, flags=CODEC_ZSTD, size=1 << 20),
                   Frame(DATA, CODEC_ZSTD, 8 << 30, 1 << 20, payload)))
    frames.append((protocol.encode(DATA, b"", offset=0, size=0), Frame(DATA, 0, 0, 0, b"")))
    frames.append((protocol.encode_hole(3 << 40, 7 << 30), Frame(HOLE, 0, 3 << 40, 7 << 30, b"")))
    frames.append((protocol.encode(MATCH, b"", 64 << 10, 0, 1 << 20),
                   Frame(MATCH, 0, 64 << 10, 1 << 20, b"")))
    digests = os.urandom(32 * 16)
    frames.append((protocol.encode(DIGESTS, digests, 8 << 20),
                   Frame(DIGESTS, 0, 8 << 20, 0, digests)))
    sha = hashlib.sha256(b"copied").digest()
    frames.append((protocol.encode_copy(9 << 30, 1 << 20, 5 << 30, sha),
                   Frame(COPY, 0, 9 << 30, 1 << 20, (5 << 30).to_bytes(8, "big") + sha)))
    window = zlib.compress(b'[["a","f",420,0,0,"","",1,0,"",0,[],null]]')
    frames.append((protocol.encode(protocol.MANIFEST, window, 4096, 0, 1),
                   Frame(protocol.MANIFEST, 0, 4096, 1, window)))
    frames.append((protocol.encode_json(protocol.WANTS, {"want": [0]}),
                   Frame(protocol.WANTS, 0, 0, 0, b'{"want": [0]}')))
    blocks = (3).to_bytes(8, "big") + os.urandom(32 * 4)
    frames.append((protocol.encode(protocol.BLOCKS, blocks, 70000, 0, 7 << 20),
                   Frame(protocol.BLOCKS, 0, 70000, 7 << 20, blocks)))
    asked = struct.pack(">2I", 4, 6)  # pieces 4 and 6, of the segment at 4 MiB
    frames.append((protocol.encode(protocol.ASK, asked, 4 << 20),
                   Frame(protocol.ASK, 0, 4 << 20, 0, asked)))
    return frames


def test_a_copy_frame_says_where_from_and_what_sha256() -> None:
    sha = hashlib.sha256(b"copied").digest()
    frame, = decode_all(protocol.encode_copy(9 << 30, 1 << 20, 5 << 30, sha))
    assert protocol.parse_copy(frame) == (5 << 30, sha)


def decode_all(data: bytes, piece: int = 0) -> list[Frame]:
    """Feed `data` whole (piece 0) or `piece` bytes at a time, then end of input."""
    decoder = Decoder()
    frames = []
    chunks = [data] if not piece else [data[i:i + piece] for i in range(0, len(data), piece)]
    for chunk in chunks:
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.at_eof
    return frames


@pytest.mark.parametrize("piece", [0, 1, 7, HEADER_SIZE], ids=["whole", "byte", "7", "header"])
def test_every_frame_type_round_trips(piece: int) -> None:
    frames = sample_frames()
    stream = b"".join(encoded for encoded, _ in frames)
    decoded = decode_all(stream, piece)
    assert decoded == [frame for _, frame in frames]
    assert {f.type for f in decoded} == set(protocol.TYPE_NAMES)


def test_control_frames_decode_to_their_json() -> None:
    for frame in decode_all(b"".join(protocol.encode_json(t, o) for t, o in CONTROL.items()), 1):
        assert frame.json() == CONTROL[frame.type]


def test_header_is_32_bytes_and_sent_apart_from_payload() -> None:
    payload = b"x" * 100
    head = protocol.header(DATA, memoryview(payload), 4096, CODEC_ZSTD, 200)
    assert len(head) == HEADER_SIZE == 32
    assert decode_all(head + payload) == [Frame(DATA, CODEC_ZSTD, 4096, 200, payload)]


@pytest.mark.parametrize("index", range(HEADER_SIZE))
def test_flipped_header_byte_is_protocol_error(index: int) -> None:
    encoded = protocol.encode(DATA, b"payload bytes", offset=1 << 20, flags=CODEC_ZSTD, size=4096)
    for bit in (0x01, 0x80):
        corrupt = bytearray(encoded)
        corrupt[index] ^= bit
        decoder = Decoder()
        decoder.feed(bytes(corrupt))
        decoder.feed(b"")
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()


def test_flipped_payload_byte_is_protocol_error() -> None:
    encoded = protocol.encode(DATA, os.urandom(300), size=300)
    for index in range(HEADER_SIZE, len(encoded), 17):
        corrupt = bytearray(encoded)
        corrupt[index] ^= 0x10
        decoder = Decoder()
        decoder.feed(bytes(corrupt))
        with pytest.raises(RemoteProtocolError, match="corrupt DATA payload"):
            decoder.next_frame()


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, -1])
def test_end_of_input_mid_frame_is_protocol_error(cut: int) -> None:
    encoded = protocol.encode_json(END, CONTROL[END])
    decoder = Decoder()
    decoder.feed(encoded[:cut])
    assert decoder.next_frame() is None  # not yet an error: more may come
    decoder.feed(b"")
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decoder.next_frame()
    assert not decoder.at_eof


def test_end_of_input_at_frame_boundary_is_eof() -> None:
    decoder = Decoder()
    assert not decoder.at_eof
    decoder.feed(protocol.encode_json(PROGRESS, {"written": 1}))
    assert decoder.next_frame().type == PROGRESS
    assert not decoder.at_eof
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.at_eof


def test_feeding_after_end_of_input_is_a_local_misuse() -> None:
    decoder = Decoder()
    decoder.feed(b"")
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"more")


def raw_header(frame_type: int, length: int, size: int = 0, magic: bytes = b"BK") -> bytes:
    """A header with a valid header checksum for any fields, as a hostile peer would make."""
    head = HEADER.pack(magic, frame_type, 0, length, 0, size, 0, 0)[:-4]
    return head + struct.pack(">I", zlib.crc32(head) & 0xFFFFFFFF)


@pytest.mark.parametrize("frame_type,length", [
    (DATA, MAX_PAYLOAD + 1), (DATA, 0xFFFFFFFF), (OPEN, MAX_CONTROL + 1), (HELLO, 0xFFFFFFFF),
    (DIGESTS, MAX_CONTROL + 1), (protocol.BLOCKS, MAX_CONTROL + 1)])
def test_oversize_length_rejected_on_header_alone(frame_type: int, length: int) -> None:
    decoder = Decoder()
    decoder.feed(raw_header(frame_type, length))  # no payload follows: nothing is waited for
    with pytest.raises(RemoteProtocolError, match="cap"):
        decoder.next_frame()


def test_oversize_decompressed_size_rejected() -> None:
    decoder = Decoder()
    decoder.feed(raw_header(DATA, 10, size=MAX_PAYLOAD + 1))
    with pytest.raises(RemoteProtocolError, match="cap"):
        decoder.next_frame()


def test_decoder_cap_is_configurable() -> None:
    decoder = Decoder(max_payload=1000)
    decoder.feed(protocol.encode(DATA, b"x" * 1001, size=1001))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_encoding_a_payload_over_the_cap_is_a_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        protocol.header(DATA, memoryview(bytearray(MAX_PAYLOAD + 1)))


def test_bad_magic_is_protocol_error() -> None:
    decoder = Decoder()
    decoder.feed(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")  # e.g. a login banner on stdout
    with pytest.raises(RemoteProtocolError, match="magic"):
        decoder.next_frame()
    decoder = Decoder()
    decoder.feed(raw_header(DATA, 0, magic=b"XX"))
    with pytest.raises(RemoteProtocolError, match="magic"):
        decoder.next_frame()


@pytest.mark.parametrize("frame_type", [0, max(protocol.TYPE_NAMES) + 1, 255])
def test_unknown_frame_type_is_protocol_error(frame_type: int) -> None:
    decoder = Decoder()
    decoder.feed(raw_header(frame_type, 0))
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        decoder.next_frame()


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe", b"[1, 2]", b"42", b""])
def test_bad_json_in_control_frame_is_protocol_error(payload: bytes) -> None:
    (frame,) = decode_all(protocol.encode(OPEN, payload))
    with pytest.raises(RemoteProtocolError, match="OPEN"):
        frame.json()


def test_large_stream_in_small_pieces_keeps_buffer_bounded() -> None:
    block = protocol.encode(DATA, b"z" * 60000, size=60000)
    stream = block * 200  # 12 MB through, taken out as it arrives
    decoder = Decoder()
    for at in range(0, len(stream), 4096):
        decoder.feed(stream[at:at + 4096])
        while (frame := decoder.next_frame()) is not None:
            assert frame.payload == b"z" * 60000
        assert decoder.buffered < len(block)
    assert decoder.buffered == 0


def read_as_the_helper_does(stream: bytes) -> tuple[list[Frame], list[bytes]]:
    """Decode stream feeding it `needed` bytes at a time; the frames and the pieces fed."""
    decoder, frames, pieces = Decoder(), [], []
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            frames.append(frame)
        elif len(b"".join(pieces)) == len(stream):
            return frames, pieces
        else:
            at = sum(map(len, pieces))
            assert decoder.needed > 0
            pieces.append(stream[at:at + decoder.needed])
            decoder.feed(pieces[-1])


def test_needed_is_the_rest_of_the_header_then_the_payload() -> None:
    decoder = Decoder()
    assert decoder.needed == HEADER_SIZE
    encoded = protocol.encode(DATA, b"p" * 1000, size=1000)
    decoder.feed(encoded[:10])
    assert decoder.next_frame() is None and decoder.needed == HEADER_SIZE - 10
    decoder.feed(encoded[10:HEADER_SIZE + 1])
    assert decoder.next_frame() is None and decoder.needed == 999
    decoder.feed(encoded[HEADER_SIZE + 1:])
    assert decoder.next_frame().payload == b"p" * 1000 and decoder.needed == HEADER_SIZE


def test_a_reader_taking_needed_bytes_gets_each_payload_as_it_read_it() -> None:
    """No copy: the payload handed back is the very bytes object that was fed."""
    samples = sample_frames()
    frames, pieces = read_as_the_helper_does(b"".join(encoded for encoded, _ in samples))
    assert frames == [frame for _, frame in samples]
    payloads = [frame.payload for frame in frames if frame.payload]
    assert payloads and all(any(p is piece for piece in pieces) for p in payloads)


def test_a_mutable_buffer_fed_is_copied_so_reusing_it_changes_no_frame() -> None:
    encoded = bytearray(protocol.encode(DATA, b"q" * 100, size=100))
    decoder = Decoder()
    decoder.feed(encoded)
    encoded[HEADER_SIZE:] = b"r" * 100
    assert decoder.next_frame().payload == b"q" * 100


@pytest.mark.parametrize("error", [LocalProtocolError, RemoteProtocolError])
def test_both_kinds_of_protocol_error_are_protocol_errors_for_the_client(error) -> None:
    assert issubclass(error, ProtocolError)
    assert error("x").to_dict()["kind"] == "ProtocolError"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
def test_random_bytes_never_crash_the_decoder(data: bytes, piece: int) -> None:
    decoder = Decoder()
    try:
        for i in range(0, len(data), piece):
            decoder.feed(data[i:i + piece])
            while decoder.next_frame() is not None:
                pass
        decoder.feed(b"")
        decoder.next_frame()
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_changed_byte_in_a_valid_stream_is_protocol_error(data) -> None:
    stream = bytearray(b"".join(encoded for encoded, _ in sample_frames()))
    index = data.draw(st.integers(0, len(stream) - 1))
    stream[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(RemoteProtocolError):  # a CRC-32 catches every change within 32 bits
        decode_all(bytes(stream), data.draw(st.integers(0, 50)))
