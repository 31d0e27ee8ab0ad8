"""The command line: argparse → one call per command; errors → exit codes (the only exit)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
from typing import TYPE_CHECKING, Callable, Iterator, NoReturn, Optional, Sequence

from . import __version__
from .errors import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, BacpacError, Signalled, UsageError,
                     internal_error, interruption)
from .ui.events import RunFailed, Sink
from .engine.pacing import START_LEVEL, parse_rate
from .transport.helper import ConnectOptions, EarlySession
from .ui.sinks import make_sink
from .ui.text import human_size
from .ui.eventlines import EventLineSink
from .ui.fleet import make_run_sink
from .spec import Endpoint, parse_endpoint
from .transport.ssh.config import SshOptions, parse_o_option

if TYPE_CHECKING:
    # Imported where each command runs, not here: a dup's connection is begun before the
    # engine is imported, so that the two overlap (_cmd_dup).
    from .commands.dup import DupRequest
    from .engine.pipeline import StreamSettings

SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """ "64K", "4M", "1G" or a byte count; for argparse."""
    match = re.fullmatch(r"(\d+)([kmg]?)(i?b)?", text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 64K, 4M)")
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def parse_port(text: str) -> int:
    """A TCP port, 1 to 65535; for argparse, so that -p is refused as the option it is."""
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


class _ArgumentError(Exception):
    """argparse refused the command line; main() says so, in JSON too when --json asks."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse's parser, raising its errors instead of exiting (subparsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(self, message)


