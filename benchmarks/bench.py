"""`make bench`: the pipeline's speed on this machine, one line per figure.

    python benchmarks/bench.py [--epochs N] [--device auto|cpu|cuda] [--params FILE] [--skip-repro] [--skip-scaling]

1. VAE training throughput (images/s) of the pipeline's loop (`pipeline.core.training.vae_epoch`, one seed) and of a
   reference loop written as the PyTorch VAE example writes it (a Dataset that turns one image at a
   time into a tensor through PIL and ToTensor, a DataLoader, the example's summed loss), with the
   same architecture, batch size, optimiser settings, data and start (the reference with torch's
   default Adam, as the example; the pipeline's is fused); the two take turns epoch by epoch and
   each figure is the median epoch; then both models' test negative ELBO by the same function.
2. The same for the GAN step (`pipeline.core.training.gan_epoch` against the DCGAN example's loop).
   Then each loop with the seeds of params.yaml trained together (pipeline.core.replicas): images (or
   steps) per second per seed, against the single-seed loop, the two taking turns epoch by epoch.
3. The machine's float32 matrix-multiply peak and the fraction of it the VAE loop reaches, from
   the training FLOPs per image that torch's FlopCounterMode counts.
4. `dvc repro` of the default params from a clean copy of the project, a no-op `dvc repro`, the
   evaluate stage alone, and each stage's peak resident memory.
5. How the evaluation's scoring time grows with the number of images scored.

Params and data are params.yaml's (the embedded digits by default), or those of `--params`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from pipeline.core import training
from pipeline.core.checkpoints import vae_architecture
from pipeline.core.commands import environment_first
from pipeline.core.config import Config, load_config, resolve_device
from pipeline.core.data import build_splits
from pipeline.core.models import VAE, Decoder, Discriminator
from pipeline.core.replicas import Stack, build_seeded, stream
from pipeline.core.training import adam
from pipeline.stages import train_gan
from pipeline.tools.dvc_cli import source_files
from pipeline.tracking.names import STAGES

ROOT = Path(__file__).resolve().parents[1]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_epochs(loops: dict[str, object], epochs: int, device: str) -> dict[str, float]:
    """Median seconds per epoch of each loop (a callable taking the epoch index), after one untimed
    warm-up epoch each. The loops take turns epoch by epoch, so both meet the same machine load."""
    for run_epoch in loops.values():
        run_epoch(0)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for index in range(1, epochs + 1):
        for name, run_epoch in loops.items():
            synchronize(device)
            started = time.perf_counter()
            run_epoch(index)
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


# ---------------------------------------------------------------------------------------------
# The reference loops, as the PyTorch examples write them


class OneImageAtATime(torch.utils.data.Dataset):
    """As torchvision's MNIST: each item is made on request, uint8 array -> PIL image -> ToTensor."""

    def __init__(self, images: np.ndarray):
        from torchvision import transforms

        self.images = images[:, 0]  # (N, H, W) uint8
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index], mode="L"))


def reference_loader(images: np.ndarray, batch_size: int, device: str) -> torch.utils.data.DataLoader:
    cuda = {"num_workers": 1, "pin_memory": True} if device.startswith("cuda") else {}  # as the example
    return torch.utils.data.DataLoader(OneImageAtATime(images), batch_size=batch_size, shuffle=True, **cuda)


