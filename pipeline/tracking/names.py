"""Every name the pipeline records under in MLflow, defined once: the stages and where each one
records, the experiments, the tags, the metric prefixes and the headline metrics. docs/tracking.md
explains the row model these names serve."""

from __future__ import annotations

import hashlib
import json

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
OWN_EXPERIMENTS = tuple(name for name in STAGE_EXPERIMENT.values() if name is not None)  # not result experiments
MLFLOW_DEFAULT_EXPERIMENT = "Default"  # MLflow's own, made with every store: empty here


def is_result_experiment(name: str) -> bool:
    """Whether experiment `name` holds results (a dataset's, or `tracking.experiment`): not one of
    the stages' own experiments, nor MLflow's Default. What `make ui` and the explorer list."""
    return name not in (*OWN_EXPERIMENTS, MLFLOW_DEFAULT_EXPERIMENT)

# Each stage's metrics are named `<prefix>/<name>`: how a new row knows which metrics to copy.
STAGE_METRIC_PREFIX = {"download": "data", "train_vae": "vae", "train_classifier": "classifier",
                       "train_gan": "gan", "evaluate": "eval"}

# The params a result stage's record depends on (dvc.yaml's params of it and the stages before it,
# per seed; a key ending in "." stands for its section): a later stage refuses an upstream row
# recorded with other values of these (record.upstream_rows). The others (a GAN param in the VAE's
# row, say) may differ: the later stage then starts a new row with copies of the upstream records.
RESULT_DEPENDS_ON = {
    "train_vae": ("latent_dim", "seed", "device", "data.", "vae."),
    "train_gan": ("latent_dim", "seed", "device", "data.", "vae.", "classifier.", "gan."),
}


def depends_on(stage: str, key: str) -> bool:
    """Whether `stage`'s record depends on the param `key` (RESULT_DEPENDS_ON)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESULT_DEPENDS_ON[stage])


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
CLOSED_BY_TAG = "pipeline.closed_by"  # on a row marked KILLED by the sweep: why
CONFIGURATION_TAG = "pipeline.configuration"  # on a result row: its configuration (configuration_id)
SUMMARY_TAG = "pipeline.summary_of"  # on a configuration's summary run: the configuration it aggregates
SEEDS_TAG = "pipeline.seeds"  # on a summary run: the seeds of its rows, comma-separated
LEFT_OUT_TAG = "pipeline.left_out"  # on a summary run: the seeds' values left out of its means (NaN, inf)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a row under this run
# MLflow's own experiment tag: every experiment here says it holds model training. (MLflow 3.17's
# sidebar does not follow it but the URL's workflowType: views.runs_path, docs/results.md.)
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"

# Params read back by name (every param is recorded under its dotted params.yaml key)
LATENT_DIM, BETA, DATA_NAME, SEED = "latent_dim", "vae.beta", "data.name", "seed"


SEEDS = "seeds"  # params.yaml's list of model seeds: a seed's row has `seed` in its place


def configuration_id(params: dict[str, str]) -> str:
    """What a result row's replicates share: every param but the model seed(s), as a short name,
    `ld<latent_dim>-beta<vae.beta>-<8 hex digits of the hash of all those params>`. Rows with the
    same id differ only in their seed; the hash tells apart configurations that differ elsewhere."""
    shared = {key: str(value) for key, value in sorted(params.items()) if key not in (SEED, SEEDS)}
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    try:
        readable = f"ld{int(shared[LATENT_DIM])}-beta{float(shared[BETA]):g}-"
    except (KeyError, ValueError):
        readable = ""
    return readable + digest

def score(images: str, measure: str) -> str:
    """An evaluation score of one set of images (the evaluation's `scores`): score("gan_decoder",
    "fid") == "eval/scores/gan_decoder/fid"."""
    return metric("evaluate", "scores", images, measure)


# Metrics the report and the explorer read back by name (the stages compose them with `metric`).
ENCODER_GRAD_RECONSTRUCTION = metric("train_vae", "encoder_grad_reconstruction")  # per epoch
ENCODER_GRAD_KL = metric("train_vae", "encoder_grad_kl")  # per epoch
VAE_TEST_NEG_ELBO = metric("train_vae", "test_neg_elbo")  # per epoch
GAN_VAE_PRIOR_FID = metric("train_gan", "vae_prior_fid")  # the bar the GANs start from
KL_PER_DIM = metric("evaluate", "vae", "kl_per_dim")  # one step per latent dimension
PRIOR_HOLE = metric("evaluate", "vae", "prior_hole_fid")  # prior samples' FID-style minus the aggregate posterior's


def gan_measure(init: str, measure: str) -> str:
    """A GAN's per-epoch measure: gan_measure("decoder", "fid") == "gan/decoder/fid"."""
    return metric("train_gan", init, measure)


