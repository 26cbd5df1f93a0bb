"""Stage `train_classifier`: the CNN whose penultimate layer is the evaluation's feature space.

It depends on the data and its own params only, not on `latent_dim`, so DVC trains it once and
every experiment scores its samples with the same features. Its test accuracy is recorded, so a
reader knows how much the feature space can be trusted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import paths
from pipeline.config import Config, load_config, resolve_device
from pipeline.download import Splits, dataset_facts, load_splits
from pipeline.errors import CheckpointError
from pipeline.io import load_checkpoint, save_checkpoint, write_json
from pipeline.models import Classifier
from pipeline.training import adam, check_finite, to_unit_float, write_csv

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "classifier"
EXPERIMENT = "classifiers"  # MLflow experiment of this stage's runs (results live elsewhere)


@dataclass
class ClassifierResult:
    model: Classifier
    history: list[dict[str, float]]  # epoch, train_loss, train_accuracy, test_loss, test_accuracy
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


@torch.inference_mode()
def accuracy_and_loss(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy of `model` on images x (N, C, H, W), labels y (N,)."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == target).sum())
    return {"loss": loss / len(x), "accuracy": correct / len(x)}


def run(config: Config, splits: Splits, device: str) -> ClassifierResult:
    """Train the classifier on the training split; score it on the test split after each epoch."""
    cfg = config.classifier
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = Classifier(splits.image_shape, splits.num_classes, cfg.feature_dim).to(device)
    optimizer = adam(model.parameters(), lr=cfg.learning_rate)
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    y_train = torch.from_numpy(splits.y_train).to(device)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    y_test = torch.from_numpy(splits.y_test).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    history = []
    started = time.perf_counter()
    for epoch in tqdm(range(cfg.epochs), desc="train_classifier", unit="epoch", disable=None):
        model.train()
        order = torch.randperm(len(x_train), generator=generator, device=device)
        for start in range(0, len(x_train), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(x_train[index]), y_train[index])
            check_finite({"cross_entropy": loss.item()}, epoch, "training", "lower classifier.learning_rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train = accuracy_and_loss(model, x_train, y_train)
        test = accuracy_and_loss(model, x_test, y_test)
        history.append({"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
                        **{f"test_{k}": v for k, v in test.items()}})
        log.info("epoch %d/%d  test accuracy %.4f", epoch + 1, cfg.epochs, test["accuracy"])
    return ClassifierResult(model.cpu().eval(), history, time.perf_counter() - started)


def load_classifier(path: Path = paths.CLASSIFIER_CHECKPOINT, data_hash: str | None = None) -> Classifier:
    """Rebuild the classifier from its checkpoint; check it was trained on the data `data_hash`."""
    checkpoint = load_checkpoint(path, kind=CHECKPOINT_KIND, stage="train_classifier")
    arch = checkpoint["config"]["architecture"]
    if data_hash is not None and checkpoint["config"]["data_hash"] != data_hash:
        raise CheckpointError(f"{path} was trained on other data than outputs/data/splits.npz; "
                              "rerun `dvc repro train_classifier`")
    model = Classifier(tuple(arch["image_shape"]), arch["num_classes"], arch["feature_dim"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def main() -> None:
    import mlflow

    from pipeline import tracking
    from pipeline.config import flatten

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits()
    facts = dataset_facts(splits)
    params = {"seed": config.seed, "device": config.device, "data.name": config.data.name,
              **flatten(config.classifier, "classifier.")}
    with tracking.stage_run("train_classifier", config, experiment=EXPERIMENT,
                            run_name=f"classifier-{splits.name}-{tracking.dvc_exp_name()}", params=params):
        tracking.log_dataset(splits, facts)
        result = run(config, splits, device)
        for row in result.history:
            mlflow.log_metrics({f"classifier/{k}": v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        mlflow.log_metric("classifier/train_seconds", result.seconds)
        metrics = {k: v for k, v in result.final.items() if k != "epoch"}
        architecture = {"image_shape": list(splits.image_shape), "num_classes": splits.num_classes,
                        "feature_dim": config.classifier.feature_dim}
        save_checkpoint(paths.CLASSIFIER_CHECKPOINT, kind=CHECKPOINT_KIND, state_dict=result.model.state_dict(),
                        config={"architecture": architecture, "classifier": dataclasses.asdict(config.classifier),
                                "seed": config.seed, "data_hash": facts["content_hash"]},
                        epoch=config.classifier.epochs, metrics=metrics)
        write_csv(paths.CLASSIFIER_HISTORY, result.history)
        write_json(paths.CLASSIFIER_METRICS, metrics)
        mlflow.log_artifact(str(paths.CLASSIFIER_CHECKPOINT), artifact_path="classifier")
    log.info("done: test accuracy %.4f", metrics["test_accuracy"])


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage("train_classifier", main)
