"""The benchmark's report: medians per row and link, ratios against bacpac, and machine facts."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from rows import ROWS, Row

MiB = 1 << 20


@dataclass(frozen=True)
class Outcome:
    """One verified run."""

    seconds: float
    wire_bytes: int
    client_rss: int
    helper_rss: int


@dataclass
class Results:
    """Every run, by (link, row name); rows that were skipped or invalidated, and why."""

    runs: dict[tuple[str, str], list[Outcome]]
    invalid: dict[tuple[str, str], str]
    skipped: dict[tuple[str, str], str]


def _median(outcomes: list[Outcome], attr: str) -> float:
    return float(statistics.median(getattr(o, attr) for o in outcomes))


def _ours_for(row: Row) -> Row:
    return next(r for r in ROWS if r.ours and r.kind == row.kind)


def _ratio(results: Results, link: str, row: Row, attr: str) -> str:
    """bacpac's median ÷ this row's, for a stock tool's row with both measured."""
    if row.ours:
        return ""
    mine, theirs = results.runs.get((link, _ours_for(row).name)), results.runs.get((link, row.name))
    if not mine or not theirs or not _median(theirs, attr):
        return "n/a"
    return f"{_median(mine, attr) / _median(theirs, attr):.2f}"


def _row_line(results: Results, link: str, row: Row, size: int) -> str:
    key, name = (link, row.name), row.name.replace("|", "\\|")  # a pipe would split the cell
    if key in results.invalid:
        return f"| {name} | **INVALID: {results.invalid[key]}** |||||||"
    if key in results.skipped:
        return f"| {name} | skipped: {results.skipped[key]} |||||||"
    runs = results.runs.get(key)
    if not runs:
        return f"| {name} | not run |||||||"
    secs = _median(runs, "seconds")
    helper = _median(runs, "helper_rss")
    return (f"| {name} | {secs:.2f} | {size / secs / 1e6:.0f} "
            f"| {_median(runs, 'wire_bytes') / MiB:.1f} | {_median(runs, 'client_rss') / MiB:.0f} "
            f"| {helper / MiB:.0f} | {_ratio(results, link, row, 'seconds')} "
            f"| {_ratio(results, link, row, 'wire_bytes')} |")


def link_table(results: Results, link: str, title: str, size: int) -> list[str]:
    """The Markdown table of one link."""
    head = ["", f"### {title}", "",
            "| row | median s | MB/s | wire MiB | client peak RSS MiB | target peak RSS MiB "
            "| bacpac ÷ this, time | bacpac ÷ this, wire |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    return head + [_row_line(results, link, row, size) for row in ROWS]


def facts_list(facts: dict[str, str]) -> list[str]:
    return [f"- {name}: {value}" for name, value in facts.items()]
