"""The sinks: rich display, log lines, JSON summaries, and the choice between them."""
from __future__ import annotations

import json
import re
import threading
from io import StringIO

from rich.console import Console

from bacpac.ui.events import (
    Counters,
    JobFinished,
    JobMessage,
    JobProgress,
    JobStarted,
    JobSummary,
)
from bacpac.ui.live import RichSink
from bacpac.ui.sinks import (
    JsonSink,
    LogSink,
    TeeSink,
    WarningSink,
    make_sink,
)
from bacpac.ui.text import human_duration, human_rate, human_size, result_line

GIB = 1024**3
MIB = 1024**2
SHA = "ab12cd34ef56" + "0" * 52


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TtyIO(StringIO):
    def isatty(self) -> bool:
        return True


def started(job: str = "j1", total: int = 2 * GIB) -> JobStarted:
    return JobStarted(job, "dup", "disk.img", "host:/dev/sdb", None, total)


def ok_summary() -> JobSummary:
    return JobSummary("dup", "disk.img", "host:/dev/sdb", saveset="/srv/disk.bacpac",
                      status="ok", bytes_total=2 * GIB, bytes_read=2 * GIB,
                      bytes_sent=812 * MIB, bytes_written=2 * GIB, seconds=6.1, sha256=SHA,
                      digest=SHA[::-1], digest_algorithm="sha256-1m",
                      extra={"compression": "zstd"})


def failed_summary() -> JobSummary:
    return JobSummary("dup", "disk.img", "host:/dev/sdb", bytes_total=2 * GIB,
                      bytes_read=GIB, error="host: /dev/sdb: No space left on device")


def rich_console() -> Console:
    return Console(file=StringIO(), force_terminal=True, width=120, record=True)


def result_lines(console: Console) -> list[str]:
    """The ✓/✗ lines of the recorded output, which also holds the display's redraws (the
    cursor moves that erase them are not recorded, so a redraw may prefix a line)."""
    return re.findall(r"[✓✗].*", console.export_text())


def test_format_helpers_use_binary_sizes_and_decimal_rates() -> None:
    assert human_size(0) == "0 B"
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(2 * GIB) == "2.0 GiB"
    assert human_rate(330_000_000) == "330.0 MB/s"
    assert human_duration(6.14) == "6.1 s"
    assert human_duration(125) == "2 min 05 s"
    assert human_duration(3720) == "1 h 02 min"


def test_rich_final_line_names_source_target_sizes_and_hash() -> None:
    console = rich_console()
    sink = RichSink(console, clock=FakeClock())
    sink.emit(started())
    sink.emit(JobProgress("j1", GIB, 400 * MIB, GIB))
    sink.emit(JobFinished("j1", ok_summary()))
    sink.close()
    [line] = result_lines(console)
    assert line.startswith("✓ disk.img → host:/dev/sdb: 2.0 GiB in 6.1 s")
    assert "sent 812.0 MiB" in line
    assert "sha256-1m 000000000000…, sha256 ab12cd34ef56…" in line
    assert sink.snapshot("j1") is None  # the row is gone once the job is done


def test_final_line_says_what_the_target_copied_from_itself_only_when_it_did() -> None:
    summary = ok_summary()
    assert "copied" not in result_line(summary)
    summary.extra["bytes_copied"] = 300 * MIB
    assert "sent 812.0 MiB, 300.0 MiB copied on the target, saveset" in result_line(summary)


def test_rich_failed_job_shows_cross_and_error() -> None:
    console = rich_console()
    sink = RichSink(console, clock=FakeClock())
    sink.emit(started())
    sink.emit(JobFinished("j1", failed_summary()))
    sink.close()
    assert result_lines(console) == [
        "✗ disk.img → host:/dev/sdb: host: /dev/sdb: No space left on device"]


def test_rich_row_shows_wire_bytes_and_ratio() -> None:
    console = rich_console()
    sink = RichSink(console, clock=FakeClock())
    sink.emit(started())
    sink.emit(JobProgress("j1", GIB, 512 * MIB, 0))
    sink.close()  # the final refresh renders the row before the transient display goes
    text = console.export_text()
    assert "1.0/2.0 GiB" in text
    assert "sent 512.0 MiB (2.0×)" in text


def test_rich_row_of_a_fan_out_shows_the_ratio_of_its_one_stream() -> None:
    console = rich_console()
    sink = RichSink(console, clock=FakeClock())
    sink.emit(started())
    sink.emit(JobProgress("j1", GIB, 1024 * MIB, 0, streams=2))  # 512 MiB to each of 2 hosts
    sink.close()
    assert "sent 1.0 GiB (2.0×)" in console.export_text()


def test_rich_prints_messages_above_display() -> None:
    console = rich_console()
    sink = RichSink(console, clock=FakeClock())
    sink.emit(started())
    sink.emit(JobMessage("j1", "warning", "/dev/sda1 is mounted read-write"))
    sink.close()
    assert "warning: /dev/sda1 is mounted read-write" in console.export_text()


def test_rich_sink_is_thread_safe_under_many_events() -> None:
    sink = RichSink(rich_console(), clock=FakeClock())
    jobs = ["a", "b"]
    for job in jobs:
        sink.emit(started(job, total=40_000))
    counters = {job: Counters(job, sink) for job in jobs}
    errors: list[BaseException] = []

    def hammer(job: str) -> None:
        try:
            for _ in range(10_000):
                counters[job].add(read=1, sent=1)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(job,)) for job in jobs * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for job in jobs:
        assert sink.snapshot(job) == JobProgress(job, 20_000, 20_000, 0)
        sink.emit(JobFinished(job, ok_summary()))
    sink.close()


