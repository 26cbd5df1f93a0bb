"""Stage `train_classifier`: the CNN whose penultimate layer is the evaluation's feature space.

It depends on the data and its own params only, not on `latent_dim`, so DVC trains it once and
every experiment scores its samples with the same features. Its test accuracy is recorded, so a
reader knows how much the feature space can be trusted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from pipeline.core.checkpoints import CLASSIFIER_KIND, classifier_config, save_checkpoint
from pipeline.core.config import Config, flatten, load_config, resolve_device
from pipeline.core.data import Splits, dataset_facts, load_splits
from pipeline.core.io import atomic_dir, staged, write_csv, write_json
from pipeline.core.models import Classifier
from pipeline.core.training import accuracy_and_loss, adam, classifier_epoch, to_unit_float
from pipeline.stages import params_guard, paths

log = logging.getLogger(__name__)


@dataclass
class ClassifierResult:
    model: Classifier
    history: list[dict[str, float]]  # epoch, train_loss, train_accuracy, test_loss, test_accuracy
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def run(config: Config, splits: Splits, device: str,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> ClassifierResult:
    """Train the classifier on the training split; score it on the test split after each epoch;
    `on_epoch(epoch, row)` is called after each epoch."""
    cfg = config.classifier
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = Classifier(splits.image_shape, splits.num_classes, cfg.feature_dim).to(device)
    optimizer = adam(model.parameters(), lr=cfg.learning_rate)
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    y_train = torch.from_numpy(splits.y_train).to(device)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    y_test = torch.from_numpy(splits.y_test).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    history = []
    started = time.perf_counter()
    for epoch in tqdm(range(cfg.epochs), desc="train_classifier", unit="epoch", disable=None):
        classifier_epoch(model, optimizer, x_train, y_train, batch_size=cfg.batch_size, generator=generator,
                         epoch=epoch)
        train = accuracy_and_loss(model, x_train, y_train)
        test = accuracy_and_loss(model, x_test, y_test)
        history.append({"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
                        **{f"test_{k}": v for k, v in test.items()}})
        log.info("epoch %d/%d  test accuracy %.4f", epoch + 1, cfg.epochs, test["accuracy"])
        if on_epoch is not None:
            on_epoch(epoch + 1, history[-1])
    return ClassifierResult(model.cpu().eval(), history, time.perf_counter() - started)


def main() -> None:
    import mlflow

    from pipeline.tracking import names, provenance, record

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits(paths.SPLITS)
    facts = dataset_facts(splits)
    params = {"device": config.device, names.DATA_NAME: config.data.name,
              **flatten(config.classifier, "classifier.")}
    with atomic_dir(paths.CLASSIFIER_DIR) as out, \
            record.stage_run("train_classifier", config, run_name=f"classifier-{splits.name}-{provenance.dvc_exp_name()}",
                             params=params):
        record.log_dataset(splits, facts)
        # A run hijacked by a params.yaml edit stops at once, not after training.
        result = run(config, splits, device, on_epoch=lambda epoch, row: params_guard.unchanged())
        for row in result.history:
            mlflow.log_metrics({names.metric("train_classifier", k): v for k, v in row.items() if k != "epoch"},
                               step=row["epoch"])
        mlflow.log_metric(names.metric("train_classifier", "train_seconds"), result.seconds)
        metrics = {k: v for k, v in result.final.items() if k != "epoch"}
        save_checkpoint(staged(out, paths.CLASSIFIER_CHECKPOINT), kind=CLASSIFIER_KIND, state_dict=result.model.state_dict(),
                        config=classifier_config(config, splits.image_shape, splits.num_classes,
                                                 facts["content_hash"]),
                        epoch=config.classifier.epochs, metrics=metrics)
        write_csv(staged(out, paths.CLASSIFIER_HISTORY), result.history)
        write_json(staged(out, paths.CLASSIFIER_METRICS), metrics)
        mlflow.log_artifact(str(staged(out, paths.CLASSIFIER_CHECKPOINT)), artifact_path="classifier")
        params_guard.unchanged()  # before the row is finished and the outputs appear
    log.info("done: test accuracy %.4f", metrics["test_accuracy"])


if __name__ == "__main__":
    from pipeline.stages.cli import run_stage

    run_stage("train_classifier", main)
