"""Fan-out: one read of the source feeds a target on one host and savesets on others.

Two real OpenSSH servers (the session's `sshd` as hosta, a second from `sshd_with` as hostb),
reached through one ssh_config that names both. Both run on this machine, so a test reads
what each host wrote directly. Every test runs the real command line, as a user would.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bacpac import cli
from clirun import (MiB, Result, bacpac, finish, random_image, sha256_of, start, wait_until,
                    write_file)
from fixtures_leaks import Leftovers
from fixtures_sshd import helper_pids
from fixtures_disk import requires_root

HOSTB_SETTINGS = ("MaxSessions 11",)  # any setting of its own: a server apart from `sshd`


def two_hosts(config: Path, a, b) -> str:
    """An ssh_config naming server a hosta and server b hostb."""
    config.write_text(
        Path(a.config_path).read_text().replace("Host testhost", "Host hosta") + "\n"
        + Path(b.config_path).read_text().replace("Host testhost", "Host hostb"))
    return str(config)


@pytest.fixture
def hosts(sshd, sshd_with, tmp_path, no_helper_left):
    """(ssh_config naming hosta and hostb, the hostb server): both on 127.0.0.1, so that
    these tests run unprivileged too."""
    other = sshd_with(*HOSTB_SETTINGS)
    return two_hosts(tmp_path / "ssh_config", sshd, other), other


@pytest.fixture(params=["netns", "loopback"])
def far_hosts(request, sshd, tmp_path, no_helper_left):
    """As `hosts`, with hostb in a network namespace reached over a veth pair, as the
    benchmark's second host (root only); and again with hostb on 127.0.0.1 (anyone)."""
    other = (request.getfixturevalue("netns_sshd") if request.param == "netns"
             else request.getfixturevalue("sshd_with")(*HOSTB_SETTINGS))
    return two_hosts(tmp_path / "ssh_config", sshd, other), other


@pytest.fixture
def image(tmp_path) -> Path:
    """12 MiB with 5 MiB of random data and holes between: 3 blocks of data of 1 MiB frames."""
    return write_file(tmp_path / "disk.img", 12 * MiB,
                      {0: os.urandom(2 * MiB), 5 * MiB: os.urandom(MiB), 9 * MiB: os.urandom(2 * MiB)})


def dup(config: str, *args: object) -> Result:
    return bacpac("dup", "-F", config, "--no-progress", "--json", "--block-size", "1M", *args)


def names_in(directory: Path) -> list[str]:
    """Every name in directory, temporary ones included."""
    return sorted(os.listdir(directory))


def restored_by_zstd(saveset: Path) -> str:
    out = subprocess.run(["zstd", "-q", "-d", "-c", str(saveset)], check=True,
                         stdout=subprocess.PIPE).stdout
    return hashlib.sha256(out).hexdigest()


def test_one_read_feeds_a_target_on_a_and_a_saveset_on_b(far_hosts, image, tmp_path) -> None:
    config, server_b = far_hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run = dup(config, image, f"hosta:{a}/t.img", "--saveset", f"hostb:{b}/s.bps")
    assert run.returncode == 0, run.stderr
    if server_b.hostname != "127.0.0.1":  # B was reached over the veth pair, not loopback
        log = Path(server_b.log_path).read_text()
        assert "Connection from 10.251." in log and "Connection from 127." not in log, log
    want = sha256_of(image)
    assert sha256_of(a / "t.img") == want
    assert names_in(b) == ["s.bps"]
    assert restored_by_zstd(b / "s.bps") == want
    summary = run.summary
    assert summary["sha256"] == want
    # read once: the image's bytes, once, whatever the number of hosts
    assert summary["bytes_read"] == summary["bytes_total"] == image.stat().st_size
    hosts_seen = {(h["host"], h["role"]): h for h in summary["hosts"]}
    assert set(hosts_seen) == {("hosta", "target"), ("hostb", "saveset")}
    sent_a, sent_b = (hosts_seen[key]["bytes_sent"] for key in hosts_seen)
    assert sent_a == sent_b > 0  # the same frames to each
    assert summary["bytes_sent"] == sent_a + sent_b
    assert summary["savesets"] == [f"hostb:{b}/s.bps"]
    # bacpac restore reads it back from B
    restored = tmp_path / "restored.img"
    back = bacpac("restore", "-F", config, "--no-progress", f"hostb:{b}/s.bps", restored)
    assert back.returncode == 0, back.stderr
    assert sha256_of(restored) == want
    check = bacpac("verify", "-F", config, f"hostb:{b}/s.bps")
    assert check.returncode == 0, check.stderr


