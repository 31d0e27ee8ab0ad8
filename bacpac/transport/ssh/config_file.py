"""ssh_config read here, for hosts without the OpenSSH client (config.py asks `ssh -G` first).

# Strategy: the command line (-l, -p, -i, -o) is written as a block of global lines *ahead of*
# the config files' text, and the whole is read as one file of ssh_config(5): "Keyword
# argument" lines ("=" optional, an argument in double quotes taken whole), split into Host
# and Match blocks. A lookup walks the blocks in order and keeps, from each block that applies,
# the first value of every keyword and every IdentityFile in turn: OpenSSH's rule. Match
# knows all, canonical (never true: no canonicalisation here), final, host, originalhost,
# user, localuser and exec; anything else is refused rather than misread. Values are
# returned as written, but for %h in HostName and %h/%p/%r in ProxyJump: config.py expands
# the tokens of the keys it uses, with expand() here, which Match exec uses too. A global
# Include (before any Host or Match line, or under "Host *") is replaced by the text of the
# files it names, as OpenSSH reads them (relative to ~/.ssh, or /etc/ssh for the system file;
# globs sorted; a missing file skipped). An Include inside another block, which OpenSSH
# applies only when that block matches, is refused rather than misread.
"""
from __future__ import annotations

import fnmatch
import getpass
import glob
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ...errors import UsageError

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
MATCH_EXEC_TIMEOUT = 30.0  # seconds: a Match exec command that hangs must not hang bacpac
_MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH: an Include loop ends here
_GLOBAL_HEADERS = ("host *", "match all")


def lookup(host: str, command_line: str, path: Optional[str]) -> tuple[Optional[str], dict]:
    """(the config file named in messages, the options for `host`) from `command_line` (global
    config lines) and the -F file, or without one ~/.ssh/config then the system file."""
    config_file, text = read_config(path)
    try:
        return config_file, _lookup(_parse(command_line + text), host)
    except ValueError as e:
        raise UsageError(f"{config_file or 'ssh options'}: {e}") from None


def read_config(path: Optional[str]) -> tuple[Optional[str], str]:
    """The -F file alone, or as ssh does without -F: ~/.ssh/config, then /etc/ssh/ssh_config,
    with their Includes in place."""
    user_dir = os.path.expanduser("~/.ssh")
    if path is not None:
        return path, _with_includes(path, user_dir, 0)
    user_file = os.path.join(user_dir, "config")
    found = [(p, base) for p, base in ((user_file, user_dir), (SYSTEM_CONFIG, "/etc/ssh"))
             if os.path.isfile(p)]
    # "Host *" so the system file's leading global lines do not join the user file's last block.
    text = "\nHost *\n".join(_with_includes(p, base, 0) for p, base in found)
    return (found[0][0] if found else None), text


def _with_includes(path: str, base: str, depth: int) -> str:
    """The text of one config file, each global Include replaced by the files it names."""
    lines = []
    header = "Host *"  # the block a line belongs to; global lines act as under "Host *"
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        words = line.split(None, 1)
        keyword = words[0].lower() if words else ""
        if keyword in ("host", "match"):
            header = line.strip()
        if keyword != "include":
            lines.append(line)
            continue
        where = f"{path} line {number}"
        if " ".join(header.lower().split()) not in _GLOBAL_HEADERS:
            raise UsageError(f"{where}: an Include inside {header!r} is read only by the "
                             "OpenSSH client (ssh), which is not installed here: install it, "
                             "or move the Include before the first Host or Match line")
        if depth >= _MAX_DEPTH:
            raise UsageError(f"{where}: Include nested more than {_MAX_DEPTH} deep (a loop?)")
        for included in _include_paths(words[1] if len(words) > 1 else "", base):
            lines += [_with_includes(included, base, depth + 1), header]
    return "\n".join(lines) + "\n"


