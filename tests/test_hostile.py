"""Hostile and bad input: a fuzzed codec, a helper fed lying frames, shell-hostile paths, secrets
that must never show, two runs fighting over one target, and bad command lines.

Every check is made where a user or an attacker would look: the helper's own frames and exit
status, the bytes on disk, the process list, stdout and stderr.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Optional

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bacpac.transport.helper import helper_argv, helper_payload
from remote_helper.wire import codecs, protocol
from remote_helper.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from remote_helper.jobs.server import error_frame
from remote_helper.wire.protocol import COPY, DATA, END, ERROR, HEADER, OPEN, READY
from test_dup import _bare_python
from clirun import (FAIL_WITHIN, SLOW, MiB, assert_failed_in_one_line, bacpac, bacpac_env,
                    finish, random_image, sha256_of, start, wait_until)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    """8 MiB: 3 MiB of random data, a hole, and text."""
    path = random_image(tmp_path_factory.mktemp("hostile") / "small.img", 3 * MiB, seed=7)
    with open(path, "r+b") as f:
        f.truncate(8 * MiB)
        f.seek(6 * MiB)
        f.write(b"bacpac hostile input\n" * 10000)
    return path


# ---- the codec, fuzzed ---------------------------------------------------------------------------

def _signed_header(frame_type: int, flags: int, length: int, offset: int, size: int,
                   crc: int) -> bytes:
    """A header with a correct header checksum: it gets past the first line of defence."""
    head = HEADER.pack(protocol.MAGIC, frame_type, flags, length, offset, size, crc, 0)[:-4]
    return head + (zlib.crc32(head) & 0xFFFFFFFF).to_bytes(4, "big")


headers = st.builds(_signed_header, st.integers(0, 255), st.integers(0, 255),
                    st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
                    st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))


@settings(max_examples=400, deadline=None)
@given(head=headers)
def test_parse_header_accepts_only_lengths_under_the_cap(head: bytes) -> None:
    try:
        frame_type, _, length, _, size, _ = protocol.parse_header(head)
    except RemoteProtocolError:
        return
    cap = protocol.MAX_PAYLOAD if frame_type == DATA else protocol.MAX_CONTROL
    assert length <= cap
    if frame_type == DATA:
        assert size <= protocol.MAX_PAYLOAD


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.one_of(headers, st.binary(min_size=1, max_size=64),
                                 st.sampled_from([protocol.encode_json(OPEN, {"a": 1}),
                                                  protocol.encode_hole(0, 4096),
                                                  protocol.encode(DATA, b"x" * 100, 0, 0, 100)])),
                       max_size=12),
       eof=st.booleans())
def test_decoder_fed_signed_headers_and_garbage_raises_only_protocol_error(
        pieces: list, eof: bool) -> None:
    """Valid frames, garbage and well-signed lying headers in any mix: frames or
    RemoteProtocolError, and the decoder never holds more than it was fed (no allocation from a
    header's word). No piece is empty: b"" is end of input, and feeding more after it is a
    LocalProtocolError."""
    decoder = protocol.Decoder()
    fed = 0
    try:
        for piece in pieces:
            decoder.feed(piece)
            fed += len(piece)
            while decoder.next_frame() is not None:
                pass
            assert decoder.buffered <= fed
        if eof:
            decoder.feed(b"")
            decoder.next_frame()
    except RemoteProtocolError:
        pass


def test_header_announcing_4_gib_is_rejected_before_any_payload_arrives() -> None:
    decoder = protocol.Decoder()
    decoder.feed(_signed_header(DATA, 0, 2**32 - 1, 0, 4 * MiB, 0))
    with pytest.raises(RemoteProtocolError, match="cap"):
        decoder.next_frame()


# ---- a real helper fed lying frames --------------------------------------------------------------

class LocalHelper:
    """The helper started as bacpac starts it, over pipes, driven frame by frame."""

    def __init__(self, python: str = sys.executable) -> None:
        self.proc = subprocess.Popen(helper_argv(python, False), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._decoder = protocol.Decoder()
        self.send(helper_payload())
        assert self.recv().type == protocol.HELLO

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, timeout: float = 10) -> protocol.Frame:
        deadline = time.monotonic() + timeout
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0, left))
            if not ready:
                pytest.fail(f"no frame from the helper within {timeout} s")
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:  # else select() says ready at once, for ever
                pytest.fail("the helper ended its output without a whole frame")
            self._decoder.feed(data)

    def answer(self, timeout: float = 10) -> protocol.Frame:
        """The next frame that is not PROGRESS: the helper sends PROGRESS on its own clock, so
        one may come before any answer on a loaded machine."""
        while True:
            frame = self.recv(timeout)
            if frame.type != protocol.PROGRESS:
                return frame

    def open_dup(self, path: Path, size: int, check: str = "sha256") -> None:
        self.send(open_frame(path, size, check))
        assert self.recv().type == READY

    def refusal(self) -> dict:
        """The ERROR frame's payload, from a helper that then exited with status 1 (with stdin
        still open: it must not wait for more input)."""
        frame = self.answer()
        status = self.proc.wait(timeout=10)
        assert frame.type == ERROR and status == 1, (frame, status)
        return frame.json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()


def open_frame(path: Path, size: int, check: str = "sha256", **more: object) -> bytes:
    return protocol.encode_json(OPEN, {
        "protocol": protocol.PROTOCOL_VERSION, "job": "dup", "path": str(path), "size": size,
        "force": False, "verify": False, "saveset": None, "delta": None, "check": check,
        "source": {}, **more})


@pytest.fixture
def helper():
    made = LocalHelper()
    yield made
    made.close()


def raw(offset: int, data: bytes) -> bytes:
    return protocol.encode(DATA, data, offset, protocol.CODEC_RAW, len(data))


SIZE = 64 << 10
LYING_FRAMES = {
    "data_crossing_the_end": [raw(0, b"a" * (SIZE - 4096)), raw(SIZE - 4096, b"b" * 8192)],
    "data_far_beyond_the_end": [raw(1 << 40, b"c" * 4096)],
    "data_with_a_gap": [raw(0, b"d" * 4096), raw(8192, b"e" * 4096)],
    "data_going_back": [raw(0, b"f" * 8192), raw(4096, b"g" * 4096)],
    "hole_past_the_end": [protocol.encode_hole(0, SIZE + 4096)],
    "hole_wrapping_around": [protocol.encode_hole(2**64 - 4096, 8192)],
    "header_announcing_4_gib": [_signed_header(DATA, 0, 2**32 - 1, 0, 4096, 0)],
    "copy_from_after_itself": [protocol.encode_copy(0, 4096, 4096, bytes(32))],
    "copy_overlapping_itself": [raw(0, b"i" * 8192),
                                protocol.encode_copy(8192, 8192, 4096, bytes(32))],
    "copy_with_a_short_payload": [protocol.encode(COPY, b"j" * 8, 0, 0, 4096)],
    "copy_of_4_gib": [raw(0, b"k" * 4096), _signed_header(COPY, 0, 0, 4096, 2**32, 0)],
}


@pytest.mark.parametrize("frames", LYING_FRAMES.values(), ids=list(LYING_FRAMES))
def test_helper_rejects_frames_outside_the_image_with_protocol_error(
        helper: LocalHelper, frames: list, tmp_path) -> None:
    target = tmp_path / "t.img"
    helper.open_dup(target, SIZE)
    helper.send(b"".join(frames))
    error = helper.refusal()
    assert error["kind"] == "ProtocolError", error
    assert os.path.getsize(target) == SIZE  # never extended past the image
    assert target.read_bytes() == bytes(SIZE)  # the head is held back: nothing of it written


def test_helper_fed_a_corrupt_header_names_it_a_protocol_violation_by_the_client(
        helper: LocalHelper, tmp_path) -> None:
    helper.open_dup(tmp_path / "t.img", SIZE)
    corrupt = bytearray(raw(0, b"h" * 4096))
    corrupt[10] ^= 0x40  # in the offset: the header's own checksum no longer matches
    helper.send(bytes(corrupt))
    error = helper.refusal()
    assert error == {"kind": "ProtocolError", "errno": 0, "message": "protocol violation by the "
                     "client: corrupt frame header (checksum mismatch)"}


def test_helper_whose_input_ends_inside_a_frame_names_it_a_protocol_violation_by_the_client(
        helper: LocalHelper, tmp_path) -> None:
    helper.open_dup(tmp_path / "t.img", SIZE)
    helper.send(raw(0, b"h" * 4096)[:1000])
    helper.proc.stdin.close()
    error = helper.refusal()
    assert error["message"] == ("protocol violation by the client: stream truncated in the "
                                "middle of a DATA payload")


def test_helper_whose_input_ends_between_frames_exits_without_a_word(helper: LocalHelper,
                                                                     tmp_path) -> None:
    helper.open_dup(tmp_path / "t.img", SIZE)
    helper.send(raw(0, b"h" * 4096))
    helper.proc.stdin.close()
    assert helper.proc.wait(timeout=10) == 1
    said = _frames_of(helper.proc.stdout.read())
    assert ERROR not in [frame.type for frame in said], said  # the client is gone: nobody to tell


def test_helper_tells_a_misuse_of_its_own_codec_as_a_bug_not_as_the_clients_fault() -> None:
    with pytest.raises(LocalProtocolError) as misuse:
        protocol.header(DATA, memoryview(bytearray(protocol.MAX_PAYLOAD + 1)))
    said = error_frame(misuse.value)
    assert said["kind"] == "TransferError", said
    assert said["message"].startswith("helper failed: LocalProtocolError: payload of "), said
    assert "(protocol.py:" in said["message"] and "client" not in said["message"]


def test_a_helper_that_cannot_decompress_the_stream_refuses_it_before_opening_anything(
        tmp_path) -> None:
    # The client sends its OPEN and the stream behind it before it reads the HELLO that would
    # have told it this host has no zstd: the OPEN must be refused before the target is made.
    made = LocalHelper(_bare_python(tmp_path, "/nonexistent"))
    try:
        target = tmp_path / "t.img"
        data = b"bacpac" * 1000
        zstd_frame = zstandard.ZstdCompressor(write_checksum=True).compress(data)
        made.send(open_frame(target, SIZE, "frames", codec="zstd")
                  + protocol.encode(DATA, zstd_frame, 0, protocol.CODEC_ZSTD, len(data)))
        error = made.refusal()
        assert error["kind"] == "ProtocolError"
        assert "zstd, which this host cannot decompress" in error["message"]
        assert not target.exists()
    finally:
        made.close()


def test_helper_rejects_end_that_claims_more_than_was_sent(helper: LocalHelper, tmp_path) -> None:
    target = tmp_path / "t.img"
    helper.open_dup(target, SIZE)
    helper.send(raw(0, b"h" * 4096) + protocol.encode_json(END, {"bytes": SIZE, "sha256": "0"}))
    error = helper.refusal()
    assert "4096" in error["message"]
    assert target.read_bytes() == bytes(SIZE)


def test_helper_reports_the_share_of_its_last_interval_spent_waiting(
        helper: LocalHelper, tmp_path) -> None:
    """The client's pacing reads PROGRESS "idle" as a share of the interval, not seconds."""
    helper.open_dup(tmp_path / "t.img", SIZE)
    helper.send(protocol.encode_hole(0, 4096))
    time.sleep(0.4)  # the helper has nothing to do but wait for input
    helper.send(protocol.encode_hole(4096, 4096))
    progress = helper.recv()
    assert progress.type == protocol.PROGRESS, progress
    assert progress.json()["written"] == 8192
    assert 0.8 <= progress.json()["idle"] <= 1.0, progress.json()