def reparameterisation(measure: str) -> str:
    """The gradient estimators' comparison: "eval/reparameterisation/<measure>"."""
    return metric("evaluate", "reparameterisation", measure)


def probe(features: str) -> str:
    """A k-NN class probe's accuracy on `features` (pixels, encoder, discriminator_<init>)."""
    return metric("evaluate", "probes", features)


def probe_test(features: str) -> str:
    """McNemar's exact p-value of the encoder's probe against the one on `features`, same test images."""
    return metric("evaluate", "probe_tests", f"encoder_vs_{features}")


def discriminator_verdict(init: str, images: str) -> str:
    """Mean D(x) of the discriminator trained against GAN `init` on a set of images."""
    return metric("evaluate", "discriminators", init, images)


# The headline numbers of a result, by the short name tables show them under.
HEADLINE_METRICS = {
    "recon_mse": metric("evaluate", "vae", "recon_mse_per_pixel"),
    "kl": metric("evaluate", "vae", "kl"),
    "neg_elbo": metric("evaluate", "vae", "neg_elbo"),
    "iwae_nll": metric("evaluate", "vae", "iwae_nll"),
    "active_units": metric("evaluate", "vae", "active_units"),
    "fid_real": score("real_train", "fid"),
    "fid_recon": score("vae_reconstructions", "fid"),
    "fid_vae": score("vae_prior", "fid"),
    "fid_decoder": score("gan_decoder", "fid"),
    "fid_scratch": score("gan_scratch", "fid"),
}

# The headline numbers every view shows first, in this order: `dvc metrics show` and `dvc exp show`
# (outputs/eval/metrics.json holds exactly these), the MLflow UI's saved view (its columns and charts).
SHOWN_FIRST = ("recon_mse", "kl", "neg_elbo", "iwae_nll", "fid_real", "fid_vae", "fid_decoder", "fid_scratch")


# outputs/eval/metrics.json (DVC's metrics), in this order: the number of seeds `n`, each SHOWN_FIRST
# number's mean over the seeds under its short name, then the half-width of each one's 95% interval
# under the name with CI_SUFFIX (null with one seed). `dvc exp show` keeps the order: its first 160
# columns hold the experiment, n, the eight means and the first half-widths.
CI_SUFFIX = "_ci95"
DVC_METRICS = ("n", *SHOWN_FIRST, *(short + CI_SUFFIX for short in SHOWN_FIRST))


def shown_first(metrics: dict[str, float]) -> dict[str, float]:
    """The SHOWN_FIRST numbers of a result's metrics (keyed as MLflow records them), by short name."""
    return {short: metrics[HEADLINE_METRICS[short]] for short in SHOWN_FIRST}



# Suffixes of a summarised metric in a summary run: `<key>/ci95_low` ... (summaries.summary_metrics).
CI_LOW, CI_HIGH, CI_HALF_WIDTH, CI_COUNT = "ci95_low", "ci95_high", "ci95_half_width", "n"

# What a configuration's summary run aggregates over its seeds: the headline numbers, and the
# precision, recall and sharpness of each model's samples (the report's VAE-against-GAN claims).
SUMMARY_METRICS = [
    *HEADLINE_METRICS.values(),
    *(score(images, measure) for images in ("vae_prior", "gan_decoder", "gan_scratch")
      for measure in ("precision", "recall", "sharpness")),
]