def reference_vae_epoch(model: VAE, optimizer, loader, device: str) -> float:
    """pytorch/examples vae/main.py `train()`: sigmoid outputs, summed BCE + KLD per batch."""
    model.train()
    train_loss = 0
    for data in loader:
        data = data.to(device)
        optimizer.zero_grad()
        logits, mu, logvar = model(data, torch.randn(len(data), model.arch.latent_dim, device=device))
        bce = F.binary_cross_entropy(torch.sigmoid(logits), data, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss / len(loader.dataset)


def reference_gan_epoch(generator, discriminator, optimizer_g, optimizer_d, loader, latent_dim: int,
                        device: str) -> None:
    """pytorch/examples dcgan/main.py's step: D on real, D on fake (detached), then G; BCE with labels."""
    criterion = torch.nn.BCEWithLogitsLoss()
    for real in loader:
        real = real.to(device)
        discriminator.zero_grad()
        label = torch.full((len(real),), 1.0, device=device)
        error_real = criterion(discriminator(real), label)
        error_real.backward()
        fake = generator(torch.randn(len(real), latent_dim, device=device))
        label.fill_(0.0)
        error_fake = criterion(discriminator(fake.detach()), label)
        error_fake.backward()
        optimizer_d.step()
        generator.zero_grad()
        label.fill_(1.0)
        criterion(discriminator(fake), label).backward()
        optimizer_g.step()


# ---------------------------------------------------------------------------------------------
# 1-3: training loops


def new_vaes(config: Config, splits, device: str, seeds: list[int]) -> tuple[Stack, torch.optim.Optimizer]:
    """The default VAE of each seed, stacked as the stage stacks them, with the pipeline's fused Adam."""
    arch = vae_architecture(config, splits.image_shape)
    vaes = Stack([build_seeded(lambda: VAE(arch), seed, "vae/weights").to(device) for seed in seeds])
    return vaes, adam(vaes.parameters(), lr=config.vae.learning_rate)


def stacked_vae_epoch(config: Config, vaes: Stack, optimizer, x: torch.Tensor, seeds: list[int], device: str):
    """One epoch of the pipeline's VAE loop for the stacked seeds (streams kept across epochs)."""
    streams = [(stream(seed, "vae/batches", device), stream(seed, "vae/noise", device)) for seed in seeds]

    def epoch(index: int) -> None:
        training.vae_epoch(vaes, optimizer, x, latent_dim=config.latent_dim, batch_size=config.vae.batch_size,
                           kind=config.vae.reconstruction, kl_scale=1.0, orders=[o for o, _ in streams],
                           noises=[n for _, n in streams], epoch=index)
    return epoch


def vae_figures(config: Config, splits, epochs: int, device: str) -> dict[str, float]:
    vae = config.vae
    seed = config.seeds[0]
    x = training.to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    x_test = training.to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    vaes, optimizer = new_vaes(config, splits, device, [seed])
    arch = vae_architecture(config, splits.image_shape)
    reference = build_seeded(lambda: VAE(arch), seed, "vae/weights").to(device)  # the same start
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=vae.learning_rate)  # as the example's
    loader = reference_loader(splits.x_train, vae.batch_size, device)
    seconds = interleaved_epochs({
        "pipeline": stacked_vae_epoch(config, vaes, optimizer, x, [seed], device),
        "reference": lambda i: reference_vae_epoch(reference, reference_optimizer, loader, device),
    }, epochs, device)
    model = vaes.load_into(0, VAE(arch).to(device))
    return {"pipeline": len(x) / seconds["pipeline"], "reference": len(x) / seconds["reference"],
            "pipeline_elbo": test_neg_elbo(model, x_test, config),
            "reference_elbo": test_neg_elbo(reference, x_test, config),
            "flops_per_image": training_flops(model, x[: vae.batch_size], vae.reconstruction) / vae.batch_size}


def stacked_vae_figures(config: Config, splits, epochs: int, device: str) -> dict[str, float]:
    """Images per second per seed: the seeds of params.yaml trained together, and one seed alone."""
    x = training.to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    seeds = list(config.seeds)
    together, alone = new_vaes(config, splits, device, seeds), new_vaes(config, splits, device, seeds[:1])
    seconds = interleaved_epochs({"together": stacked_vae_epoch(config, *together, x, seeds, device),
                                  "alone": stacked_vae_epoch(config, *alone, x, seeds[:1], device)}, epochs, device)
    # Together, an epoch trains every seed on every image: len(seeds) x len(x) images.
    return {"together": len(seeds) * len(x) / seconds["together"], "alone": len(x) / seconds["alone"],
            "seeds": len(seeds)}


def test_neg_elbo(model: VAE, x_test: torch.Tensor, config: Config) -> float:
    return training.vae_evaluate(model, x_test, batch_size=500, kind=config.vae.reconstruction, kl_scale=1.0,
                                 generator=torch.Generator(device=x_test.device).manual_seed(0))["neg_elbo"]