# ---- COPY frames: bytes the target already holds, proven by the sha256 they carry ---------------

def test_helper_copies_from_the_held_back_head_and_beyond_it(helper: LocalHelper,
                                                             tmp_path) -> None:
    target, size = tmp_path / "t.img", 4 * MiB
    written = os.urandom(MiB + MiB // 2)
    piece = written[MiB - 32768:MiB + 32768]  # half in the first MiB, which is held back
    content = written + piece + bytes(size - len(written) - len(piece))
    helper.open_dup(target, size)
    helper.send(raw(0, written)
                + protocol.encode_copy(len(written), len(piece), MiB - 32768,
                                       hashlib.sha256(piece).digest())
                + protocol.encode_hole(len(written) + len(piece),
                                       size - len(written) - len(piece))
                + protocol.encode_json(END, {"bytes": size,
                                             "sha256": hashlib.sha256(content).hexdigest()}))
    result = helper.answer()
    assert result.type == protocol.RESULT, result.json()
    assert target.read_bytes() == content


def test_helper_refuses_a_copy_whose_bytes_are_not_the_sources(helper: LocalHelper,
                                                               tmp_path) -> None:
    target = tmp_path / "t.img"
    helper.open_dup(target, SIZE)
    helper.send(raw(0, b"l" * 16384)
                + protocol.encode_copy(16384, 16384, 0, hashlib.sha256(b"m" * 16384).digest())
                + protocol.encode_hole(32768, SIZE - 32768)
                + protocol.encode_json(END, {"bytes": SIZE, "sha256": "0"}))
    error = helper.refusal()
    assert error["kind"] == "VerifyError", error  # IntegrityError, on the wire
    assert error["message"] == (f"{target}: the 16384 bytes at offset 0, copied for "
                                "offset 16384, differ from the source's")
    assert target.read_bytes() == bytes(SIZE)


def test_helper_of_a_backup_refuses_a_copy_it_has_no_disk_for(helper: LocalHelper,
                                                              tmp_path) -> None:
    helper.send(protocol.encode_json(OPEN, {
        "protocol": protocol.PROTOCOL_VERSION, "job": "dup", "path": None, "size": SIZE,
        "check": "sha256", "saveset": None, "delta": None, "source": {}}))
    assert helper.recv().type == READY
    data = b"n" * 16384
    helper.send(raw(0, data) + protocol.encode_copy(16384, 16384, 0,
                                                    hashlib.sha256(data).digest()))
    error = helper.refusal()
    assert error["kind"] == "ProtocolError"
    assert "COPY frame with no target disk" in error["message"]


# ---- frames the helper must prove by their own checksums ---------------------------------------

def zstd_block(offset: int, data: bytes, checksum: bool = True) -> bytes:
    frame = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=True).compress(data)
    return protocol.encode(DATA, frame, offset, protocol.CODEC_ZSTD, len(data))


