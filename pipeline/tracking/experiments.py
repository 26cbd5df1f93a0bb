"""The MLflow experiments the stages record into: created with their artifacts beside a SQLite
store (never in DVC's temporary copy), and tagged as model training with the UI's saved view of
the headline numbers (views.py)."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.core.errors import TrackingError
from pipeline.tracking import names, store, views


def experiment_tags(name: str, existing: dict[str, str] | None = None) -> dict[str, str]:
    """The tags experiment `name` must carry that it lacks (or holds out of date): every experiment
    says it holds model training (names.py); a result experiment also carries the UI's saved view of
    the headline numbers (views.py)."""
    existing = existing or {}
    tags = {}
    if existing.get(names.EXPERIMENT_KIND_TAG) != names.TRAINING_KIND:
        tags[names.EXPERIMENT_KIND_TAG] = names.TRAINING_KIND
    if name not in names.OWN_EXPERIMENTS and not views.is_current(
            existing.get(views.VIEW_TAG)):
        tags[views.VIEW_TAG] = views.envelope(int(time.time() * 1000))
    return tags


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created (with artifacts beside the local store) if missing, with
    its tags brought up to date (experiment_tags)."""
    mlflow, client = store.connect()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        check_artifact_location(name, experiment.artifact_location)
        for key, value in experiment_tags(name, experiment.tags).items():  # made by older code
            client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    # A SQLite store keeps its artifacts beside it, in mlartifacts/ (the project root's, for the
    # local store): MLflow's own default, ./mlruns, would be in the working folder, a temporary
    # copy in a queued DVC experiment. A tracking server chooses its own.
    database = store.local_store(store.tracking_uri())
    location = (database.parent.resolve() / "mlartifacts").as_uri() if database is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=experiment_tags(name))
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def check_artifact_location(name: str, location: str) -> None:
    """Refuse an experiment whose artifacts would be lost: kept at a relative path, or inside DVC's
    temporary copy of the project (deleted after a queued or `--temp` experiment), as an
    experiment made by other code or an older version can be."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(location or "")
    if parts.scheme not in ("", "file"):
        return
    path = Path(unquote(parts.path))
    workdir = Path.cwd().resolve()
    temporary = workdir != store.project_root() and path.is_absolute() and path.resolve().is_relative_to(workdir)
    if not path.is_absolute() or temporary or "/.dvc/tmp/" in f"{path}/":
        where = "a relative path" if not path.is_absolute() else "inside DVC's temporary copy of the project"
        raise TrackingError(f"MLflow experiment '{name}' in {store.shown_uri()} keeps its artifacts at {location}, "
                            f"{where}, where they would be lost; record into another experiment "
                            "(tracking.experiment in params.yaml), or delete this one (`mlflow experiments "
                            "delete`) so that it is made again with its artifacts beside the store")