def _ssh_parent() -> _Parser:
    parent = _Parser(add_help=False)
    ssh = parent.add_argument_group("SSH (as OpenSSH's ssh)")
    ssh.add_argument("-F", dest="ssh_config", metavar="FILE", help="ssh_config file "
                     "(default ~/.ssh/config)")
    ssh.add_argument("-p", dest="port", type=parse_port, metavar="PORT",
                     help="port on the remote host")
    ssh.add_argument("-i", dest="identity", action="append", default=[], metavar="IDENTITY",
                     help="private key file (repeatable)")
    ssh.add_argument("-l", dest="login", metavar="USER", help="user to log in as")
    ssh.add_argument("-o", dest="ssh_options", action="append", default=[], metavar="KEY=VALUE",
                     help="ssh_config option, e.g. -o StrictHostKeyChecking=accept-new")
    ssh.add_argument("--sudo", action="store_true", help="run the helper under 'sudo -n'")
    ssh.add_argument("--remote-python", metavar="PATH", help="python on the target "
                     "(default python3)")
    out = parent.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON summary per job on stdout")
    out.add_argument("--no-progress", action="store_true", help="no progress display or log lines")
    # For `bacpac run`, which runs each job as a child and shows its events in one display.
    out.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bacpac", description="Duplicate disks between Linux hosts over SSH, "
        "proven byte for byte end to end.")
    parser.add_argument("--version", action="version", version=f"bacpac {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = _ssh_parent()
    dup = commands.add_parser(
        "dup", parents=[parent], help="duplicate a disk or image onto a target",
        description="Duplicate SOURCE (a block device or image file) onto TARGET, a block "
        "device or image file on [USER@]HOST:PATH, or a local path. Holes and zero blocks are "
        "not sent; every block is proven by its checksum on arrival, and --verify re-reads the "
        "target and compares its digest with the source's. The digest reported is "
        "`split -b 1M --filter=sha256sum IMAGE | sha256sum` of the source (holes cost nothing); "
        "--sha256 adds the plain sha256.")
    dup.add_argument("source", metavar="SOURCE")
    dup.add_argument("target", metavar="[USER@]HOST:TARGET")
    dup.add_argument("--saveset", metavar="[USER@]HOST:PATH", action="append", default=[],
                     help="also write a saveset, in the same pass: PATH on the target's host, "
                     "or on another HOST, fed from the same read of the source (repeatable)")
    dup.add_argument("--delta", action="store_true",
                     help="compare with what the target holds and send only the blocks that "
                     "differ (also finishes an interrupted dup)")
    dup.add_argument("--nothing-else-writes-target", action="store_true",
                     help="with --delta onto a block device: trust that only bacpac writes it, "
                     "so the digests kept by the last run stand for its content and it is not "
                     "read again. RISK: a write by anything else (dd, a mount, another host on "
                     "shared storage) goes unseen and the copy ends wrong; --verify catches it")
    _add_write_options(dup)
    _add_stream_options(dup)
    _add_dry_run(dup)
    dup.set_defaults(run=_cmd_dup)

    backup = commands.add_parser(
        "backup", parents=[parent], help="write a saveset of a disk on another host",
        description="Write a saveset of SOURCE at SAVESET on [USER@]HOST (no target disk); "
        "several SAVESETs are fed from one read of the source. "
        "Stock 'zstd -d SAVESET > disk.img' restores it; so does 'bacpac restore'.")
    backup.add_argument("source", metavar="SOURCE")
    backup.add_argument("target", metavar="[USER@]HOST:SAVESET", nargs="+")
    _add_stream_options(backup)
    _add_dry_run(backup)
    backup.set_defaults(run=_cmd_backup, force=False, verify=False, saveset=[])

    restore = commands.add_parser(
        "restore", parents=[parent], help="write a saveset's image onto a target",
        description="Restore the disk image in SAVESET onto TARGET, with the same checks as "
        "dup. Each frame is checked as verify checks it before it is written; a damaged "
        "saveset is refused naming the frame and byte offset. Either may be remote "
        "([USER@]HOST:PATH). A tree saveset (from copy --saveset) is restored into the "
        "directory TARGET, made if missing.")
    restore.add_argument("saveset", metavar="[HOST:]SAVESET")
    restore.add_argument("target", metavar="[HOST:]TARGET")
    _add_write_options(restore)
    restore.set_defaults(run=_cmd_restore)

    verify = commands.add_parser(
        "verify", parents=[parent], help="check every frame and checksum of a saveset",
        description="Check every frame's checksum, the seek table, the trailer's byte count "
        "and sha256, and the metadata against the sha256 the trailer records of it. Exit 1 "
        "naming the first bad frame and its byte offset.")
    verify.add_argument("saveset", metavar="[HOST:]SAVESET")
    verify.set_defaults(run=_cmd_verify)

    info = commands.add_parser(
        "info", parents=[parent], help="show a saveset's metadata and sizes",
        description="Kind, image size, frames, compressed size and ratio, source, creation "
        "time and bacpac version, read from the start and end of the saveset only.")
    info.add_argument("saveset", metavar="[HOST:]SAVESET")
    info.set_defaults(run=_cmd_info)
    _add_copy_parser(commands, parent)
    _add_run(commands)
    return parser


def _add_copy_parser(commands: argparse._SubParsersAction, parent: _Parser) -> None:
    copy = commands.add_parser(
        "copy", parents=[parent], help="copy files and trees, either side remote",
        description="Copy SRC... to DEST as rsync -aH does: into DEST when it is a directory "
        "(a SRC ending in '/' gives its contents), a single SRC becomes DEST otherwise. "
        "Unchanged files (same size and mtime) are not sent.")
    copy.add_argument("paths", nargs="+", metavar="[HOST:]SRC... [HOST:]DEST")
    copy.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                      help="skip what matches PATTERN (rsync's rules; repeatable)")
    copy.add_argument("--exclude-from", action="append", default=[], metavar="FILE",
                      help="read exclude patterns from FILE, one a line")
    copy.add_argument("-x", "--one-file-system", action="store_true",
                      help="do not cross file system boundaries")
    copy.add_argument("--delete", action="store_true",
                      help="delete what is in DEST and not in SRC")
    copy.add_argument("-n", "--dry-run", action="store_true",
                      help="show what would be sent and deleted; write nothing")
    copy.add_argument("--saveset", metavar="PATH", default=None,
                      help="also write the whole tree as a tar.zst saveset at PATH on the "
                      "writing host (stock 'tar --zstd -xpf' extracts it)")
    copy.add_argument("-c", "--checksum", action="store_true",
                      help="compare files by their sha256, not by size and mtime")
    copy.add_argument("--xattrs", action="store_true",
                      help="keep extended attributes and POSIX ACLs")
    copy.add_argument("-W", "--whole-file", action="store_true",
                      help="send a changed file whole, never only its changed blocks")
    copy.add_argument("--level", type=int, default=None,
                      choices=[n for n in range(-5, 20) if n], metavar="-5..19 (not 0)",
                      help="zstd compression level (default 3)")
    copy.add_argument("--bwlimit", type=_rate, default=None, metavar="RATE",
                      help="cap the wire at RATE, as rsync's: KiB/s, or with K, M or G")
    copy.set_defaults(run=_cmd_copy)