def training_flops(model: VAE, batch: torch.Tensor, kind: str) -> float:
    """FLOPs of one training step's forward and backward passes on `batch`, as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.core.losses import vae_loss

    with FlopCounterMode(display=False) as counter:
        logits, mu, logvar = model(batch, training.vae_noise(model, batch, None))
        vae_loss(logits, batch, mu, logvar, kind=kind, kl_scale=1.0)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def gan_figures(config: Config, splits, epochs: int, device: str) -> dict[str, float]:
    """Steps per second: the pipeline's loop (one seed), the example's, and every seed together
    (per seed), the pipeline's loops and the example's taking turns epoch by epoch."""
    gan = config.gan
    arch = vae_architecture(config, splits.image_shape)
    x = training.to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    steps_per_epoch = -(-len(x) // gan.batch_size)
    options = {"lr": gan.learning_rate, "betas": (gan.adam_beta1, train_gan.ADAM_BETA2)}

    def networks(seed):
        return Decoder(arch).to(device), Discriminator(arch, gan.discriminator_hidden).to(device)

    def stacked(seeds):
        pairs = [build_seeded(lambda seed=seed: networks(seed), seed, "gan/weights") for seed in seeds]
        generators, discriminators = Stack([g for g, _ in pairs]), Stack([d for _, d in pairs])
        optimizers = adam(generators.parameters(), **options), adam(discriminators.parameters(), **options)
        orders = [stream(seed, "gan/batches", device) for seed in seeds]
        noises = [stream(seed, "gan/noise", device) for seed in seeds]
        return lambda i: training.gan_epoch(generators, discriminators, *optimizers, x, latent_dim=config.latent_dim,
                                            batch_size=gan.batch_size, orders=orders, noises=noises, epoch=i)

    generator, discriminator = build_seeded(lambda: networks(0), config.seeds[0], "gan/weights")
    theirs = (generator, discriminator, torch.optim.Adam(generator.parameters(), **options),
              torch.optim.Adam(discriminator.parameters(), **options))  # the reference's Adam as the example's
    loader = reference_loader(splits.x_train, gan.batch_size, device)
    seconds = interleaved_epochs({
        "pipeline": stacked(list(config.seeds[:1])),
        "together": stacked(list(config.seeds)),
        "reference": lambda i: reference_gan_epoch(*theirs, loader, config.latent_dim, device),
    }, epochs, device)
    figures = {name: steps_per_epoch / epoch_seconds for name, epoch_seconds in seconds.items()}
    figures["together"] *= len(config.seeds)  # per seed
    return figures


def matmul_peak(device: str, size: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of a size x size matrix product over `repeats` tries."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


# ---------------------------------------------------------------------------------------------
# 4: the pipeline under DVC


def run_checked(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started


def peak_memory_mib(command: list[str], cwd: Path) -> float:
    """Peak resident memory of `command` and its children, run from a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return int(result.stdout.split()[-1]) / 1024  # Linux reports KiB


def pipeline_figures(device: str, params_file: Path) -> dict[str, float]:
    os.environ.update(environment_first())  # dvc.yaml's `python`: this environment's
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        os.environ.pop(name, None)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        for name in source_files(ROOT):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
        params = yaml.safe_load(params_file.read_text())
        (root / "params.yaml").write_text(yaml.safe_dump({**params, "device": device}, sort_keys=False))
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        dvc = [sys.executable, "-m", "dvc"]
        figures["repro_clean"] = run_checked([*dvc, "repro"], root)
        figures["repro_noop"] = run_checked([*dvc, "repro"], root)
        figures["evaluate_alone"] = run_checked([*dvc, "repro", "--force", "--single-item", "evaluate"], root)
        for stage in STAGES:
            figures[f"memory_{stage}"] = peak_memory_mib([sys.executable, "-m", f"pipeline.stages.{stage}"], root)
    return figures


# ---------------------------------------------------------------------------------------------
# 5: evaluation scaling


