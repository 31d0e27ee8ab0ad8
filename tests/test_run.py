"""bacpac run INVENTORY against real sshds: two hosts (one through an ssh_config alias, one
described in the inventory itself), jobs in parallel, --only, --dry-run, a failing job beside a
good one, hooks, and SIGTERM."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bacpac.commands.run.commandline import plan, ssh_config_text
from bacpac.inventory.load import load
from bacpac.inventory.model import Stamp
from clirun import (FAIL_WITHIN, MiB, Result, bacpac, bacpac_env, finish, random_image, sha256_of, start,
                    wait_until)


@pytest.fixture
def second(sshd_with):
    """A second OpenSSH server, reached with the settings the inventory gives it."""
    return sshd_with("LogLevel INFO")


def hosts_yaml(sshd, second) -> str:
    return f"""\
        hosts:
          testhost:
            ssh_config: {sshd.config_path}
          standby2:
            hostname: {second.hostname}
            port: {second.port}
            user: {second.user}
            identity_file: {second.key_path}
            known_hosts: {second.known_hosts}
        """


def inventory(tmp_path: Path, sshd, second, jobs: str, extra: str = "") -> str:
    path = tmp_path / "inventory.yml"
    body = "\n".join("  " + line for line in jobs.strip("\n").splitlines())
    text = _dedent(hosts_yaml(sshd, second)) + extra + "jobs:\n" + body + "\n"
    path.write_text(text)
    return str(path)


def _dedent(text: str) -> str:
    import textwrap
    return textwrap.dedent(text)


def json_lines(run: Result) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines()]


def restored_sha256(saveset) -> str:
    restored = subprocess.run(["zstd", "-d", "-q", "-c", str(saveset)], check=True,
                              stdout=subprocess.PIPE).stdout
    return hashlib.sha256(restored).hexdigest()


@pytest.fixture
def images(tmp_path):
    return [random_image(tmp_path / f"source{i}.img", 2 * MiB, seed=i) for i in range(3)]


def small_tree(tree):
    """A text file and a binary one in a subdirectory: what a copy job copies."""
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a" * 1000)
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
    return tree


def test_three_jobs_on_two_hosts_at_once(tmp_path, sshd, netns_sshd, images, no_helper_left):
    """standby2 in a network namespace, reached over a veth pair as the benchmark's second
    host is: a dup with its saveset there, a dup there, a copy there, and a backup beside."""
    tree = small_tree(tmp_path / "tree")
    path = inventory(tmp_path, sshd, netns_sshd, f"""
- name: disk1
  source: {images[0]}
  target: testhost:{tmp_path}/t1.img
  saveset: standby2:{tmp_path}/{{job}}-{{date}}.bps
- name: disk2
  source: {images[1]}
  target: standby2:{tmp_path}/t2.img
- name: tree
  type: copy
  source: {tree}
  target: standby2:{tmp_path}/mirror
- name: disk3
  type: backup
  source: {images[2]}
  target: testhost:{tmp_path}/{{job}}.bps
""")
    run = bacpac("run", "--jobs", "3", "--json", "--no-progress", path)
    assert run.returncode == 0, run.stderr
    jobs, overall = json_lines(run)[:-1], json_lines(run)[-1]
    assert sorted(j["job"] for j in jobs) == ["disk1", "disk2", "disk3", "tree"]
    assert {j["job"]: j["host"] for j in jobs}["disk2"] == "standby2"
    assert all(j["status"] == "ok" for j in jobs)
    assert (overall["command"], overall["status"], overall["jobs"]) == ("run", "ok", 4)
    assert sha256_of(tmp_path / "t1.img") == sha256_of(images[0])
    assert sha256_of(tmp_path / "t2.img") == sha256_of(images[1])
    saveset = tmp_path / f"disk1-{time.strftime('%Y-%m-%d')}.bps"
    assert restored_sha256(saveset) == sha256_of(images[0])
    assert restored_sha256(tmp_path / "disk3.bps") == sha256_of(images[2])
    diff = subprocess.run(["diff", "-r", str(tree), str(tmp_path / "mirror")],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert overall["bytes_read"] == 6 * MiB + 1000 + 256 * 40  # each image once, the tree
    disk1 = {j["job"]: j for j in jobs}["disk1"]
    assert disk1["bytes_read"] == 2 * MiB  # one read fed both hosts
    log = Path(netns_sshd.log_path).read_text()  # standby2 was reached over the veth pair
    assert "Connection from 10.251." in log and "Connection from 127." not in log, log


def test_only_runs_the_named_job(tmp_path, sshd, second, images):
    path = inventory(tmp_path, sshd, second, f"""