def _flip_last_byte(block: bytes) -> bytes:
    """The frame's content checksum damaged, the wire's own CRC made to match again."""
    frame = protocol.Decoder()
    frame.feed(block)
    data = frame.next_frame()
    payload = data.payload[:-1] + bytes([data.payload[-1] ^ 1])
    return protocol.encode(DATA, payload, data.offset, data.flags, data.size)


BLOCK = os.urandom(4096) * 4
UNPROVEN_FRAMES = {
    "checksum_wrong": (_flip_last_byte(zstd_block(0, BLOCK)), "checksum"),
    "no_checksum": (zstd_block(0, BLOCK, checksum=False), "without its content checksum"),
    "two_frames_in_one_block": (
        protocol.encode(DATA, zstandard.ZstdCompressor(write_checksum=True).compress(BLOCK[:8192])
                        + zstandard.ZstdCompressor().compress(BLOCK[8192:]),
                        0, protocol.CODEC_ZSTD, len(BLOCK)), "zstd frame is"),
    "raw_block": (raw(0, BLOCK), "codec 0"),
    "zlib_block": (protocol.encode(DATA, zlib.compress(BLOCK), 0, protocol.CODEC_ZLIB, len(BLOCK)),
                   "codec 2"),
}


@pytest.mark.parametrize("block,cause", UNPROVEN_FRAMES.values(), ids=list(UNPROVEN_FRAMES))
def test_helper_checking_frames_refuses_a_block_its_checksum_does_not_prove(
        helper: LocalHelper, block: bytes, cause: str, tmp_path) -> None:
    target = tmp_path / "t.img"
    helper.open_dup(target, SIZE, check="frames")
    helper.send(block)
    error = helper.refusal()
    assert error["kind"] == "ProtocolError", error
    assert cause in error["message"]
    assert target.read_bytes() == bytes(SIZE)


