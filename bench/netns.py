"""A second test host behind a 100 Mbit/s link, inside this machine.

# Strategy: a network namespace of our own, joined to the root namespace by a veth pair with a
# /30 of private addresses that exist nowhere but on these two ends, and tc's tbf on both ends
# so each direction carries at most the given rate (netem is not available here, so no added
# delay). An sshd started with `ip netns exec` in that namespace is the second host. Everything
# is removed when the block ends, on error and on Ctrl-C alike.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from veth import Netns, NetnsError, veth_namespace  # noqa: E402

__all__ = ["Netns", "NetnsError", "rate_limited_netns"]

NAME = f"bacpac-bench-{os.getpid()}"
HOST_IF = f"bbh{os.getpid() % 100000}"
NS_IF = f"bbn{os.getpid() % 100000}"
HOST_ADDR = "10.213.77.1"
NS_ADDR = "10.213.77.2"


@contextlib.contextmanager
def rate_limited_netns(rate: str = "100mbit") -> Iterator[Netns]:
    """A namespace at NS_ADDR, reached from here over a veth pair limited to `rate` each way."""
    if os.geteuid() != 0:
        raise NetnsError("needs root for the 100 Mbit/s host; run with --link loopback")
    with veth_namespace(Netns(NAME, HOST_IF, NS_IF, HOST_ADDR, NS_ADDR), rate) as ns:
        yield ns
