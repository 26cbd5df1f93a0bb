"""Print the VAE's training throughput and the wall time of the default `dvc repro`.

    python benchmarks/bench_vae.py [--epochs N] [--skip-repro]

Throughput: the default params.yaml (architecture, batch size, data), timed over whole epochs
of `train_epoch` after one warm-up epoch. Repro: a copy of the project's sources in a temporary
git repository, `dvc repro` from a clean state, then a no-op `dvc repro`. One line per figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import download, train_vae  # noqa: E402
from pipeline.config import load_config, resolve_device  # noqa: E402
from pipeline.models import VAE, VAEArchitecture  # noqa: E402


def throughput(epochs: int) -> tuple[float, str, int]:
    config = load_config(ROOT / "params.yaml")
    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory() as workdir:
        splits = download.run(config.data, config.seed, Path(workdir))
    torch.manual_seed(config.seed)
    arch = VAEArchitecture(config.vae.architecture, splits.image_shape, config.latent_dim, config.vae.hidden_dim)
    model = VAE(arch).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.vae.learning_rate)
    x = train_vae.to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    def epoch(index: int) -> None:
        train_vae.train_epoch(model, optimizer, x, batch_size=config.vae.batch_size, kind=config.vae.reconstruction,
                              kl_scale=1.0, generator=generator, epoch=index)

    epoch(0)  # warm-up: allocator, kernels
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for index in range(epochs):
        epoch(index + 1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return epochs * len(x) / (time.perf_counter() - started), device, config.vae.batch_size


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started


def repro_times() -> tuple[float, float]:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ["PATH"] = env_path  # dvc.yaml's `python` is this one
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in files:
            if name != "dvc.lock" and (ROOT / name).is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, root / name)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        dvc = [sys.executable, "-m", "dvc"]
        return timed([*dvc, "repro"], root), timed([*dvc, "repro"], root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs for the throughput")
    parser.add_argument("--skip-repro", action="store_true", help="only measure throughput")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    images_per_s, device, batch_size = throughput(args.epochs)
    print(f"vae_train_throughput: {images_per_s:,.0f} images/s (device {device}, batch {batch_size}, {args.epochs} epochs)")
    if not args.skip_repro:
        clean, noop = repro_times()
        print(f"dvc_repro_clean_s: {clean:.1f} (download + train_vae + MLflow record, default params.yaml)")
        print(f"dvc_repro_noop_s: {noop:.2f}")


if __name__ == "__main__":
    main()
