"""The command line: argparse → one call per command; errors → exit codes (the only sys.exit)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Optional, Sequence

from . import __version__
from .dup import DupRequest, run_dup
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, BacpacError, UsageError
from .events import Sink
from .pipeline import StreamSettings
from .remote import ConnectOptions
from .report import make_sink
from .spec import parse_endpoint
from .ssh import SshOptions, parse_o_option

SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """ "64K", "4M", "1G" or a byte count; for argparse."""
    match = re.fullmatch(r"(\d+)([kmg]?)(i?b)?", text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 64K, 4M)")
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def _ssh_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    ssh = parent.add_argument_group("SSH (as OpenSSH's ssh)")
    ssh.add_argument("-F", dest="ssh_config", metavar="FILE", help="ssh_config file "
                     "(default ~/.ssh/config)")
    ssh.add_argument("-p", dest="port", type=int, metavar="PORT", help="port on the remote host")
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
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bacpac", description="Duplicate disks between Linux hosts over SSH, "
        "proven byte for byte by sha256.")
    parser.add_argument("--version", action="version", version=f"bacpac {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = _ssh_parent()
    dup = commands.add_parser(
        "dup", parents=[parent], help="duplicate a disk or image onto a target",
        description="Duplicate SOURCE (a block device or image file) onto TARGET, a block "
        "device or image file on [USER@]HOST:PATH, or a local path. Holes and zero blocks are "
        "not sent; the target's sha256 is checked against the source's.")
    dup.add_argument("source", metavar="SOURCE")
    dup.add_argument("target", metavar="[USER@]HOST:TARGET")
    dup.add_argument("--force", action="store_true", help="overwrite an existing block device")
    dup.add_argument("--verify", action="store_true",
                     help="re-read the target from disk after writing and compare")
    dup.add_argument("--level", type=int, default=1, choices=range(1, 20), metavar="1-19",
                     help="zstd compression level (default 1)")
    dup.add_argument("--block-size", type=parse_size, default=4 << 20, metavar="SIZE",
                     help="bytes per compressed block (default 4M)")
    dup.set_defaults(run=_cmd_dup)
    return parser


def connect_options(args: argparse.Namespace) -> ConnectOptions:
    ssh = SshOptions(
        config_file=args.ssh_config, port=args.port, identity_files=tuple(args.identity),
        login_name=args.login, options=tuple(parse_o_option(o) for o in args.ssh_options))
    return ConnectOptions(ssh=ssh, sudo=args.sudo, remote_python=args.remote_python,
                          interactive=sys.stdin.isatty())


def _cmd_dup(args: argparse.Namespace, sink: Sink) -> None:
    if args.block_size > 32 << 20:
        raise UsageError(f"--block-size {args.block_size}: at most 32M")
    target = parse_endpoint(args.target)
    if target.user is None and args.login:
        target = type(target)(target.path, target.host, args.login)
    request = DupRequest(source=args.source, target=target, force=args.force, verify=args.verify,
                         stream=StreamSettings(block_size=args.block_size, level=args.level))
    run_dup(request, connect_options(args), sink)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the `bacpac` command."""
    args = build_parser().parse_args(argv)
    sys.exit(run(args.run, args))


def run(command: Callable[[argparse.Namespace, Sink], None], args: argparse.Namespace) -> int:
    sink = make_sink(progress=not args.no_progress, json_output=args.json)
    try:
        command(args, sink)
        return EXIT_OK
    except BacpacError as e:
        return _fail(sink, str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail(sink, "interrupted", EXIT_INTERRUPTED)
    except Exception as e:  # a bug: still one line, and the details on request
        if os.environ.get("BACPAC_DEBUG"):
            raise
        return _fail(sink, f"internal error: {type(e).__name__}: {e} "
                     "(set BACPAC_DEBUG=1 for the traceback)", EXIT_FAILED)
    finally:
        sink.close()


def _fail(sink: Sink, message: str, code: int) -> int:
    sink.close()
    print(f"bacpac: {message}", file=sys.stderr)
    return code