def test_log_sink_writes_start_paced_progress_warning_and_result() -> None:
    stream = StringIO()
    clock = FakeClock()
    sink = LogSink(stream, clock=clock, interval=5.0)
    sink.emit(started())
    for step in range(1, 21):  # 20 events over 10 s: two intervals
        clock.advance(0.5)
        sink.emit(JobProgress("j1", step * 50 * MIB, step * 20 * MIB, 0))
    sink.emit(JobMessage("j1", "warning", "source is mounted read-write"))
    sink.emit(JobFinished("j1", ok_summary()))
    sink.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[0].endswith("dup disk.img → host:/dev/sdb: started, 2.0 GiB")
    assert "24% 500.0 MiB of 2.0 GiB, sent 200.0 MiB, 104.9 MB/s" in lines[1]
    assert "49% 1000.0 MiB of 2.0 GiB" in lines[2]
    assert lines[3].endswith("disk.img → host:/dev/sdb: warning: source is mounted read-write")
    assert "✓ disk.img → host:/dev/sdb: 2.0 GiB in 6.1 s" in lines[4]
    assert all(line[:4].isdigit() and line[10] == "T" for line in lines)  # ISO timestamp


def test_log_sink_final_line_carries_error() -> None:
    stream = StringIO()
    sink = LogSink(stream, clock=FakeClock())
    sink.emit(started())
    sink.emit(JobFinished("j1", failed_summary()))
    assert stream.getvalue().splitlines()[-1].endswith(
        "✗ disk.img → host:/dev/sdb: host: /dev/sdb: No space left on device")


def test_json_sink_prints_one_line_per_finished_job_with_all_fields() -> None:
    stream = StringIO()
    sink = JsonSink(stream)
    sink.emit(started())
    sink.emit(JobProgress("j1", GIB, MIB, GIB))
    sink.emit(JobMessage("j1", "info", "verifying"))
    sink.emit(JobFinished("j1", ok_summary()))
    sink.emit(JobFinished("j2", failed_summary()))
    sink.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "command": "dup", "status": "ok", "source": "disk.img", "target": "host:/dev/sdb",
        "saveset": "/srv/disk.bacpac", "bytes_total": 2 * GIB, "bytes_read": 2 * GIB,
        "bytes_sent": 812 * MIB, "bytes_written": 2 * GIB, "seconds": 6.1, "sha256": SHA,
        "digest": SHA[::-1], "digest_algorithm": "sha256-1m",
        "error": None, "warnings": [], "compression": "zstd",
    }
    assert second["status"] == "error"
    assert second["error"] == "host: /dev/sdb: No space left on device"
    assert lines[0] == json.dumps(first, sort_keys=True)


def test_tee_sink_fans_out_to_every_sink() -> None:
    first, second = StringIO(), StringIO()
    sink = TeeSink(JsonSink(first), JsonSink(second))
    sink.emit(JobFinished("j1", ok_summary()))
    sink.close()
    assert first.getvalue() == second.getvalue() != ""


def test_make_sink_picks_rich_on_a_terminal() -> None:
    assert isinstance(make_sink(progress=True, json_output=False, stderr=TtyIO()), RichSink)


def test_make_sink_picks_log_lines_when_not_a_terminal() -> None:
    assert isinstance(make_sink(progress=True, json_output=False, stderr=StringIO()), LogSink)


def test_make_sink_no_progress_shows_warnings_alone() -> None:
    stderr = StringIO()
    sink = make_sink(progress=False, json_output=False, stderr=stderr)
    assert isinstance(sink, WarningSink)
    sink.emit(started())
    sink.emit(JobMessage("j1", "info", "comparing"))
    sink.emit(JobMessage("j1", "warning", "disk.img is mounted read-write on /mnt"))
    sink.emit(JobFinished("j1", ok_summary()))
    assert stderr.getvalue() == "bacpac: warning: disk.img is mounted read-write on /mnt\n"


def test_make_sink_json_alone_and_with_display() -> None:
    stdout = StringIO()
    alone = make_sink(progress=False, json_output=True, stderr=TtyIO(), stdout=stdout)
    assert [type(sink) for sink in alone.sinks] == [WarningSink, JsonSink]
    both = make_sink(progress=True, json_output=True, stderr=TtyIO(), stdout=stdout)
    assert isinstance(both, TeeSink)
    assert [type(sink) for sink in both.sinks] == [RichSink, JsonSink]


def test_delta_progress_shows_blocks_compared_and_sent_in_log_lines() -> None:
    stream, clock = StringIO(), FakeClock()
    sink = LogSink(stream, clock=clock, interval=1.0)
    sink.emit(started())
    clock.advance(2.0)
    sink.emit(JobProgress("j1", 64 * MIB, 1 * MIB, 0, blocks_compared=1024, blocks_sent=12))
    assert "sent 1.0 MiB, 12 of 1024 blocks sent" in stream.getvalue()


def test_delta_progress_shows_blocks_compared_and_sent_on_the_display() -> None:
    console = Console(file=TtyIO(), force_terminal=True, width=160, record=True)
    sink = RichSink(console)
    sink.emit(started())
    sink.emit(JobProgress("j1", 64 * MIB, 1 * MIB, 0, blocks_compared=1024, blocks_sent=12))
    console.print(sink._progress)  # one render of the live rows, as the terminal would show
    assert "12 of 1024 blocks sent" in console.export_text()
    sink.close()


def test_full_copy_progress_shows_no_block_counts() -> None:
    stream, clock = StringIO(), FakeClock()
    sink = LogSink(stream, clock=clock, interval=1.0)
    sink.emit(started())
    clock.advance(2.0)
    sink.emit(JobProgress("j1", 64 * MIB, 16 * MIB, 0))
    assert "blocks" not in stream.getvalue()
