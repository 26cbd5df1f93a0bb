"""The benchmark script runs and prints each figure it promises (its numbers are not judged here:
they are measurements, see `make bench`). benchmarks/ray_sweep.py's test is test_ray_sweep.py's
two-value sweep, on the session's cluster."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, copy_project, mlflow_runs, tiny_params

from pipeline.core.config import TINY

LINE = re.compile(r"^(\w+(?:\[(?:n|seeds)=\d+\])?): (-?[\d,.]+)", re.M)


def tiny_params_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params()))
    return params


@pytest.mark.slow
def test_bench_prints_every_training_and_scaling_figure(tmp_path):
    params = tiny_params_file(tmp_path)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--epochs", "2", "--params",
                             str(params), "--skip-repro"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = {name: float(value.replace(",", "")) for name, value in LINE.findall(result.stdout)}
    for name in ("vae_images_per_s", "vae_reference_images_per_s", "gan_steps_per_s", "gan_reference_steps_per_s",
                 "matmul_peak_gflops", "vae_training_flops_per_image", "evaluate_scoring_s[n=1000]",
                 "vae_images_per_s[seeds=2]", "gan_steps_per_s[seeds=2]"):  # TINY's two seeds stacked
        assert figures[name] > 0, name
    assert abs(figures["vae_speedup"] - figures["vae_images_per_s"] / figures["vae_reference_images_per_s"]) <= 0.01
    # Both models trained as long from the same start: their test ELBOs are both finite nats.
    elbos = re.search(r"vae_test_neg_elbo: pipeline ([\d.]+), reference ([\d.]+)", result.stdout)
    assert elbos and all(0 < float(v) < 1000 for v in elbos.groups())
    # The MLP's training FLOPs per image: forward 2 * sum(in * out) over its layers, backward about twice that.
    hidden, latent = TINY["vae"]["hidden_dim"], TINY["latent_dim"]
    forward = 2 * (784 * hidden + hidden * 2 * latent + latent * hidden + hidden * 784)
    assert 2 * forward <= figures["vae_training_flops_per_image"] * 1e6 <= 3 * forward


@pytest.mark.slow
def test_gan_study_prints_one_line_per_seed(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gan_from_decoder.py"), "--seeds", "3", "4",
                             "--params", str(tiny_params_file(tmp_path))], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["3", "4"] and all(len(row) == 9 for row in rows)
    assert all(0 <= float(row[1]) <= 1 for row in rows)  # classifier accuracy


@pytest.mark.slow
def test_load_benchmark_prints_every_figure(study, tmp_path):
    """On a copy of the study (its four rows, then copies up to 30), rather than a pipeline run of its own."""
    project = copy_project(study.root, tmp_path / "project")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "load.py"), "--rows", "30", "--project",
                             str(project)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = {name: float(value.replace(",", "")) for name, value in LINE.findall(result.stdout)}
    for name in ("compare_s[n=30]", "compare_again_s[n=30]", "report_s[n=30]", "report_tallest_figure_px[n=30]",
                 "explorer_first_load_s[n=30]", "explorer_rerun_s[n=30]"):
        assert figures[name] > 0, name
    rows = mlflow_runs(tmp_path / "project" / "mlflow.db", "mnist5k")
    assert len(rows) == 30 and len({(r.data.params["latent_dim"], r.data.params["seed"]) for r in rows}) == 30