def test_helper_checking_frames_proves_blocks_without_hashing_the_stream(
        helper: LocalHelper, tmp_path) -> None:
    target = tmp_path / "t.img"
    content = BLOCK + bytes(SIZE - len(BLOCK))
    helper.open_dup(target, SIZE, check="frames")
    helper.send(zstd_block(0, BLOCK) + protocol.encode_hole(len(BLOCK), SIZE - len(BLOCK))
                + protocol.encode_json(END, {"bytes": SIZE,
                                             "sha256": hashlib.sha256(content).hexdigest()}))
    result = helper.answer()
    assert result.type == protocol.RESULT, result
    assert result.json() == {"bytes_written": SIZE, "check": "frames"}
    assert target.read_bytes() == content


def test_helper_checking_frames_finishes_the_image_before_its_end(helper: LocalHelper,
                                                                   tmp_path) -> None:
    """Every byte came, each frame proven by its checksum: the held-back head is written (and
    the target synced) before END, which the client sends once it has hashed a trailing hole."""
    target = tmp_path / "t.img"
    content = BLOCK + bytes(SIZE - len(BLOCK))
    helper.open_dup(target, SIZE, check="frames")
    helper.send(zstd_block(0, BLOCK) + protocol.encode_hole(len(BLOCK), SIZE - len(BLOCK)))
    wait_until(lambda: target.read_bytes() == content, 10, "head written before END")
    helper.send(protocol.encode_json(END, {"bytes": SIZE,
                                           "sha256": hashlib.sha256(content).hexdigest()}))
    assert helper.answer().type == protocol.RESULT
    assert target.read_bytes() == content


def test_helper_checking_frames_refuses_a_frame_after_the_last_byte(helper: LocalHelper,
                                                                    tmp_path) -> None:
    target = tmp_path / "t.img"
    helper.open_dup(target, SIZE, check="frames")
    helper.send(zstd_block(0, BLOCK) + protocol.encode_hole(len(BLOCK), SIZE - len(BLOCK))
                + protocol.encode_hole(SIZE, 0))
    error = helper.refusal()
    assert error["kind"] == "ProtocolError"
    assert "HOLE frame after the last byte" in error["message"]


def test_helper_hashing_the_stream_keeps_the_head_back_from_an_end_it_disagrees_with(
        helper: LocalHelper, tmp_path) -> None:
    """Without frames proven one by one, only END's sha256 proves the image: one that differs
    leaves the target with its first MiB zeroed, so it will not mount as if it were good."""
    target = tmp_path / "t.img"
    helper.open_dup(target, SIZE, check="sha256")
    helper.send(raw(0, BLOCK) + protocol.encode_hole(len(BLOCK), SIZE - len(BLOCK))
                + protocol.encode_json(END, {"bytes": SIZE, "sha256": "0" * 64}))
    error = helper.refusal()
    assert error["kind"] == "VerifyError", error
    assert target.read_bytes() == bytes(SIZE)


