"""Fixture: a second host in a network namespace, as the benchmark makes (bench/netns.py).

# Strategy: a namespace of this test session's own (its name and a /30 of 10.251.0.0/16 drawn
# from the session's pid, and checked free, since other sessions on this machine may hold
# one), joined to the root namespace by a veth pair with no rate limit, and an sshd started
# inside it with `ip netns exec`. A client reaches it at the namespace's address over the veth
# pair, a real network hop that is not loopback; the files it writes are on this machine's
# file system, so a test reads them back directly. Namespace, pair and sshd are removed when
# the session ends, on failure too. Without root or a working `ip netns` the fixture skips,
# saying why.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from typing import Iterator

import pytest

from fixtures_sshd import SshServer, start_sshd
from loopback_sshd import SshdError, sshd_available
from veth import Netns, NetnsError, veth_namespace

__all__ = ["netns_sshd", "Netns", "network_namespace", "netns_unavailable"]

NETWORK = ipaddress.ip_network("10.251.0.0/16")


def netns_unavailable() -> str:
    """Why a network namespace cannot be made here, or "" when it can."""
    if os.geteuid() != 0:
        return "needs root for a network namespace (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` for a network namespace"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns does not work here: {done.stderr.strip()}"
    return ""


def _addresses_in_use() -> str:
    return subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /30 of NETWORK that no interface here holds, the first tried drawn from `seed`."""
    subnets = list(NETWORK.subnets(new_prefix=30))
    used = _addresses_in_use()
    for step in range(len(subnets)):
        subnet = subnets[(seed + step) % len(subnets)]
        if f" {subnet[1]}/" not in used and f" {subnet[2]}/" not in used:
            return subnet  # type: ignore[return-value]
    raise NetnsError(f"no free /30 left in {NETWORK}")


def _remove_stale() -> None:
    """The namespaces (and veth ends) of earlier sessions that were killed before their
    teardown: named after a process that no longer exists."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(r"^bacpac-test-(\d+)\b", listed, re.MULTILINE):
        if not os.path.exists(f"/proc/{name}"):
            subprocess.run(["ip", "netns", "del", f"bacpac-test-{name}"], capture_output=True)
            subprocess.run(["ip", "link", "del", f"btH{name}"[:15]], capture_output=True)


@contextlib.contextmanager
def network_namespace() -> Iterator[Netns]:
    """A namespace of this process's own, joined to this one by a veth pair."""
    _remove_stale()
    pid = os.getpid()
    subnet = _free_subnet(pid)
    ns = Netns(f"bacpac-test-{pid}", f"btH{pid}"[:15], f"btN{pid}"[:15],
               str(subnet[1]), str(subnet[2]))
    with veth_namespace(ns):
        yield ns


@pytest.fixture(scope="session")
def netns_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server inside a network namespace of this session, reached over a veth
    pair at its own address (10.251.x.y): `Host testhost` in its config_path, as `sshd`."""
    why_not = sshd_available() or netns_unavailable()
    if why_not:
        pytest.skip(why_not)
    with contextlib.ExitStack() as stack:
        try:
            ns = stack.enter_context(network_namespace())
            server = stack.enter_context(start_sshd(
                str(tmp_path_factory.mktemp("netns-sshd")), listen=ns.address,
                prefix=ns.prefix))
        except (NetnsError, SshdError) as e:
            pytest.fail(f"the namespace's sshd: {e}")
        yield server