def _include_paths(value: str, base: str) -> list[str]:
    """The files one Include names: ~ expanded, relative ones under `base`, globs sorted."""
    paths = []
    for pattern in value.split():
        pattern = os.path.expanduser(pattern)
        if not os.path.isabs(pattern):
            pattern = os.path.join(base, pattern)
        paths += [p for p in sorted(glob.glob(pattern)) if os.path.isfile(p)]
    return paths


def read_text(path: str) -> str:
    """A config file's text; one that cannot be read is a UsageError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read ssh config: {getattr(e, 'strerror', None) or e}")




# ---- parsing -----------------------------------------------------------------------------

_LINE = re.compile(r"(\w+)(?:\s*=\s*|\s+)(.+)")
_MATCH_ALONE = ("all", "canonical", "final")  # Match criteria that take no argument
_MATCH_WITH_ARGUMENT = ("host", "originalhost", "user", "localuser", "exec")


@dataclass(frozen=True)
class _Criterion:
    """One criterion of a Match line: `Match !user root` is ("user", "root", negated)."""

    kind: str
    argument: str
    negated: bool


@dataclass
class _Block:
    """The lines under one Host or Match line (the lines before the first: under "Host *")."""

    hosts: tuple[str, ...] = ()  # a Host line's patterns
    criteria: Optional[tuple[_Criterion, ...]] = None  # a Match line's, None for Host
    options: list[tuple[str, str]] = field(default_factory=list)  # (lowercase key, value)


def _parse(text: str) -> list[_Block]:
    """The blocks of a config text; a line that cannot be read is a ValueError."""
    blocks = [_Block(hosts=("*",))]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"cannot read the line {line!r}")
        key, value = match.group(1).lower(), match.group(2)
        if key == "host":
            blocks.append(_Block(hosts=tuple(_words(value, line))))
        elif key == "match":
            blocks.append(_Block(criteria=_criteria(value, line)))
        else:
            blocks[-1].options.append((key, _unquote(value)))
    return blocks


def _words(value: str, line: str) -> list[str]:
    """A Host or Match line's words, split as a shell would (quotes group words)."""
    try:
        return shlex.split(value)
    except ValueError:
        raise ValueError(f"unbalanced quotes in the line {line!r}") from None


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value


def _criteria(value: str, line: str) -> tuple[_Criterion, ...]:
    """A Match line's criteria, checked as ssh checks them."""
    words, criteria = _words(value, line), []
    while words:
        word = words.pop(0)
        kind = word.lstrip("!").lower()
        if kind in _MATCH_WITH_ARGUMENT:
            if not words:
                raise ValueError(f"Match {kind} needs an argument, in the line {line!r}")
            argument = words.pop(0)
        elif kind in _MATCH_ALONE:
            argument = ""
        else:
            raise ValueError(f"Match {kind} in the line {line!r} is read only by the OpenSSH "
                             "client (ssh), which is not installed here: install it")
        criteria.append(_Criterion(kind, argument, word.startswith("!")))
    kinds = [c.kind for c in criteria]
    if not kinds:
        raise ValueError(f"Match without criteria in the line {line!r}")
    if "all" in kinds and kinds[kinds.index("all"):] != ["all"]:
        raise ValueError(f"Match all must come last, in the line {line!r}")
    return tuple(criteria)


# ---- lookup ------------------------------------------------------------------------------

def _lookup(blocks: list[_Block], host: str) -> dict:
    """The options for `host`: lowercase keys, the first value of each, IdentityFile as the
    list of all. A config with `Match final` is read a second time, as ssh's final pass."""
    found: dict = {}
    final_pass = any(c.kind == "final" for b in blocks for c in b.criteria or ())
    _apply(blocks, host, found, final=not final_pass)
    if final_pass:
        _apply(blocks, host, found, final=True)
    found["hostname"] = expand(found.get("hostname", host), {"%h": host, "%%": "%"}, home=False)
    if "proxyjump" in found:
        found["proxyjump"] = expand(found["proxyjump"], _tokens(host, found), home=False)
    return found