- name: a
  source: {images[0]}
  target: testhost:{tmp_path}/a.img
- name: b
  source: {images[1]}
  target: standby2:{tmp_path}/b.img
""")
    run = bacpac("run", "--only", "b", "--json", "--no-progress", path)
    assert run.returncode == 0, run.stderr
    assert [j.get("job") for j in json_lines(run)[:-1]] == ["b"]
    assert sha256_of(tmp_path / "b.img") == sha256_of(images[1])
    assert not (tmp_path / "a.img").exists()
    unknown = bacpac("run", "--only", "c", "--no-progress", path)
    unknown.one_error_line(2, "--only c", "no such job")


def test_dry_run_checks_every_job_and_writes_nothing(tmp_path, sshd, second, images):
    existing = tmp_path / "existing.img"
    existing.write_bytes(b"keep me" * 1000)
    path = inventory(tmp_path, sshd, second, f"""
- name: new
  source: {images[0]}
  target: testhost:{tmp_path}/new.img
  saveset: standby2:{tmp_path}/never.bps
- name: old
  source: {images[1]}
  target: standby2:{existing}
- name: back
  type: backup
  source: {images[2]}
  target: testhost:{tmp_path}/back.bps
""")
    before = sorted(p.name for p in tmp_path.iterdir())
    run = bacpac("run", "--dry-run", "--json", "--no-progress", "--only", "old", "--only",
                 "back", path)
    assert run.returncode == 0, run.stderr
    jobs = json_lines(run)[:-1]
    assert all(j["dry_run"] and j["status"] == "ok" for j in jobs), jobs
    assert {j["job"]: j.get("target_kind") for j in jobs} == {"old": "image file", "back": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert existing.read_bytes() == b"keep me" * 1000


def test_dry_run_refuses_what_the_run_would_refuse(tmp_path, sshd, second, images):
    path = inventory(tmp_path, sshd, second, f"""
- name: into-a-directory
  source: {images[0]}
  target: testhost:{tmp_path}/
""")
    run = bacpac("run", "--dry-run", "--no-progress", path)
    assert run.returncode == 1
    assert "is a directory" in run.stderr
    run.one_error_line(1, "1 of 1 jobs failed: into-a-directory", alone=False)


def test_a_failing_job_fails_the_run_and_the_good_one_completes(tmp_path, sshd, second,
                                                                   images, no_helper_left):
    path = inventory(tmp_path, sshd, second, f"""
- name: good
  source: {images[0]}
  target: standby2:{tmp_path}/good.img
- name: bad
  source: {tmp_path}/missing.img
  target: testhost:{tmp_path}/bad.img
""")
    run = bacpac("run", "--json", "--no-progress", path)
    line = run.one_error_line(1, "1 of 2 jobs failed: bad", alone=False)
    assert path in line
    jobs = {j["job"]: j for j in json_lines(run)[:-1]}
    assert jobs["good"]["status"] == "ok" and jobs["bad"]["status"] == "error"
    assert "missing.img" in jobs["bad"]["error"]
    assert sha256_of(tmp_path / "good.img") == sha256_of(images[0])
    assert not (tmp_path / "bad.img").exists()


def test_hooks_run_in_order_with_the_job_in_their_environment(tmp_path, sshd, second, images):
    log = tmp_path / "hooks.log"
    record = f"echo $BACPAC_JOB $BACPAC_TYPE $BACPAC_RESULT $BACPAC_DRY_RUN >> {log}"
    path = inventory(tmp_path, sshd, second, f"""
- name: ok
  source: {images[0]}
  target: testhost:{tmp_path}/ok.img
  before: 'echo before-ok $BACPAC_SOURCE $BACPAC_TARGETS >> {log}'
  after: '{record}'
- name: skipped
  source: {images[1]}
  target: testhost:{tmp_path}/skipped.img
  before: 'echo no snapshot today; exit 3'
  after: 'echo must-not-run >> {log}'
