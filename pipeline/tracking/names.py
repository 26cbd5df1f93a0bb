"""Every name the pipeline records under in MLflow, defined once: the stages and where each one
records, the experiments, the tags, the metric prefixes and the headline metrics. docs/tracking.md
explains the row model these names serve."""

from __future__ import annotations

STAGES = ("download", "train_vae", "train_classifier", "train_gan", "evaluate")  # dvc.yaml's, in order

DATA_EXPERIMENT = "datasets"  # one row per prepared dataset
CLASSIFIER_EXPERIMENT = "classifiers"  # one row per trained evaluation classifier
# Where each stage records: its own experiment, or None for the result row in the result experiment
# (named after the dataset, or `tracking.experiment`), which several stages add to.
STAGE_EXPERIMENT: dict[str, str | None] = {
    "download": DATA_EXPERIMENT,
    "train_vae": None,
    "train_classifier": CLASSIFIER_EXPERIMENT,
    "train_gan": None,
    "evaluate": None,
}
RESULT_STAGES = tuple(stage for stage in STAGES if STAGE_EXPERIMENT[stage] is None)

# Each stage's metrics are named `<prefix>/<name>`: how a new row knows which metrics to copy.
STAGE_METRIC_PREFIX = {"download": "data", "train_vae": "vae", "train_classifier": "classifier",
                       "train_gan": "gan", "evaluate": "eval"}


def metric(stage: str, *parts: str) -> str:
    """A stage's metric name: metric("evaluate", "vae", "kl") == "eval/vae/kl"."""
    return "/".join([STAGE_METRIC_PREFIX[stage], *parts])


# Tags
RUN_NAME_TAG = "mlflow.runName"
STAGE_TAG = "pipeline.stage"  # the stage that wrote last
STAGES_TAG = "pipeline.stages"  # the stages recorded in a row, in order, comma-separated
SOURCE_TAG = "pipeline.source_run."  # + stage: the row that holds that stage's artifacts
FORKED_TAG = "pipeline.forked_from"  # the row a new row copied its upstream records from
HOST_TAG, PID_TAG, THREADS_TAG = "pipeline.host", "pipeline.pid", "pipeline.threads"
COMMIT_TAG, DIRTY_TAG = "git.commit", "git.dirty"
EXP_NAME_TAG, BASELINE_TAG = "dvc.exp_name", "dvc.baseline_rev"

# Params read back by name (every param is recorded under its dotted params.yaml key)
LATENT_DIM, BETA, DATA_NAME = "latent_dim", "vae.beta", "data.name"

# The headline numbers of a result, by the short name tables show them under.
HEADLINE_METRICS = {
    "recon_mse": metric("evaluate", "vae", "recon_mse_per_pixel"),
    "kl": metric("evaluate", "vae", "kl"),
    "neg_elbo": metric("evaluate", "vae", "neg_elbo"),
    "iwae_nll": metric("evaluate", "vae", "iwae_nll"),
    "active_units": metric("evaluate", "vae", "active_units"),
    "fid_real": metric("evaluate", "scores", "real_train", "fid"),
    "fid_vae_recon": metric("evaluate", "scores", "vae_reconstructions", "fid"),
    "fid_vae_prior": metric("evaluate", "scores", "vae_prior", "fid"),
    "fid_gan_decoder": metric("evaluate", "scores", "gan_decoder", "fid"),
    "fid_gan_scratch": metric("evaluate", "scores", "gan_scratch", "fid"),
}
