"""The strict switch (strict.py): under BACPAC_TEST_STRICT=1, as .ci/run sets it, a test
skipped for want of root, sshd, O_DIRECT or a second Python fails, its reason kept; without
it the same test is skipped. Shown on a tiny test file run by a pytest of its own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from strict import STRICT

WANTING = '''
import pytest

def test_needs_root():
    pytest.skip("needs root for loop devices")

@pytest.mark.skipif(True, reason="sshd is not installed")
def test_needs_sshd():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False

def test_needs_nothing():
    pass
'''


def run_tiny_suite(tmp_path: Path, switch: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_wanting.py").write_text(WANTING)
    env = {k: v for k, v in os.environ.items() if k != STRICT}
    env.update({STRICT: switch, "PYTHONPATH": os.path.dirname(__file__)})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "strict", "-p",
                           "no:cacheprovider", "-rA", "test_wanting.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_strict_switch_turns_a_skip_for_a_missing_facility_into_a_failure(tmp_path) -> None:
    done = run_tiny_suite(tmp_path, "1")
    assert done.returncode == 1, done.stdout
    out = done.stdout
    assert f"{STRICT}=1 turns this skip into a failure: Skipped: needs root for loop devices" in out
    assert f"{STRICT}=1 turns this skip into a failure: Skipped: sshd is not installed" in out
    assert "XFAIL test_wanting.py::test_known_bug" in out  # an expected failure is no skip
    assert "PASSED test_wanting.py::test_needs_nothing" in out
    assert "skipped" not in out.splitlines()[-1], out


@pytest.mark.parametrize("switch", ["", "0"])
def test_without_the_strict_switch_a_missing_facility_is_a_skip_that_says_why(
        tmp_path, switch) -> None:
    done = run_tiny_suite(tmp_path, switch)
    assert done.returncode == 0, done.stdout
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert [line.split(": ", 1)[1] for line in skipped] == ["needs root for loop devices",
                                                             "sshd is not installed"]
    assert "2 skipped" in done.stdout.splitlines()[-1]
