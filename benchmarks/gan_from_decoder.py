"""Does the GAN started from the VAE decoder beat the VAE's prior samples, sooner than from scratch?

    python benchmarks/gan_from_decoder.py [--seeds 0 1 2] [--params FILE]      (make study)

For each seed, the whole chain with the default params.yaml except the seeds, in process (no MLflow,
no files): VAE, both GANs, evaluation, on one split with one classifier (the fixed ruler: `data.seed`
and `classifier.seed` do not change with the model seeds). One line per seed: the FID-style scores
of the evaluation (VAE prior samples, GAN from decoder, GAN from scratch, and the real-data floor),
the epochs each GAN took to beat the VAE prior score during training, and the wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from pipeline.core.config import load_config, resolve_device
from pipeline.core.data import build_splits
from pipeline.stages import evaluate, train_classifier, train_gan, train_vae

ROOT = Path(__file__).resolve().parents[1]


def ruler(params: Path):
    """The split and the evaluation classifier, the same for every seed."""
    config = load_config(params)
    with tempfile.TemporaryDirectory() as workdir:
        splits = build_splits(config.data, Path(workdir))
    return splits, train_classifier.run(config, splits, resolve_device(config.device))


def all_seeds(seeds: list[int], params: Path, splits, classifier) -> list[dict]:
    """Every seed's chain, the seeds trained together as the stages train them."""
    config = dataclasses.replace(load_config(params), seeds=tuple(seeds))
    device = resolve_device(config.device)
    started = time.perf_counter()
    vaes = [result.model for result in train_vae.run(config, splits, device).results]
    trained = train_gan.run(config, splits, vaes, classifier.model, device)
    results = []
    for vae, result in zip(vaes, trained):
        gan = train_gan.summary(result.runs, result.vae_prior_fid)
        gans = {init: (run.generator, run.discriminator) for init, run in result.runs.items()}
        scores = evaluate.run(config, splits, vae, classifier.model, gans, device, config.vae.reconstruction,
                              result.seed).metrics["scores"]
        results.append({"seed": result.seed, "accuracy": classifier.final["test_accuracy"],
                        **{f"fid_{name}": scores[name]["fid"]
                           for name in ("real_train", "vae_prior", "gan_decoder", "gan_scratch")},
                        "epochs_decoder": gan["decoder"]["epochs_to_beat_vae_prior"],
                        "epochs_scratch": gan["scratch"]["epochs_to_beat_vae_prior"]})
    seconds = time.perf_counter() - started
    return [{**r, "seconds": seconds / len(results)} for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args()
    config = load_config(args.params)
    print(f"default params ({config.data.name}, latent_dim {config.latent_dim}, vae.epochs {config.vae.epochs}, "
          f"gan.epochs {config.gan.epochs}), FID-style scores from `evaluate` (lower is better)")
    print("seed  classifier_acc  fid_real_train  fid_vae_prior  fid_gan_decoder  fid_gan_scratch  "
          "epochs_to_beat_vae(decoder)  epochs_to_beat_vae(scratch)  seconds (all seeds' time / seeds)")
    splits, classifier = ruler(args.params)
    for r in all_seeds(args.seeds, args.params, splits, classifier):
        never = "never"
        print(f"{r['seed']:>4}  {r['accuracy']:>14.4f}  {r['fid_real_train']:>14.2f}  {r['fid_vae_prior']:>13.2f}  "
              f"{r['fid_gan_decoder']:>15.2f}  {r['fid_gan_scratch']:>15.2f}  "
              f"{r['epochs_decoder'] or never:>27}  {r['epochs_scratch'] or never:>27}  {r['seconds']:>7.1f}",
              flush=True)


if __name__ == "__main__":
    main()