- name: broken
  source: {tmp_path}/missing.img
  target: standby2:{tmp_path}/broken.img
  after: '{record}'
  on_error: 'echo on_error $BACPAC_JOB "$BACPAC_ERROR" >> {log}'
""", extra=f"""\
hooks:
  before: 'echo run-before $BACPAC_TYPE >> {log}'
  after: 'echo run-after $BACPAC_RESULT >> {log}'
  on_error: 'echo run-on_error >> {log}'
""")
    run = bacpac("run", "--jobs", "1", "--json", "--no-progress", path)
    assert run.returncode == 1, run.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "run-before run"
    assert lines[1] == f"before-ok {images[0]} testhost:{tmp_path}/ok.img"
    assert lines[2] == "ok dup ok 0"
    assert lines[3] == "broken dup error 0"
    assert lines[4].startswith("on_error broken ") and "missing.img" in lines[4]
    assert lines[5:] == ["run-after error", "run-on_error"]
    jobs = {j["job"]: j for j in json_lines(run)[:-1]}
    assert jobs["skipped"]["error"] == ("skipped: before hook 'echo no snapshot today; exit 3' "
                                        "failed (status 3): no snapshot today")
    assert not (tmp_path / "skipped.img").exists()
    assert sha256_of(tmp_path / "ok.img") == sha256_of(images[0])


def test_a_failing_run_before_hook_runs_nothing(tmp_path, sshd, second, images):
    path = inventory(tmp_path, sshd, second, f"""
- name: a
  source: {images[0]}
  target: testhost:{tmp_path}/a.img
""", extra="hooks:\n  before: 'exit 1'\n")
    run = bacpac("run", "--no-progress", path)
    run.one_error_line(1, "before hook 'exit 1' failed (status 1)")
    assert not (tmp_path / "a.img").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_every_job_and_says_which_finished(tmp_path, sshd, second, signum,
                                                          no_helper_left):
    small = random_image(tmp_path / "small.img", 1 * MiB, seed=1)
    big = random_image(tmp_path / "big.img", 24 * MiB, seed=2)
    path = inventory(tmp_path, sshd, second, f"""
- name: quick
  source: {small}
  target: testhost:{tmp_path}/quick.img
  after: touch {tmp_path}/quick.done
- name: slow
  source: {big}
  target: standby2:{tmp_path}/slow.img
  saveset: {tmp_path}/slow.bps
  bwlimit: 1M
""")
    began = time.monotonic()
    proc = start("run", "--json", "--no-progress", path)
    wait_until(lambda: (tmp_path / "quick.done").exists() and (tmp_path / "slow.img").exists(),
               60, "quick done and slow under way", proc)
    proc.send_signal(signum)
    run = finish(proc, time.monotonic(), FAIL_WITHIN)
    assert run.returncode == 128 + signum, run.stderr
    line = run.error_line
    assert f"interrupted by {signal.Signals(signum).name}" in line, line
    assert "finished: quick" in line, line
    assert "stopped or failed: slow" in line
    *jobs, overall = json_lines(run)
    assert (overall["command"], overall["status"], overall["failed"]) == \
        ("run", "interrupted", ["slow"])
    slow = {j["job"]: j for j in jobs}["slow"]
    assert f"standby2:{tmp_path}/slow.img" in slow["error"] and "--delta" in slow["error"]
    assert not (tmp_path / "slow.bps").exists()
    assert time.monotonic() - began < 90


def test_a_job_on_another_host_passes_its_saveset_as_host_path(tmp_path):
    (tmp_path / "inventory.yml").write_text(f"""\
hosts:
  a: {{hostname: 10.0.0.1, port: 2222, user: backup, identity_file: /k/id, known_hosts: /k/kh}}
  b: {{}}
jobs:
  - name: disk
    source: /dev/sda
    target: a:/dev/sdb
    force: true
    delta: true
    saveset: ["b:/backup/{{job}}-{{date}}.bps", /local-to-a.bps]
  - name: tree
    type: copy
    source: [/home, /etc]
    target: b:/srv/mirror
    delete: true
