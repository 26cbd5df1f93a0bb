"""Where each stage reads and writes, relative to the project root (DVC runs stages there).

`dvc.yaml` declares the same paths; tests/test_dvc_pipeline.py checks that the two agree.
"""

from pathlib import Path

DATA_DIR = Path("outputs/data")
SPLITS = DATA_DIR / "splits.npz"  # uint8 images (N, C, H, W) and int64 labels, train and test
FACTS = DATA_DIR / "facts.json"  # name, shapes, class counts, content hash

VAE_DIR = Path("outputs/vae")
VAE_CHECKPOINT = VAE_DIR / "checkpoint.pt"
VAE_RUN = VAE_DIR / "mlflow_run.json"  # the MLflow row that later stages add to
VAE_METRICS = VAE_DIR / "metrics.json"
VAE_HISTORY = VAE_DIR / "history.csv"
VAE_SAMPLES = VAE_DIR / "samples.png"
VAE_RECONSTRUCTIONS = VAE_DIR / "reconstructions.png"

CLASSIFIER_DIR = Path("outputs/classifier")
CLASSIFIER_CHECKPOINT = CLASSIFIER_DIR / "checkpoint.pt"
CLASSIFIER_METRICS = CLASSIFIER_DIR / "metrics.json"
CLASSIFIER_HISTORY = CLASSIFIER_DIR / "history.csv"

GAN_DIR = Path("outputs/gan")
GAN_GENERATORS = GAN_DIR / "generators"  # <init>.pt for each GAN trained (decoder, scratch)
GAN_SAMPLES = GAN_DIR / "samples"  # <init>.png: the final grid from the fixed noise
GAN_RUN = GAN_DIR / "mlflow_run.json"
GAN_METRICS = GAN_DIR / "metrics.json"
GAN_HISTORY = GAN_DIR / "history.csv"

EVAL_DIR = Path("outputs/eval")
EVAL_METRICS = EVAL_DIR / "metrics.json"  # the headline numbers only (names.SHOWN_FIRST): DVC's metrics
EVAL_DETAILS = EVAL_DIR / "details.json"  # every number the evaluation measured, nested
EVAL_KL_PER_DIM = EVAL_DIR / "kl_per_dim.csv"
EVAL_FIGURES = EVAL_DIR / "figures"  # grids per model, interpolation, traversal; latent plane when latent_dim is 2
EVAL_RUN = EVAL_DIR / "mlflow_run.json"