def _exclude_patterns(args: argparse.Namespace) -> tuple[str, ...]:
    patterns = list(args.exclude)
    for name in args.exclude_from:
        try:
            with open(name, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise UsageError(f"{name}: {e.strerror}") from None
        patterns += [line for line in lines if line.strip() and not line.startswith(("#", ";"))]
    return tuple(patterns)


def _cmd_copy(args: argparse.Namespace, sink: Sink) -> None:
    if len(args.paths) < 2:
        raise UsageError("copy: give at least one SRC and a DEST")
    with _early_session(_begin_copy_early(args, connect_options(args))) as options:
        _copy_now(args, options, sink)


def _begin_copy_early(args: argparse.Namespace, options: ConnectOptions) -> ConnectOptions:
    """The remote side's helper session of a push or a pull begun now, as a dup's is
    (_begin_early): the SSH connection and the target's start overlap the copy's imports.
    Not on a terminal that may ask for a password, nor for a dry run, nor for a local copy
    or one whose endpoints are refused (said in its place, by check_request)."""
    if options.interactive or args.dry_run:
        return options
    try:
        sources = [parse_endpoint(p) for p in args.paths[:-1]]
        dest = parse_endpoint(args.paths[-1])
    except UsageError:
        return options
    if any((s.host, s.user) != (sources[0].host, sources[0].user) for s in sources):
        return options
    if sources[0].is_local == dest.is_local:
        return options  # both local, or both remote (refused)
    remote = dest if sources[0].is_local else sources[0]
    # "copy": the job whose modules the session ships (commands/copy.py, HELPER_JOB)
    return dataclasses.replace(options, early=EarlySession(remote, options, "copy"))


def _copy_now(args: argparse.Namespace, options: ConnectOptions, sink: Sink) -> None:
    from .commands.copy import CopyRequest, run_copy
    request = CopyRequest(sources=tuple(parse_endpoint(p) for p in args.paths[:-1]),
                          dest=parse_endpoint(args.paths[-1]), excludes=_exclude_patterns(args),
                          one_file_system=args.one_file_system, delete=args.delete,
                          dry_run=args.dry_run, xattrs=args.xattrs, checksum=args.checksum,
                          saveset=args.saveset, level=args.level,
                          whole_file=args.whole_file, bwlimit=args.bwlimit)
    run_copy(request, options, sink)


def _add_run(commands: "argparse._SubParsersAction[_Parser]") -> None:
    run_parser = commands.add_parser(
        "run", help="run every job of a YAML inventory, in parallel",
        description="Run the jobs of INVENTORY (a YAML file: hosts, jobs, hooks; see "
        "configs/inventory.yml) in parallel, each as its own dup, backup or copy, with one "
        "display for all. The inventory is checked whole before anything runs. Exit 0 when "
        "every job succeeded, 1 when any failed, 2 when the inventory is wrong.")
    run_parser.add_argument("inventory", metavar="INVENTORY")
    run_parser.add_argument("--only", action="append", default=[], metavar="NAME",
                            help="run only this job (repeatable)")
    run_parser.add_argument("--jobs", type=_job_count, default=None, metavar="N",
                            help="jobs at once (default: one per host, at most 4)")
    run_parser.add_argument("--dry-run", action="store_true",
                            help="connect and run every check of every job, write nothing")
    run_parser.add_argument("--json", action="store_true",
                            help="one JSON object per job on stdout, and a last one for the run")
    run_parser.add_argument("--no-progress", action="store_true",
                            help="no progress display or log lines")
    run_parser.set_defaults(run=_cmd_run, events=False)


def _job_count(text: str) -> int:
    if not text.strip().isdigit() or not 0 < int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs (1 to 64)")
    return int(text)


def _add_write_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite an existing block device")
    parser.add_argument("--verify", action="store_true",
                        help="re-read the target from disk after writing and compare")


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="connect and run every check, write nothing, say what would be "
                        "written")


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--level", type=int, default=None,
                        choices=[n for n in range(-5, 20) if n], metavar="-5..19 (not 0)",
                        help="fix the zstd compression level (default: adapt it to whichever "
                        f"of CPU or link is the bottleneck, from {START_LEVEL})")
    parser.add_argument("--bwlimit", type=_rate, default=None, metavar="RATE",
                        help="cap the wire at RATE, as rsync's: KiB/s, or with K, M or G")
    parser.add_argument("--block-size", type=parse_size, default=None, metavar="SIZE",
                        help="bytes per block compared by --delta (default 64K); without "
                        "--delta, bytes per compressed block (default 4M, at most 32M)")
    parser.add_argument("--sha256", action="store_true",
                        help="also compute and report the plain sha256 of the image (what "
                        "sha256sum prints), one more pass over every byte, holes included; "
                        "the default digest hashes the data only (split -b 1M "
                        "--filter=sha256sum IMAGE | sha256sum)")


