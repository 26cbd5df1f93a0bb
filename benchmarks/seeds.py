"""One experiment with one seed against the same experiment with five, and the default study.

    python benchmarks/seeds.py [--seeds 0 1 2 3 4] [--study [--skip-experiments]] [--jobs 2] [--tiny] [--work DIR]

In a fresh copy of this project's sources (a git repository of its own, nothing run): `dvc repro`
of the shared stages (`download`, `train_classifier`), then `dvc exp run` of the default
configuration with `seeds: [<first seed>]` and with all of `--seeds`, one after the other, each on
every core (the two compute different seeds' models, so DVC reuses nothing between them). Prints
each wall time, the stages each ran, and their ratio. `--study` then runs `make default-study`'s
two sweeps (`--jobs` queue workers; not the report) in a second fresh copy and prints their wall
time from the first sweep command to the last recorded row. `--tiny` uses the tests' tiny params.
The copies stay in `--work` (default: a new temporary folder). `make bench-seeds` runs both.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.core.commands import environment_first
from pipeline.core.config import TINY, merged
from pipeline.tools.dvc_cli import source_files
from pipeline.tools.sweep import DEFAULT_VALUES  # the sweep's default latent_dims, which make default-study repeats

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}
STAGE_RAN = re.compile(r"^Running stage '(\w+)'", re.M)


def run(*command: str, cwd: Path, env: dict) -> tuple[float, str]:
    """Seconds the command took and its output; exits with the output if it fails."""
    started = time.perf_counter()
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started, result.stdout + result.stderr


def project(folder: Path, tiny: bool, env: dict) -> Path:
    """The project's sources in `folder`, committed, nothing run."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in source_files(ROOT):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    if tiny:
        params = yaml.safe_load((folder / "params.yaml").read_text())
        (folder / "params.yaml").write_text(yaml.safe_dump(merged(params, TINY), sort_keys=False))
    for command in (("init", "-q"), ("add", "-A"), ("commit", "-qm", "benchmark")):
        run("git", *command, cwd=folder, env=env)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--study", action="store_true", help="also time the default study's two sweeps")
    parser.add_argument("--jobs", type=int, default=2, help="queue workers of the study's sweeps (default 2)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny params")
    parser.add_argument("--work", type=Path, help="where to make the copies (default: a new temporary folder)")
    parser.add_argument("--skip-experiments", action="store_true", help="only the study (with --study)")
    args = parser.parse_args()
    env = {**environment_first(), **IDENTITY}
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "PIPELINE_THREADS"):
        env.pop(name, None)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-seeds-"))
    dvc = (sys.executable, "-m", "dvc")
    if not args.skip_experiments:
        root = project(work / "experiments", args.tiny, env)
        shared, _ = run(*dvc, "repro", "download", "train_classifier", cwd=root, env=env)
        print(f"shared_stages_s: {shared:.1f} (download and train_classifier, once; project in {root})")
        times = {}
        for label, seeds in (("one", args.seeds[:1]), ("all", args.seeds)):
            setting = f"seeds=[{','.join(map(str, seeds))}]"
            times[label], log = run(*dvc, "exp", "run", "-n", f"seeds-{label}", "-S", setting, cwd=root, env=env)
            stages = ", ".join(STAGE_RAN.findall(log))
            print(f"experiment_s[seeds={len(seeds)}]: {times[label]:.1f} (dvc exp run -S '{setting}': {stages})")
        print(f"experiment_ratio: {times['all'] / times['one']:.2f} ({len(args.seeds)} seeds against 1)")
    if args.study:
        # A copy of its own: the experiments above would have left the study's default
        # configuration in DVC's run cache.
        root = project(work / "study", args.tiny, env)
        sweep = (sys.executable, "-m", "pipeline.tools.sweep", "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs))
        first, _ = run(*sweep, "--latent-dims", *map(str, DEFAULT_VALUES), cwd=root, env=env)
        second, out = run(*sweep, "--latent-dims", "16", "--betas", "0.25", "4", cwd=root, env=env)
        print(f"study_s: {first + second:.0f} ({(first + second) / 60:.1f} min from the first sweep command to the "
              f"last recorded row: latent_dim sweep {first:.0f} s, beta sweep {second:.0f} s; {len(args.seeds)} seeds "
              f"per configuration, {args.jobs} queue workers; project in {root})")


if __name__ == "__main__":
    main()
