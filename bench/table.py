"""The benchmark's report: medians per row and link, ratios against bacpac, and machine facts.

# Strategy: one Markdown table per link and group (rows.GROUPS: what is compared), so each
# stock row's ratios are read against the bacpac row just above it. Sizes and CPU are per
# GiB of what the row copies (the disk's nominal size, the tree's content, N disks for the
# fleet), so rows of different sizes read alike.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from rows import GROUPS, ROWS, Row

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Outcome:
    """One verified run."""

    seconds: float
    wire_bytes: int | None
    client_rss: int
    helper_rss: int
    data_bytes: int = 0
    client_cpu: float = 0.0
    target_cpu: float = 0.0
    target_read: int = 0


@dataclass
class Results:
    """Every run, by (link, row name); rows that were skipped or invalidated, and why."""

    runs: dict[tuple[str, str], list[Outcome]]
    invalid: dict[tuple[str, str], str]
    skipped: dict[tuple[str, str], str]


def _median(outcomes: list[Outcome], attr: str) -> float | None:
    values = [getattr(o, attr) for o in outcomes]
    if any(v is None for v in values):
        return None
    return float(statistics.median(values))


def _per_gib(outcomes: list[Outcome], attr: str) -> float:
    return float(statistics.median(getattr(o, attr) / (o.data_bytes / GiB) for o in outcomes))


def _ours_for(row: Row) -> Row:
    return next(r for r in ROWS if r.ours and r.kind == row.kind)


def _ratio(results: Results, link: str, row: Row, value: str) -> str:
    """bacpac's median ÷ this row's, for a stock tool's row with both measured."""
    if row.ours:
        return ""
    mine, theirs = results.runs.get((link, _ours_for(row).name)), results.runs.get((link, row.name))
    if not mine or not theirs:
        return "n/a"
    measure = _per_gib if value.endswith("_cpu") else _median
    a, b = measure(mine, value), measure(theirs, value)
    if a is None or not b:
        return "n/a"
    return f"{a / b:.2f}"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MiB:.1f}"


COLUMNS = ["row", "median s", "MB/s", "wire MiB", "client CPU s/GiB", "target CPU s/GiB",
           "client VmHWM MiB", "target VmHWM MiB", "target read MiB",
           "bacpac ÷ this, time", "bacpac ÷ this, wire", "bacpac ÷ this, client CPU"]


def _row_line(results: Results, link: str, row: Row) -> str:
    key, name = (link, row.name), row.name.replace("|", "\\|")  # a pipe would split the cell
    gap = "|" * (len(COLUMNS) - 1)
    if key in results.invalid:
        return f"| {name} | **INVALID: {results.invalid[key]}** {gap}"
    if key in results.skipped:
        return f"| {name} | skipped: {results.skipped[key]} {gap}"
    runs = results.runs.get(key)
    if not runs:
        return f"| {name} | not run {gap}"
    secs = _median(runs, "seconds") or 0.0
    size = _median(runs, "data_bytes") or 0.0
    cells = [name, f"{secs:.2f}", f"{size / secs / 1e6:.0f}", _mib(_median(runs, "wire_bytes")),
             f"{_per_gib(runs, 'client_cpu'):.2f}", f"{_per_gib(runs, 'target_cpu'):.2f}",
             f"{(_median(runs, 'client_rss') or 0) / MiB:.0f}",
             f"{(_median(runs, 'helper_rss') or 0) / MiB:.0f}",
             _mib(_median(runs, "target_read")),
             *(_ratio(results, link, row, v) for v in ("seconds", "wire_bytes", "client_cpu"))]
    return "| " + " | ".join(cells) + " |"


def link_tables(results: Results, link: str, title: str, labels: dict[str, str]) -> list[str]:
    """The Markdown tables of one link: one per group of rows that ran there."""
    lines = ["", f"### {title}"]
    for group, heading in GROUPS.items():
        rows = [r for r in ROWS if r.kind == group and any(k == (link, r.name) for k in
                                                           _keys(results))]
        if not rows:
            continue
        lines += ["", f"#### {heading.format(**labels)}", "",
                  "| " + " | ".join(COLUMNS) + " |",
                  "| --- |" + " ---: |" * (len(COLUMNS) - 1)]
        lines += [_row_line(results, link, r) for r in rows]
        lines += _scaling(results, link, group)
    return lines


# (group, its bacpac row, the bacpac row it is set against): how a cost grows with the size
SCALING = [("sparse-b", "bacpac dup, sparse disk B", "bacpac dup, sparse disk A")]


def _scaling(results: Results, link: str, group: str) -> list[str]:
    """A line under the table: this group's bacpac time ÷ a smaller input's (same data)."""
    lines = []
    for name, bigger, smaller in SCALING:
        big, small = results.runs.get((link, bigger)), results.runs.get((link, smaller))
        if name == group and big and small:
            ratio = (_median(big, "seconds") or 0.0) / (_median(small, "seconds") or 1.0)
            lines += ["", f"{bigger} ÷ {smaller}, time: {ratio:.2f}"]
    return lines


def _keys(results: Results) -> set[tuple[str, str]]:
    return {*results.runs, *results.invalid, *results.skipped}


def facts_list(facts: dict[str, str]) -> list[str]:
    return [f"- {name}: {value}" for name, value in facts.items()]