""")
    inv = load(str(tmp_path / "inventory.yml"), {})
    stamp = Stamp("2026-12-05", "010203", "ctl")
    disk = plan(inv.jobs[0], inv, stamp, "/tmp/cfg")
    assert disk.argv[3:] == ("dup", "-F", "/tmp/cfg", "--events", "--saveset",
                             "b:/backup/disk-2026-12-05.bps", "--saveset", "/local-to-a.bps",
                             "--force", "--delta", "--", "/dev/sda", "a:/dev/sdb")
    tree = plan(inv.jobs[1], inv, stamp, "/tmp/cfg", dry_run=True)
    assert tree.argv[3:] == ("copy", "-F", "/tmp/cfg", "--events", "--delete", "-n", "--",
                             "/home", "/etc", "b:/srv/mirror")
    config = ssh_config_text(list(inv.hosts.values()))
    assert "Host a\n    HostName 10.0.0.1\n    Port 2222\n    User backup\n" \
           "    IdentityFile /k/id\n    UserKnownHostsFile /k/kh\n    IdentitiesOnly yes\n" in config
    assert "Host b\n" in config


def test_a_saveset_on_the_other_host_from_one_read(tmp_path, sshd, second, images):
    path = inventory(tmp_path, sshd, second, f"""
- name: fanned
  source: {images[0]}
  target: testhost:{tmp_path}/fanned.img
  saveset: standby2:{tmp_path}/fanned.bps
""")
    run = bacpac("run", "--json", "--no-progress", path)
    assert run.returncode == 0, run.stderr
    assert sha256_of(tmp_path / "fanned.img") == sha256_of(images[0])
    assert restored_sha256(tmp_path / "fanned.bps") == sha256_of(images[0])
    assert json_lines(run)[0]["bytes_read"] == 2 * MiB


def test_a_copy_job_gives_an_identical_tree(tmp_path, sshd, second):
    tree = small_tree(tmp_path / "tree")
    path = inventory(tmp_path, sshd, second, f"""
- name: tree
  type: copy
  source: {tree}
  target: standby2:{tmp_path}/mirror
""")
    run = bacpac("run", "--json", "--no-progress", path)
    assert run.returncode == 0, run.stderr
    # DEST does not exist yet: the single SRC becomes it, as with scp and rsync
    diff = subprocess.run(["diff", "-r", str(tree), str(tmp_path / "mirror")],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert json_lines(run)[0]["files_sent"] == 2


def test_keep_removes_the_jobs_older_savesets_after_a_good_run(tmp_path, sshd, second,
                                                                images):
    store = tmp_path / "store"
    store.mkdir()
    old = [store / f"k-2026-01-0{day}.bps" for day in (1, 2, 3)]
    for age, path in enumerate(reversed(old), start=1):
        path.write_bytes(b"old")
        os.utime(path, (time.time() - 86400 * age,) * 2)
    others = [store / "other-2026-01-01.bps", store / ".k-2026-01-04.bps.bacpac-tmp-1234"]
    for path in others:
        path.write_bytes(b"not ours")
        os.utime(path, (time.time() - 86400 * 9,) * 2)
    path = inventory(tmp_path, sshd, second, f"""
- name: k
  type: backup
  source: {images[0]}
  target: standby2:{store}/{{job}}-{{date}}.bps
  keep: 2
