"""bacpac against stock tools, on this machine: `python3 bench/run.py --help`.

# Strategy: build the sample images (cached), start the target hosts (a loopback sshd, and as
# root an sshd in a network namespace behind 100 Mbit/s), then run every row once per round,
# rounds interleaved so that noise on the machine hits all rows alike. Before each run: `sync`
# and drop the page cache, so every run reads its source from disk. Every run's output is
# checked by sha256; a wrong copy marks its row INVALID rather than lending it a time. The
# medians, the ratios bacpac ÷ tool and the machine facts go to stdout and to a Markdown file.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))

from loopback_sshd import SshdError, SshServer, start_sshd  # noqa: E402
from measure import run_timed  # noqa: E402
from netns import NetnsError, rate_limited_netns  # noqa: E402
from rows import GROUPS, ROWS, Context, Inputs, Job, Row, Skipped, bacpac_flags  # noqa: E402
import rows_disk  # noqa: E402,F401  (registers its rows, after rows.py's)
import rows_tree  # noqa: E402,F401
import rows_fleet  # noqa: E402,F401
from sample import Sample, make_sample, parse_size  # noqa: E402
from table import Outcome, Results, facts_list, link_tables  # noqa: E402

TOOLS = ["ssh", "zstd", "rsync", "mke2fs", "dumpe2fs", "bash"]


class BenchError(Exception):
    """The benchmark cannot run here; the message says why."""


@dataclass(frozen=True)
class Link:
    """A target host and the sample copied to it."""

    name: str
    title: str
    server: SshServer
    sshd_pid: int
    sample: Sample


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description="bacpac against stock tools.")
    p.add_argument("--size", type=parse_size, default=2 << 30,
                   help="sample image size on the loopback host (default 2G)")
    p.add_argument("--slow-size", type=parse_size, default=512 << 20,
                   help="the smaller disk: the sample on the 100 Mbit/s host (default 512M: a 2G "
                        "cat | ssh takes three minutes a round there), and the loopback host's "
                        "smaller-disk delta rows and fleet rows")
    p.add_argument("--tiny-size", type=parse_size, default=1 << 20,
                   help="the image of the fixed-cost rows (default 1M)")
    p.add_argument("--sparse-sizes", type=_two_sizes, default=(16 << 30, 64 << 30),
                   metavar="A,B", help="the sparse disks A and B (default 16G,64G)")
    p.add_argument("--sparse-data", type=parse_size, default=600 << 20,
                   help="the sample disk whose content both sparse disks hold (default 600M: "
                        "about 300 MiB of data)")
    p.add_argument("--tree-files", type=int, default=50_000,
                   help="files in the tree rows' tree, at least (default 50000)")
    p.add_argument("--tree-size", type=parse_size, default=1 << 30,
                   help="content of that tree, at least (default 1G)")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of every row (default 5: medians of 3 moved by 10%% between runs)")
    p.add_argument("--link", choices=["loopback", "100mbit", "both"], default="both")
    p.add_argument("--out", help="Markdown report (default bench/results.md, but none with --only: "
                                 "a partial table must not stand in for the full one)")
    p.add_argument("--work", default=str(HERE / "out"), help="images and targets (gitignored)")
    p.add_argument("--only", action="append", metavar="PREFIX",
                   help="run only the rows whose name starts with PREFIX, or whose group is "
                        "PREFIX (e.g. tree-first, delta-small-warm; repeatable), for trying one "
                        "change against one tool; the README's table needs them all")
    args = p.parse_args(argv)
    for prefix in args.only or []:
        if not selected_rows([prefix]):
            p.error(f"--only {prefix!r} matches no row or group; the groups are: "
                    f"{', '.join(GROUPS)}; the rows: {', '.join(r.name for r in ROWS)}")
    if args.out is None and not args.only:
        args.out = str(HERE / "results.md")
    return args


def _two_sizes(text: str) -> tuple[int, int]:
    sizes = tuple(parse_size(t) for t in text.split(","))
    if len(sizes) != 2:
        raise ValueError(f"not two sizes: {text!r} (e.g. 16G,64G)")
    return sizes[0], sizes[1]


def size_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


def labels(args: argparse.Namespace) -> dict[str, str]:
    """The sizes the group headings name."""
    return {"small": size_label(args.slow_size), "tiny": size_label(args.tiny_size),
            "sparse_a": size_label(args.sparse_sizes[0]),
            "sparse_b": size_label(args.sparse_sizes[1]),
            "sparse_data": size_label(args.sparse_data),
            "tree": f"{args.tree_files} files and {size_label(args.tree_size)} or more"}


def warm_up(paths: tuple[str, ...]) -> None:
    """Write dirty pages out, then read `paths` into the page cache."""
    subprocess.run(["sync"], check=False)
    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)


def evict(paths: tuple[str, ...]) -> None:
    """Write dirty pages out, then drop `paths` alone from the page cache."""
    subprocess.run(["sync"], check=False)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_caches() -> bool:
    """Write dirty pages out and drop the page cache; False where we may not."""
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _sshd_pid(server: SshServer) -> int:
    return int(Path(server.tmpdir, "sshd.pid").read_text())


@contextlib.contextmanager
def open_links(args: argparse.Namespace, tmp: Path) -> Iterator[list[Link]]:
    """Start the target hosts the run asks for; stop them, and remove the namespace, at the end."""
    with contextlib.ExitStack() as stack:
        links = []
        if args.link in ("loopback", "both"):
            sample = make_sample(Path(args.work), args.size)
            server = stack.enter_context(start_sshd(_mkdir(tmp / "sshd-loopback")))
            links.append(Link("loopback", "loopback (127.0.0.1)", server, _sshd_pid(server), sample))
        if args.link in ("100mbit", "both"):
            sample = make_sample(Path(args.work), args.slow_size)
            ns = stack.enter_context(rate_limited_netns("100mbit"))
            server = stack.enter_context(start_sshd(_mkdir(tmp / "sshd-netns"), ns.address,
                                                    ns.prefix))
            links.append(Link("100mbit", f"100 Mbit/s (veth + tbf, to {ns.address} in a "
                              "namespace)", server, _sshd_pid(server), sample))
        yield links


def _mkdir(path: Path) -> str:
    path.mkdir(parents=True)
    return str(path)


def run_once(link: Link, row: Row, ctx: Context, results: Results, tmp: Path) -> str:
    """Run one row once on one link and file the outcome; returns a line for the log."""
    key = (link.name, row.name)
    if key in results.invalid or key in results.skipped:
        return ""
    try:
        job = row.prepare(ctx)
    except Skipped as e:
        results.skipped[key] = str(e)
        return f"{row.name}: skipped ({e})"
    if job.warm:
        warm_up(job.warm)
    elif job.evict:
        evict(job.evict)
    else:
        drop_caches()
    timed = run_timed(job.argv, link.sshd_pid, str(tmp))
    wrong = _wrong(job, timed.returncode, timed.stderr)
    if wrong:
        results.invalid[key] = wrong
        print(f"bench: {link.name}: {row.name}: INVALID: {wrong}", file=sys.stderr)
        return ""
    outcome = Outcome(timed.seconds, job.wire_bytes(timed.stdout), timed.client_rss,
                      timed.helper_rss, job.data_bytes or link.sample.size, timed.client_cpu,
                      timed.target_cpu, timed.target_read)
    results.runs.setdefault(key, []).append(outcome)
    return f"{row.name}: {timed.seconds:.2f} s"


def _wrong(job: Job, returncode: int, stderr: str) -> str:
    """Why this run does not count, or "" when every output holds the expected bytes."""
    if returncode != 0:
        last = stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return f"exit {returncode}: {last[0][:200]}"
    for name, sha in job.outputs.items():
        got = sha()
        if got != job.expect_sha:
            return f"{name} sha256 {got[:12]}… is not the source's {job.expect_sha[:12]}…"
    return ""


def _clear(directory: str) -> None:
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def run_rounds(links: list[Link], rounds: int, tmp: Path, rows: list[Row],
               inputs: Inputs) -> Results:
    """Every row on every link it runs on, once per round, in the same order each round."""
    results = Results({}, {}, {})
    flags = bacpac_flags()
    wire_cache: dict[str, Any] = {}  # compressed sizes, measured once per image and level
    for n in range(1, rounds + 1):
        for link in links:
            target_dir = _mkdir(tmp / f"targets-{link.name}-{n}")
            ctx = Context(link.server.config_path, link.sample, target_dir, flags, wire_cache,
                          inputs)
            for row in rotated([r for r in rows if link.name in r.links], n - 1):
                line = run_once(link, row, ctx, results, tmp)
                if line:
                    print(f"bench: round {n}/{rounds} {link.name}: {line}", file=sys.stderr)
                _clear(target_dir)
    return results


def rotated(rows: list[Row], by: int) -> list[Row]:
    """The rows from the by-th on, then the rest: each round starts one row further, so no row
    always runs first on a link, right after the other link's runs. (With a fixed order,
    `bacpac dup` was the first on the 100 Mbit/s link, and in one run slower than the
    `dup --saveset` right after it in all three rounds, 6.80 s against 6.40 at the median;
    the cause was not found.)"""
    by %= max(len(rows), 1)
    return rows[by:] + rows[:by]


def selected_rows(prefixes: list[str] | None) -> list[Row]:
    if not prefixes:
        return ROWS
    return [r for r in ROWS if any(r.name.startswith(p) or r.kind == p for p in prefixes)]


def _version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    return (done.stdout + done.stderr).strip().splitlines()[0].strip("* ")


def bacpac_revision() -> str:
    """The commit bacpac runs from (installed editable), and whether the tree differs from it."""
    done = subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown (not a git checkout)"


def compile_bytecode() -> None:
    """Compile bacpac's modules as `pip install` does: where PYTHONDONTWRITEBYTECODE is set,
    as on this machine, an editable checkout would otherwise compile its source on every
    start (50 ms of each bacpac run here), which no installed copy does."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "bacpac", "remote_helper"],
                   cwd=HERE.parent, check=True)


