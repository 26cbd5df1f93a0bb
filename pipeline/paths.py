"""Where each stage reads and writes, relative to the project root (DVC runs stages there).

`dvc.yaml` declares the same paths; tests/test_dvc_yaml.py checks that the two agree.
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
