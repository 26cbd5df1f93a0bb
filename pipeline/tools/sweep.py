"""`python -m pipeline.tools.sweep` (`make sweep`): a sweep over `latent_dim` (and optionally
`vae.beta`, and the model `seed` as the replicate axis) as queued DVC experiments, run by N queue
workers (or, with `--executor ray`, as Ray tasks on any node of a cluster: ray_sweep.py); waits
for them, checks that each point left exactly one complete MLflow row, and prints one line per
configuration with its seeds' mean and 95% interval.

The steps (check, shared stages once, queue, `dvc queue start`, `follow`, `stop_idle_workers`,
find each experiment's row) and why the sweep follows DVC's queue itself rather than calling
`dvc exp run --run-all` are explained in docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import json
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

import pandas as pd
import yaml

from pipeline.core.config import PARAMS_FILE, THREADS_VARIABLE, ConfigError, parse_config, thread_limit
from pipeline.core.errors import PipelineError
from pipeline.stages import paths
from pipeline.tools import compare
from pipeline.tracking import names, store, summaries
from pipeline.tracking.rows import Row, configurations, read_rows

log = logging.getLogger(__name__)

DEFAULT_VALUES = (2, 4, 8, 16, 32, 64)
SHARED_STAGES = tuple(stage for stage in names.STAGES if stage not in names.RESULT_STAGES)  # download, train_classifier
DEFAULT_CSV = Path("outputs/sweep.csv")
FINISHED = ("Success", "Failed")  # the final statuses of a task in `dvc queue status`
POLL_SECONDS = 2.0
NO_WORKER_GRACE_SECONDS = 30.0  # a worker starts in about 3 s; DVC's own idle check runs every 10 s
MAX_WORKER_RESTARTS = 3
STOP_WAIT_SECONDS = 30.0  # for idle workers to exit after SIGTERM


class SweepError(PipelineError):
    """The sweep could not start, or an experiment of it left no complete result."""


Point = tuple[int, float | None, int | None]  # (latent_dim, vae.beta, seed); None: params.yaml's


def experiment_names(stamp: str, values: list[int], betas: list[float] | None = None,
                     seeds: list[int] | None = None) -> dict[Point, str]:
    """The DVC experiment name of each point: `sweep-<stamp>-ld<value>[-beta<beta>][-s<seed>]`."""
    return {(value, beta, seed): f"sweep-{stamp}-ld{value}" + (f"-beta{beta:g}" if beta is not None else "")
            + (f"-s{seed}" if seed is not None else "")
            for value in values for beta in (betas or [None]) for seed in (seeds or [None])}


def settings(point: Point) -> tuple[str, ...]:
    """The params a point sets, as `dvc exp run -S` takes them."""
    value, beta, seed = point
    return (f"latent_dim={value}", *([f"vae.beta={beta}"] if beta is not None else []),
            *([f"seed={seed}"] if seed is not None else []))


def threads_per_worker(jobs: int, cores: int) -> int:
    """Each worker's share of the cores (at least one thread)."""
    return max(1, cores // jobs)


def check_values(values: list[int], betas: list[float] | None = None, seeds: list[int] | None = None) -> None:
    """Refuse values params.yaml would refuse, and repeats (one experiment per value)."""
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    for value in values:
        parse_config({**raw, "latent_dim": value})  # raises ConfigError naming the key and value
    for beta in betas or []:
        parse_config({**raw, "vae": {**raw.get("vae", {}), "beta": beta}})
    for seed in seeds or []:
        parse_config({**raw, "seed": seed})
    for name, given in (("latent_dim", values), ("vae.beta", betas or []), ("seed", seeds or [])):
        repeated = sorted({v for v in given if given.count(v) > 1})
        if repeated:
            raise ConfigError(f"{name} values {repeated} are given more than once; give each value once")


def _run(*args: str, env: dict[str, str] | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, text=True, capture_output=capture, check=False)


def check_git() -> None:
    if _run("git", "rev-parse", "--verify", "-q", "HEAD", capture=True).returncode != 0:
        raise SweepError("dvc exp run needs a git repository with at least one commit: git init, then commit")
    if _run("git", "var", "GIT_COMMITTER_IDENT", capture=True).returncode != 0:
        raise SweepError("dvc exp run commits each experiment: set git config user.name and user.email")


def dvc(*args: str, env: dict[str, str]) -> None:
    result = _run(sys.executable, "-m", "dvc", *args, env=env)
    if result.returncode != 0:
        raise SweepError(f"`dvc {' '.join(args)}` failed (exit {result.returncode}); see its output above")


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
        if info.returncode is None and store.process_alive(info.pid):
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


def run(values: list[int], betas: list[float] | None, seeds: list[int] | None, jobs: int, threads: int,
        env: dict[str, str]) -> dict[Point, str]:
    """Queue and run the sweep; returns each point's experiment name."""
    names = experiment_names(time.strftime("%m%d-%H%M%S"), values, betas, seeds)
    dvc("repro", *SHARED_STAGES, env=env)
    for point, name in names.items():
        dvc("exp", "run", "--queue", "--quiet", "-n", name,
            *[arg for setting in settings(point) for arg in ("-S", setting)], env=env)
    log.info("running %d experiments with %d workers, %d threads each (`dvc queue logs -f <name>` shows one's "
             "output as it runs)", len(names), jobs, threads)
    workers_env = {**env, THREADS_VARIABLE: str(threads)}
    start_workers(jobs, workers_env)
    try:
        follow(list(names.values()), read_queue, lambda: start_workers(jobs, workers_env))
    except KeyboardInterrupt:
        log.info("the experiments go on in DVC's queue: `dvc queue status`; `dvc queue kill <name>` stops one")
        raise
    left = stop_idle_workers(read_queue)
    if left:
        log.warning("queue worker(s) %s, idle, did not stop within %g s: `kill %s`", left, STOP_WAIT_SECONDS,
                    " ".join(map(str, left)))
    return names


def result_run_id(name: str) -> str | None:
    """The MLflow row holding DVC experiment `name`'s result: the run id in its evaluation's
    `mlflow_run.json`, read from the experiment's commit and DVC's cache. None when the
    experiment left no result (it failed)."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return json.loads(dvc.api.read(str(paths.EVAL_RUN), rev=name))["run_id"]
    except (DvcException, FileNotFoundError):
        return None


def sweep_rows(names: dict[Point, str], recorded: list[Row]) -> pd.DataFrame:
    """The comparison rows of the sweep's results, one per point, after checking them; `recorded`
    are the experiment's rows as read.

    A value computed before (the baseline's own value, or any earlier experiment's, which DVC
    restores from its run cache) runs no stage and records no new row: its result is the
    earlier row, which its outputs point to.
    """
    table = compare.comparison(recorded)
    problems, ids = [], []
    for (value, beta, seed), name in names.items():
        run_id = result_run_id(name)
        found = table[table["run_id"] == run_id]
        if run_id is None or found.empty:
            problems.append(f"{name} left no complete result (see `dvc queue logs {name}`)")
            continue
        if found["latent_dim"].iloc[0] != value:
            problems.append(f"{name}'s row {run_id} has latent_dim {found['latent_dim'].iloc[0]}, not {value}")
        if beta is not None and found["beta"].iloc[0] != beta:
            problems.append(f"{name}'s row {run_id} has vae.beta {found['beta'].iloc[0]}, not {beta}")
        if seed is not None and found["seed"].iloc[0] != seed:
            problems.append(f"{name}'s row {run_id} has seed {found['seed'].iloc[0]}, not {seed}")
        extra = table[(table["dvc_exp"] == name) & (table["run_id"] != run_id)]
        if not extra.empty:
            problems.append(f"{name} recorded {len(extra)} complete row(s) besides its result: {', '.join(extra['run_id'])}")
        ids.append(run_id)
    if problems:
        raise SweepError("; ".join(problems))
    return table[table["run_id"].isin(ids)]


def main(argv: list[str] | None = None) -> None:
    from pipeline.core.config import read_params

    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent-dims", type=int, nargs="+", default=list(DEFAULT_VALUES), metavar="N",
                        help="values of latent_dim (default: %(default)s)")
    parser.add_argument("--betas", type=float, nargs="+", metavar="B",
                        help="values of vae.beta, each run with every latent_dim (default: params.yaml's)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="model seeds, each run with every other point: the replicates whose mean and "
                             "interval the table shows (default: params.yaml's seed)")
    parser.add_argument("--executor", choices=("dvc", "ray"), default="dvc",
                        help="dvc: DVC's queue on this machine (default); ray: one Ray task per experiment, on any "
                             "node of a Ray cluster (docs/cluster.md)")
    parser.add_argument("-j", "--jobs", type=int, help="DVC queue workers at once (default 1)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads per stage (default: PIPELINE_THREADS, else the cores divided by --jobs; "
                             "with Ray, else 1): with Ray, also the CPUs each task asks for")
    parser.add_argument("--address", metavar="ADDR",
                        help="with --executor ray: the cluster's address, as `ray start --address` takes it "
                             "(default: start Ray on this machine)")
    parser.add_argument("--git-remote", metavar="NAME",
                        help="with --executor ray: the git remote the nodes clone from and push the experiments to "
                             "(default origin)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"where to write the table (default {DEFAULT_CSV})")
    args = parser.parse_args(argv)
    if (args.jobs is not None and args.jobs < 1) or (args.threads is not None and args.threads < 1):
        parser.error("--jobs and --threads must be at least 1")
    if args.executor == "dvc" and (args.address or args.git_remote):
        parser.error("--address and --git-remote go with --executor ray")
    if args.executor == "ray" and args.jobs is not None:
        parser.error("--jobs sets DVC's queue workers; Ray runs as many experiments at once as the cluster's CPUs "
                     "allow, --threads each")

    # With Ray the device is checked against the cluster (ray_sweep.gpus_per_task), not this machine.
    config = parse_config(read_params(), check_device=args.executor == "dvc")
    check_values(args.latent_dims, args.betas, args.seeds)
    check_git()
    store.check_store()
    # Queue workers and tasks start `dvc` from PATH: it must be this environment's, as for the stages.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    start = time.perf_counter()
    if args.executor == "dvc":
        jobs = args.jobs or 1
        threads = (args.threads or thread_limit(dict(os.environ))
                   or threads_per_worker(jobs, len(os.sched_getaffinity(0))))
        names = run(args.latent_dims, args.betas, args.seeds, jobs, threads, env)
        how = f"{jobs} worker(s), {threads} thread(s) each"
    else:
        from pipeline.tools import ray_sweep

        threads = args.threads or thread_limit(dict(os.environ)) or 1
        names = experiment_names(time.strftime("%m%d-%H%M%S"), args.latent_dims, args.betas, args.seeds)
        nodes = ray_sweep.run({name: settings(point) for point, name in names.items()}, config=config,
                              address=args.address, git_remote=args.git_remote or "origin", threads=threads, env=env)
        how = f"Ray ({nodes} node(s)), {threads} CPU(s) each"
    seconds = time.perf_counter() - start
    recorded = read_rows(config.experiment_name)
    rows = sweep_rows(names, recorded)
    print(compare.format_table(rows))
    for row in rows[~rows["dvc_exp"].isin(list(names.values()))].itertuples():
        print(f"latent_dim {row.latent_dim}, beta {row.beta:g}, seed {row.seed}: computed before (DVC reused those "
              f"outputs and ran nothing), so its row is the earlier {row.run}")
    # The sweep's configurations, over every seed recorded for them (earlier sweeps' too).
    swept = set(rows["configuration"])
    groups = [group for group in configurations(recorded) if group.id in swept]
    summaries.record(config.experiment_name, groups, recorded)
    print(compare.format_aggregate(compare.aggregate([row for group in groups for row in group.rows])))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.csv, index=False)
    print(f"sweep of {len(names)} experiments with {how}: {seconds:.0f} s; table written to {args.csv}")


if __name__ == "__main__":
    from pipeline.stages.cli import run_command

    run_command("sweep", main)