def machine_facts(links: list[Link], rounds: int, dropped: bool,
                  revision: str) -> dict[str, str]:
    import paramiko

    facts = {
        "bacpac": f"{revision} at the start of the run",
        "cores": str(os.cpu_count()), "kernel": platform.release(),
        "OpenSSH": _version(["ssh", "-V"]), "Paramiko": paramiko.__version__,
        "Python": platform.python_version(), "zstd": _version(["zstd", "-V"]),
        "rsync": _version(["rsync", "--version"]),
        "rounds": f"{rounds}, interleaved, each starting one row further; medians shown",
        "bytecode": "bacpac's compiled before the runs, as pip does when it installs",
        "page cache": "synced and dropped before every run" if dropped
        else "NOT dropped (no permission): sources may be read from memory",
    }
    for link in links:
        s = link.sample
        facts[f"image on {link.name}"] = (
            f"{s.size / (1 << 20):.0f} MiB ext4, {s.used_bytes / s.size:.0%} used "
            f"({s.files} files, {s.file_bytes / 1e6:.0f} MB of documentation and Python trees); "
            f"changed copy: {s.changed_runs} runs of 50 KiB of random bytes "
            f"({s.changed_runs * 50 * 1024 / s.size:.1%})")
    return facts


NOTES = [
    "Wire bytes: bacpac's `bytes_sent` (payload on the channel), rsync's `Total bytes sent`; "
    "for the pipelines, the bytes the producer writes into ssh (the image size for `cat`, "
    "the output of the same `zstd` command measured once, untimed); `–` where not known "
    "(`tar -S`). SSH's own framing is in none of them.",
    "Client VmHWM (peak RSS): ru_maxrss from os.wait4 — for bacpac, its process; for a pipeline or "
    "rsync, the largest of its processes (ssh, zstd, cat, rsync).",
    "Target VmHWM: the largest VmHWM, polled every 50 ms, of the processes the target's sshd "
    "spawned, sshd's own session processes excluded: bacpac's helper, `zstd -d`, `cat`, rsync's "
    "receiver.",
    "bacpac fsyncs the target before it reports success; the pipelines and rsync do not (their "
    "dirty pages are written out by the untimed `sync` before the next run), except the row "
    "ending in `&& sync`, which fsyncs its target as bacpac does.",
    "bacpac runs as `python3 -m bacpac` with `--remote-python` naming the interpreter itself: "
    "on this machine `bacpac` and `python3` on PATH are pyenv's bash shims, which add about "
    "0.15 s each to every start (a packaged install has neither).",
    "Ratios are bacpac's median ÷ the tool's, on the same link, against the bacpac row of the "
    "same table. Below 1, bacpac is faster, sends less or spends less CPU.",
    "CPU s/GiB: user + system seconds per GiB of what the row copies (the disk's nominal size, "
    "the tree's content, N disks for the fleet). Client: the command and everything it reaped "
    "(wait4). Target: every session of the target's sshd, its ciphers included (the listening "
    "sshd's cutime + cstime across the run, read once it has reaped them).",
    "Target read MiB: the read_bytes of /proc/PID/io of the target side's processes (bacpac's "
    "helper, rsync's receiver), last seen by the 50 ms poll: what they read from disk, the "
    "page cache's hits not counted.",
]


