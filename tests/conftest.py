"""Fixtures that start real things: an OpenSSH server, loop devices, tmpfs mounts; and the
strict switch (strict.py) that makes a skip for want of one of them a failure.

Each family lives in a module of its own and is imported here so every test file sees it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from fixtures_sshd import *  # noqa: E402,F401,F403
from fixtures_disk import *  # noqa: E402,F401,F403
from fixtures_proxy import *  # noqa: E402,F401,F403
from fixtures_netns import *  # noqa: E402,F401,F403
from fixtures_leaks import *  # noqa: E402,F401,F403
from strict import pytest_runtest_makereport  # noqa: E402,F401