def scaling_figures(config: Config, splits, device: str, sizes=(250, 500, 1000, 2000, 4000)) -> list[tuple]:
    """Seconds to score n images (all scores, and precision/recall alone) for each n in `sizes`.
    A freshly initialised classifier and random images: timing depends on the sizes, not the weights."""
    from pipeline.core.metrics import Scorer, precision_recall
    from pipeline.core.models import Classifier

    classifier = Classifier(splits.image_shape, splits.num_classes, config.classifier.feature_dim).to(device).eval()
    reference = training.to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    scorer = Scorer(classifier, reference, seed=config.data.seed, kid_subset_size=config.evaluate.kid_subset_size,
                    pr_neighbours=config.evaluate.pr_neighbours)
    rows = []
    for n in sizes:
        images = torch.rand(n, *splits.image_shape, generator=torch.Generator().manual_seed(n)).to(device)
        started = time.perf_counter()
        scorer.score(images)
        synchronize(device)
        total = time.perf_counter() - started
        features = torch.randn(n, config.classifier.feature_dim, device=device)
        started = time.perf_counter()
        precision_recall(scorer.reference_features, features, config.evaluate.pr_neighbours)
        synchronize(device)
        rows.append((n, total, time.perf_counter() - started))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="timed epochs of each training loop (default 15)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: params.yaml's)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--skip-repro", action="store_true", help="leave out the dvc repro figures")
    parser.add_argument("--skip-scaling", action="store_true", help="leave out the evaluation scaling")
    args = parser.parse_args()

    config = load_config(args.params)
    device = resolve_device(args.device or config.device)
    with tempfile.TemporaryDirectory() as workdir:
        splits = build_splits(config.data, Path(workdir))
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name(device)}" if device.startswith("cuda") else ""
    print(f"machine: {cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}")

    vae = vae_figures(config, splits, args.epochs, device)
    print(f"vae_images_per_s: {vae['pipeline']:,.0f} (pipeline loop, batch {config.vae.batch_size}, "
          f"{config.vae.architecture} hidden {config.vae.hidden_dim}; median of {args.epochs} epochs)")
    print(f"vae_reference_images_per_s: {vae['reference']:,.0f} (PyTorch VAE example's loop, same model and batch)")
    print(f"vae_speedup: {vae['pipeline'] / vae['reference']:.2f}x")
    print(f"vae_test_neg_elbo: pipeline {vae['pipeline_elbo']:.2f}, reference {vae['reference_elbo']:.2f} "
          f"(nats per image after {args.epochs + 1} epochs each)")
    stacked = stacked_vae_figures(config, splits, args.epochs, device)
    print(f"vae_images_per_s[seeds={stacked['seeds']}]: {stacked['together']:,.0f} (the seeds stacked, every "
          f"seed's images counted; one seed alone {stacked['alone']:,.0f}, taking turns: "
          f"{stacked['together'] / stacked['alone']:.2f}x)")
    gan = gan_figures(config, splits, args.epochs, device)
    print(f"gan_steps_per_s: {gan['pipeline']:,.1f} (pipeline loop, one seed, batch {config.gan.batch_size})")
    print(f"gan_reference_steps_per_s: {gan['reference']:,.1f} (PyTorch DCGAN example's loop, same networks)")
    print(f"gan_speedup: {gan['pipeline'] / gan['reference']:.2f}x")
    print(f"gan_steps_per_s[seeds={len(config.seeds)}]: {gan['together']:,.1f} (the seeds stacked, every seed's "
          f"steps counted: {gan['together'] / gan['pipeline']:.2f}x the single-seed loop)")
    peak = matmul_peak(device)
    achieved = vae["pipeline"] * vae["flops_per_image"]
    print(f"matmul_peak_gflops: {peak / 1e9:,.1f} (float32, 2048 x 2048)")
    print(f"vae_training_flops_per_image: {vae['flops_per_image'] / 1e6:.2f} M (forward + backward)")
    print(f"vae_fraction_of_peak: {achieved / peak:.1%} ({achieved / 1e9:,.1f} GFLOP/s)")

    if not args.skip_repro:
        figures = pipeline_figures(device, args.params)
        print(f"dvc_repro_clean_s: {figures['repro_clean']:.1f} (all five stages and the MLflow record, "
              "default params)")
        print(f"dvc_repro_noop_s: {figures['repro_noop']:.2f}")
        print(f"evaluate_alone_s: {figures['evaluate_alone']:.1f} (dvc repro --force --single-item evaluate)")
        for stage in STAGES:
            print(f"peak_memory_{stage}_mib: {figures[f'memory_{stage}']:,.0f}")
    if not args.skip_scaling:
        for n, total, pr in scaling_figures(config, splits, device):
            print(f"evaluate_scoring_s[n={n}]: {total:.2f} (per 1000 images {1000 * total / n:.2f}; "
                  f"precision/recall alone {pr:.3f})")


if __name__ == "__main__":
    main()