def _apply(blocks: list[_Block], host: str, found: dict, final: bool) -> None:
    for block in blocks:
        if not _applies(block, host, found, final):
            continue
        for key, value in block.options:
            if key == "identityfile":
                if value not in found.setdefault(key, []):
                    found[key].append(value)
            elif key not in found:
                found[key] = value


def _applies(block: _Block, host: str, found: dict, final: bool) -> bool:
    if block.criteria is None:
        return _matches(block.hosts, host)
    for criterion in block.criteria:
        if criterion.kind == "all":
            return True
        if _holds(criterion, host, found, final) == criterion.negated:
            return False
    return True


def _holds(criterion: _Criterion, host: str, found: dict, final: bool) -> bool:
    """Whether one Match criterion holds, before its negation. Values set by earlier blocks
    count: `Match host` sees a HostName already given, `Match user` a User."""
    kind, patterns = criterion.kind, criterion.argument.split(",")
    if kind == "canonical":
        return False
    if kind == "final":
        return final
    if kind == "host":
        return _matches(patterns, found.get("hostname", host))
    if kind == "originalhost":
        return _matches(patterns, host)
    if kind == "user":
        return _matches(patterns, found.get("user") or local_user())
    if kind == "localuser":
        return _matches(patterns, local_user())
    return _exec_succeeds(expand(criterion.argument, _tokens(host, found), home=False))


def _matches(patterns: Sequence[str], name: str) -> bool:
    """Whether `name` matches a pattern list as ssh reads one: a negated pattern (!p) that
    matches rules the name out whatever else matches."""
    matched = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if fnmatch.fnmatch(name, pattern[1:]):
                return False
        elif fnmatch.fnmatch(name, pattern):
            matched = True
    return matched


def _exec_succeeds(command: str) -> bool:
    """Run a Match exec command with the user's shell, as ssh does: it matches if it exits 0.
    Its output is not shown, its complaints are."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        status, _, _ = run_alone([shell, "-c", command], MATCH_EXEC_TIMEOUT, stderr=None)
    except subprocess.TimeoutExpired:
        raise ValueError(f"Match exec {command!r} did not finish within "
                         f"{MATCH_EXEC_TIMEOUT:g} s") from None
    except OSError as e:
        raise ValueError(f"Match exec {command!r}: cannot run {shell}: {e.strerror}") from None
    return status == 0


def _tokens(host: str, found: dict) -> dict[str, str]:
    """The %-tokens as they stand while the config is read."""
    return tokens(host, found.get("hostname", host), int(found.get("port", 22)),
                  found.get("user") or local_user())


# ---- tokens and processes, shared with config.py -------------------------------------------

def tokens(alias: str, hostname: str, port: int, user: str) -> dict[str, str]:
    """ssh_config(5)'s %-tokens for one host, but for %l (see expand)."""
    return {"%d": os.path.expanduser("~"), "%u": local_user(), "%h": hostname, "%r": user,
            "%p": str(port), "%n": alias, "%i": str(os.getuid()),
            "%L": socket.gethostname().split(".")[0], "%%": "%"}


def expand(text: str, tokens: dict[str, str], home: bool = True) -> str:
    """%-tokens (%l, the local FQDN, looked up only when used: that lookup can take seconds)
    and, in a path (`home`), a leading ~."""
    def token(match: re.Match) -> str:
        if match.group(0) == "%l":
            return socket.getfqdn()
        return tokens.get(match.group(0), match.group(0))
    text = re.sub(r"%.", token, text)
    return os.path.expanduser(text) if home else text


def local_user() -> str:
    """The name of the user running bacpac."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return pwd.getpwuid(os.getuid()).pw_name


def run_alone(command: list[str], timeout: float,
              stderr: Optional[int] = subprocess.PIPE) -> tuple[int, str, Optional[str]]:
    """Run a command in a session of its own, so that whatever it starts and leaves behind
    past the deadline is killed with it (it would hold the pipes open); (status, output,
    error output). subprocess.TimeoutExpired after `timeout` seconds."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr, universal_newlines=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err
