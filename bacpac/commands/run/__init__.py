"""bacpac run INVENTORY: every job of an inventory, in parallel, each as a child `bacpac`.

# Strategy: the main thread schedules (at most `limit` jobs at once; by default one per host
# and at most four) and waits; a worker thread per started job runs its hooks and its child
# process, reads the child's events (--events: JSON lines) and relays them, renamed to the
# job's name, into the one sink of the run. A job that fails, crashes or hangs its hook fails
# alone. On SIGINT, SIGTERM or SIGHUP (raised in the main thread by cli.py) no job starts any
# more, the same signal is passed to each running child (they run in sessions of their own,
# so a Ctrl-C reaches each exactly once), each child stops as `dup` does on its own (its
# helpers told, no saveset under a final name, a partly written target named with the
# --delta hint), and the run says which jobs finished.
"""
from __future__ import annotations

import json
import queue
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from ...errors import BacpacError, UsageError, interruption
from ...inventory.model import Inventory, Job, Stamp
from ...ui.events import JobMessage, JobSummary, Sink
from ...ui.sinks import write_out
from .commandline import Planned, host_passwords, plan, write_ssh_config
from .hooks import HookEnv, run_hooks
from .worker import RunContext, Worker

MAX_DEFAULT_JOBS = 4
STOP_WITHIN = 60.0  # seconds for every child to stop after a signal, before it is killed


class RunFailed(BacpacError):
    """Some job of the run failed (each said why in its own line)."""


@dataclass(frozen=True)
class RunRequest:
    inventory: Inventory
    only: tuple[str, ...] = ()
    jobs: Optional[int] = None
    dry_run: bool = False
    json_output: bool = False


def run_inventory(request: RunRequest, sink: Sink) -> list[JobSummary]:
    """Run the inventory's jobs; their summaries, or RunFailed naming those that failed."""
    inventory = request.inventory
    selected = select(inventory, request.only)
    started = time.monotonic()
    stamp = Stamp.now()
    env = HookEnv(job="", type="run", source="", dry_run=request.dry_run,
                  targets=" ".join(str(j.target) for j in selected))
    summaries: list[JobSummary] = []
    with tempfile.TemporaryDirectory(prefix="bacpac-run-") as tmp, host_passwords(inventory):
        config = write_ssh_config(tmp, inventory)
        planned = [plan(job, inventory, stamp, config, request.dry_run) for job in selected]
        run_hooks("before", inventory.hooks.before, env, inventory.hook_timeout)
        for job in planned:  # the live view lists every job from the start
            sink.emit(JobMessage(job.name, "queued", job.job.host or "localhost"))
        context = RunContext(inventory, stamp, config, request.dry_run)
        fleet = _Fleet(planned, request, context, sink)
        try:
            summaries = fleet.run()
        except BaseException as e:
            if request.json_output:  # the run's own object even when it was interrupted
                _print_run(fleet.summaries(), time.monotonic() - started, request.dry_run,
                           "interrupted", str(interruption(e)) if isinstance(
                               e, KeyboardInterrupt) else str(e))
            _after_run(inventory, env, "error", str(e))
            raise
        failed = [s for s in summaries if s.status != "ok"]
        _after_run(inventory, env, "error" if failed else "ok",
                   "; ".join(f"{s.extra.get('job')}: {s.error}" for s in failed))
    names = ", ".join(str(s.extra.get("job")) for s in failed)
    error = (f"{inventory.path}: {len(failed)} of {len(summaries)} jobs failed: {names}"
             if failed else None)
    if request.json_output:
        _print_run(summaries, time.monotonic() - started, request.dry_run, error=error)
    if error is not None:
        raise RunFailed(error)
    return summaries


def select(inventory: Inventory, only: tuple[str, ...]) -> list[Job]:
    """The jobs --only names (all of them without it), in the inventory's order."""
    names = {job.name for job in inventory.jobs}
    unknown = [name for name in only if name not in names]
    if unknown:
        raise UsageError(f"{inventory.path}: --only {unknown[0]}: no such job (jobs: "
                         f"{', '.join(sorted(names))})")
    return [job for job in inventory.jobs if not only or job.name in only]


