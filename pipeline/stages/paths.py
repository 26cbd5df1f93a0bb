"""Where each stage reads and writes, relative to the project root (DVC runs stages there).

`dvc.yaml` declares the same paths; tests/test_dvc_pipeline.py checks that the two agree.
"""

from pathlib import Path

DATA_DIR = Path("outputs/data")
SPLITS = DATA_DIR / "splits.npz"  # uint8 images (N, C, H, W) and int64 labels, train and test
FACTS = DATA_DIR / "facts.json"  # name, shapes, class counts, content hash

VAE_DIR = Path("outputs/vae")
VAE_CHECKPOINTS = VAE_DIR / "checkpoints"  # seed-<seed>.pt for each model seed
VAE_RUN = VAE_DIR / "mlflow_run.json"  # the MLflow rows, by seed, that later stages add to
VAE_METRICS = VAE_DIR / "metrics.json"  # the final epoch's numbers, by seed
VAE_HISTORY = VAE_DIR / "history.csv"  # per epoch, the mean over the seeds
VAE_SEED_HISTORY = VAE_DIR / "seed_history.csv"  # per seed and epoch
VAE_SAMPLES = VAE_DIR / "samples.png"  # the first seed's
VAE_RECONSTRUCTIONS = VAE_DIR / "reconstructions.png"

CLASSIFIER_DIR = Path("outputs/classifier")
CLASSIFIER_CHECKPOINT = CLASSIFIER_DIR / "checkpoint.pt"
CLASSIFIER_METRICS = CLASSIFIER_DIR / "metrics.json"
CLASSIFIER_HISTORY = CLASSIFIER_DIR / "history.csv"

GAN_DIR = Path("outputs/gan")
GAN_GENERATORS = GAN_DIR / "generators"  # seed-<seed>/<init>.pt for each seed and GAN trained (decoder, scratch)
GAN_SAMPLES = GAN_DIR / "samples"  # <init>.png: the first seed's final grid from its fixed noise
GAN_RUN = GAN_DIR / "mlflow_run.json"
GAN_METRICS = GAN_DIR / "metrics.json"  # by seed
GAN_HISTORY = GAN_DIR / "history.csv"  # per epoch, the mean over the seeds
GAN_SEED_HISTORY = GAN_DIR / "seed_history.csv"  # per seed and epoch

EVAL_DIR = Path("outputs/eval")
EVAL_METRICS = EVAL_DIR / "metrics.json"  # the headline numbers' means over the seeds, ± and n: DVC's metrics
EVAL_SEED_METRICS = EVAL_DIR / "seed_metrics.csv"  # the headline numbers of each seed
EVAL_DETAILS = EVAL_DIR / "details.json"  # every number the evaluation measured, nested, by seed
EVAL_KL_PER_DIM = EVAL_DIR / "kl_per_dim.csv"  # the first seed's
EVAL_FIGURES = EVAL_DIR / "figures"  # the first seed's grids per model, interpolation, traversal; latent plane at 2
EVAL_RUN = EVAL_DIR / "mlflow_run.json"


# Each stage's output folder, written whole (pipeline.core.io.atomic_dir).
STAGE_DIR = {"download": DATA_DIR, "train_vae": VAE_DIR, "train_classifier": CLASSIFIER_DIR,
             "train_gan": GAN_DIR, "evaluate": EVAL_DIR}