@pytest.mark.parametrize("end", [{"bytes": SIZE}, {"bytes": SIZE, "sha256": "not-a-digest"}],
                         ids=["no_sha256", "bad_sha256"])
def test_helper_checking_frames_refuses_an_end_without_the_source_sha256(
        helper: LocalHelper, end: dict, tmp_path) -> None:
    helper.open_dup(tmp_path / "t.img", SIZE, check="frames")
    helper.send(protocol.encode_hole(0, SIZE) + protocol.encode_json(END, end))
    error = helper.refusal()
    assert error["kind"] == "ProtocolError"
    assert "END carries no sha256" in error["message"]


def test_helper_refuses_an_unknown_check_before_touching_the_target(
        helper: LocalHelper, tmp_path) -> None:
    target = tmp_path / "t.img"
    helper.send(protocol.encode_json(OPEN, {
        "protocol": protocol.PROTOCOL_VERSION, "job": "dup", "path": str(target), "size": SIZE,
        "check": "crc8", "saveset": None, "delta": None, "source": {}}))
    error = helper.refusal()
    assert "unknown check 'crc8'" in error["message"]
    assert not target.exists()


# ---- shell-hostile remote paths -----------------------------------------------------------------

HOSTILE_NAME = "a b'c\"d $(touch {m}-1) ;touch {m}-2; `touch {m}-3`\nx|y&z*.img"


def _markers(token: str, *places: Path) -> list:
    """Files a shell would have made from `touch {token}-N`, wherever it ran."""
    found = []
    for place in places:
        found += list(place.glob(f"{token}*"))
    return found


def test_hostile_remote_paths_are_written_exactly_and_execute_nothing(
        no_helper_left, sshd, small_image, tmp_path) -> None:
    token = f"bacpac-pwned-{os.getpid()}-{time.monotonic_ns()}"  # touched relative to any cwd
    directory = tmp_path / f"dir $(touch {token}-0)"
    directory.mkdir()
    target = directory / HOSTILE_NAME.format(m=token)
    saveset = directory / ("set " + HOSTILE_NAME.format(m=token))
    run = bacpac("dup", *sshd.cli_args(), "--no-progress", "--json", "--saveset", saveset,
                 small_image, f"testhost:{target}", timeout=FAIL_WITHIN)
    assert run.returncode == 0, run.stderr
    assert sha256_of(target) == sha256_of(small_image)
    assert saveset.is_file()
    assert json.loads(run.stdout)["target"] == f"testhost:{target}"
    assert sorted(os.listdir(directory)) == sorted([target.name, saveset.name])
    assert _markers(token, tmp_path, directory, Path.home(), Path("/"), Path("/tmp"),
                    Path.cwd()) == [], "a path was run by a shell"


# ---- secrets ----------------------------------------------------------------------------------

def client_config(sshd, tmp_path: Path, identity: str) -> str:
    """An ssh_config for `testhost` that offers only `identity` (not the session's own key)."""
    path = tmp_path / "ssh_config"
    path.write_text(f"Host testhost\n    HostName {sshd.hostname}\n    Port {sshd.port}\n"
                    f"    User {sshd.user}\n    IdentityFile {identity}\n"
                    f"    IdentitiesOnly yes\n    UserKnownHostsFile {sshd.known_hosts}\n"
                    "    StrictHostKeyChecking yes\n")
    return str(path)