def test_two_savesets_one_beside_the_target_one_on_another_host(hosts, image, tmp_path) -> None:
    config, _ = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run = dup(config, image, f"hosta:{a}/t.img", "--saveset", f"{a}/own.bps",
              "--saveset", f"hostb:{b}/other.bps")
    assert run.returncode == 0, run.stderr
    want = sha256_of(image)
    assert sha256_of(a / "t.img") == want
    assert names_in(a) == ["own.bps", "t.img"] and names_in(b) == ["other.bps"]
    assert restored_by_zstd(a / "own.bps") == restored_by_zstd(b / "other.bps") == want
    assert run.summary["saveset"] == f"{a}/own.bps"
    assert run.summary["savesets"] == [f"hosta:{a}/own.bps", f"hostb:{b}/other.bps"]


def test_backup_to_two_hosts(hosts, image, tmp_path) -> None:
    config, _ = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run = bacpac("backup", "-F", config, "--no-progress", "--json", image,
                 f"hosta:{a}/s.bps", f"hostb:{b}/s.bps")
    assert run.returncode == 0, run.stderr
    want = sha256_of(image)
    assert restored_by_zstd(a / "s.bps") == restored_by_zstd(b / "s.bps") == want
    assert names_in(a) == names_in(b) == ["s.bps"]
    assert sorted(h["host"] for h in run.summary["hosts"]) == ["hosta", "hostb"]
    assert {h["role"] for h in run.summary["hosts"]} == {"saveset"}


def test_a_refused_target_on_a_leaves_nothing_on_b(hosts, image, tmp_path) -> None:
    config, _ = hosts
    b = tmp_path / "b"
    b.mkdir()
    run = dup(config, image, f"hosta:{tmp_path}/missing/t.img", "--saveset", f"hostb:{b}/s.bps")
    line = run.one_error_line(2, "hosta", f"{tmp_path}/missing")
    assert "hostb" not in line
    assert names_in(b) == []


@requires_root
def test_a_too_small_target_on_a_leaves_nothing_on_b(sshd, netns_sshd, image, tmp_path,
                                                     loop_device, no_helper_left) -> None:
    """hostb in a network namespace (root is needed for the loop device anyway)."""
    config = two_hosts(tmp_path / "ssh_config", sshd, netns_sshd)
    b = tmp_path / "b"
    b.mkdir()
    device = loop_device(4 * MiB)
    run = dup(config, image, f"hosta:{device}", "--force", "--saveset", f"hostb:{b}/s.bps")
    run.one_error_line(2, "hosta", device, "smaller")
    assert names_in(b) == []


def test_a_refused_saveset_on_b_leaves_a_untouched(hosts, image, tmp_path) -> None:
    config, _ = hosts
    a = tmp_path / "a"
    a.mkdir()
    old = random_image(a / "t.img", 12 * MiB, seed=3)
    before = sha256_of(old), old.stat().st_mtime_ns
    run = dup(config, image, f"hosta:{a}/t.img", "--saveset", f"hostb:{tmp_path}/nodir/s.bps")
    run.one_error_line(2, "hostb", f"{tmp_path}/nodir")
    assert (sha256_of(old), old.stat().st_mtime_ns) == before  # not even opened for writing
    assert names_in(a) == ["t.img"]
    # and a target that did not exist is not made
    run = dup(config, image, f"hosta:{a}/new.img", "--saveset", f"hostb:{tmp_path}/nodir/s.bps")
    assert run.returncode == 2
    assert names_in(a) == ["t.img"]


def test_a_helper_killed_on_b_fails_the_run_naming_b(hosts, tmp_path) -> None:
    config, server_b = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    source = random_image(tmp_path / "random.img", 16 * MiB, seed=7)
    began = time.monotonic()
    proc = start("dup", "-F", config, "--no-progress", "--block-size", "1M", "--bwlimit", "2M",
                 source, f"hosta:{a}/t.img", "--saveset", f"hostb:{b}/s.bps")
    wait_until(lambda: (a / "t.img").exists() and bool(helper_pids(server_b)), 30,
               "the helpers on both hosts", proc)
    time.sleep(1.0)  # a few blocks in
    for pid in helper_pids(server_b):
        os.kill(pid, signal.SIGKILL)
    run = finish(proc, began)
    line = run.one_error_line(1, "hostb", alone=False)
    assert f"{b}/s.bps" in line, line
    assert "partly written" in line  # the target on A was begun
    # and the line, which leads with B's saveset, says which target that is
    assert f"the target hosta:{a}/t.img was partly written" in line, line
    assert names_in(b) == []  # no saveset, under any name


