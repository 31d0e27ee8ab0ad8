"""ssh_config read here, for hosts without the OpenSSH client (config.py asks `ssh -G` first).

# Strategy: paramiko.SSHConfig only parses, so the command line (-l, -p, -i, -o) is written as
# a block of global lines *ahead of* the config files' text and the whole is parsed as one
# file. Paramiko's lookup keeps the first value of every key and accumulates IdentityFile in
# order, which is exactly OpenSSH's rule, and it expands %h/%r/%u/%d/~ in the keys it knows.
# Paramiko does not follow Include: a global Include (before any Host or Match line, or under
# "Host *") is replaced by the text of the files it names, as OpenSSH reads them (relative to
# ~/.ssh, or /etc/ssh for the system file; globs sorted; a missing file skipped). An Include
# inside another block, which OpenSSH applies only when that block matches, is refused rather
# than misread.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

import paramiko

from ...errors import UsageError

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
_MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH: an Include loop ends here
_GLOBAL_HEADERS = ("host *", "match all")


def lookup(host: str, command_line: str, path: Optional[str]) -> tuple[Optional[str], dict]:
    """(the config file named in messages, the options for `host`) from `command_line` (global
    config lines) and the -F file, or without one ~/.ssh/config then the system file."""
    config_file, text = read_config(path)
    try:
        return config_file, _Config.from_text(command_line + text).lookup(host)
    except (paramiko.SSHException, ValueError, KeyError, OSError) as e:
        raise UsageError(f"{config_file or 'ssh options'}: {e}")


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


class _Config(paramiko.SSHConfig):
    """paramiko.SSHConfig that expands only the tokens a value holds.

    Paramiko computes every token a key allows, whether the value uses it or not, and one of
    them, %l, is the local host's FQDN: a reverse DNS lookup on every connection, which takes
    seconds where the local name does not resolve (paramiko issues #338 and #1900).
    """

    _value = ""

    def _tokenize(self, config: dict, target_hostname: str, key: str, value: str) -> str:
        self._value = value
        return super()._tokenize(config, target_hostname, key, value)

    def _allowed_tokens(self, key: str) -> list:
        return [token for token in super()._allowed_tokens(key) if token in self._value]