class CmdlineWatch:
    """Samples every process's command line during a run, looking for a secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self.samples = 0
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/cmdline", "rb") as f:
                            cmdline = f.read()
                    except OSError:
                        continue
                    if self._secret in cmdline:
                        self.seen.append(cmdline.decode("utf-8", "replace"))
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _run_with_secret(sshd, tmp_path, secret: str, source: Path, target: Path):
    config = client_config(sshd, tmp_path, sshd.locked_key_path)
    watch = CmdlineWatch(secret)
    try:
        run = bacpac("dup", "-F", config, "-i", sshd.locked_key_path, "-o", "IdentitiesOnly=yes",
                     "--json", source, f"testhost:{target}", env=bacpac_env(SSHPASS=secret),
                     timeout=FAIL_WITHIN)
    finally:
        watch.stop()
    assert watch.samples >= 3, "the process list was not sampled during the run"
    assert watch.seen == []
    for text in (run.stdout, run.stderr):
        assert secret not in text
    return run


def test_passphrase_from_sshpass_shows_nowhere(no_helper_left, sshd, small_image,
                                               tmp_path) -> None:
    target = tmp_path / "t.img"
    run = _run_with_secret(sshd, tmp_path, sshd.passphrase, small_image, target)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "ok"
    assert run.stderr.strip(), "expected log lines on stderr (not a terminal)"
    assert sha256_of(target) == sha256_of(small_image)


def test_wrong_sshpass_fails_authentication_without_showing_it(no_helper_left, sshd,
                                                               small_image, tmp_path) -> None:
    target = tmp_path / "t.img"
    run = _run_with_secret(sshd, tmp_path, "Wr0ng-passphrase-7Qz", small_image, target)
    assert_failed_in_one_line(run, "testhost", "authentication failed", sshd.locked_key_path,
                              "no passphrase in SSHPASS opens it")
    assert json.loads(run.stdout.strip().splitlines()[-1])["status"] == "error"
    assert not target.exists()


# ---- two runs onto one target -----------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_image(tmp_path_factory) -> Path:
    """16 MiB of random data: several seconds at --level 19."""
    return random_image(tmp_path_factory.mktemp("slow") / "slow.img", 16 * MiB, seed=3)


def _second_run_is_refused(sshd, source: Path, target: str, *extra: str) -> None:
    began = time.monotonic()
    first = start("dup", *sshd.cli_args(), "--no-progress", *SLOW, *extra, source,
                  f"testhost:{target}")
    try:
        wait_until(lambda: _has_data(target), 30, "data written by the first run", first)
        first.send_signal(signal.SIGSTOP)  # mid-transfer, holding the target, for as long as needed
        second = bacpac("dup", *sshd.cli_args(), "--no-progress", *extra, source,
                        f"testhost:{target}", timeout=FAIL_WITHIN)
    finally:
        first.send_signal(signal.SIGCONT)
        done = finish(first, began, timeout=60)
    assert_failed_in_one_line(second, target, "in use", code=2)
    assert done.returncode == 0, done.stderr  # and the refused run wrote nothing into it
    with open(target, "rb") as f:
        assert hashlib.sha256(f.read(os.path.getsize(source))).hexdigest() == sha256_of(source)


def _has_data(target: str) -> bool:
    """The first run holds the target: data past the first MiB (never written before the end)."""
    if target.startswith("/dev/"):
        with open(target, "rb") as f:
            f.seek(MiB)
            return f.read(MiB) != bytes(MiB)
    return os.path.exists(target) and os.stat(target).st_blocks * 512 > MiB


def test_second_run_onto_the_same_image_file_is_refused(no_helper_left, sshd, slow_image,
                                                       tmp_path) -> None:
    _second_run_is_refused(sshd, slow_image, str(tmp_path / "t.img"))


def test_second_run_onto_the_same_block_device_is_refused(no_helper_left, sshd, slow_image,
                                                         loop_device) -> None:
    device = loop_device(32 * MiB)
    _second_run_is_refused(sshd, slow_image, device, "--force")


# ---- bad command lines and configurations -----------------------------------------------------

def test_unresolvable_host_is_named_and_nothing_written(no_helper_left, sshd, small_image) -> None:
    run = bacpac("dup", *sshd.cli_args(), "--no-progress", small_image, "nohost.invalid:/tmp/x",
                 timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, "nohost.invalid", "resolve")
    assert not os.path.exists("/tmp/x")


def test_key_that_is_not_authorized_fails_authentication(no_helper_left, sshd, small_image,
                                                         tmp_path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   timeout=30)
    target = tmp_path / "t.img"
    run = bacpac("dup", "-F", client_config(sshd, tmp_path, str(key)), "--no-progress",
                 small_image, f"testhost:{target}", timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, f"{sshd.user}@testhost", "authentication failed")
    assert not target.exists()


def test_remote_target_equal_to_source_is_refused_and_untouched(no_helper_left, sshd,
                                                                small_image, tmp_path) -> None:
    source = tmp_path / "same.img"
    source.write_bytes(small_image.read_bytes())
    before = sha256_of(source)
    run = bacpac("dup", *sshd.cli_args(), "--no-progress", source, f"testhost:{source}",
                 timeout=FAIL_WITHIN)
    assert_failed_in_one_line(run, str(source), "source itself", code=2)
    assert sha256_of(source) == before


# ---- a real helper fed random frame sequences ----------------------------------------------------

FUZZ_SIZE = 256 << 10
FUZZ_CASES = 200
FUZZ_WITHIN = 20.0  # seconds for one case: a hang guard; a case takes a fraction of a second
# where a lying offset or size may point: the edges of the image, and far beyond them
EDGES = [0, 1, 4096, FUZZ_SIZE // 2, FUZZ_SIZE - 1, FUZZ_SIZE, FUZZ_SIZE + 4096, 1 << 40,
         2**63, 2**64 - 4096, 2**64 - 1]


def _fuzz_job(rng, tmp_path: Path) -> tuple[dict, bytes, set]:
    """A dup job of FUZZ_SIZE to tmp_path/t.img: plain, checked by frames with a saveset beside
    it, or a delta onto an existing image. Returns the OPEN's payload, what the target held
    before (zeros unless a delta), and the names the directory may hold afterwards."""
    target = tmp_path / "t.img"
    job = {"protocol": protocol.PROTOCOL_VERSION, "job": "dup", "path": str(target),
           "size": FUZZ_SIZE, "force": False, "verify": False, "saveset": None, "delta": None,
           "check": "sha256", "source": {}}
    kind = rng.choice(["plain", "saveset", "delta"])
    if kind == "saveset":
        job.update(check="frames", codec="zstd", saveset={
            "path": str(tmp_path / "s.bacpac"), "frame_size": 64 << 10,
            "metadata": {"kind": "disk", "size": FUZZ_SIZE}})
        return job, bytes(FUZZ_SIZE), {"t.img", "s.bacpac"}
    if kind == "delta":
        before = rng.randbytes(FUZZ_SIZE)
        target.write_bytes(before)
        job["delta"] = {"block": 4096, "segment": 64 << 10}
        return job, before, {"t.img"}
    return job, bytes(FUZZ_SIZE), {"t.img"}


def _valid_frames(rng, job: dict, before: bytes) -> tuple[list, bytes]:
    """A stream that would be accepted: four 64 KiB chunks (data, holes, matches), then END.
    Each frame is [type, payload, offset, flags, size]; returns the frames and the image."""
    frames, image = [], b""
    for offset in range(0, FUZZ_SIZE, 64 << 10):
        chunk = rng.choice(["random", "text", "hole", "match"] if job["delta"] else
                           ["random", "text", "hole"])
        if chunk == "hole":
            frames.append([protocol.HOLE, b"", offset, 0, 64 << 10])
            image += bytes(64 << 10)
        elif chunk == "match":
            frames.append([protocol.MATCH, b"", offset, 0, 64 << 10])
            image += before[offset:offset + (64 << 10)]
        else:
            data = (rng.randbytes(64 << 10) if chunk == "random"
                    else (b"fuzzed line of text\n" * 3277)[:64 << 10])
            if job["check"] == "frames":
                payload = zstandard.ZstdCompressor(write_checksum=True,
                                                   write_content_size=True).compress(data)
                frames.append([DATA, payload, offset, protocol.CODEC_ZSTD, len(data)])
            else:
                frames.append([DATA, data, offset, protocol.CODEC_RAW, len(data)])
            image += data
    end = {"bytes": FUZZ_SIZE, "sha256": hashlib.sha256(image).hexdigest()}
    frames.append([END, json.dumps(end).encode(), 0, 0, 0])
    return frames, image


def _random_control(rng) -> list:
    kind = rng.choice([OPEN, protocol.HELLO, READY, protocol.RESULT, protocol.PROGRESS,
                       protocol.DIGESTS, END, ERROR, rng.randrange(13, 256)])
    payload = rng.choice([b"{}", b'{"bytes": 262144, "sha256": "00"}', b"not json",
                          b'{"kind": "x", "message": "y"}', rng.randbytes(rng.randrange(64))])
    return [kind, payload, rng.choice(EDGES), 0, rng.choice(EDGES)]


def _mutate(rng, frames: list) -> list:
    """One lie: frames swapped, dropped, repeated; a header field, a type, a codec or a payload
    changed, cut or grown (the wire's checksums made to match again); a stray frame put in."""
    frames = [list(frame) for frame in frames]
    # half the time the last block, at the image's end, where a lie reaches past it
    at = max(0, len(frames) - 2) if rng.random() < 0.5 else rng.randrange(len(frames))
    how = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 7, 8])  # payload lies twice as often
    if how == 0 and len(frames) > 1:
        other = rng.randrange(len(frames))
        frames[at], frames[other] = frames[other], frames[at]
    elif how == 1:
        del frames[at]
    elif how == 2:
        frames.insert(at, list(frames[at]))
    elif how == 3:
        frames[at][2] = rng.choice(EDGES + [frames[at][2] + rng.choice([-1, 1, 4096])])
    elif how == 4:
        frames[at][4] = rng.choice(EDGES + [frames[at][4] + rng.choice([-1, 1, 4096])])
    elif how == 5:
        frames[at][0] = rng.choice([DATA, protocol.HOLE, protocol.MATCH, COPY, END, OPEN,
                                    rng.randrange(256)])
    elif how == 6:
        frames[at][3] = rng.randrange(256)
    elif how == 7:
        payload = frames[at][1]
        frames[at][1] = rng.choice([rng.randbytes(len(payload) or rng.randrange(1, 64)),
                                    payload[:rng.randrange(len(payload) + 1)],
                                    payload + rng.randbytes(rng.randrange(1, 8192)),
                                    payload + rng.randbytes(rng.randrange(1, 8192))])
    else:
        frames.insert(at, _random_control(rng))
    return frames