def test_delta_with_a_saveset_elsewhere_gives_a_complete_saveset(hosts, image, tmp_path) -> None:
    config, _ = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    first = dup(config, image, f"hosta:{a}/t.img")
    assert first.returncode == 0, first.stderr
    write_file(image, 12 * MiB, {5 * MiB + 4096: os.urandom(8192)}, keep=True)  # 1 block changed
    run = bacpac("dup", "-F", config, "--no-progress", "--json", "--delta", image,
                 f"hosta:{a}/t.img", "--saveset", f"hostb:{b}/s.bps")  # 64 KiB blocks
    assert run.returncode == 0, run.stderr
    want = sha256_of(image)
    assert sha256_of(a / "t.img") == want
    assert restored_by_zstd(b / "s.bps") == want
    summary = run.summary
    assert summary["blocks_matched"] > 0 and summary["blocks_sent"] > 0
    sent = {h["role"]: h["bytes_sent"] for h in summary["hosts"]}
    assert sent["target"] < 512 << 10 < 4 * MiB < sent["saveset"]  # A: matches; B: the bytes


def test_a_second_delta_fan_out_reads_the_target_through_its_digest_cache(hosts, tmp_path):
    """As a plain --delta dup: the first run keeps the target's digests beside it, the second
    uses them and reads only the held-back head of the target (1 MiB), not its 8 MiB."""
    config, _ = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    source = random_image(tmp_path / "random.img", 8 * MiB, seed=11)

    def fan(saveset: str) -> dict:
        run = bacpac("dup", "-F", config, "--no-progress", "--json", "--delta", source,
                     f"hosta:{a}/t.img", "--saveset", f"hostb:{b}/{saveset}")
        assert run.returncode == 0, run.stderr
        assert sha256_of(a / "t.img") == sha256_of(source)
        assert restored_by_zstd(b / saveset) == sha256_of(source)
        return run.summary

    first = fan("1.bps")
    assert first["digest_cache"] == "none" and first["digest_cache_kept"] is True, first
    write_file(source, 8 * MiB, {5 * MiB + 100: os.urandom(1000)}, keep=True)
    second = fan("2.bps")
    assert second["digest_cache"] == "used", second
    assert second["target_read"] <= 1 * MiB, second
    assert second["blocks_sent"] == 1, second


@requires_root
def test_a_delta_fan_out_onto_a_device_trusts_its_cache_only_when_told(hosts, tmp_path,
                                                                       loop_device) -> None:
    """--nothing-else-writes-target reaches a fan-out's target helper as a plain dup's: a
    block device's digest cache is kept and used with it, and the device read whole without.
    The device here (its helper local, HOME in tmp_path, where it keeps a device's cache);
    the saveset on hostb."""
    from clirun import bacpac_env

    config, _ = hosts
    b = tmp_path / "b"
    b.mkdir()
    source = random_image(tmp_path / "random.img", 8 * MiB, seed=12)
    device = loop_device(9 * MiB)
    env = bacpac_env(HOME=str(tmp_path / "home"))

    def fan(*extra: str) -> dict:
        run = bacpac("dup", "-F", config, "--no-progress", "--json", "--delta", "--force",
                     *extra, source, device, "--saveset", f"hostb:{b}/s.bps", env=env)
        assert run.returncode == 0, run.stderr
        assert sha256_of(device, 8 * MiB) == sha256_of(source)
        assert restored_by_zstd(b / "s.bps") == sha256_of(source)
        assert [h["role"] for h in run.summary["hosts"]] == ["target", "saveset"]
        return run.summary

    assert fan()["target_read"] == 8 * MiB  # no flag: a device is read, and no cache kept
    assert fan("--nothing-else-writes-target")["digest_cache"] == "none"
    trusted = fan("--nothing-else-writes-target")
    assert trusted["digest_cache"] == "used" and trusted["target_read"] <= MiB, trusted


