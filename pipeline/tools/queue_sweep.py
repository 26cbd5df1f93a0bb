"""The sweep's default executor, DVC's queue on this machine: the shared stages once, one queued
`dvc exp run` per experiment, `dvc queue start -j N`, then the queue followed to the end by the
files its workers keep, and idle workers stopped. docs/sweeps.md explains why the sweep follows
the queue itself rather than calling `dvc exp run --run-all`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import THREADS_VARIABLE, Config, thread_limit
from pipeline.core.io import process_alive
from pipeline.tools.dvc_cli import SHARED_STAGES, SweepError, dvc

log = logging.getLogger(__name__)

FINISHED = ("Success", "Failed")  # the final statuses of a task in `dvc queue status`
POLL_SECONDS = 2.0
NO_WORKER_GRACE_SECONDS = 30.0  # a worker starts in about 3 s; DVC's own idle check runs every 10 s
MAX_WORKER_RESTARTS = 3
STOP_WAIT_SECONDS = 30.0  # for idle workers to exit after SIGTERM


def threads_per_worker(jobs: int, cores: int) -> int:
    """Each worker's share of the cores (at least one thread)."""
    return max(1, cores // jobs)


def start_workers(jobs: int, env: dict[str, str]) -> None:
    """`dvc queue start -j jobs`. The workers it leaves behind inherit its output, so that goes to
    a file of its own, never to this process's stdout (see the module's docstring)."""
    with tempfile.TemporaryFile("w+") as output:
        result = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], check=False, env=env,
                                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            output.seek(0)
            raise SweepError(f"`dvc queue start -j {jobs}` failed (exit {result.returncode}):\n{output.read()}")


@dataclass(frozen=True)
class QueueView:
    """One look at DVC's experiment queue."""

    states: dict[str | None, str]  # task name -> Queued, Running, Success or Failed
    workers: list[int]  # the PIDs of the queue workers still alive


def read_queue(root: Path = Path(".")) -> QueueView:
    """Every task's status in the DVC queue of the project at `root`, and its live workers. These
    come from the files each worker's watcher keeps (`dvc-exp-worker-<n>.json`: PID, and the exit
    code once it has ended), not from Celery's `inspect`, which `dvc queue status` uses and which
    misses a busy worker on a loaded machine."""
    from dvc.repo import Repo
    from dvc_task.proc.process import ProcessInfo

    with Repo(str(root)) as repo:
        queue = repo.experiments.celery_queue
        # status() lists running tasks, then queued, failed and succeeded ones: a task that moves on
        # while it reads may show twice, and the later (newer) status wins.
        states = {task["name"]: task["status"] for task in queue.status()}
        infos = sorted(Path(queue.wdir).glob("dvc-exp-worker-*.json"))
    workers = []
    for path in infos:
        try:
            info = ProcessInfo.load(str(path))
        except (OSError, ValueError):  # being rewritten by its watcher
            continue
        if info.returncode is None and process_alive(info.pid):
            workers.append(info.pid)
    return QueueView(states, workers)


def follow(names: list[str], look: Callable[[], QueueView], restart: Callable[[], None], *,
           poll: float = POLL_SECONDS, grace: float = NO_WORKER_GRACE_SECONDS,
           restarts: int = MAX_WORKER_RESTARTS, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Wait until every experiment in `names` has finished in the queue (`look` reads it); returns
    each one's final status, Success or Failed, and logs every change of status.

    When no worker has been alive for `grace` seconds while some are unfinished: queued ones get
    new workers (`restart`, at most `restarts` times); one still running has lost its worker, and
    one no longer in the queue was removed from it: both raise SweepError, as no worker will ever
    finish them.
    """
    states: dict[str, str] = {}
    alone_since: float | None = None
    restarted = 0
    while True:
        view = look()
        for name in names:
            state = view.states.get(name)
            if state is not None and state != states.get(name):
                states[name] = state
                log.info("%s: %s%s", name, state.lower(), f" (`dvc queue logs {name}`)" if state == "Failed" else "")
        pending = [name for name in names if states.get(name) not in FINISHED]
        if not pending:
            return states
        if view.workers:
            alone_since = None
        elif alone_since is None:
            alone_since = time.monotonic()
        elif time.monotonic() - alone_since >= grace:
            running = [name for name in pending if view.states.get(name) == "Running"]
            missing = [name for name in pending if name not in view.states]
            if running:
                raise SweepError(f"the queue worker running {', '.join(running)} is gone, so it will never finish; "
                                 f"`dvc queue logs <name>` shows how far it got")
            if missing:
                raise SweepError(f"no longer in DVC's queue (removed?): {', '.join(missing)}")
            if restarted == restarts:
                raise SweepError(f"DVC's queue workers stopped {restarts + 1} times with {', '.join(pending)} "
                                 f"still queued; see .dvc/tmp/exps/celery/dvc-exp-worker-*.out")
            log.warning("no queue worker is running, with %d experiment(s) still queued: starting the workers again",
                        len(pending))
            restart()
            restarted += 1
            alone_since = None
        sleep(poll)


def stop_idle_workers(look: Callable[[], QueueView], *, wait: float = STOP_WAIT_SECONDS, poll: float = 0.5,
                      kill: Callable[[int, int], None] = os.kill,
                      sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """When nothing is queued or running, stop the queue workers still alive and wait up to `wait`
    seconds for them to exit; returns the PIDs still alive. A busy queue is left alone.

    DVC's workers stop themselves when idle, but one whose last task outlasts DVC's idle check can
    miss its shutdown and stay for good. SIGTERM is Celery's warm shutdown; `dvc queue stop`, a
    message to every worker, took about 15 s to reach an idle one here.
    """
    view = look()
    if any(state not in FINISHED for state in view.states.values()):
        return []
    for pid in view.workers:
        try:
            kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while view.workers and time.monotonic() < deadline:
        sleep(poll)
        view = look()
    return view.workers


def execute(tasks: dict[str, tuple[str, ...]], *, config: Config, env: dict[str, str], jobs: int | None = None,
            threads: int | None = None, **_) -> str:
    """Run the experiments `tasks` (name -> `-S` settings) through DVC's queue with `jobs` workers
    (default 1), `threads` each (default PIPELINE_THREADS, else the cores divided among the
    workers); returns how, for the sweep's last line."""
    jobs = jobs or 1
    threads = threads or thread_limit(dict(os.environ)) or threads_per_worker(jobs, len(os.sched_getaffinity(0)))
    dvc("repro", *SHARED_STAGES, env=env)
    for name, settings in tasks.items():
        dvc("exp", "run", "--queue", "--quiet", "-n", name, *[arg for setting in settings for arg in ("-S", setting)],
            env=env)
    log.info("running %d experiments with %d workers, %d threads each (`dvc queue logs -f <name>` shows one's "
             "output as it runs)", len(tasks), jobs, threads)
    workers_env = {**env, THREADS_VARIABLE: str(threads)}
    start_workers(jobs, workers_env)
    try:
        follow(list(tasks), read_queue, lambda: start_workers(jobs, workers_env))
    except KeyboardInterrupt:
        log.info("the experiments go on in DVC's queue: `dvc queue status`; `dvc queue kill <name>` stops one")
        raise
    left = stop_idle_workers(read_queue)
    if left:
        log.warning("queue worker(s) %s, idle, did not stop within %g s: `kill %s`", left, STOP_WAIT_SECONDS,
                    " ".join(map(str, left)))
    return f"{jobs} worker(s), {threads} thread(s) each"