def fuzzed_stream(seed: int, tmp_path: Path) -> tuple[dict, bytes, bytes, bool, set]:
    """The job, then the bytes to send after OPEN: a valid stream given one to three lies, now
    and then a header announcing more than the cap, now and then cut short. Returns the job,
    the stream, the image a helper that accepts it must have written, whether the helper may
    end without a word (its input ended before a whole END, or the client sent ERROR), and the
    names the directory may hold."""
    rng = random.Random(seed)
    job, before, names = _fuzz_job(rng, tmp_path)
    frames, image = _valid_frames(rng, job, before)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):  # mostly one: the rest of the stream then holds
        frames = _mutate(rng, frames)
    pieces = [protocol.encode(int(t) % 256, payload, off % 2**64, flags % 256, size % 2**64)
              for t, payload, off, flags, size in frames]
    if rng.random() < 0.15:
        pieces.insert(rng.randrange(len(pieces) + 1), _signed_header(
            rng.choice([DATA, COPY, OPEN]), 0, rng.choice([2**32 - 1, protocol.MAX_PAYLOAD + 1]),
            0, rng.choice([4096, 2**40]), 0))
    stream = b"".join(pieces)
    cut = rng.random() < 0.25
    if cut:
        stream = stream[:rng.randrange(len(stream))]
    silent = cut or all(f[0] != END for f in frames) or any(f[0] == ERROR for f in frames)
    return job, stream, image, silent, names


