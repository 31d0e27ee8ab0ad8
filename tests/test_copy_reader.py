"""The reading side of bacpac copy: what it chooses and how it reads, checked from outside.

The content's zstd level follows where the two helpers run (one host: a low level, as a link
of memory wants; two: zstd's default); the reader's END says the level it used, and --json
shows it. The copy itself is checked byte for byte by test_copy.py; here, that the choices
leave the tree the same.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bacpac.commands.copy import LINK_LEVEL, SAME_HOST_LEVEL, content_level
from clirun import bacpac, transport_for
from fixtures_tree import contents, listing, tree_src  # noqa: F401


def test_the_level_is_low_when_both_helpers_share_a_host() -> None:
    here = {"boot_id": "a", "netns": "net:[1]"}
    assert content_level(None, here, dict(here)) == SAME_HOST_LEVEL
    assert content_level(None, here, {"boot_id": "b", "netns": "net:[1]"}) == LINK_LEVEL
    # the same kernel behind another network namespace: maybe a shaped veth, as over a link
    assert content_level(None, here, {"boot_id": "a", "netns": "net:[2]"}) == LINK_LEVEL
    assert content_level(None, here, {"boot_id": "a", "netns": ""}) == LINK_LEVEL
    assert content_level(None, {}, {}) == LINK_LEVEL  # nobody said: as over a link
    assert content_level(7, here, dict(here)) == 7  # --level wins
    assert SAME_HOST_LEVEL < LINK_LEVEL


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_a_copy_on_one_host_compresses_at_the_low_level(transport: str, tree_src: Path,
                                                        tmp_path: Path, request,
                                                        no_helper_left) -> None:
    remote = transport_for(transport, request)
    dst = tmp_path / "dst"
    run = bacpac("copy", *remote.args(), "--no-progress", "--json", f"{tree_src}/",
                 remote.target(dst))
    assert run.returncode == 0, run.stderr
    assert run.summary["level"] == SAME_HOST_LEVEL
    assert listing(dst) == listing(tree_src) and contents(dst) == contents(tree_src)
    dst2 = tmp_path / "dst2"
    run = bacpac("copy", *remote.args(), "--no-progress", "--json", "--level", "6",
                 f"{tree_src}/", remote.target(dst2))
    assert run.returncode == 0, run.stderr
    assert run.summary["level"] == 6
    assert contents(dst2) == contents(tree_src)


def test_a_copy_to_a_host_in_another_network_namespace_compresses_as_over_a_link(
        netns_sshd, tree_src: Path, tmp_path: Path, no_helper_left) -> None:
    """The same kernel, so the same boot id, but behind a veth pair that may be shaped (as
    the benchmark's 100 Mbit/s host): zstd's default level, not the one-host level."""
    dst = tmp_path / "dst"
    run = bacpac("copy", "-F", netns_sshd.config_path, "--no-progress", "--json",
                 f"{tree_src}/", f"testhost:{dst}")
    assert run.returncode == 0, run.stderr
    assert run.summary["level"] == LINK_LEVEL
    assert listing(dst) == listing(tree_src) and contents(dst) == contents(tree_src)


def test_the_walk_ahead_gives_every_window_in_order_then_its_error() -> None:
    from remote_helper.jobs.copy import _Ahead

    def windows():
        yield from range(5)
        raise OSError(5, "the disk failed")

    ahead = _Ahead(windows(), "test-walk")
    got = []
    with pytest.raises(OSError, match="the disk failed"):
        for window in ahead:
            got.append(window)
    ahead.close()
    assert got == [0, 1, 2, 3, 4]


def test_the_walk_ahead_stops_when_its_reader_does() -> None:
    import itertools
    import threading

    from remote_helper.jobs.copy import _Ahead

    ahead = _Ahead(itertools.count(), "test-walk-endless")
    assert next(iter(ahead)) == 0
    ahead.close()  # an endless walk, DEPTH windows ahead, told to stop
    assert not [t for t in threading.enumerate() if t.name == "test-walk-endless"]
