"""The same sweep on DVC's queue (this machine, 2 workers) and on a local Ray cluster (2 nodes,
each its own `ray start` process on this machine, 1 CPU each), both recording into one
PostgreSQL-backed `mlflow server` (pipeline/tools/local_cluster.py starts all three, and stops them).

    python benchmarks/ray_sweep.py [--latent-dims 2 4 8 16 32 64] [--tiny] [--tracking-uri URL --address ADDR]
                                   [--source REPO] [--work DIR]

Each executor gets a project of its own, a fresh clone of this one's committed sources (or of
`--source`'s) with a bare git remote and a local-folder DVC remote, so neither reuses the other's
results: every experiment is computed. The projects stay in the work folder (`--work`, or a new
temporary one), `dvc/project` and `ray/project`, for a look afterwards. Both run one thread per
experiment (2 workers or 2 one-CPU nodes on this machine's cores). Prints, per executor, the
sweep's wall time as the command took it and as the sweep printed it. `--tiny` uses the tests'
tiny params (seconds per stage) instead of params.yaml's. `--tracking-uri` and `--address` use a
server and a Ray cluster already running (the tests' own) rather than starting them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.core.commands import environment_first
from pipeline.core.config import TINY, merged
from pipeline.tools.local_cluster import mlflow_server, postgres, ray_cluster

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}


def run(*command: str, cwd: Path, env: dict | None = None) -> str:
    """The command's output, stdout then stderr; exits with both if it fails."""
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def project(folder: Path, source: Path, tiny: bool, env: dict) -> Path:
    """A clone of `source`'s commit with its own git and DVC remotes, committed and pushed."""
    root = folder / "project"
    run("git", "clone", "-q", str(source), str(root), cwd=folder)
    if tiny:
        params = yaml.safe_load((root / "params.yaml").read_text())
        (root / "params.yaml").write_text(yaml.safe_dump(merged(params, TINY), sort_keys=False))
    run("git", "init", "-q", "--bare", str(folder / "remote.git"), cwd=folder)
    run("git", "remote", "set-url", "origin", str(folder / "remote.git"), cwd=root)
    run(sys.executable, "-m", "dvc", "remote", "add", "-d", "storage", str(folder / "dvc-remote"), cwd=root, env=env)
    run("git", "commit", "-qam", "benchmark set-up", cwd=root, env=env)
    run("git", "push", "-q", "origin", "HEAD", cwd=root, env=env)
    return root


def timed_sweep(root: Path, args: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    out = run(sys.executable, "-m", "pipeline.tools.sweep", *args, cwd=root, env=env)
    return time.perf_counter() - started, out


@contextlib.contextmanager
def server(folder: Path, url: str | None):
    """`url`, or a PostgreSQL-backed `mlflow server` started for the benchmark (and stopped after)."""
    if url:
        yield url
        return
    (folder / "artifacts").mkdir()
    with postgres() as database, mlflow_server(database, folder / "artifacts") as started:
        yield started


@contextlib.contextmanager
def cluster_address(folder: Path, address: str | None):
    """`address`, or a two-node Ray cluster started for the benchmark (and stopped after)."""
    if address:
        yield address
        return
    with ray_cluster(folder, nodes=2, cpus_per_node=1) as cluster:
        yield cluster.address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent-dims", nargs="+", default=["2", "4", "8", "16", "32", "64"])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny params instead of params.yaml's")
    parser.add_argument("--tracking-uri", help="an MLflow server already running (default: start one on PostgreSQL)")
    parser.add_argument("--address", help="a two-node Ray cluster already running (default: start one)")
    parser.add_argument("--source", type=Path, default=ROOT, help="the git repository to clone (default: this one)")
    parser.add_argument("--work", type=Path, help="the folder to work in, kept (default: a new temporary one)")
    args = parser.parse_args()
    folder = args.work or Path(tempfile.mkdtemp(prefix="bench-ray-"))
    folder.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "DVC_EXP_NAME", "PIPELINE_THREADS")}
    base = {**environment_first(environ), **IDENTITY, "MLFLOW_DISABLE_TELEMETRY": "true"}
    values = ["--latent-dims", *args.latent_dims]
    print(f"sweep of {len(args.latent_dims)} experiments ({'tiny' if args.tiny else 'params.yaml'} params), "
          f"{len(os.sched_getaffinity(0))} cores; work in {folder}")
    with server(folder, args.tracking_uri) as url:
        env = {**base, "MLFLOW_TRACKING_URI": url}
        (folder / "dvc").mkdir()
        seconds, out = timed_sweep(project(folder / "dvc", args.source, args.tiny, env), [*values, "--jobs", "2"], env)
        printed = re.search(r"sweep of \d+ experiments with (.*): (\d+) s;", out)
        print(f"dvc_queue_2_workers_s: {seconds:.1f} (the sweep printed {printed.group(2)} s, {printed.group(1)})")
        (folder / "ray").mkdir()
        with cluster_address(folder / "ray", args.address) as address:
            root = project(folder / "ray", args.source, args.tiny, env)
            seconds, out = timed_sweep(root, [*values, "--executor", "ray", "--address", address], env)
        printed = re.search(r"sweep of \d+ experiments with (.*): (\d+) s;", out)
        print(f"ray_2_nodes_s: {seconds:.1f} (the sweep printed {printed.group(2)} s, {printed.group(1)})")
        times = [float(t) for t in re.findall(r"success on \S+ \((\d+) s\)", out)]
        print(f"ray_task_s: {min(times):.0f} to {max(times):.0f} per experiment (clone, pull, run, push)")


if __name__ == "__main__":
    main()