def _after_run(inventory: Inventory, env: HookEnv, result: str, error: str) -> None:
    """The run's after hooks (always, once its before hooks passed), then on_error's."""
    done = HookEnv(env.job, env.type, env.source, env.targets, env.dry_run, result, error)
    try:
        run_hooks("after", inventory.hooks.after, done, inventory.hook_timeout)
    finally:
        if result != "ok":
            run_hooks("on_error", inventory.hooks.on_error, done, inventory.hook_timeout)


def _print_run(summaries: list[JobSummary], seconds: float, dry_run: bool,
               status: Optional[str] = None, error: Optional[str] = None) -> None:
    """The run's own JSON object, after its jobs'; `error` is the line stderr says."""
    failed = [str(s.extra.get("job")) for s in summaries if s.status != "ok"]
    status = status or ("error" if failed else "ok")
    data = {"command": "run", "status": status, "jobs": len(summaries), "error": error,
            "failed": failed, "dry_run": dry_run, "seconds": round(seconds, 3),
            "bytes_read": sum(s.bytes_read for s in summaries),
            "bytes_sent": sum(s.bytes_sent for s in summaries)}
    write_out(sys.stdout, json.dumps(data, sort_keys=True) + "\n")


class _Fleet:
    """Starts the jobs as their limits allow, and gathers their summaries."""

    def __init__(self, planned: list[Planned], request: RunRequest, context: RunContext,
                 sink: Sink) -> None:
        self._pending = list(planned)
        self._order = [p.name for p in planned]
        self._request = request
        self._context = context
        self._sink = sink
        hosts = {p.job.host for p in planned}
        self._per_host = request.jobs is None
        self._limit = request.jobs or max(1, min(MAX_DEFAULT_JOBS, len(hosts)))
        self._running: dict[str, Worker] = {}
        self._done: queue.Queue[Worker] = queue.Queue()
        self._summaries: dict[str, JobSummary] = {}

    def summaries(self) -> list[JobSummary]:
        """The summaries of the jobs that ended, in the inventory's order."""
        return [self._summaries[name] for name in self._order if name in self._summaries]

    def run(self) -> list[JobSummary]:
        try:
            while self._pending or self._running:
                self._start_what_may()
                try:
                    worker = self._done.get(timeout=1.0)
                except queue.Empty:
                    continue
                self._finished(worker)
        except KeyboardInterrupt as e:
            self._stop(e)
        return self.summaries()

    def _start_what_may(self) -> None:
        busy = {w.planned.job.host for w in self._running.values()}
        for planned in list(self._pending):
            if len(self._running) >= self._limit:
                return
            if self._per_host and planned.job.host in busy:
                continue
            self._pending.remove(planned)
            worker = Worker(planned, self._context, self._sink, self._done.put)
            self._running[planned.name] = worker
            busy.add(planned.job.host)
            worker.start()

    def _finished(self, worker: Worker) -> None:
        worker.join(5)
        self._running.pop(worker.planned.name, None)
        self._summaries[worker.planned.name] = worker.summary

    def _stop(self, interrupt: KeyboardInterrupt) -> None:
        """Pass the signal on to every running job, wait for each to stop, then say which
        finished; jobs not started are not started."""
        signum = getattr(interrupt, "signum", 2)
        for worker in self._running.values():
            worker.stop(signum)
        deadline = time.monotonic() + STOP_WITHIN
        killed = False
        while self._running:
            try:
                worker = self._done.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if killed:  # a worker that even a kill did not end: give up on it
                    break
                for worker in self._running.values():
                    worker.kill()
                deadline, killed = time.monotonic() + 10, True
                continue
            except KeyboardInterrupt:  # a second signal: no more waiting for them
                for worker in self._running.values():
                    worker.kill()
                continue
            self._finished(worker)
        finished = [name for name, s in self._summaries.items() if s.status == "ok"]
        stopped = [name for name, s in self._summaries.items() if s.status != "ok"]
        not_started = [p.name for p in self._pending]
        parts = [f"finished: {', '.join(finished) or 'none'}"]
        if stopped:
            parts.append(f"stopped or failed: {', '.join(stopped)}")
        if not_started:
            parts.append(f"not started: {', '.join(not_started)}")
        raise interruption(interrupt, self._request.inventory.path,
                           " (" + "; ".join(parts) + ")") from None
