"""A network namespace joined to this one by a veth pair: the second host of the benchmark
(bench/netns.py, behind a rate limit) and of the tests (tests/fixtures_netns.py).

# Strategy: the namespace, the pair and the two /30 addresses are made with iproute2's `ip`,
# one command a step, each failure raised with the command and what it printed. An sshd started
# with `ip netns exec` inside is then a real network hop that is not loopback. With a rate, tc's
# tbf on both ends caps each direction (netem is not available here, so no added delay).
# Deleting the namespace destroys its veth end and with it the pair; the host end is deleted
# too in case the namespace was never made. Everything goes when the block ends, on error and
# on Ctrl-C alike.
"""
from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from typing import Iterator, Optional


class NetnsError(Exception):
    """The namespace, the veth pair or the rate limit could not be set up."""


@dataclass(frozen=True)
class Netns:
    """A namespace reached from here at `address`; `prefix` runs a command inside it."""

    name: str
    host_if: str
    ns_if: str
    host_address: str
    address: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def ip(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {done.stderr.strip()}")


def _tbf(prefix: list[str], dev: str, rate: str) -> list[str]:
    # burst covers one GSO packet of 64 KiB, or tbf drops it; latency bounds the queue
    return [*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
            "burst", "128kb", "latency", "50ms"]


def remove(ns: Netns) -> None:
    """The namespace and the host's end of its pair, as far as they exist."""
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
    subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True)


@contextlib.contextmanager
def veth_namespace(ns: Netns, rate: Optional[str] = None) -> Iterator[Netns]:
    """`ns` made, with `ns.address` reachable from here over the pair (at most `rate` each
    way when given, e.g. "100mbit"), and removed when the block ends."""
    inside = ns.prefix
    try:
        ip("ip", "netns", "add", ns.name)
        ip("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        ip("ip", "link", "set", ns.ns_if, "netns", ns.name)
        ip("ip", "addr", "add", f"{ns.host_address}/30", "dev", ns.host_if)
        ip("ip", "link", "set", ns.host_if, "up")
        ip(*inside, "ip", "addr", "add", f"{ns.address}/30", "dev", ns.ns_if)
        ip(*inside, "ip", "link", "set", ns.ns_if, "up")
        ip(*inside, "ip", "link", "set", "lo", "up")
        if rate:
            ip(*_tbf([], ns.host_if, rate))
            ip(*_tbf(inside, ns.ns_if, rate))
        yield ns
    finally:
        remove(ns)
