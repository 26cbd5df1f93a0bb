"""`python -m pipeline.tools.sweep` (`make sweep`): a sweep over `latent_dim` (and optionally
`vae.beta`) as queued DVC experiments, one per configuration with all its model seeds (or
`--seeds-per-task` seeds each), run by N queue workers (or, with `--executor ray`, as Ray tasks on
any node of a cluster: ray_sweep.py); waits for them, checks that each experiment left exactly one
complete MLflow row per seed, and prints one line per configuration with its seeds' mean and 95%
interval.

The executors are entries of EXECUTORS: DVC's queue (queue_sweep.py) and Ray (ray_sweep.py); the
DVC helpers both use are in dvc_cli.py. The steps (check, shared stages once, queue, `dvc queue
start`, `follow`, `stop_idle_workers`, find each experiment's row) and why the sweep follows DVC's
queue itself rather than calling `dvc exp run --run-all` are explained in docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.core.commands import environment_first
from pipeline.core.config import PARAMS_FILE, ConfigError, parse_config, read_params
from pipeline.core.io import check_output
from pipeline.tools import compare, queue_sweep, ray_sweep
from pipeline.tools.dvc_cli import SweepError, check_git, result_run_ids
from pipeline.tracking import store, summaries
from pipeline.tracking.rows import Row, configurations, read_rows

DEFAULT_VALUES = (2, 4, 8, 16, 32, 64)
DEFAULT_CSV = Path("outputs/sweep.csv")

# The executors, by --executor: each runs the experiments it is given (name -> `-S` settings) and
# returns how, for the sweep's last line; keyword options it has no use for are ignored.
Executor = Callable[..., str]
EXECUTORS: dict[str, Executor] = {"dvc": queue_sweep.execute, "ray": ray_sweep.execute}


Point = tuple[int, float | None, tuple[int, ...]]  # (latent_dim, vae.beta or None for params.yaml's, seeds)


def seed_groups(seeds: list[int], per_task: int | None) -> list[tuple[int, ...]]:
    """The seeds split into experiments of at most `per_task` seeds each (all in one without)."""
    size = per_task or len(seeds)
    return [tuple(seeds[start : start + size]) for start in range(0, len(seeds), size)]


def experiment_names(stamp: str, values: list[int], betas: list[float] | None, groups: list[tuple[int, ...]]
                     ) -> dict[Point, str]:
    """The DVC experiment name of each point: `sweep-<stamp>-ld<value>[-beta<beta>][-s<first seed>]`,
    the seed part only when the seeds are split over several experiments."""
    split = len(groups) > 1
    return {(value, beta, group): f"sweep-{stamp}-ld{value}" + (f"-beta{beta:g}" if beta is not None else "")
            + (f"-s{group[0]}" if split else "")
            for value in values for beta in (betas or [None]) for group in groups}


def settings(point: Point) -> tuple[str, ...]:
    """The params a point sets, as `dvc exp run -S` takes them."""
    value, beta, seeds = point
    return (f"latent_dim={value}", *([f"vae.beta={beta}"] if beta is not None else []),
            f"seeds=[{','.join(map(str, seeds))}]")


def check_values(values: list[int], betas: list[float] | None = None, seeds: list[int] | None = None) -> None:
    """Refuse values params.yaml would refuse, and repeats (one experiment per value)."""
    for name, given in (("latent_dim", values), ("vae.beta", betas or []), ("seeds", seeds or [])):
        repeated = sorted({v for v in given if given.count(v) > 1})
        if repeated:
            raise ConfigError(f"{name} values {repeated} are given more than once; give each value once")
    raw = read_params(PARAMS_FILE)
    for value in values:
        parse_config({**raw, "latent_dim": value})  # raises ConfigError naming the key and value
    for beta in betas or []:
        parse_config({**raw, "vae": {**raw.get("vae", {}), "beta": beta}})
    if seeds:
        parse_config({**raw, "seeds": list(seeds)})


def sweep_rows(names: dict[Point, str], recorded: list[Row]) -> pd.DataFrame:
    """The comparison rows of the sweep's results, one per point and seed, after checking them;
    `recorded` are the experiment's rows as read.

    A value computed before (the baseline's own value, or any earlier experiment's, which DVC
    restores from its run cache) runs no stage and records no new row: its result is the
    earlier rows, which its outputs point to.
    """
    table = compare.comparison(recorded)
    problems, ids = [], []
    for (value, beta, seeds), name in names.items():
        run_ids = result_run_ids(name)
        if not run_ids:
            problems.append(f"{name} left no complete result (see `dvc queue logs {name}`)")
            continue
        if sorted(run_ids) != sorted(seeds):
            problems.append(f"{name} recorded seeds {sorted(run_ids)}, not {list(seeds)}")
        for seed, run_id in run_ids.items():
            found = table[table["run_id"] == run_id]
            if found.empty:
                problems.append(f"{name}'s row {run_id} of seed {seed} is not a complete result")
                continue
            if found["latent_dim"].iloc[0] != value:
                problems.append(f"{name}'s row {run_id} has latent_dim {found['latent_dim'].iloc[0]}, not {value}")
            if beta is not None and found["beta"].iloc[0] != beta:
                problems.append(f"{name}'s row {run_id} has vae.beta {found['beta'].iloc[0]}, not {beta}")
            if found["seed"].iloc[0] != seed:
                problems.append(f"{name}'s row {run_id} has seed {found['seed'].iloc[0]}, not {seed}")
            ids.append(run_id)
        extra = table[(table["dvc_exp"] == name) & ~table["run_id"].isin(list(run_ids.values()))]
        if not extra.empty:
            problems.append(f"{name} recorded {len(extra)} complete row(s) besides its result: {', '.join(extra['run_id'])}")
    if problems:
        raise SweepError("; ".join(problems))
    return table[table["run_id"].isin(ids)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent-dims", type=int, nargs="+", default=list(DEFAULT_VALUES), metavar="N",
                        help="values of latent_dim (default: %(default)s)")
    parser.add_argument("--betas", type=float, nargs="+", metavar="B",
                        help="values of vae.beta, each run with every latent_dim (default: params.yaml's)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="model seeds, trained together in each point's experiment: the replicates whose mean "
                             "and interval the table shows (default: params.yaml's seeds)")
    parser.add_argument("--seeds-per-task", type=int, metavar="K",
                        help="split each point's seeds over experiments of at most K seeds (for many machines: "
                             "they pool again in the table; default: all seeds in one experiment)")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="dvc",
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
    if any(value is not None and value < 1 for value in (args.jobs, args.threads, args.seeds_per_task)):
        parser.error("--jobs, --threads and --seeds-per-task must be at least 1")
    if args.executor == "dvc" and (args.address or args.git_remote):
        parser.error("--address and --git-remote go with --executor ray")
    if args.executor == "ray" and args.jobs is not None:
        parser.error("--jobs sets DVC's queue workers; Ray runs as many experiments at once as the cluster's CPUs "
                     "allow, --threads each")

    if args.executor == "dvc" and args.threads is not None and args.threads > (os.cpu_count() or 1):
        raise ConfigError(f"--threads {args.threads} is more than this machine's {os.cpu_count() or 1} cores, which "
                          "every stage would refuse (PIPELINE_THREADS); give at most that, or leave it out")
    check_output(args.csv)
    # With Ray the device is checked against the cluster (ray_sweep.gpus_per_task), not this machine.
    config = parse_config(read_params(), check_device=args.executor == "dvc")
    check_values(args.latent_dims, args.betas, args.seeds)
    groups = seed_groups(list(args.seeds or config.seeds), args.seeds_per_task)
    check_git()
    store.check_store()
    # Queue workers and tasks start `dvc` from PATH: it must be this environment's, as for the stages.
    env = environment_first()

    start = time.perf_counter()
    names = experiment_names(time.strftime("%m%d-%H%M%S"), args.latent_dims, args.betas, groups)
    how = EXECUTORS[args.executor]({name: settings(point) for point, name in names.items()}, config=config, env=env,
                                   jobs=args.jobs, threads=args.threads, address=args.address,
                                   git_remote=args.git_remote or "origin")
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
