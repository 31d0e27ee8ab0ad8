"""The sender's pacing: which way the compression level moves, and --bwlimit (by a fake clock,
and end to end: the bytes that cross a TCP proxy over time); and the blocks compressed ahead
before a climb, compressed again at the level the climb reached.

A fake clock stands in for time, and fake sends and compressor waits last as long as each case
needs; thread_time is not faked, and the fake sends spend no CPU, so their whole wall time
counts as blocked on the link.
"""
from __future__ import annotations

import os

import pytest
import zstandard

from bacpac.engine.pacing import HIGHEST, LOCAL_LEVEL, LOWEST, Pacer, _step, parse_rate
from bacpac.engine.pipeline import RECOMPRESS_AT, ImageStream, StreamSettings
from clirun import MiB, bacpac, digest_of, sha256_of, wait_until, write_file
from test_directio import Collect, stream


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


class Level:
    def __init__(self, level: int) -> None:
        self.level = level


def run(window: dict, *, start: int = 1, adaptive: bool = True, bwlimit=None,
        idle_share: float | None = 0.0, seconds: float = 3.0) -> tuple[Level, FakeClock]:
    """Send 1 MiB blocks for `seconds`; each block waits `wait` on the compressor and `send`
    on the channel; the helper is idle for `idle_share` of the time (None: it never said)."""
    clock, compressor = FakeClock(), Level(start)
    pacer = Pacer(compressor, adaptive, bwlimit,
                  helper_idle=lambda: idle_share,
                  clock=clock, sleep=clock.sleep)

    def advance(by: float):
        def step() -> None:
            clock.now += by
        return step

    while clock.now < seconds:
        pacer.compressed(advance(window["wait"]))
        pacer.send(advance(window["send"]), window.get("bytes", 1 << 20))
    return compressor, clock


def test_waiting_on_the_compressor_lowers_the_level_into_the_fast_levels() -> None:
    compressor, _ = run({"wait": 0.05, "send": 0.01}, start=1)
    assert compressor.level < 0


def test_a_slow_link_with_an_idle_helper_raises_the_level() -> None:
    # 1 MiB per 0.08 s blocked send: about 12 MB/s, a 100 Mbit/s link.
    compressor, _ = run({"wait": 0.0, "send": 0.08}, start=1, idle_share=0.9)
    assert compressor.level == HIGHEST


def test_a_busy_helper_holds_the_level(  # the receiver is the limit: more CPU will not help it
) -> None:
    compressor, _ = run({"wait": 0.0, "send": 0.08}, start=1, idle_share=0.05)
    assert compressor.level == 1


def test_a_fast_wire_holds_the_level_even_when_blocked() -> None:
    # 1 MiB per 0.01 s: 100 MB/s is no slow link; blocking there is the SSH layer's own CPU.
    compressor, _ = run({"wait": 0.0, "send": 0.01}, start=1, idle_share=0.9)
    assert compressor.level == 1


def test_a_fixed_level_never_moves() -> None:
    compressor, _ = run({"wait": 0.05, "send": 0.01}, start=5, adaptive=False)
    assert compressor.level == 5