def connect_options(args: argparse.Namespace) -> ConnectOptions:
    ssh = SshOptions(
        config_file=args.ssh_config, port=args.port, identity_files=tuple(args.identity),
        login_name=args.login, options=tuple(parse_o_option(o) for o in args.ssh_options))
    return ConnectOptions(ssh=ssh, sudo=args.sudo, remote_python=args.remote_python,
                          interactive=sys.stdin.isatty())


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (e.g. 5000, 10M)") from None


def _stream_settings(args: argparse.Namespace, delta: bool, sha256: bool) -> StreamSettings:
    from .engine.pipeline import StreamSettings
    pace = {"level": START_LEVEL if args.level is None else args.level, "adaptive": args.level is None,
            "bwlimit": args.bwlimit, "sha256": sha256}
    size = args.block_size
    if size is None:
        return StreamSettings(**pace)
    if delta:
        if size < 4096 or size > 4 << 20 or (4 << 20) % size:
            raise UsageError(f"--block-size {size}: with --delta, a power of two from 4K to 4M")
        return StreamSettings(delta_block=size, **pace)
    if size > 32 << 20:
        raise UsageError(f"--block-size {size}: at most 32M")
    return StreamSettings(block_size=size, **pace)


def _dup_request(args: argparse.Namespace, backup: bool) -> DupRequest:
    from .commands.dup import DupRequest
    delta = bool(getattr(args, "delta", False))
    if backup:  # the first SAVESET is the backup's own; any more are fed the same frames
        first, *more = [parse_endpoint(text) for text in args.target]
        return DupRequest(source=args.source, target=first, backup=True,
                          stream=_stream_settings(args, delta, sha256=True),
                          savesets=tuple(more),
                          dry_run=args.dry_run)
    target = parse_endpoint(args.target)
    saveset, others = fan_out_savesets(target, args.saveset)
    return DupRequest(source=args.source, target=target, saveset=saveset, backup=backup,
                      force=args.force, verify=args.verify, delta=delta,
                      stream=_stream_settings(args, delta, args.sha256 or bool(args.saveset)),
                      savesets=others,
                      dry_run=args.dry_run)


def fan_out_savesets(target: Endpoint, texts: Sequence[str]
                     ) -> tuple[Optional[str], tuple[Endpoint, ...]]:
    """The --saveset operands: a plain PATH is on the target's host, and the first on that
    host is written by the target's own helper (the saveset PATH of a plain dup); the others
    get helpers of their own (a fan-out)."""
    own: Optional[str] = None
    others: list[Endpoint] = []
    for text in texts:
        endpoint = parse_endpoint(text)
        if endpoint.is_local:  # a plain path: on the target's host
            endpoint = Endpoint(endpoint.path, target.host, target.user)
        same_host = (endpoint.host, endpoint.user) == (target.host, target.user)
        if own is None and same_host:
            own = endpoint.path
        else:
            others.append(endpoint)
    return own, tuple(others)


