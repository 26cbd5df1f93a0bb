"""Image grids: many images as one picture, and writing it as PNG."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.io import atomic_path

GRID_ROWS = 8  # images per row in every image grid


def image_grid(images: torch.Tensor, rows: int = GRID_ROWS) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> one (3, H', W') picture, `rows` images per row, white gaps."""
    from torchvision.utils import make_grid

    return make_grid(images, nrow=rows, pad_value=1.0)


def save_png(path: Path, grid: torch.Tensor) -> None:
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")
