"""Parsing of "[user@]host:path" operands into Endpoints, as scp and rsync read them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import UsageError


@dataclass(frozen=True)
class Endpoint:
    """Where a path lives: `host` is None for the local machine."""

    path: str
    host: Optional[str] = None
    user: Optional[str] = None

    @property
    def is_local(self) -> bool:
        return self.host is None

    def __str__(self) -> str:
        """The operand as the user typed it, user included: reports show it back."""
        if self.host is None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user is not None else ""
        return f"{user}{host}:{self.path}"


def parse_endpoint(text: str) -> Endpoint:
    """Split "[user@]host:path" (host may be "[v6addr]"); no colon, or a slash first, is local.

    As with scp, a path that must contain a colon can be written "./a:b".
    """
    if not text:
        raise UsageError("empty path")
    bracketed = re.fullmatch(r"((?:[^@/:\[]*@)?)\[([^\]]*)\]:(.*)", text, re.DOTALL)
    if bracketed:
        return _remote(bracketed.group(1) + bracketed.group(2), bracketed.group(3), text)
    if text.startswith("[") or "@[" in text.split("/", 1)[0]:
        raise UsageError(f"{text}: expected [host]:path")
    colon = text.find(":")
    slash = text.find("/")
    if colon < 0 or (0 <= slash < colon):
        return Endpoint(path=text)
    return _remote(text[:colon], text[colon + 1 :], text)


def _remote(userhost: str, path: str, text: str) -> Endpoint:
    user: Optional[str] = None
    if "@" in userhost:
        user, _, host = userhost.rpartition("@")
        if not user:
            raise UsageError(f"{text}: empty user name before '@'")
    else:
        host = userhost
    if not host:
        raise UsageError(f"{text}: empty host name before ':'")
    if not path:
        raise UsageError(f"{text}: no path after '{host}:'")
    return Endpoint(path=path, host=host, user=user)
