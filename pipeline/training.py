"""Helpers shared by the training stages: pixels to floats, divergence checks, history and grids."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from pipeline.errors import TrainingDiverged
from pipeline.io import atomic_path

GRID_ROWS = 8  # images per row in every image grid


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def check_finite(terms: dict[str, float], epoch: int, phase: str, remedy: str = "lower vae.learning_rate") -> None:
    """Raise TrainingDiverged naming the epoch and the first loss term that is NaN or infinite."""
    for name, value in terms.items():
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"epoch {epoch + 1}: the {phase} loss term '{name}' became {value}; {remedy} or check the data"
            )


def adam(parameters, **options) -> torch.optim.Adam:
    """Adam with its fused kernel: one pass over all parameters per step, on CPU and CUDA. Unfused,
    the step's dozen elementwise passes were a quarter of a default VAE step's time on 2 CPU cores
    (benchmarks/bench.py)."""
    return torch.optim.Adam(parameters, fused=True, **options)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows with the same keys as a CSV file (histories and tables for DVC plots); None becomes an empty cell."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@torch.inference_mode()
def in_batches(network, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """`network` applied to x in batches, outputs concatenated: a decoder or generator to codes
    (N, latent_dim) gives images (N, C, H, W); a discriminator or encoder to images gives its outputs."""
    return torch.cat([network(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])


def image_grid(images: torch.Tensor, rows: int = GRID_ROWS) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> one (3, H', W') picture, `rows` images per row, white gaps."""
    from torchvision.utils import make_grid

    return make_grid(images, nrow=rows, pad_value=1.0)


def save_png(path: Path, grid: torch.Tensor) -> None:
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")