def described_image(stream: bytes, before: Optional[bytes]) -> bytes:
    """The image a stream describes, read up to its END as the helper reads it: DATA
    decompressed, HOLE as zeros, MATCH as the target held it (`before`), COPY from earlier."""
    image, decompressor = bytearray(), codecs.Decompressor()
    for frame in _frames_of(stream):
        if frame.type == END:
            break
        if frame.type == DATA:
            image += decompressor.decompress(frame.flags, frame.payload, frame.size)
        elif frame.type == protocol.HOLE:
            image += bytes(frame.size)
        elif frame.type == protocol.MATCH:
            image += before[frame.offset:frame.offset + frame.size]
        elif frame.type == COPY:
            source = protocol.parse_copy(frame)[0]
            image += image[source:source + frame.size]
    return bytes(image)


def _frames_of(output: bytes) -> list:
    """The whole frames at the start of output (up to what the decoder refuses)."""
    decoder = protocol.Decoder()
    decoder.feed(output)
    frames = []
    try:
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    except ProtocolError:
        pass
    return frames


@pytest.mark.parametrize("seed", range(FUZZ_CASES))
def test_helper_fed_a_random_frame_sequence_refuses_it_and_writes_nothing_past_the_image(
        seed: int, tmp_path) -> None:
    """Seeded: `pytest -k 'random_frame_sequence and [SEED]'` replays one case."""
    job, stream, image, silent, names = fuzzed_stream(seed, tmp_path)
    before = (tmp_path / "t.img").read_bytes() if job["delta"] else None
    proc = subprocess.Popen(helper_argv(sys.executable, False), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(helper_payload() + protocol.encode_json(OPEN, job) + stream,
                                    timeout=FUZZ_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"seed {seed}: the helper still runs {FUZZ_WITHIN:.0f} s after its input ended")
    assert b"Traceback" not in err, err.decode(errors="replace")
    said = _frames_of(out)
    assert sum(protocol.HEADER_SIZE + len(f.payload) for f in said) == len(out), out[-200:]
    assert [f.type for f in said[:2]] == [protocol.HELLO, READY], said
    last = said[-1].type
    if last == protocol.RESULT:  # the lies made a stream the helper could not tell from a true one
        assert proc.returncode == 0
        written = (tmp_path / "t.img").read_bytes()
        assert written == described_image(stream, before), seed
        if job["check"] == "sha256":  # then it proved the whole, not frame by frame
            assert written == image, seed
    elif last == ERROR:
        assert proc.returncode == 1
        assert said[-1].json()["message"], said[-1].json()
    else:
        assert silent and proc.returncode == 1, (seed, said, proc.returncode)
    assert os.path.getsize(tmp_path / "t.img") == FUZZ_SIZE  # nothing past the image
    left = set(os.listdir(tmp_path))
    if last == protocol.RESULT and job["delta"]:
        left.discard(".t.img.bacpac-digests")  # a proven delta run keeps its digest cache
    assert left <= names
    if last != protocol.RESULT:
        assert not (tmp_path / "s.bacpac").exists()  # a saveset only once it is complete
