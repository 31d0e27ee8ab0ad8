"""One job of a run: its hooks, its child `bacpac`, and its events relayed to the run's sink."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from ...errors import BacpacError
from ...inventory.model import Inventory, Stamp
from ...ui.eventlines import decode
from ...ui.events import Event, JobFinished, JobMessage, JobProgress, JobStarted, JobSummary, \
    RunFailed, Sink
from .commandline import Planned
from .hooks import HookEnv, HookFailed, run_hooks, stop_hook
from .prune import prune

CHILD_EXIT_WITHIN = 30.0  # seconds for a child to exit once its output ended


@dataclass(frozen=True)
class RunContext:
    """What every job of one run shares."""

    inventory: Inventory
    stamp: Stamp
    ssh_config: str
    dry_run: bool


class Worker(threading.Thread):
    """Runs one planned job on a thread of its own and keeps its summary."""

    def __init__(self, planned: Planned, context: RunContext, sink: Sink,
                 done: Callable[["Worker"], None]) -> None:
        super().__init__(name=f"job {planned.name}", daemon=True)
        self.planned = planned
        self._context = context
        self._inventory = context.inventory
        self._sink = sink
        self._done = done
        self._dry_run = dry_run = context.dry_run
        self._lock = threading.Lock()  # between starting the child and stop()
        self._stopped = False
        self._proc: Optional[subprocess.Popen] = None
        self._hook: Optional[subprocess.Popen] = None  # the latest hook started
        self._finished: Optional[JobSummary] = None
        self._failure: Optional[str] = None  # the child's own "bacpac: ..." line
        job = planned.job
        self.summary = JobSummary(command=job.type, source=" ".join(job.sources),
                                  target=str(planned.target),
                                  saveset=", ".join(str(s) for s in planned.savesets) or None)
        self.summary.extra.update(job=job.name, host=job.host or "localhost",
                                  dry_run=dry_run)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # never a thread that dies unseen: the job fails instead
            self._fail(f"internal error: {type(e).__name__}: {e}")
        finally:  # told once, after its hooks: a failing after hook fails the job
            self._sink.emit(JobFinished(self.planned.name, self.summary))
            self._done(self)

    def _run(self) -> None:
        job, timeout = self.planned.job, self._inventory.hook_timeout
        env = self._env()
        try:
            run_hooks("before", job.hooks.before, env, timeout, self._hook_started)
        except HookFailed as e:
            self._fail(f"skipped: {e}")
            return
        try:
            self._run_child()
        finally:
            result = "ok" if self.summary.status == "ok" else "error"
            done = dataclasses.replace(env, result=result, error=self.summary.error or "")
            try:
                run_hooks("after", job.hooks.after, done, timeout, self._hook_started)
                if result != "ok":
                    run_hooks("on_error", job.hooks.on_error, done, timeout,
                              self._hook_started)
            except HookFailed as e:
                self._hook_after_failed(str(e))

    def _env(self) -> HookEnv:
        targets = [str(self.planned.target)] + [str(s) for s in self.planned.savesets]
        job = self.planned.job
        return HookEnv(job.name, job.type, " ".join(job.sources), " ".join(targets),
                       self._dry_run)

    def _run_child(self) -> None:
        env = dict(os.environ)  # with each host's password in its own variable (commandline)
        with tempfile.TemporaryFile("w+") as stderr:
            with self._lock:
                if self._stopped:
                    self._fail("not started: the run was interrupted")
                    return
                self._proc = subprocess.Popen(
                    self.planned.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=stderr, universal_newlines=True, env=env, start_new_session=True)
            assert self._proc.stdout is not None
            with self._proc.stdout:  # its end is the child's end (or its closing stdout)
                for line in self._proc.stdout:
                    event = decode(line)
                    if event is not None:
                        self._relay(event)
            status = self._wait()
            stderr.seek(0)
            said = [line for line in stderr.read().splitlines() if line.strip()]
        self._conclude(status, said)

    def _wait(self) -> int:
        assert self._proc is not None
        try:
            return self._proc.wait(CHILD_EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait(10)

    def _relay(self, event: Event) -> None:
        """The child's event, under the job's name, to the run's sink."""
        name = self.planned.name
        if isinstance(event, JobFinished):
            self._finished = event.summary
            return  # told at the end, with the job's name and host
        if isinstance(event, RunFailed):
            self._failure = event.error
            return
        if isinstance(event, (JobStarted, JobProgress, JobMessage)):
            self._sink.emit(dataclasses.replace(event, job=name))

    def _conclude(self, status: int, said: list[str]) -> None:
        finished = self._finished
        if finished is not None:
            finished.extra.update(self.summary.extra)
            self.summary = finished
        if status != 0 and self.summary.status == "ok":
            self.summary.status = "error"
        if self.summary.status == "ok" and self.planned.job.keep and not self._dry_run:
            self._prune()
        if self.summary.status != "ok" and not self.summary.error:
            lines = [line[len("bacpac: "):] for line in said if line.startswith("bacpac: ")]
            self.summary.error = (self._failure or (lines[-1] if lines else None)
                                  or (said[-1] if said else f"exited with status {status}"))

    def _prune(self) -> None:
        """keep: N once the job succeeded; a failure to prune fails the job (the savesets
        would pile up until a disk is full), its copy still made."""
        context = self._context
        try:
            removed = prune(self.planned, context.inventory, context.stamp, context.ssh_config)
        except BacpacError as e:
            self.summary.status = "error"
            self.summary.error = f"the copy was made, but keep {self.planned.job.keep} " \
                                 f"failed: {e}"
            return
        self.summary.extra["pruned"] = removed

    def _fail(self, error: str) -> None:
        self.summary.status = "error"
        self.summary.error = error

    def _hook_after_failed(self, error: str) -> None:
        """A failing after or on_error hook fails the job; the copy stays made."""
        made = " (the job itself succeeded)" if self.summary.status == "ok" else ""
        self._fail(f"{error}{made}")

    def _hook_started(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._hook = proc

    def stop(self, signum: int) -> None:
        """Pass `signum` to the child, and to a before hook still running (an after hook,
        which undoes what its before did, is left to finish); a child not started yet never
        starts."""
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signum)
            elif self._proc is None and self._hook is not None:
                stop_hook(self._hook, signum)

    def kill(self) -> None:
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