def render(links: list[Link], results: Results, facts: dict[str, str],
           sizes: dict[str, str]) -> str:
    lines = ["# bacpac benchmark", "", f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')} with "
             f"`python3 bench/run.py {' '.join(sys.argv[1:])}`.", "", *facts_list(facts)]
    for link in links:
        lines += link_tables(results, link.name, link.title, sizes)
    lines += ["", "Notes:", "", *[f"- {n}" for n in NOTES]]
    return "\n".join(lines) + "\n"


def bench(args: argparse.Namespace) -> int:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}; install them first")
    if args.link != "loopback" and os.geteuid() != 0:
        raise BenchError("needs root for the 100 Mbit/s host; run with --link loopback")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    revision = bacpac_revision()
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="run-", dir=args.work) as tmp_name:
        tmp = Path(tmp_name)
        with open_links(args, tmp) as links:
            results = run_rounds(links, args.rounds, tmp, selected_rows(args.only),
                                 Inputs(args))
    report = render(links, results, machine_facts(links, args.rounds, drop_caches(), revision),
                    labels(args))
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 1 if results.invalid else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every finally runs: sshd stopped, namespace removed


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    try:
        return bench(args)
    except (BenchError, NetnsError, SshdError) as e:
        print(f"bench: {e}", file=sys.stderr)
    except subprocess.CalledProcessError as e:
        print(f"bench: {' '.join(map(str, e.cmd))} failed with exit {e.returncode}",
              file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted; its hosts and namespace are gone", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
