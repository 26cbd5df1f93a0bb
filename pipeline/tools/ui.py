"""Start the MLflow UI on the local store, light, and print where each result experiment's runs are.

    python -m pipeline.tools.ui [--port 5000]      (make ui)

It brings every result experiment's tags up to date first (the training kind and the saved view of
the headline numbers, pipeline/tracking/views.py), then runs `mlflow ui` with one worker and without
MLflow's job runner (GenAI jobs this project has none of), and prints each experiment's address:
the runs table and charts in that view, in the model-training sidebar. docs/results.md explains.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.core.errors import TrackingError
from pipeline.tracking import experiments, names, store, views

# MLflow's documented server switch: no huey job runner (it serves GenAI jobs: judges, scorers).
LIGHT_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def command(host: str, port: int) -> list[str]:
    """The server's command line: one worker is plenty for one user."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.default_tracking_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]


def result_experiments() -> list[tuple[str, str]]:
    """(name, id) of every result experiment in the local store, its tags brought up to date."""
    _, client = store.connect()
    found = []
    for experiment in client.search_experiments():
        if names.is_result_experiment(experiment.name):
            found.append((experiment.name, experiments.ensure_experiment(experiment.name)))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the UI shows the local store, whatever the shell says
    path = store.default_store()
    if not path.exists():
        raise TrackingError(f"no MLflow store at {path}: run `make repro` first, then `make ui`")
    base = f"http://{args.host}:{args.port}/"
    print(f"MLflow UI on {base} (Ctrl-C stops it). Each result experiment's runs, headline numbers first:")
    for name, experiment_id in result_experiments():
        print(f"  {name}: {base}{views.runs_path(experiment_id)}")
    sys.stdout.flush()
    os.execvpe(sys.executable, command(args.host, args.port), os.environ | LIGHT_ENV)


if __name__ == "__main__":
    from pipeline.stages.cli import run_command

    run_command("ui", main)