def test_leaks_on_success_and_on_failure(hosts, image, tmp_path, no_leaks: Leftovers) -> None:
    config, _ = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()

    def run(*argv: object) -> int:
        args = cli.build_parser().parse_args([str(arg) for arg in argv])
        return cli.run(args.run, args)

    assert run("dup", "-F", config, "--no-progress", image, f"hosta:{a}/t.img",
               "--saveset", f"hostb:{b}/s.bps") == 0
    assert no_leaks.leftovers() == []
    assert run("dup", "-F", config, "--no-progress", image, f"hosta:{a}/t2.img",
               "--saveset", f"hostb:{tmp_path}/nodir/s.bps") == 2
    assert no_leaks.leftovers() == []
    assert names_in(a) == ["t.img"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupt_leaves_no_saveset_anywhere(hosts, tmp_path, signum) -> None:
    config, server_b = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    source = random_image(tmp_path / "random.img", 16 * MiB, seed=8)
    began = time.monotonic()
    proc = start("dup", "-F", config, "--no-progress", "--block-size", "1M", "--bwlimit", "2M",
                 source, f"hosta:{a}/t.img", "--saveset", f"{a}/own.bps",
                 "--saveset", f"hostb:{b}/s.bps")
    wait_until(lambda: (a / "t.img").exists() and bool(helper_pids(server_b)), 30,
               "the helpers on both hosts", proc)
    time.sleep(1.0)
    proc.send_signal(signum)
    run = finish(proc, began)
    line = run.one_error_line(run.returncode, "hosta", "interrupted by",
                              signal.Signals(signum).name, alone=False)
    assert run.returncode != 0, line
    assert names_in(a) == ["t.img"] and names_in(b) == []


def test_an_output_named_twice_is_refused(hosts, image, tmp_path) -> None:
    config, _ = hosts
    b = tmp_path / "b"
    b.mkdir()
    run = dup(config, image, f"hosta:{tmp_path}/t.img", "--saveset", f"hostb:{b}/s.bps",
              "--saveset", f"hostb:{b}/./s.bps")
    run.one_error_line(2, "named twice")
    assert names_in(b) == [] and not (tmp_path / "t.img").exists()


def test_one_file_named_through_two_names_of_one_machine_is_refused(hosts, image,
                                                                    tmp_path) -> None:
    """hosta and hostb are one machine (one boot id), as an alias and an address of a standby
    are: the saveset on hostb at the target's path on hosta would replace the copied disk with
    a saveset, and the run said ok."""
    config, _ = hosts
    d = tmp_path / "d"
    d.mkdir()
    run = dup(config, image, f"hosta:{d}/t.img", "--saveset", f"hostb:{d}/t.img")
    line = run.one_error_line(2, f"hostb:{d}/t.img", "the saveset is the target itself",
                              f"hosta:{d}/t.img")
    assert "boot id" in line, line
    run = bacpac("backup", "-F", config, "--no-progress", image, f"hosta:{d}/s.bps",
                 f"hostb:{d}/./s.bps")
    run.one_error_line(2, f"hostb:{d}/./s.bps", "named twice", f"hosta:{d}/s.bps")
    assert names_in(d) == []


def read_chars() -> int:
    """Bytes this process has read by read(2) and its kin, all its threads together."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_the_source_is_read_once_for_two_hosts(hosts, tmp_path, no_leaks: Leftovers) -> None:
    """In this process, so that /proc/self/io counts the client's reads: the source's data
    once (16 MiB), not once per host (32), plus the little the client reads besides."""
    config, _ = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    source = random_image(tmp_path / "random.img", 16 * MiB, seed=9)
    args = cli.build_parser().parse_args(
        ["dup", "-F", config, "--no-progress", str(source), f"hosta:{a}/t.img",
         "--saveset", f"hostb:{b}/s.bps"])
    cli.run(args.run, args)  # the helper's payload built, the modules imported: not counted
    for path in (a / "t.img", b / "s.bps"):
        path.unlink()
    before = read_chars()
    assert cli.run(args.run, args) == 0
    read = read_chars() - before
    assert 16 * MiB <= read < 20 * MiB, read
    assert sha256_of(a / "t.img") == sha256_of(source)
    assert restored_by_zstd(b / "s.bps") == sha256_of(source)


def test_the_pacer_hears_the_least_idle_helper() -> None:
    """The level climbs only when every helper waits on its link: a busy one holds it."""
    from types import SimpleNamespace

    from bacpac.transport.fanout import Fanout
    from bacpac.transport.helper import ConnectOptions

    fan = Fanout(ConnectOptions())
    fan.legs = [SimpleNamespace(receiver=SimpleNamespace(helper_idle=idle))  # type: ignore
                for idle in (0.9, None)]
    assert fan.helper_idle() is None  # not every helper has said yet
    fan.legs[1].receiver.helper_idle = 0.2
    assert fan.helper_idle() == 0.2


def test_a_fan_out_with_helpers_on_the_oldest_python(image, tmp_path, no_helper_left) -> None:
    """Two local savesets (each its own helper, as a local subprocess), on Python 3.6 where
    this machine has it: PREPARED and COMMIT in the helper's oldest dialect."""
    from clirun import helper_pythons

    version, python = next(iter(helper_pythons().items()))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run = bacpac("backup", "--no-progress", "--json", "--remote-python", python, image,
                 a / "s.bps", b / "s.bps")
    assert run.returncode == 0, run.stderr
    assert run.summary["helper_python"].startswith(version)
    assert restored_by_zstd(a / "s.bps") == restored_by_zstd(b / "s.bps") == sha256_of(image)


def test_which_saveset_the_target_helper_writes_and_which_fan_out() -> None:
    from bacpac.cli import fan_out_savesets
    from bacpac.spec import Endpoint, parse_endpoint

    remote = parse_endpoint("root@hosta:/dev/sdb")
    assert fan_out_savesets(remote, []) == (None, ())
    # a plain PATH is on the target's host, and the first there is the target helper's own
    assert fan_out_savesets(remote, ["/b/1.bps", "root@hosta:/b/2.bps", "hostb:/b/3.bps"]) == (
        "/b/1.bps", (Endpoint("/b/2.bps", "hosta", "root"), Endpoint("/b/3.bps", "hostb")))
    # another user on the same host is another login: a helper of its own
    assert fan_out_savesets(remote, ["backup@hosta:/b/1.bps"]) == (
        None, (Endpoint("/b/1.bps", "hosta", "backup"),))
    local = parse_endpoint("/dev/sdb")
    assert fan_out_savesets(local, ["/b/1.bps", "hostb:/b/2.bps"]) == (
        "/b/1.bps", (Endpoint("/b/2.bps", "hostb"),))


def test_the_display_names_the_slowest_host_while_it_lags() -> None:
    from io import StringIO
    from types import SimpleNamespace

    from bacpac.transport.fanout import Fanout
    from bacpac.transport.helper import ConnectOptions
    from bacpac.ui.events import Counters, JobProgress, JobStarted
    from bacpac.ui.sinks import LogSink

    told: list = []
    fan = Fanout(ConnectOptions())
    fan._on_written = lambda written, host: told.append((written, host))
    a, b = (SimpleNamespace(written=0, host=host) for host in ("hosta", "hostb"))
    fan.legs = [a, b]  # type: ignore
    fan._written(a, 8 * MiB)  # type: ignore
    fan._written(b, 4 * MiB)  # type: ignore
    fan._written(b, 8 * MiB)  # type: ignore
    assert told == [(0, "hostb"), (4 * MiB, "hostb"), (8 * MiB, None)]

    stream = StringIO()
    sink = LogSink(stream, clock=iter(range(0, 100, 10)).__next__, interval=5.0)
    sink.emit(JobStarted("j", "dup", "disk.img", "hosta:/t.img", "hostb:/s.bps", 16 * MiB))
    counters = Counters("j", sink)
    counters.add(read=8 * MiB, sent=8 * MiB)
    counters.set_written(4 * MiB, "hostb")
    assert [event.slowest for event in [counters._snapshot()]] == ["hostb"]
    assert any(line.endswith("slowest hostb") for line in stream.getvalue().splitlines()), \
        stream.getvalue()
    assert JobProgress("j", 1, 1, 1).slowest is None  # a plain dup names none


def test_a_host_that_cannot_be_reached_fails_the_run_naming_it(hosts, image, tmp_path) -> None:
    config, _ = hosts
    closed = Path(config).read_text().split("Host hostb")[1].replace(
        "Host hostb", "")  # hostb's settings, on a port where nothing listens
    port = next(line for line in closed.splitlines() if "Port" in line)
    Path(config).write_text(Path(config).read_text() + "\nHost hostz"
                            + closed.replace(port, "    Port 1"))
    a = tmp_path / "a"
    a.mkdir()
    run = dup(config, image, f"hosta:{a}/t.img", "--saveset", f"hostz:{tmp_path}/s.bps")
    run.one_error_line(1, "hostz")
    assert names_in(a) == []


def test_a_dry_run_checks_the_saveset_on_b_and_writes_nothing(hosts, image, tmp_path) -> None:
    config, _ = hosts
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run = dup(config, image, f"hosta:{a}/t.img", "--saveset", f"hostb:{tmp_path}/nodir/s.bps",
              "--dry-run")
    run.one_error_line(2, "hostb", f"{tmp_path}/nodir")
    run = dup(config, image, f"hosta:{a}/t.img", "--saveset", f"hostb:{b}/s.bps", "--dry-run")
    assert run.returncode == 0, run.stderr
    assert (names_in(a), names_in(b)) == ([], [])
