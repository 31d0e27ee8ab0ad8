"""Fixtures that start real things: an OpenSSH server, loop devices, tmpfs mounts.

Each family lives in a module of its own and is imported here so every test file sees it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from fixtures_sshd import *  # noqa: E402,F401,F403
from fixtures_disk import *  # noqa: E402,F401,F403
from fixtures_proxy import *  # noqa: E402,F401,F403