def test_bwlimit_spreads_the_bytes_sent_over_the_time_the_cap_gives_them() -> None:
    clock = FakeClock()
    pacer = Pacer(Level(1), False, 10 << 20, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        pacer.send(lambda: None, 1 << 20)  # a send that takes no time: all of it is pacing
    assert clock.now == pytest.approx(2.0)  # 20 MiB at 10 MiB/s


@pytest.mark.parametrize("level, by, expected", [
    (1, -1, -1), (-1, 1, 1), (-1, 3, 3), (-2, 3, 2), (2, -2, -1), (LOWEST, -1, LOWEST),
    (HIGHEST - 1, 3, HIGHEST),
])
def test_step_skips_zstds_default_level_zero(level: int, by: int, expected: int) -> None:
    assert _step(level, by) == expected


@pytest.mark.parametrize("text, rate", [
    ("5000", 5000 * 1024), ("10M", 10 << 20), ("1.5m", 1.5 * (1 << 20)), ("2G", 2 << 30),
    ("512K", 512 << 10), ("10MB/s", 10 << 20),
])
def test_parse_rate_reads_rsyncs_bwlimit(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0", "-1M", "fast", ""])
def test_parse_rate_refuses_what_is_no_rate(text: str) -> None:
    with pytest.raises((ValueError, IndexError)):
        parse_rate(text)


def test_blocks_are_counted_at_the_level_they_were_compressed_at() -> None:
    # A block compressed ahead at the start level and sent after a raise counts at its own.
    clock, compressor = FakeClock(), Level(9)
    pacer = Pacer(compressor, False, clock=clock, sleep=clock.sleep)
    pacer.send(lambda: None, 100, level=3)
    pacer.send(lambda: None, 100)
    assert pacer.blocks_at == {3: 1, 9: 1}


class ClimbAfterFirstBlock(Collect):
    """Rebuilds the image; at its first block, once the reader has filled its queue and the
    pool compressed it all at the start level, moves the level to `climb_to`, as the pacer does
    when a slow link shows; and keeps each payload, to compare with a compression at a level."""

    def __init__(self, size, stream: ImageStream, climb_to: int) -> None:
        super().__init__(size)
        self.stream, self.climb_to, self.payloads = stream, climb_to, {}

    def block(self, offset, size, flags, payload):
        if not self.payloads:
            items = self.stream._reader.items
            # The climb comes once all 11 of the reader's buffers (2 threads; this block's went
            # back before it was handed here) hold blocks queued and compressed at the start
            # level. The reader then waits for a buffer, so the queue holds still.
            wait_until(lambda: items.qsize() == 11 and all(
                item.compressed.done() for item in list(items.queue)), 10,
                "11 blocks queued and compressed")
            self.stream._compressor.level = self.climb_to
        self.payloads[offset] = payload
        super().block(offset, size, flags, payload)


def text_image(path, blocks: int) -> bytes:
    """An image of `blocks` 4 MiB blocks of compressible, non-repeating text."""
    lines = b"".join(b"%08d the quick brown fox %d jumps over %x lazy dogs\n" % (n, n * 7, n * 13)
                     for n in range(blocks * (4 * MiB) // 48 + 1))
    data = lines[:blocks * 4 * MiB]
    write_file(path, len(data), {0: data})
    return data


@pytest.mark.parametrize("climb_to,again", [(RECOMPRESS_AT + 3, True), (RECOMPRESS_AT - 1, False)])
def test_blocks_compressed_before_a_climb_are_compressed_again_at_its_level(tmp_path, climb_to,
                                                                          again) -> None:
    data = text_image(tmp_path / "s.img", 16)
    settings = StreamSettings(threads=2, level=3, adaptive=False)
    fd = os.open(tmp_path / "s.img", os.O_RDONLY)
    try:
        image = ImageStream(fd, len(data), settings)
        try:
            sink = ClimbAfterFirstBlock(len(data), image, climb_to)
            result = image.send(sink)
        finally:
            image.close()
    finally:
        os.close(fd)
    assert bytes(sink.image) == data and result.digest == digest_of(tmp_path / "s.img")
    second = data[4 * MiB:8 * MiB]  # in the queue, compressed at 3, when the level moved
    at_climb = zstandard.ZstdCompressor(level=climb_to, write_checksum=True,
                                        write_content_size=True).compress(second)
    if again:
        # only the block already taken goes at the start level
        assert result.levels == {3: 1, climb_to: 15}
        assert sink.payloads[4 * MiB] == at_climb
    else:
        # below RECOMPRESS_AT, what the queue holds goes as it was compressed
        assert result.levels[3] > 1
        assert sink.payloads[4 * MiB] != at_climb


@pytest.mark.parametrize("settings,level", [
    (StreamSettings(level=3), LOCAL_LEVEL),
    (StreamSettings(level=3, bwlimit=1e6), 3),  # a capped link is not free: from the start level
    (StreamSettings(level=5, adaptive=False), 5),  # --level
])
def test_a_stream_to_this_host_compresses_from_the_lowest_level_unless_told_otherwise(
        tmp_path, settings, level) -> None:
    text_image(tmp_path / "s.img", 2)
    _, result = stream(str(tmp_path / "s.img"), settings, here=True)
    assert result.levels == {level: 2}


# ---- --bwlimit on the wire -------------------------------------------------------------------

CAP = 4 << 20  # bytes/s: --bwlimit 4M


def steady_rate(timeline: list[tuple[float, int]], total: int) -> float:
    """Bytes/s between the moments a quarter and nine tenths of `total` had crossed: past the
    handshake, the helper's shipping and the first window's burst, short of the end."""
    def crossed(share: float) -> tuple[float, int]:
        return next((t, n) for t, n in timeline if n >= share * total)

    (t0, n0), (t1, n1) = crossed(0.25), crossed(0.9)
    return (n1 - n0) / (t1 - t0)


def test_bwlimit_holds_the_bytes_on_the_wire_to_the_cap(sshd, tcp_proxy, tmp_path,
                                                       no_helper_left) -> None:
    """What crosses a TCP proxy between the client and sshd, over time: never 10% over the cap.
    Random data, so compression cannot make the payload smaller than the image; 256 KiB blocks,
    so that the pacer's steps are fine beside the stretch measured."""
    size = 16 * MiB
    source = write_file(tmp_path / "source.img", size, {0: os.urandom(size)})
    target = tmp_path / "copy.img"
    proxy = tcp_proxy()
    run = bacpac("dup", *proxy.ssh_args(sshd), "--no-progress", "--json", "--level", "1",
                 "--block-size", "256K", "--bwlimit", "4M", source, f"testhost:{target}")
    assert run.returncode == 0, run.stderr
    assert sha256_of(target) == sha256_of(source)
    assert proxy.bytes_up >= size  # incompressible: every byte of the image crossed
    rate = steady_rate(proxy.timeline, proxy.bytes_up)
    # Over the cap is the fault this test exists for, and is never the machine's doing; under
    # it, a loaded CI machine may simply not keep up, so only a pacer that holds the link to
    # half its cap fails.
    assert rate <= 1.1 * CAP, f"{rate / MiB:.2f} MiB/s on the wire, cap 4 MiB/s"
    assert rate >= 0.5 * CAP, f"{rate / MiB:.2f} MiB/s on the wire, cap 4 MiB/s"
