"""What the commands report, as the QA list of issue 21 found it wanting: every --json object
has its command, status and error line; no digest of a stream that was never sent; a dry run
says what it would do even with --no-progress, and a delta's dry run says what a delta does.

Every test runs the real command line locally, on a few small files.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clirun import MiB, bacpac, random_image

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


# --- bacpac run --json ------------------------------------------------------------------------

def test_run_json_s_own_object_has_the_error_line_of_a_failed_run(tmp_path: Path) -> None:
    source = random_image(tmp_path / "src.img", MiB)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(f"""\
jobs:
  - name: good
    source: {source}
    target: {tmp_path}/good.img
  - name: bad
    source: {tmp_path}/missing.img
    target: {tmp_path}/bad.img
""")
    run = bacpac("run", "--json", "--no-progress", inventory)
    line = run.one_error_line(1, "1 of 2 jobs failed: bad", alone=False)
    *jobs, closing = json_lines(run.stdout)
    assert (closing["command"], closing["status"]) == ("run", "error")
    assert closing["error"] == line[len("bacpac: "):]
    bad = next(job for job in jobs if job["job"] == "bad")
    assert bad["status"] == "error" and "missing.img" in bad["error"]
    good = bacpac("run", "--json", "--no-progress", "--only", "good", inventory)
    assert good.returncode == 0, good.stderr
    assert json_lines(good.stdout)[-1]["error"] is None


# --- copy: no digest of a stream never sent ---------------------------------------------------

def test_copy_reports_no_sha256_when_nothing_was_sent(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"some content\n" * 100)
    (tree / "b.bin").write_bytes(bytes(range(256)) * 40)
    dest = tmp_path / "dest"
    first = bacpac("copy", "--no-progress", "--json", f"{tree}/", dest)
    assert first.returncode == 0, first.stderr
    assert first.summary["sha256"] not in (None, EMPTY_SHA256)
    dry = bacpac("copy", "--no-progress", "--json", "-n", f"{tree}/", tmp_path / "other")
    assert dry.returncode == 0, dry.stderr
    assert dry.summary["sha256"] is None, dry.summary
    again = bacpac("copy", "--no-progress", "--json", f"{tree}/", dest)
    assert again.returncode == 0, again.stderr
    assert again.summary["files_sent"] == 0 and again.summary["sha256"] is None, again.summary


# --- dup --dry-run ----------------------------------------------------------------------------

def test_dup_dry_run_without_progress_still_says_what_it_would_write(tmp_path: Path) -> None:
    source = random_image(tmp_path / "src.img", MiB)
    target = tmp_path / "t.img"
    run = bacpac("dup", "--dry-run", "--no-progress", source, target)
    assert run.returncode == 0, run.stderr
    assert run.stderr == (f"dry run: every check passed; would write {MiB} bytes to the new "
                          f"file {target}\n")
    assert run.stdout == "" and not target.exists()
    as_json = bacpac("dup", "--dry-run", "--no-progress", "--json", source, target)
    assert as_json.summary["would"] == f"would write {MiB} bytes to the new file {target}"


def test_dup_dry_run_delta_says_it_sends_only_the_blocks_that_differ(tmp_path: Path) -> None:
    source = random_image(tmp_path / "src.img", MiB)
    target = random_image(tmp_path / "t.img", MiB, seed=3)
    before = target.read_bytes()
    run = bacpac("dup", "--dry-run", "--delta", "--no-progress", source, target)
    assert run.returncode == 0, run.stderr
    assert f"would write {MiB} bytes" not in run.stderr
    assert f"would compare the {MiB} bytes of the source with the image file {target}" \
        in run.stderr
    assert "only the blocks that differ; how many, only the run can tell" in run.stderr
    assert target.read_bytes() == before


def test_dup_dry_run_delta_onto_a_new_file_says_it_writes_it_whole(tmp_path: Path) -> None:
    source = random_image(tmp_path / "src.img", MiB)
    target = tmp_path / "new.img"
    run = bacpac("dup", "--dry-run", "--delta", "--no-progress", "--json", source, target)
    assert run.returncode == 0, run.stderr
    assert run.summary["would"] == f"would write {MiB} bytes to the new file {target}"
    assert not target.exists()


# --- an inventory copy job's bwlimit, as a dup job's ----------------------------------------

def test_an_inventory_copy_job_passes_its_bwlimit_to_the_copy(tmp_path: Path) -> None:
    from bacpac import cli
    from bacpac.commands.run.commandline import plan
    from bacpac.inventory.load import load
    from bacpac.inventory.model import Stamp
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("jobs:\n  - name: tree\n    type: copy\n    source: /home\n"
                         "    target: /srv/mirror\n    bwlimit: 500K\n")
    inv = load(str(inventory), {})
    argv = plan(inv.jobs[0], inv, Stamp("2026-12-05", "010203", "ctl"), "/tmp/cfg").argv
    assert argv[3:] == ("copy", "-F", "/tmp/cfg", "--events", "--bwlimit", "500K", "--",
                        "/home", "/srv/mirror")
    assert cli.build_parser().parse_args(argv[3:]).bwlimit == 500 * 1024


def test_copy_bwlimit_holds_the_relay_to_the_rate() -> None:
    from bacpac.engine.pacing import RateLimit
    now, slept = [10.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = RateLimit(MiB, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limit.sent(MiB // 2)
    assert now[0] == 12.0 and slept == [0.5, 0.5, 0.5, 0.5]
    unlimited = RateLimit(None, clock=lambda: now[0], sleep=sleep)
    unlimited.sent(100 * MiB)
    assert len(slept) == 4


def test_a_run_s_copy_job_with_a_bwlimit_copies_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(bytes(range(256)) * 1000)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(f"jobs:\n  - name: tree\n    type: copy\n    source: {tree}/\n"
                         f"    target: {tmp_path}/dest\n    bwlimit: 100M\n")
    run = bacpac("run", "--json", "--no-progress", inventory)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "dest" / "a.bin").read_bytes() == (tree / "a.bin").read_bytes()


def test_an_unknown_job_key_lists_each_known_key_once(tmp_path: Path) -> None:
    from bacpac.inventory.load import InventoryError, load
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("jobs:\n  - name: a\n    source: /dev/sda\n    target: /x.img\n"
                         "    hooks: {before: 'exit 1'}\n")
    try:
        load(str(inventory), {})
    except InventoryError as e:
        message = str(e)
    else:
        raise AssertionError("an unknown key was accepted")
    assert message.startswith(f"{inventory}:5: hooks: unknown key in a job (known: name, ")
    known = message[message.index("(known: ") + 8:-1].split(", ")
    assert len(known) == len(set(known)) and "bwlimit" in known and "delete" in known
