"""Shared fixtures: a tiny project in a temporary folder with its own MLflow store."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cluster import free_port  # noqa: F401 - the tests import it from here

from pipeline.tracking.names import STAGES

REPO = Path(__file__).resolve().parents[1]
# Variables that would send a stage's records or paths elsewhere; tests set them explicitly.
OUTSIDE_VARIABLES = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "PIPELINE_DATA_MIRROR")

# Small enough for seconds per stage, large enough that every class is in both splits.
TINY = {
    "latent_dim": 4,
    "data": {"max_per_class": 30},
    "vae": {"hidden_dim": 32, "epochs": 2, "batch_size": 64},
    "classifier": {"epochs": 1, "feature_dim": 16},
    "gan": {"epochs": 2, "discriminator_hidden": 32, "fid_samples": 100, "snapshots": 1},
    "evaluate": {"num_samples": 60, "iwae_samples": 4, "kid_subset_size": 30},
}


def merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def mlflow_runs(store: Path, experiment: str | None = None, summaries: bool = False):
    """All runs in the sqlite store at `store` (optionally of one experiment), as entities; the
    configurations' summary runs only with `summaries` (then only they)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments if experiment is None or e.name == experiment]
    runs = client.search_runs(ids) if ids else []
    return [run for run in runs if ("pipeline.summary_of" in run.data.tags) == summaries]


class Project:
    """A temporary project folder: params.yaml, outputs/ and mlflow.db live here."""

    def __init__(self, root: Path):
        self.root = root
        self.store = root / "mlflow.db"

    def write_params(self, overrides: dict | None = None, base: dict | None = None) -> dict:
        params = merge(base if base is not None else merge(repo_params(), TINY), overrides or {})
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return params

    @staticmethod
    def environment(env: dict | None = None) -> dict:
        """A stage's environment: this one without DVC's and MLflow's variables, plus `env`."""
        clean = {k: v for k, v in os.environ.items() if k not in OUTSIDE_VARIABLES}
        return {**clean, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}

    def stage(self, name: str, check: bool = True, env: dict | None = None,
              timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run stage or tool `name` (`python -m pipeline.stages.<name>` or `pipeline.tools.<name>`) here as
        DVC would, in a fresh process."""
        result = subprocess.run([sys.executable, "-m", module_of(name)], cwd=self.root, capture_output=True,
                                text=True, env=self.environment(env), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"stage {name} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def runs(self, experiment: str | None = None):
        return mlflow_runs(self.store, experiment) if self.store.exists() else []

    def files(self) -> list[str]:
        """Every file the stages wrote (the MLflow store aside)."""
        out = self.root / "outputs"
        return sorted(str(p.relative_to(self.root)) for p in out.rglob("*") if p.is_file()) if out.exists() else []


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    """A tiny project whose stages record into its own local store (DVC's variables cleared)."""
    for name in OUTSIDE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    project = Project(tmp_path)
    project.write_params()
    return project


def module_of(name: str) -> str:
    """The module a stage (`train_vae`) or a tool (`compare`) runs as."""
    return f"pipeline.stages.{name}" if name in STAGES else f"pipeline.tools.{name}"


def tiny_project(root: Path, stages: tuple[str, ...], overrides: dict | None = None) -> Project:
    """A Project in `root` whose `stages` have run in order (for module-scoped fixtures)."""
    project = Project(root)
    project.write_params(overrides)
    for name in stages:
        project.stage(name)
    return project


def assert_refused(project: Project, stage: str, override: dict, message: str) -> None:
    """Running `stage` with `override` in params.yaml exits 2 with `message`, and changes no output
    of any stage and no MLflow run count; params.yaml is restored afterwards."""
    outputs = project.root / "outputs"
    before = {p: p.stat().st_mtime_ns for p in outputs.rglob("*")}
    runs_before = len(project.runs())
    project.write_params(override)
    try:
        result = project.stage(stage, check=False)
    finally:
        project.write_params()
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in outputs.rglob("*")} == before
    assert len(project.runs()) == runs_before


def wait_until_healthy(process: subprocess.Popen, url: str, output: Callable[[], str], seconds: float = 120) -> None:
    """Wait until GET `url` answers 200; fail with the server's `output()` if it exits first or
    does not answer within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{output()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer {url} within {seconds} s:\n{output()}")
            time.sleep(0.5)


UP_TO_GAN = ("download", "train_vae", "train_classifier", "train_gan")


def copy_repo(destination: Path) -> Path:
    """A git clone-like copy of the project's tracked sources (no outputs, store or venv)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A committed git repository with the project's sources and tiny params."""
    root = copy_repo(tmp_path / "repo")
    (root / "dvc.lock").unlink(missing_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(merge(repo_params(), TINY), sort_keys=False))
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "PIPELINE_DATA_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    # dvc.yaml's `python` must be this environment's, as `make` arranges for users.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
                       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}.items():
        monkeypatch.setenv(key, value)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def open_browser(profile: Path, size: str = "1400,1000", offline: bool = False):
    """Headless Debian Chromium driven by selenium (the caller quits it); skipped where it is not
    installed, failed in CI (.ci/run installs it). `offline`: every address but 127.0.0.1 and
    file:// is refused, as with no network."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium and chromium-driver (.ci/run installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={size}"]
    if offline:  # a proxy that nothing listens on: any request to another host fails
        flags += ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
    for flag in flags:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