def _cmd_dup(args: argparse.Namespace, sink: Sink) -> None:
    with _early_session(_begin_early(args, connect_options(args))) as options:
        from .commands.dup import run_dup
        request = _dup_request(args, backup=False)
        if args.nothing_else_writes_target:
            if not request.delta:
                raise UsageError("--nothing-else-writes-target: only with --delta")
            request = dataclasses.replace(request, nothing_else_writes_target=True)
        run_dup(request, options, sink)


@contextlib.contextmanager
def _early_session(options: ConnectOptions) -> Iterator[ConnectOptions]:
    """Hold a command to its early session (if it began one): the command's own imports wait
    until the helper's command is sent (they would only slow the handshake down under the
    GIL), and a session the command did not take is closed however it ends."""
    try:
        if options.early is not None:
            options.early.wait_sent()  # then the imports below overlap the target's start
        yield options
    finally:
        if options.early is not None:
            options.early.discard()


def _begin_early(args: argparse.Namespace, options: ConnectOptions) -> ConnectOptions:
    """A plain dup's helper session begun now, on a thread, before the engine is imported
    and the source opened: the target's shell and the helper's start overlap them
    (docs/performance.md, "delta-warm"). Not when a password may be asked on the
    terminal (a prompt from a run that may still be refused), nor for a dry run or a fan-out,
    whose sessions differ; the same checks and errors come when the dup takes it."""
    if options.interactive or args.dry_run:
        return options
    try:
        target = parse_endpoint(args.target)
        if fan_out_savesets(target, args.saveset)[1]:
            return options
    except UsageError:
        return options  # said in its place, by _dup_request
    return dataclasses.replace(options, early=EarlySession(target, options, "dup"))


def _cmd_backup(args: argparse.Namespace, sink: Sink) -> None:
    from .commands.dup import run_dup
    run_dup(_dup_request(args, backup=True), connect_options(args), sink)


def _cmd_run(args: argparse.Namespace, sink: Sink) -> None:
    # here, not at the top: the YAML parser is for bacpac run alone (tests/test_lazy.py)
    from .commands.run import RunRequest, run_inventory
    from .inventory.load import load as load_inventory

    request = RunRequest(load_inventory(args.inventory), only=tuple(args.only), jobs=args.jobs,
                         dry_run=args.dry_run, json_output=args.json)
    run_inventory(request, sink)


def _cmd_restore(args: argparse.Namespace, sink: Sink) -> None:
    from .commands.savesets import RestoreRequest, run_restore
    request = RestoreRequest(parse_endpoint(args.saveset), parse_endpoint(args.target),
                             force=args.force, verify=args.verify)
    run_restore(request, connect_options(args), sink)


def _cmd_verify(args: argparse.Namespace, sink: Sink) -> None:
    from .commands.savesets import run_verify
    summary = run_verify(parse_endpoint(args.saveset), connect_options(args), sink)
    if not args.json:
        digest = f", {summary.digest_algorithm} {summary.digest}" if summary.digest else ""
        print(f"{args.saveset}: ok, {summary.extra['frames']} frames, "
              f"{summary.bytes_total} bytes, sha256 {summary.sha256}{digest}"
              + _unchecked(summary.extra))


def _unchecked(result: dict) -> str:
    """ " (version 1: ...)" for a saveset whose metadata no checksum covers, else ""."""
    from .commands.savesets import format_note
    if result.get("metadata_checked"):
        return ""
    return f" ({format_note(result.get('version'), False)})"