""")
    run = bacpac("run", "--json", "--no-progress", path)
    assert run.returncode == 0, run.stderr
    today = store / f"k-{time.strftime('%Y-%m-%d')}.bps"
    assert restored_sha256(today) == sha256_of(images[0])
    assert [p.exists() for p in old] == [False, False, True]
    assert all(p.exists() for p in others)
    assert sorted(json_lines(run)[0]["pruned"]) == sorted(str(p) for p in old[:2])


@pytest.mark.parametrize("name", ["local", "ssh"])
def test_dup_dry_run_leaves_an_existing_target_and_makes_no_saveset(tmp_path, sshd, name,
                                                                     images, no_helper_left):
    target = tmp_path / "existing.img"
    target.write_bytes(b"keep" * 4096)
    stamp = os.stat(target).st_mtime_ns
    where = str(target) if name == "local" else f"testhost:{target}"
    run = bacpac("dup", "-F", sshd.config_path, "--dry-run", "--json", "--no-progress",
                 "--saveset", str(tmp_path / "s.bps"), images[0], where)
    assert run.returncode == 0, run.stderr
    assert run.summary["dry_run"] and run.summary["target_kind"] == "image file"
    assert run.summary["bytes_sent"] == 0 and run.summary["bytes_written"] == 0
    assert target.read_bytes() == b"keep" * 4096 and os.stat(target).st_mtime_ns == stamp
    assert not (tmp_path / "s.bps").exists()
    missing = bacpac("dup", "-F", sshd.config_path, "--dry-run", "--no-progress", images[0],
                     where.replace("existing.img", "no/such/dir/t.img"))
    missing.one_error_line(2, "no/such/dir")
    assert not (tmp_path / "no").exists()
    backup = bacpac("backup", "-F", sshd.config_path, "--dry-run", "--no-progress", images[0],
                    where)  # a saveset may replace a file; the dry run says so and keeps it
    assert backup.returncode == 0, backup.stderr
    assert target.read_bytes() == b"keep" * 4096


def test_the_live_table_shows_a_row_per_job_and_a_summary_at_the_end():
    from io import StringIO

    from rich.console import Console

    from bacpac.ui.events import JobFinished, JobMessage, JobProgress, JobStarted, JobSummary
    from bacpac.ui.fleet_live import FleetView

    out = StringIO()
    now = [100.0]
    view = FleetView(Console(file=out, width=120, force_terminal=False), clock=lambda: now[0])
    for name, host in (("disk1", "sb1"), ("disk2", "sb2"), ("tree", "sb1")):
        view.emit(JobMessage(name, "queued", host))
    view.emit(JobStarted("disk1", "dup", "/dev/sda", "sb1:/dev/sdb", None, 100 * MiB))
    now[0] += 10
    view.emit(JobProgress("disk1", 50 * MiB, 25 * MiB, 40 * MiB))
    table = Console(file=StringIO(), width=120, record=True)
    table.print(view.render())
    text = table.export_text()
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "running" in rows["disk1"] and "sb1" in rows["disk1"]
    assert "50.0 MiB / 100.0 MiB" in rows["disk1"] and "2.0×" in rows["disk1"]
    assert "5.2 MB/s" in rows["disk1"] and "10.0 s" in rows["disk1"]  # ETA
    assert "queued" in rows["disk2"] and "queued" in rows["tree"]
    assert "0 of 3 jobs done, 50.0 MiB of 100.0 MiB" in text
    # a fan-out sends its one stream to each helper: the ratio is the stream's, not 0.5×
    fan = FleetView(Console(file=StringIO(), width=120, force_terminal=False),
                    clock=lambda: now[0])
    fan.emit(JobStarted("disk1", "dup", "/dev/sda", "sb1:/dev/sdb", "sb2:/s.bps", 100 * MiB))
    fan.emit(JobProgress("disk1", 50 * MiB, 100 * MiB, 40 * MiB, streams=2))
    shown = Console(file=StringIO(), width=120, record=True)
    shown.print(fan.render())
    assert "1.0×" in shown.export_text() and "0.5×" not in shown.export_text()
    fan.close()
    summary = JobSummary("dup", "/dev/sda", "sb1:/dev/sdb", status="ok", bytes_read=100 * MiB,
                         bytes_sent=50 * MiB, seconds=20.0, sha256="ab" * 32)
    view.emit(JobFinished("disk1", summary))
    failed = JobSummary("dup", "/x", "sb2:/y", error="sb2:/y: refused")
    view.emit(JobFinished("disk2", failed))
    view.close()
    printed = out.getvalue()
    assert "disk1" in printed and "abababababab" in printed and "100.0 MiB" in printed
    assert "failed: sb2:/y: refused" in printed


def test_a_failing_after_hook_fails_its_job_and_the_copy_stays(tmp_path, sshd, second, images):
    path = inventory(tmp_path, sshd, second, f"""
- name: a
  source: {images[0]}
  target: {tmp_path}/a.img
  after: 'echo monitor down >&2; exit 7'
""")
    run = bacpac("run", "--json", "--no-progress", path)
    assert run.returncode == 1, run.stderr
    job = json_lines(run)[0]
    assert job["status"] == "error" and job["job"] == "a"
    assert job["error"] == ("after hook 'echo monitor down >&2; exit 7' failed (status 7): "
                            "monitor down (the job itself succeeded)")
    assert "bacpac: a: after hook" in run.stderr
    assert sha256_of(tmp_path / "a.img") == sha256_of(images[0])


def test_by_default_one_job_per_host_at_a_time(tmp_path, sshd, second, images):
    log = tmp_path / "order.log"
    jobs = ""
    for name, host, image in (("a1", "testhost", 0), ("a2", "testhost", 1), ("b", "standby2", 2)):
        jobs += f"""
