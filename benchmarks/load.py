"""How the views cope with a large experiment: `make compare`, the report and the explorer over
2,000 rows (a study with seeds makes hundreds; a team's server, thousands).

    python benchmarks/load.py [--rows 2000] [--keep DIR | --project DIR]

It runs the pipeline once on tiny params in a temporary project (or `--keep DIR`, kept; or uses
`--project DIR`, a tiny project whose pipeline has run already, as the tests pass a copy of their
study), then copies its newest complete row inside the SQLite store until the experiment holds
`--rows` rows, each a (`latent_dim`, `seed`) of its own: 5 seeds per latent_dim, from that run's
(4, 0) on, skipping those recorded already (400 latent_dims for 2,000 rows). A copy holds the
run's params (but those two), metrics with their histories and tags, and the configuration tag its
params give; the copies share the run's artifact folder, so the report can draw its figures. Then
it times, each in a fresh process:
- `python -m pipeline.tools.compare` (`make compare`), seconds and peak memory;
- `python -m pipeline.tools.report`, seconds, peak memory, and the tallest figure it drew;
- the explorer's Runs page through Streamlit's AppTest: the first load, and a rerun (a click).
One line per figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from pipeline.core.config import TINY, merged
from pipeline.tracking import names

ROOT = Path(__file__).resolve().parents[1]
SEEDS_PER_DIM = 5


def environment(project: Path) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "PIPELINE_DATA_MIRROR")}
    return {**clean, "MLFLOW_DISABLE_TELEMETRY": "true"}


def timed(command: list[str], project: Path) -> tuple[float, float]:
    """(seconds, peak resident GiB) of `command` run in `project`; exits with its output if it fails."""
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=project, env=environment(project), stdout=output,
                                   stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak memory
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            output.seek(0)
            sys.exit(f"{' '.join(command)} failed:\n{output.read()}")
    return seconds, usage.ru_maxrss / 2**20


def copy_rows(database: Path, experiment: str, rows: int) -> None:
    """Copy the experiment's newest complete result row until the experiment holds `rows` rows."""
    connection = sqlite3.connect(database)
    experiment_id = connection.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchone()[0]
    complete = ",".join(names.RESULT_STAGES)
    recorded = connection.execute("SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                  "WHERE r.experiment_id = ? AND t.key = ? AND t.value = ? ORDER BY r.start_time",
                                  (experiment_id, names.STAGES_TAG, complete)).fetchall()
    source = recorded[-1][0]
    taken = {tuple(connection.execute("SELECT value FROM params WHERE run_uuid = ? AND key = ?", (run, key)).fetchone()[0]
                   for key in (names.LATENT_DIM, names.SEED)) for (run,) in recorded}
    params = dict(connection.execute("SELECT key, value FROM params WHERE run_uuid = ?", (source,)).fetchall())
    first_dim = int(params[names.LATENT_DIM])
    columns = [row[1] for row in connection.execute("PRAGMA table_info(runs)")]
    run = dict(zip(columns, connection.execute("SELECT * FROM runs WHERE run_uuid = ?", (source,)).fetchone()))
    with connection:
        added, index = 0, 0
        while len(recorded) + added < rows:
            # From the run's latent_dim (not 2: its report figures differ) and seed 0 on.
            latent_dim, seed = first_dim + index // SEEDS_PER_DIM, index % SEEDS_PER_DIM
            index += 1
            if (str(latent_dim), str(seed)) in taken:
                continue
            added += 1
            run_id = uuid.uuid4().hex
            name = f"vae-gan-ld{latent_dim}-s{seed}-bench"
            changed = {**params, names.LATENT_DIM: str(latent_dim), names.SEED: str(seed)}
            copy = {**run, "run_uuid": run_id, "name": name, "start_time": run["start_time"] + index}
            connection.execute(f"INSERT INTO runs ({', '.join(copy)}) VALUES ({', '.join('?' * len(copy))})",
                               list(copy.values()))
            connection.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                                   [(k, v, run_id) for k, v in changed.items()])
            for table in ("metrics", "latest_metrics"):
                cols = [row[1] for row in connection.execute(f"PRAGMA table_info({table})") if row[1] != "run_uuid"]
                connection.execute(f"INSERT INTO {table} ({', '.join(cols)}, run_uuid) SELECT {', '.join(cols)}, ? "
                                   f"FROM {table} WHERE run_uuid = ?", (run_id, source))
            tags = dict(connection.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (source,)).fetchall())
            tags |= {names.RUN_NAME_TAG: name, names.CONFIGURATION_TAG: names.configuration_id(changed)}
            connection.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                                   [(k, v, run_id) for k, v in tags.items()])
    connection.close()


def tallest_figure(folder: Path) -> int:
    from PIL import Image

    return max(Image.open(path).size[1] for path in folder.glob("*.png"))


def explorer_times(project: Path) -> tuple[float, float]:
    """Seconds of the explorer's first load of the Runs page, and of a rerun (what a click costs)."""
    from streamlit.testing.v1 import AppTest

    os.chdir(project)
    for key, value in environment(project).items():
        os.environ[key] = value
    app = AppTest.from_file(str(ROOT / "pipeline/app/app.py"), default_timeout=600)
    started = time.perf_counter()
    app.run()
    first = time.perf_counter() - started
    if app.exception:
        sys.exit(f"the explorer failed: {app.exception}")
    started = time.perf_counter()
    app.run()
    return first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="rows in the experiment (default 2000)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--keep", type=Path, help="build the project here and keep it (default: a temporary folder)")
    where.add_argument("--project", type=Path, help="a tiny project whose pipeline has run: add the rows there")
    args = parser.parse_args()
    project = args.project or args.keep or Path(tempfile.mkdtemp(prefix="load-"))
    started = time.perf_counter()
    if args.project is None:
        project.mkdir(parents=True, exist_ok=True)
        params = merged(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in names.STAGES:
            timed([sys.executable, "-m", f"pipeline.stages.{stage}"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    copy_rows(project / "mlflow.db", params["data"]["name"], args.rows)
    ran = "the tiny pipeline" if args.project is None else f"the project in {project}"
    print(f"setup_s: {time.perf_counter() - started:.1f}  ({ran}, then {args.rows} rows in the store)")

    seconds, peak = timed([sys.executable, "-m", "pipeline.tools.compare"], project)
    print(f"compare_s[n={args.rows}]: {seconds:.1f}  peak {peak:.2f} GiB")
    seconds, peak = timed([sys.executable, "-m", "pipeline.tools.compare"], project)
    print(f"compare_again_s[n={args.rows}]: {seconds:.1f}  peak {peak:.2f} GiB  (the summary runs exist now)")
    seconds, peak = timed([sys.executable, "-m", "pipeline.tools.report"], project)
    print(f"report_s[n={args.rows}]: {seconds:.1f}  peak {peak:.2f} GiB")
    print(f"report_tallest_figure_px[n={args.rows}]: {tallest_figure(project / 'outputs/report/figures')}")
    first, rerun = explorer_times(project)
    print(f"explorer_first_load_s[n={args.rows}]: {first:.1f}")
    print(f"explorer_rerun_s[n={args.rows}]: {rerun:.2f}  (a click)")
    if args.keep is None and args.project is None:
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
