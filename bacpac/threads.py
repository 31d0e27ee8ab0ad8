"""Stopping the client's threads: each is joined, within a deadline, before what it uses is
closed.

# Strategy: a thread is told to stop (a flag it polls, or the end of the channel it reads),
# then joined with a bounded wait, and only then are its descriptors closed: a descriptor
# closed under a running thread may be reused by the next open, and the thread would read, or
# write, someone else's file. A thread still running at the deadline (a read stuck on a hung
# disk, or a bug) keeps its descriptors until the process exits, and a warning line says so.
# A warning rather than an error: the job's own outcome, success or its first failure, is
# still what happened, and is what the exit status and the summary tell; the thread can do no
# harm with descriptors that stay its own, and the command line ends the process right after
# the job (cli._end). Threads are still daemons, but only so that such a straggler cannot hold
# the interpreter's exit; nothing depends on it.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Iterable

STOP_WITHIN = 10.0  # seconds for all the threads of one component to stop


def join(threads: Iterable[threading.Thread], what: str, within: float = STOP_WITHIN) -> bool:
    """Join every started thread, all within one deadline; whether all of them stopped. Those
    still running are told on stderr, naming `what` they belong to."""
    deadline = time.monotonic() + within
    started = [thread for thread in threads if thread.ident is not None]
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = [thread.name for thread in started if thread.is_alive()]
    if running:
        warn(f"{what}: the {', '.join(running)} thread{'s' if len(running) > 1 else ''} did "
              f"not stop within {within:g} s; {'their' if len(running) > 1 else 'its'} "
              "descriptors stay open until bacpac exits")
    return not running


def warn(text: str) -> None:
    """One "bacpac: warning:" line on stderr, for what a job's sink cannot be told: a
    thread or a descriptor left behind by a component that has no sink."""
    try:
        print(f"bacpac: warning: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr is gone: nobody is left to tell
        pass
