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
import subprocess
from dataclasses import dataclass
from typing import Iterator

NAME = f"bacpac-bench-{os.getpid()}"
HOST_IF = f"bbh{os.getpid() % 100000}"
NS_IF = f"bbn{os.getpid() % 100000}"
HOST_ADDR = "10.213.77.1"
NS_ADDR = "10.213.77.2"


class NetnsError(Exception):
    """The namespace, the veth pair or the rate limit could not be set up."""


@dataclass(frozen=True)
class Netns:
    """A namespace reached at `address`; `prefix` runs a command inside it."""

    name: str
    address: str
    rate: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def _ip(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {done.stderr.strip()}")


def _tbf(prefix: list[str], dev: str, rate: str) -> list[str]:
    # burst covers one GSO packet of 64 KiB, or tbf drops it; latency bounds the queue
    return [*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
            "burst", "128kb", "latency", "50ms"]


def _setup(ns: Netns) -> None:
    inside = ns.prefix
    _ip("ip", "netns", "add", ns.name)
    _ip("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
    _ip("ip", "link", "set", NS_IF, "netns", ns.name)
    _ip("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
    _ip("ip", "link", "set", HOST_IF, "up")
    _ip(*inside, "ip", "addr", "add", f"{ns.address}/30", "dev", NS_IF)
    _ip(*inside, "ip", "link", "set", NS_IF, "up")
    _ip(*inside, "ip", "link", "set", "lo", "up")
    _ip(*_tbf([], HOST_IF, ns.rate))
    _ip(*_tbf(inside, NS_IF, ns.rate))


def _teardown(ns: Netns) -> None:
    # deleting the namespace destroys its veth end, and with it the pair
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)


@contextlib.contextmanager
def rate_limited_netns(rate: str = "100mbit") -> Iterator[Netns]:
    """A namespace at NS_ADDR, reached from here over a veth pair limited to `rate` each way."""
    if os.geteuid() != 0:
        raise NetnsError("needs root for the 100 Mbit/s host; run with --link loopback")
    ns = Netns(NAME, NS_ADDR, rate)
    try:
        _setup(ns)
        yield ns
    finally:
        _teardown(ns)