- name: {name}
  source: {images[image]}
  target: {host}:{tmp_path}/{name}.img
  before: 'echo start {name} >> {log}; sleep 0.5'
  after: 'echo end {name} >> {log}'
"""
    run = bacpac("run", "--no-progress", inventory(tmp_path, sshd, second, jobs))
    assert run.returncode == 0, run.stderr
    order = [line.split() for line in log.read_text().splitlines()]
    on_a = [event for event in order if event[1].startswith("a")]
    assert [e[0] for e in on_a] == ["start", "end", "start", "end"], order
    assert on_a[0][1] == on_a[1][1]
    first_end = order.index(on_a[1])
    assert ["start", "b"] in order[:first_end], order  # the other host's job ran meanwhile


def test_password_env_opens_a_locked_key(tmp_path, sshd, second, images):
    path = tmp_path / "inventory.yml"
    path.write_text(f"""\
hosts:
  locked:
    hostname: {second.hostname}
    port: {second.port}
    user: {second.user}
    identity_file: {second.locked_key_path}
    known_hosts: {second.known_hosts}
    password_env: LOCKED_KEY_PASSPHRASE
jobs:
  - name: a
    source: {images[0]}
    target: locked:{tmp_path}/a.img
""")
    missing = bacpac("run", "--no-progress", path)
    missing.one_error_line(2, "password_env", "$LOCKED_KEY_PASSPHRASE is not set")
    run = bacpac("run", "--no-progress", path,
                 env=bacpac_env(LOCKED_KEY_PASSPHRASE=second.passphrase))
    assert run.returncode == 0, run.stderr
    assert sha256_of(tmp_path / "a.img") == sha256_of(images[0])
    assert second.passphrase not in (tmp_path / "inventory.yml").read_text()


@pytest.fixture
def password_only_host(sshd_with):
    """(server, user, password, directory): a throwaway user of this machine that the server
    lets in by password alone, and a directory of its own (tmp_path is root's only). Root
    only: the user is made with useradd and removed after the test."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root (useradd) for a throwaway user with a password")
    user, password = f"bpw{os.getpid()}", secrets.token_urlsafe(12)
    subprocess.run(["useradd", "-M", "-N", "-s", "/bin/sh", user], check=True)
    home = Path(tempfile.mkdtemp(prefix="bacpac-pw-"))
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True,
                                 check=True).stdout)
        os.chown(home, uid, -1)
        os.chmod(home, 0o755)
        server = sshd_with(f"Match User {user}", "    PasswordAuthentication yes")
        yield server, user, password, home
    finally:
        subprocess.run(["userdel", "-f", user], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_password_env_reaches_a_saveset_host_and_its_pruning(tmp_path, sshd, images,
                                                            password_only_host, no_helper_left):
    """A fan-out's saveset host with a password of its own (not the target's), and keep's
    pruning there by the run itself, with no SSHPASS anywhere."""
    server, user, password, home = password_only_host
    old = home / "fan-2026-01-01.bps"
    old.write_bytes(b"old")
    os.chown(old, os.stat(home).st_uid, -1)
    os.utime(old, (time.time() - 86400,) * 2)
    path = tmp_path / "inventory.yml"
    path.write_text(f"""\
hosts:
  testhost:
    ssh_config: {sshd.config_path}
  vault-1:
    hostname: {server.hostname}
    port: {server.port}
    user: {user}
    known_hosts: {server.known_hosts}
    password_env: VAULT_PASSWORD
jobs:
  - name: fan
    source: {images[0]}
    target: testhost:{tmp_path}/t.img
    saveset: vault-1:{home}/{{job}}-{{date}}.bps
    keep: 1
""")
    wrong = bacpac("run", "--json", "--no-progress", path,
                   env=bacpac_env(VAULT_PASSWORD="not " + password))
    assert wrong.returncode == 1
    job = json_lines(wrong)[0]
    assert "vault-1" in job["error"] and "authentication failed" in job["error"], job
    assert sorted(p.name for p in home.iterdir()) == [old.name]
    assert not (tmp_path / "t.img").exists()  # no host got a byte
    run = bacpac("run", "--json", "--no-progress", path,
                 env=bacpac_env(VAULT_PASSWORD=password))
    assert run.returncode == 0, run.stderr
    today = home / f"fan-{time.strftime('%Y-%m-%d')}.bps"
    assert sorted(p.name for p in home.iterdir()) == [today.name]
    assert restored_sha256(today) == sha256_of(images[0])
    assert sha256_of(tmp_path / "t.img") == sha256_of(images[0])
    assert json_lines(run)[0]["pruned"] == [str(old)]
    assert f"Accepted password for {user}" in Path(server.log_path).read_text()
    assert password not in path.read_text()


def test_two_hosts_sharing_a_password_variable_are_refused(tmp_path, images):
    path = tmp_path / "inventory.yml"
    path.write_text(f"""\
hosts:
  a-b: {{password_env: ONE}}
  a_b: {{password_env: TWO}}
jobs:
  - name: j
    source: {images[0]}
    target: a-b:{tmp_path}/t.img
""")
    run = bacpac("run", "--no-progress", path, env=bacpac_env(ONE="1", TWO="2"))
    run.one_error_line(2, "'a-b'", "'a_b'", "BACPAC_PASSWORD_A_B")
    assert not (tmp_path / "t.img").exists()


def test_each_host_reads_its_own_password_variable(monkeypatch):
    from bacpac.transport.ssh.config import password_variable
    from bacpac.transport.ssh.connection import _Secrets

    assert password_variable("vault-1.example") == "BACPAC_PASSWORD_VAULT_1_EXAMPLE"
    monkeypatch.setenv("SSHPASS", "everyone's")
    monkeypatch.setenv("BACPAC_PASSWORD_VAULT_1", "vault's")
    assert _Secrets(False, "vault-1").ask("?") == "vault's"
    assert _Secrets(False, "standby").ask("?") == "everyone's"


def test_a_signal_ends_a_before_hook_and_its_job_never_starts(tmp_path, sshd, second, images):
    path = inventory(tmp_path, sshd, second, f"""
- name: waits
  source: {images[0]}
  target: testhost:{tmp_path}/never.img
  before: 'touch {tmp_path}/hook.started; sleep 60'
  after: 'touch {tmp_path}/after.ran'
""")
    proc = start("run", "--json", "--no-progress", path)
    wait_until((tmp_path / "hook.started").exists, 30, "the before hook", proc)
    proc.send_signal(signal.SIGTERM)
    run = finish(proc, time.monotonic(), FAIL_WITHIN)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr
    assert "finished: none" in run.error_line and "stopped or failed: waits" in run.error_line
    job = json_lines(run)[0]
    assert job["error"].startswith("skipped: before hook") and "signal 15" in job["error"]
    assert not (tmp_path / "never.img").exists() and not (tmp_path / "after.ran").exists()


def test_events_cross_the_pipe_as_they_were_and_progress_is_thinned():
    from io import StringIO

    from bacpac.ui.eventlines import EventLineSink, decode
    from bacpac.ui.events import JobFinished, JobMessage, JobProgress, JobStarted, JobSummary

    out, now = StringIO(), [0.0]
    sink = EventLineSink(out, clock=lambda: now[0])
    started = JobStarted("j", "dup", "/s", "h:/t", None, 10)
    summary = JobSummary("dup", "/s", "h:/t", status="ok", bytes_read=10, sha256="ab",
                         extra={"levels": {"3": 1}})
    sink.emit(started)
    for read in range(1, 6):  # within one interval: the first and, at the end, the last
        sink.emit(JobProgress("j", read, read, read))
    sink.emit(JobMessage("j", "warning", "mounted"))
    sink.emit(JobFinished("j", summary))
    events = [decode(line) for line in out.getvalue().splitlines()]
    assert events[0] == started
    assert [e.bytes_read for e in events if isinstance(e, JobProgress)] == [1, 5]
    assert JobMessage("j", "warning", "mounted") in events
    assert events[-1] == JobFinished("j", summary)
    assert decode("not json") is None and decode('{"event": "Nope"}') is None
