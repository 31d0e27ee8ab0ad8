"""bacpac copy of a large file that changed: only its changed blocks cross (docs/wire.md,
"A tree copy", BLOCKS), and a file that cannot be read does not fail the others.

Checked on the result's bytes (sha256 against the source) and on the compressed bytes that
crossed (`bytes_sent`), with random content that zstd cannot shrink, so a whole-file send
is told apart from a delta by its size alone.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from bacpac.commands.copy import CopyRequest, run_copy
from bacpac.spec import parse_endpoint
from bacpac.transport.helper import ConnectOptions
from bacpac.ui.events import Counters, JobProgress, JobStarted
from bacpac.ui.sinks import LogSink
from clirun import MiB, bacpac, random_bytes, sha256_of, transport_for
from remote_helper.jobs.copy import _ContentSender
from remote_helper.tree import delta, tar
from remote_helper.tree.entry import DIR, FILE, ROOT, entry
from remote_helper.tree.tardecode import TarDecoder
from remote_helper.wire import protocol
from remote_helper.wire.protocol import BLOCKS, DATA, END, OPEN, READY, RESULT, WANTS
from test_copy_safety import _window
from test_hostile import LocalHelper

SIZE = 8 * MiB
SPOTS = (100_000, 3 * MiB + 5, 7 * MiB + 12_345)  # three changed 4 KiB spots


class Copier:
    def __init__(self, direction: str, request: pytest.FixtureRequest) -> None:
        self.direction = direction
        self.remote = transport_for("local" if direction == "local" else "ssh", request)

    def run(self, src: Path, dest: Path, *extra: object):
        contents = f"{src}/"
        source = self.remote.target(contents) if self.direction == "pull" else contents
        target = self.remote.target(str(dest)) if self.direction == "push" else str(dest)
        return bacpac("copy", *self.remote.args(), "--no-progress", "--json", *extra, source,
                      target)

    def ok(self, src: Path, dest: Path, *extra: object) -> dict:
        run = self.run(src, dest, *extra)
        assert run.returncode == 0, run.stderr
        return run.summary


@pytest.fixture(params=["local", "push", "pull"])
def copier(request: pytest.FixtureRequest, no_helper_left) -> Copier:
    return Copier(request.param, request)


def change(path: Path, spots, seed: int) -> None:
    with open(path, "r+b") as f:
        for n, at in enumerate(spots):
            f.seek(at)
            f.write(random_bytes(4096, seed + n))
    os.utime(path, ns=(1, 1_700_000_000_123_456_789 + seed))


def two_trees(tmp_path: Path, size: int = SIZE) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big").write_bytes(random_bytes(size, 1))
    (src / "small").write_bytes(b"small file\n")
    return src, dst


def test_a_changed_large_file_sends_only_its_changed_blocks(copier: Copier,
                                                            tmp_path: Path) -> None:
    src, dst = two_trees(tmp_path)
    first = copier.ok(src, dst)
    assert first["bytes_sent"] > SIZE  # the first copy sends it whole
    change(src / "big", SPOTS, 10)
    summary = copier.ok(src, dst)
    assert sha256_of(dst / "big") == sha256_of(src / "big")
    assert (dst / "big").stat().st_mtime_ns == (src / "big").stat().st_mtime_ns
    assert summary["files_sent"] == 1
    assert summary["delta_files"] == 1
    assert summary["bytes_sent"] < 3 * 2 * 64 * 1024 + 64 * 1024  # at most 2 blocks a spot
    assert not [p for p in os.listdir(dst) if "bacpac-" in p]


def test_whole_file_sends_the_changed_file_whole(tmp_path: Path, no_helper_left) -> None:
    src, dst = two_trees(tmp_path)
    assert bacpac("copy", "--no-progress", f"{src}/", dst).returncode == 0
    change(src / "big", SPOTS, 20)
    run = bacpac("copy", "--no-progress", "--json", "--whole-file", f"{src}/", dst)
    assert run.returncode == 0, run.stderr
    assert run.summary["bytes_sent"] > SIZE
    assert run.summary["delta_files"] == 0
    assert sha256_of(dst / "big") == sha256_of(src / "big")


@pytest.mark.parametrize("new_size", [5 * MiB + 777, 11 * MiB + 3])
def test_a_shrunk_or_grown_file_is_rebuilt_exactly(tmp_path: Path, new_size: int,
                                                   no_helper_left) -> None:
    src, dst = two_trees(tmp_path)
    assert bacpac("copy", "--no-progress", f"{src}/", dst).returncode == 0
    old = (src / "big").read_bytes()
    data = old[:new_size] if new_size < len(old) else old + random_bytes(new_size - len(old), 3)
    (src / "big").write_bytes(data)
    run = bacpac("copy", "--no-progress", "--json", f"{src}/", dst)
    assert run.returncode == 0, run.stderr
    assert sha256_of(dst / "big") == sha256_of(src / "big")
    assert (dst / "big").stat().st_size == new_size
    assert run.summary["delta_files"] == 1
    assert run.summary["bytes_sent"] < max(0, new_size - SIZE) + 256 * 1024


# ---- the old file changes between its digests and the delta: caught, never a wrong file ------

def _writer(dest: Path) -> LocalHelper:
    helper = LocalHelper()
    helper.send(protocol.encode_json(OPEN, {
        "protocol": protocol.PROTOCOL_VERSION, "job": "write_tree", "dest": str(dest),
        "roots": [{"path": "/src/", "kind": "d", "contents": True, "name": "src"}],
        "source": {}, "delete": False, "dry_run": False, "xattrs": False, "excludes": []}))
    assert helper.recv().type == READY
    return helper


def _old_digests(helper: LocalHelper, index: int) -> bytes:
    """The BLOCKS the writer sends for entry `index`, once all have come."""
    got = b""
    while True:
        frame = helper.answer()
        assert frame.type == BLOCKS and frame.offset == index, frame
        first, digests = delta.parse_blocks(frame.payload)
        assert first == len(got) // 32
        got += digests
        if len(got) // 32 >= delta.block_count(frame.size):
            return got


def _delta_stream(src: Path, item, theirs: bytes) -> bytes:
    """The tar stream the reading side sends for one wanted file, made by its own code."""
    fd = os.open(src, os.O_RDONLY)
    try:
        member = delta.delta_entry(fd, item, theirs)
        assert member.xattrs, "the test wants a delta member"
        data = tar.encode_header(member) + tar.sparse_map(member)
        for offset, length in member.extents:
            data += os.pread(fd, length, offset)
    finally:
        os.close(fd)
    return data + tar.padding(tar.member_data_size(member)) + tar.END_OF_ARCHIVE


@pytest.mark.parametrize("meanwhile", ["changed", "changed-aged", "shrunk", "removed"])
def test_an_old_file_changed_during_the_delta_is_not_used(tmp_path: Path,
                                                          meanwhile: str) -> None:
    """"changed": the old file was written just before, so the writer reads the rebuilt file
    back to check it; "changed-aged": an old file it trusts by its stat, which the change
    alters (a file's ctime cannot be set back: the test waits for it to age)."""
    src, dest = tmp_path / "new", tmp_path / "dst"
    dest.mkdir()
    old = random_bytes(2 * MiB, 5)
    (dest / "big").write_bytes(old)
    new = bytearray(old)
    new[70_000:70_004] = b"new!"
    src.write_bytes(bytes(new))
    if meanwhile == "changed-aged":
        time.sleep(delta.RECENT + 0.2)
    item = entry(b"big", FILE, 0o644, size=len(new), mtime_ns=1_600_000_000 * 10**9)
    helper = _writer(dest)
    try:
        helper.send(_window(entry(ROOT, DIR, 0o755), item))
        wants = helper.answer()
        assert wants.type == WANTS and wants.json()["delta"] == [1]
        theirs = _old_digests(helper, 1)
        if meanwhile.startswith("changed"):  # a block the delta takes from the old file
            with open(dest / "big", "r+b") as f:
                f.seek(MiB)
                f.write(b"someone else")
        elif meanwhile == "shrunk":
            os.truncate(dest / "big", MiB)
        else:
            (dest / "big").unlink()
        left = (dest / "big").read_bytes() if meanwhile != "removed" else None
        data = _delta_stream(src, item, theirs)
        helper.send(protocol.encode(DATA, data, 0, protocol.CODEC_RAW, len(data)))
        helper.send(protocol.encode_json(END, {"bytes": len(data),
                                               "sha256": hashlib.sha256(data).hexdigest()}))
        result = helper.answer()
        assert result.type == RESULT, result
        assert helper.proc.wait(timeout=10) == 0
    finally:
        helper.close()
    counts = result.json()
    assert counts["files_failed"] == 1 and counts["files_sent"] == 0
    (path, cause), = counts["failed"]
    assert path.endswith("/big") and "changed" in cause or "went away" in cause
    assert sorted(os.listdir(dest)) == ([] if left is None else ["big"])  # no temporary file
    if left is not None:
        assert (dest / "big").read_bytes() == left  # the old file, as it was left: never a mix


# ---- a source file that cannot be read: the others are copied, exit 1, each one named ------

PY_NOBODY = "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {python} \"$@\"\n"


@pytest.fixture
def nobody_dir():
    """A directory user nobody can write, and a python that runs helpers as nobody (so that
    mode 000 stops a read, as it does not for root): the reading side's own refusal."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the helpers as another user")
    top = Path(tempfile.mkdtemp(prefix="bacpac-nobody-", dir="/tmp"))
    os.chmod(top, 0o755)
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for user nobody")
    wrapper = top / "py-nobody"
    wrapper.write_text(PY_NOBODY.format(python=python))
    wrapper.chmod(0o755)
    yield top
    shutil.rmtree(top)


@pytest.mark.parametrize("direction", ["local", "push", "pull"])
def test_an_unreadable_file_is_reported_and_the_others_copied(
        nobody_dir: Path, direction: str, request: pytest.FixtureRequest,
        no_helper_left) -> None:
    src, dst = nobody_dir / "src", nobody_dir / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"a\n")
    (src / "sub" / "secret").write_bytes(b"s" * 5000)
    (src / "z").write_bytes(random_bytes(3 * MiB, 9))
    (src / "sub" / "secret").chmod(0)
    for p in (src, src / "sub", src / "a", src / "z", src / "sub" / "secret"):
        os.chown(p, 65534, 65534)
    dst.mkdir()
    os.chown(dst, 65534, 65534)
    copier = Copier(direction, request)
    run = copier.run(src, dst, "--remote-python", nobody_dir / "py-nobody")
    line = run.one_error_line(1, "1 file", "not copied", alone=False)
    assert run.stderr.splitlines()[-1] == line  # the last line counts them
    warning = [w for w in run.stderr.splitlines() if w.startswith("bacpac: warning:")]
    secret = f"{src}/sub/secret"
    named = copier.remote.target(secret) if direction == "pull" else secret  # HOST:PATH
    assert warning == [f"bacpac: warning: {named}: cannot read: Permission denied"]
    assert run.summary["status"] == "error"
    assert run.summary["files_failed"] == 1
    assert run.summary["failed"] == [f"{named}: cannot read: Permission denied"]
    assert (dst / "a").read_bytes() == b"a\n"
    assert sha256_of(dst / "z") == sha256_of(src / "z")
    assert os.listdir(dst / "sub") == []  # nothing half-written for it


def test_an_unlistable_directory_is_reported_and_the_others_copied(nobody_dir: Path,
                                                                   no_helper_left) -> None:
    src, dst = nobody_dir / "src", nobody_dir / "dst"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "inside").write_bytes(b"x")
    (src / "secret").write_bytes(b"s")
    (src / "a").write_bytes(b"a\n")
    for p in (src, src / "locked", src / "locked" / "inside", src / "secret", src / "a"):
        os.chown(p, 65534, 65534)
    (src / "locked").chmod(0o300)  # may be entered, not listed
    (src / "secret").chmod(0)
    dst.mkdir()
    os.chown(dst, 65534, 65534)
    run = bacpac("copy", "--no-progress", "--json", "--remote-python", nobody_dir / "py-nobody",
                 f"{src}/", dst)
    line = run.one_error_line(1, alone=False)
    assert line == (f"bacpac: 2 files or directories of {dst} were not copied (see the "
                    "warnings above); the others were")
    assert sorted(run.summary["failed"]) == [f"{src}/locked: Permission denied",
                                             f"{src}/secret: cannot read: Permission denied"]
    assert (dst / "a").read_bytes() == b"a\n" and os.listdir(dst / "locked") == []


def test_a_file_gone_before_it_is_read_becomes_a_member_that_says_why(tmp_path: Path) -> None:
    """The reading side's sender, given a file the walk saw and that is gone since."""
    sent = []

    class Out:
        def send(self, data: bytes) -> None:
            sent.append(data)

    sender = _ContentSender(Out(), protocol.CODEC_ZLIB, 1)  # type: ignore[arg-type]
    (tmp_path / "kept").write_bytes(b"kept\n")
    sender.add(os.fsencode(tmp_path / "gone"), entry(b"gone", FILE, size=7))
    sender.add(os.fsencode(tmp_path / "kept"), entry(b"kept", FILE, size=5))
    sender.finish()
    sender.close()
    decoder = protocol.Decoder()
    decoder.feed(b"".join(sent))
    stream = b""
    while (frame := decoder.next_frame()) is not None:
        stream += zlib.decompress(frame.payload)
    events = TarDecoder()
    events.feed(stream)
    seen = []
    while (event := events.next_event()) is not None:
        seen.append(event)
    gone, kept = [e[1] for e in seen if e[0] == "entry"]
    assert delta.marks(gone.xattrs) == (None, "cannot read: No such file or directory")
    assert gone.size == 0 and delta.marks(kept.xattrs) == (None, None)
    assert [e[2] for e in seen if e[0] == "data"] == [b"kept\n"]
    assert sender.failed == [[str(tmp_path / "gone"), "cannot read: No such file or directory"]]


# ---- the progress display learns the total to send -------------------------------------------

def test_the_progress_learns_the_bytes_to_send(tmp_path: Path, no_helper_left) -> None:
    """JobStarted cannot know a copy's total (the walk has not begun): each WANTS adds its
    files' bytes, so the bar and the ETA have a total; a delta's reused bytes count as done."""
    src, dst = two_trees(tmp_path)
    (src / "more").write_bytes(random_bytes(3 * MiB, 4))
    events: list = []

    class Record:
        def emit(self, event: object) -> None:
            events.append(event)

        def close(self) -> None:
            pass

    def copy() -> list[JobProgress]:
        events.clear()
        request = CopyRequest(sources=(parse_endpoint(f"{src}/"),), dest=parse_endpoint(str(dst)))
        run_copy(request, ConnectOptions(), Record())
        return [e for e in events if isinstance(e, JobProgress)]

    first = copy()
    total = SIZE + 3 * MiB + len(b"small file\n")
    assert max(p.bytes_total for p in first) == total
    assert first[-1].bytes_total == total
    assert total <= max(p.bytes_read for p in first) < total + 64 * 1024  # tar headers
    change(src / "big", SPOTS, 30)
    again = copy()
    assert again[-1].bytes_total == SIZE
    assert SIZE <= max(p.bytes_read for p in again) < SIZE + 64 * 1024  # reused counted


# ---- the delta's check, on its own -------------------------------------------------------------

def test_the_check_of_a_rebuilt_file_is_the_readers(tmp_path: Path) -> None:
    """plan() on the source and rebuilt() on the file built from the old one agree, whether
    the old file's digests are trusted (reused blocks not read) or not (every block read);
    a reused block that differs is caught when not trusted."""
    old = random_bytes(3 * MiB + 1000, 7)
    new = bytearray(old)
    new[200_000:200_010] = b"0123456789"
    new += b"grown"
    theirs = b"".join(hashlib.sha256(old[i:i + delta.BLOCK]).digest()
                      for i in range(0, len(old), delta.BLOCK))
    (tmp_path / "new").write_bytes(bytes(new))
    fd = os.open(tmp_path / "new", os.O_RDONLY)
    try:
        planned = delta.plan(fd, len(new), theirs)
        assert planned is not None
        runs, check = planned
        assert runs == [(196608, 65536), (3 * MiB, 1005)]
        assert delta.rebuilt(fd, len(new), tuple(runs), theirs) == check
        assert delta.rebuilt(fd, len(new), tuple(runs), b"") == check
    finally:
        os.close(fd)
    new[MiB] ^= 1  # a reused block that is not what the old file's digest says
    (tmp_path / "new").write_bytes(bytes(new))
    fd = os.open(tmp_path / "new", os.O_RDONLY)
    try:
        assert delta.rebuilt(fd, len(new), tuple(runs), b"") != check
    finally:
        os.close(fd)


def test_the_log_lines_show_the_share_of_a_total_learnt_mid_job() -> None:
    out = io.StringIO()
    ticks = iter(range(100))
    sink = LogSink(out, clock=lambda: float(next(ticks)), interval=0.5)
    sink.emit(JobStarted("job", "copy", "src/", "dst", None, 0))
    counters = Counters("job", sink)
    counters.add_total(8 * MiB)
    counters.add(read=2 * MiB, sent=MiB)
    assert "25% 2.0 MiB of 8.0 MiB" in out.getvalue().splitlines()[-1]


def test_an_unreadable_file_and_its_hard_link_are_left_out_of_dest_and_the_saveset(
        nobody_dir: Path, no_helper_left) -> None:
    out = nobody_dir / "out"
    src, dst, saveset = nobody_dir / "src", out / "dst", out / "tree.bps"
    src.mkdir()
    out.mkdir()
    os.chown(out, 65534, 65534)
    (src / "a").write_bytes(b"a\n")
    (src / "secret").write_bytes(b"s" * 100)
    os.link(src / "secret", src / "twin")
    for p in (src, src / "a", src / "secret"):
        os.chown(p, 65534, 65534)
    (src / "secret").chmod(0)
    run = bacpac("copy", "--no-progress", "--json", "--remote-python", nobody_dir / "py-nobody",
                 "--saveset", saveset, f"{src}/", dst)
    run.one_error_line(1, "1 file", "not copied", alone=False)
    assert sorted(os.listdir(dst)) == ["a"]
    listed = subprocess.run(["tar", "--zstd", "-tf", str(saveset)], capture_output=True,
                            text=True, check=True).stdout.split()
    assert sorted(listed) == ["./", "a"]
    assert bacpac("verify", "--no-progress", saveset).returncode == 0