def _cmd_info(args: argparse.Namespace, sink: Sink) -> None:
    from .commands.savesets import format_note, query_saveset
    result = query_saveset("info", parse_endpoint(args.saveset), connect_options(args))
    if args.json:  # as every command's --json: its command and status
        print(json.dumps(dict(result, command="info", status="ok"), sort_keys=True))
        return
    meta, trailer = result.get("metadata") or {}, result.get("trailer") or {}
    rows = [
        ("saveset", args.saveset), ("kind", meta.get("kind")),
        ("size", f"{result['size']} bytes ({human_size(result['size'])})"),
        ("frames", f"{result['frames']} of {human_size(meta.get('frame_size') or 0)}"),
        ("compressed", f"{result['compressed']} bytes, ratio {result.get('ratio')}"),
        ("source", f"{meta.get('source_host')}:{meta.get('source_path')}"),
        ("created", meta.get("created")), ("bacpac", meta.get("bacpac_version")),
        ("sha256", trailer.get("sha256")),
        ("digest", f"{result['digest']} ({result['digest_algorithm']})" if result.get("digest")
         else f"none in format version {meta.get('version')} (verify computes it)"),
        ("format", format_note(meta.get("version"), result.get("metadata_checked"))),
    ]
    if meta.get("kind") == "tree":  # a copy reports its tar's sha256 alone
        rows = [row for row in rows if row[0] != "digest"]
    for name, value in rows:
        print(f"{name:<11} {value}")


_COMMANDS = ("dup", "backup", "restore", "verify", "info", "copy", "run")
QUIET_COMMANDS = ("verify", "info")  # their result is what they print, not a progress display


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the `bacpac` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except _ArgumentError as e:
        _end(_refuse_arguments(e, argv))
    _interrupt_on(signal.SIGTERM, signal.SIGHUP)
    _end(run(args.run, args))


def _refuse_arguments(error: _ArgumentError, argv: list[str]) -> int:
    """argparse's usage and error lines on stderr; with --json, one object on stdout too."""
    error.parser.print_usage(sys.stderr)
    print(f"{error.parser.prog}: error: {error.message}", file=sys.stderr)
    options = argv[:argv.index("--")] if "--" in argv else argv
    if "--json" in options:
        command = next((a for a in options if a in _COMMANDS), None)
        make_sink(progress=False, json_output=True).emit(
            RunFailed(command, error.message, EXIT_USAGE))
    return EXIT_USAGE


def _interrupt_on(*signums: int) -> None:
    """End the run on these signals as on Ctrl-C: the helper told, the saveset discarded, one
    line saying what was left. A signal ignored by whoever started us (nohup) stays ignored."""
    for signum in signums:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_signalled)


def _raise_signalled(signum: int, frame: object) -> None:
    raise Signalled(signum)


def _end(code: int) -> NoReturn:
    """End the process at once with `code`. The interpreter's own teardown (the objects of
    every module, paramiko's and cryptography's among them, freed one by one) was a noticeable
    wait after every job (docs/performance.md), with nothing of bacpac's left to finish: the
    job is done, the display closed, no file of ours is open for writing. So stdout and stderr
    are flushed, and that is all."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`bacpac ... | head`): nothing to save
            pass
    os._exit(code)


def run(command: Callable[[argparse.Namespace, Sink], None], args: argparse.Namespace) -> int:
    progress = not args.no_progress and args.command not in QUIET_COMMANDS
    sink: Sink
    if getattr(args, "events", False):
        sink = EventLineSink(sys.stdout)
    elif args.command == "run":
        sink = make_run_sink(progress=progress, json_output=args.json)
    else:
        sink = make_sink(progress=progress, json_output=args.json)
    try:
        command(args, sink)
        return EXIT_OK
    except BacpacError as e:
        return _fail(sink, str(e), e.exit_code, args.command)
    except KeyboardInterrupt as e:
        interrupted = interruption(e)
        return _fail(sink, str(interrupted), interrupted.exit_code, args.command)
    except Exception as e:  # a bug: still one line, and the details on request
        if os.environ.get("BACPAC_DEBUG"):
            raise
        return _fail(sink, internal_error(e), EXIT_FAILED, args.command)
    finally:
        sink.close()


def _fail(sink: Sink, message: str, code: int, command: str) -> int:
    sink.emit(RunFailed(command, message, code))
    sink.close()
    try:
        print(f"bacpac: {message}", file=sys.stderr)
    except OSError:  # stderr's reader is gone too: the exit status is all that is left
        pass
    return code
