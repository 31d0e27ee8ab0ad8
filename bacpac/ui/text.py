"""How a run's numbers and jobs read as text, for every sink: sizes, rates, durations, and the
one line that sums up a finished job."""
from __future__ import annotations

from typing import Callable

from .events import JobSummary

Clock = Callable[[], float]

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def human_size(size: float) -> str:
    """Binary units, one decimal: "512 B", "1.5 GiB" (rich only exposes decimal units)."""
    return _scaled(float(size), _BINARY_UNITS, 1024)


def human_rate(bytes_per_second: float) -> str:
    """Decimal units per second, as network and disk rates are quoted: "330.0 MB/s"."""
    return _scaled(float(bytes_per_second), _DECIMAL_UNITS, 1000, "/s")


def human_ratio(read: int, sent: int, streams: int = 1) -> str:
    """The compression ratio, read / sent: "3.2×", "" before anything was sent. A fan-out
    sends its one stream to `streams` helpers, and `sent` counts it for each."""
    return f"{read * streams / sent:.1f}×" if sent else ""


def _scaled(value: float, units: tuple[str, ...], base: int, suffix: str = "") -> str:
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{int(value)} {unit}{suffix}" if unit == "B" else f"{value:.1f} {unit}{suffix}"
        value /= base
    return f"{value:.1f} {units[-1]}{suffix}"


def human_duration(seconds: float) -> str:
    """"6.1 s", "2 min 05 s", "1 h 02 min": short, and precise where it matters."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def describe(source: str, target: str) -> str:
    """The short label of a job: "disk.img → host:/dev/sdb"."""
    return f"{source} → {target}"


def result_line(summary: JobSummary) -> str:
    """One line per finished job, without its ✓/✗ mark (the sinks style that differently)."""
    label = describe(summary.source, summary.target)
    if summary.status != "ok":
        return f"{label}: {summary.error or 'failed'}"
    if summary.extra.get("dry_run"):
        return f"{label}: dry run, every check passed, nothing written"
    parts = [f"{label}: {human_size(summary.bytes_read)} in {human_duration(summary.seconds)}"]
    if summary.seconds > 0:
        parts[0] += f" ({human_rate(summary.bytes_read / summary.seconds)})"
    parts.append(f"sent {human_size(summary.bytes_sent)}")
    if "files_total" in summary.extra:  # a tree copy: what the quick check spared
        extra = summary.extra
        parts.append(f"{extra['files_sent']} of {extra['files_total']} files sent, "
                     f"{extra.get('files_unchanged', 0)} unchanged"
                     + (f", {extra['files_deleted']} deleted" if extra.get("files_deleted")
                        else ""))
    if summary.extra.get("bytes_copied"):
        parts.append(f"{human_size(summary.extra['bytes_copied'])} copied on the target")
    if summary.saveset:
        parts.append(f"saveset {summary.saveset}")
    if summary.digest:
        parts.append(f"{summary.digest_algorithm} {summary.digest[:12]}…")
    if summary.sha256:
        parts.append(f"sha256 {summary.sha256[:12]}…")
    return ", ".join(parts)


def status_mark(summary: JobSummary) -> str:
    return "✓" if summary.status == "ok" else "✗"


def files_text(done: int, wanted: int, current: str) -> str:
    """", 120 of 3000 files, doc/x.txt" in a tree copy, "" otherwise."""
    if not wanted:
        return ""
    shown = current if len(current) <= 40 else "…" + current[-39:]
    return f", {done} of {wanted} files" + (f", {shown}" if shown else "")


def blocks_text(compared: int, sent: int) -> str:
    """", 12 of 4096 blocks sent" in a delta run, "" otherwise."""
    return f", {sent} of {compared} blocks sent" if compared else ""
