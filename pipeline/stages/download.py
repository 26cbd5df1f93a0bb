"""Stage `download`: get the dataset named in params.yaml, split it, and store it compactly for the
other stages (the datasets and their splits: pipeline.core.data)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pipeline.core.config import Config, check_data_sizes, flatten, load_config
from pipeline.core.data import Splits, build_splits, dataset_facts, save_splits
from pipeline.core.io import atomic_dir, staged, write_json
from pipeline.stages import params_guard, paths

log = logging.getLogger(__name__)


def run(config: Config, workdir: Path) -> tuple[Splits, dict]:
    """The dataset's splits and their facts; downloads go into `workdir`."""
    splits = build_splits(config.data, workdir)
    return splits, dataset_facts(splits)


def main() -> None:
    import mlflow

    from pipeline.tracking import record

    config = load_config()
    with tempfile.TemporaryDirectory(prefix="download-") as workdir:
        splits, facts = run(config, Path(workdir))
    # Data too small for the evaluation is refused here, before any stage has written anything.
    check_data_sizes(config, facts["num_train"], facts["num_test"])
    log.info("%s: %d train and %d test images of shape %s", splits.name, facts["num_train"],
             facts["num_test"], tuple(facts["image_shape"]))
    params = flatten(config.data, "data.")
    with atomic_dir(paths.DATA_DIR) as out, \
            record.stage_run("download", config, run_name=f"data-{splits.name}", params=params):
        record.log_dataset(splits, facts)
        mlflow.log_dict(facts, "facts.json")
        save_splits(staged(out, paths.SPLITS), splits)
        write_json(staged(out, paths.FACTS), facts)
        params_guard.unchanged()  # before the row is finished and the outputs appear


if __name__ == "__main__":
    from pipeline.stages.cli import run_stage

    run_stage("download", main)
