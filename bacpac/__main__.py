"""`python -m bacpac` and the `bacpac` command.

Importing bacpac.cli (Paramiko's and rich's modules among others) is a good part of the start,
long enough for a Ctrl-C typed at once to land in it, before cli.main catches interrupts: it
is told here as one line and exit 130, like one a moment later, never as a traceback."""
import json
import os
import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        _interrupted_at_start()
    cli_main()


def _interrupted_at_start() -> None:
    options = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    if "--json" in options:
        command = next((a for a in options if not a.startswith("-")), None)
        print(json.dumps({"command": command, "error": "interrupted by SIGINT",
                          "exit_code": 130, "status": "error"}), flush=True)
    print("bacpac: interrupted by SIGINT", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":
    main()
