"""BACPAC_TEST_STRICT=1: a test skipped for want of something (root, loop devices, sshd, O_DIRECT,
sudo, pyzstd, a second Python) fails instead.

A developer's machine may lack them, and there a skip that says why is right; a CI machine
that lacks them would otherwise pass quietly, having tested none of it. .ci/run sets the
switch. Every skip in the suite is of that kind, so the one hook below turns them all, whichever
way they were raised (pytest.skip, a skipif mark, importorskip), into failures that keep the
reason; an expected failure (xfail) is no skip and stays as it is.
"""
from __future__ import annotations

import os

import pytest

STRICT = "BACPAC_TEST_STRICT"


def strict() -> bool:
    return os.environ.get(STRICT) == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if strict() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{STRICT}=1 turns this skip into a failure: {reason}"
