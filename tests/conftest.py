"""Shared fixtures: tiny projects in temporary folders, each with its own MLflow store.

What is expensive is computed once per session and shared, read-only (docs/development.md):
- `study`: the pipeline on tiny data at two latent_dims and two seeds, run stage by stage;
- `reproduced`: a committed git repository after `dvc repro` (real DVC, real stage processes), and
  `replicated`, a copy of it with a second seed run as a DVC experiment and `make compare`;
- `team`: PostgreSQL, an `mlflow server` on it and a two-node Ray cluster, for the Ray sweep.
A test that changes a project works on its own copy (`copy_project`, the `study_copy` and
`workspace` fixtures), never on the shared one; test_shared_fixtures.py checks at the end of the
session that the shared folders hold what they held when they were built.

A stage or tool runs as DVC runs it, in a fresh process (`Project.stage`), or in this process
(`Project.call`) where the process boundary is not what a test is about: a refusal, a fixture's
runs. `call` runs the module's `__main__` as `python -m` would, with the same working folder,
environment, arguments, exit code and stderr, and puts back what it changed in this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import runpy
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.core.commands import environment_first
from pipeline.core.commands import git as run_git
from pipeline.core.config import TINY, merged
from pipeline.tools.dvc_cli import source_files
from pipeline.tools.local_cluster import (
    ClusterError,
    free_port,  # noqa: F401 - the tests import it from here
    missing,
    mlflow_server,
    postgres,
    ray_cluster,
)
from pipeline.tracking.names import STAGES

REPO = Path(__file__).resolve().parents[1]
# Variables that would send a stage's records or paths elsewhere; tests set them explicitly.
OUTSIDE_VARIABLES = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "PIPELINE_DATA_MIRROR")
IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
UP_TO_GAN = ("download", "train_vae", "train_classifier", "train_gan")
RESULT_STAGES = ("train_vae", "train_gan", "evaluate")


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_params(overrides: dict | None = None) -> dict:
    """params.yaml's params with TINY applied, then `overrides`."""
    return merged(merged(repo_params(), TINY), overrides or {})


def mlflow_runs(store: Path, experiment: str | None = None, summaries: bool = False):
    """All runs in the sqlite store at `store` (optionally of one experiment), as entities; the
    configurations' summary runs only with `summaries` (then only they)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments if experiment is None or e.name == experiment]
    runs = client.search_runs(ids) if ids else []
    return [run for run in runs if ("pipeline.summary_of" in run.data.tags) == summaries]


def module_of(name: str) -> str:
    """The module a stage (`train_vae`) or a tool (`compare`) runs as."""
    return f"pipeline.stages.{name}" if name in STAGES else f"pipeline.tools.{name}"


def clean_environment(env: dict | None = None) -> dict:
    """This process's environment without DVC's and MLflow's variables, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in OUTSIDE_VARIABLES}
    return {**clean, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}


@contextlib.contextmanager
def as_a_command(root: Path, env: dict, argv: list[str], name: str) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """This process made to look like `python -m <module> <argv>` started in `root` with `env`, for
    the block: working folder, environment, arguments, the stderr log lines the command's
    `run_command` would print; yields its (stdout, stderr). Afterwards everything is put back: the
    signal handlers a stage installs, torch's thread count, what params_guard remembered, an MLflow
    run left active."""
    import mlflow
    import torch

    from pipeline.stages import params_guard

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), list(sys.argv)
    saved_threads = torch.get_num_threads()
    saved_signals = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    root_logger = logging.getLogger()
    saved_level = root_logger.level
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(root)
    sys.argv = [name, *argv]
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(saved_level)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
        for signum, handler_function in saved_signals.items():
            signal.signal(signum, handler_function)
        params_guard._started.clear()
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")


def run_in_process(root: Path, name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Stage or tool `name` run in this process as `python -m` runs it in `root` (see the module
    docstring): its exit code, stdout and stderr, a traceback in stderr (exit 1) for an exception
    that escaped, as Python prints it."""
    module = module_of(name)
    code = 0
    with as_a_command(root, clean_environment(env), list(args), name) as (out, err):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
                runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            if not isinstance(done.code, int | None):
                print(done.code, file=sys.stderr)
        except Exception:
            traceback.print_exc(file=err)
            code = 1
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue())


class Project:
    """A temporary project folder: params.yaml, outputs/ and mlflow.db live here."""

    def __init__(self, root: Path):
        self.root = root
        self.store = root / "mlflow.db"

    def write_params(self, overrides: dict | None = None, base: dict | None = None) -> dict:
        params = merged(base if base is not None else tiny_params(), overrides or {})
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return params

    @staticmethod
    def environment(env: dict | None = None) -> dict:
        """A stage's environment: this one without DVC's and MLflow's variables, plus `env`."""
        return clean_environment(env)

    def stage(self, name: str, check: bool = True, env: dict | None = None,
              timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run stage or tool `name` (`python -m pipeline.stages.<name>` or `pipeline.tools.<name>`) here as
        DVC would, in a fresh process."""
        result = subprocess.run([sys.executable, "-m", module_of(name)], cwd=self.root, capture_output=True,
                                text=True, env=self.environment(env), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"stage {name} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def call(self, name: str, *args: str, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run stage or tool `name` here in this process (run_in_process): for refusals and fixtures."""
        result = run_in_process(self.root, name, *args, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"{name} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def runs(self, experiment: str | None = None):
        return mlflow_runs(self.store, experiment) if self.store.exists() else []

    def files(self) -> list[str]:
        """Every file the stages wrote (the MLflow store aside)."""
        out = self.root / "outputs"
        return sorted(str(p.relative_to(self.root)) for p in out.rglob("*") if p.is_file()) if out.exists() else []


def tiny_project(root: Path, stages: tuple[str, ...], overrides: dict | None = None) -> Project:
    """A Project in `root` whose `stages` have run in order, in this process."""
    project = Project(root)
    project.write_params(overrides)
    for name in stages:
        project.call(name, check=True)
    return project


@pytest.fixture(autouse=True)
def kept_environment():
    """Each test starts without DVC's and MLflow's variables and leaves the environment as it found
    it: `mlflow.set_tracking_uri` (store.connect) writes MLFLOW_TRACKING_URI into this process's
    environment, so that its children inherit it, and a test that talks to a store in this process
    would otherwise send the next test's commands to that store."""
    saved = dict(os.environ)
    for name in OUTSIDE_VARIABLES:
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    """A tiny project whose stages record into its own local store (DVC's variables cleared, by
    kept_environment)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    project = Project(tmp_path)
    project.write_params()
    return project


def assert_refused(project: Project, stage: str, override: dict, message: str) -> None:
    """Running `stage` with `override` in params.yaml exits 2 with `message`, and changes no output
    of any stage and no MLflow run count; params.yaml is restored afterwards."""
    outputs = project.root / "outputs"
    before = {p: p.stat().st_mtime_ns for p in outputs.rglob("*")}
    runs_before = len(project.runs())
    original = (project.root / "params.yaml").read_bytes()
    project.write_params(override)
    try:
        result = project.call(stage)
    finally:
        (project.root / "params.yaml").write_bytes(original)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert {p: p.stat().st_mtime_ns for p in outputs.rglob("*")} == before
    assert len(project.runs()) == runs_before


def wait_for_line(process: subprocess.Popen, log, text: str, seconds: float = 120) -> None:
    """Wait until `text` appears in the file `log` that `process` writes; fail if it ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log.seek(0)
        if text in log.read():
            return
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"the process ended ({process.returncode}) before {text!r}:\n{log.read()}")
        time.sleep(0.2)
    pytest.fail(f"no {text!r} within {seconds} s")


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


# ---------------------------------------------------------------------------------------------
# Copies of projects, and the fixtures shared by the whole session


def relocate_store(database: Path, old: Path, new: Path) -> None:
    """Point a copied SQLite store's artifact locations (absolute, `file://<old>/mlartifacts/...`)
    at the copy's own folder."""
    if not database.exists():
        return
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location")):
            connection.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (str(old), str(new)))


def copy_project(source: Path, destination: Path) -> Path:
    """A copy of the project at `source` that shares nothing with it: its store's artifacts are the
    copy's own. DVC's temporary folder (state, locks) is left out, as after a clone."""
    shutil.copytree(source, destination, symlinks=True, ignore=lambda folder, names: (
        ["tmp"] if Path(folder).name == ".dvc" else []))
    relocate_store(destination / "mlflow.db", source.resolve(), destination.resolve())
    return destination


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (DVC's temporary folder aside) with the hash of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and ".dvc/tmp" not in path.as_posix()}


# The shared fixtures' folders and their digests when built: test_shared_fixtures.py compares.
SHARED: dict[str, tuple[Path, dict[str, str]]] = {}

# The study's latent_dims, in order: the last is params.yaml's (latent_dim 4), so that the
# workspace's outputs are its.
STUDY_POINTS = (2, 4)


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Project:
    """Read-only: the pipeline at latent_dim 2 and 4, each with TINY's seeds 0 and 1 trained
    together (beta 1): four complete rows, one per configuration and seed, under each
    configuration's summary run; the workspace's outputs those of latent_dim 4."""
    project = Project(tmp_path_factory.mktemp("study"))
    project.write_params()
    project.call("download", check=True)
    project.call("train_classifier", check=True)
    for latent_dim in STUDY_POINTS:
        project.write_params({"latent_dim": latent_dim})
        for name in RESULT_STAGES:
            project.call(name, check=True)
    project.write_params()
    SHARED["study"] = (project.root, digest(project.root))
    return project


@pytest.fixture
def study_copy(study, tmp_path) -> Project:
    """A copy of the study of the test's own, to change."""
    return Project(copy_project(study.root, tmp_path / "study"))


def make_repo(root: Path) -> Path:
    """The project's tracked sources in `root`, with tiny params, as a committed git repository."""
    for name in source_files(REPO):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = {**os.environ, **IDENTITY}
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        run_git(*command, cwd=root, env=env, check=True)
    return root


def repo_environment(monkeypatch) -> None:
    """A test's environment for DVC in a repository: dvc.yaml's `python` this environment's, as
    `make` arranges for users, and a git identity (kept_environment has cleared DVC's and MLflow's
    variables)."""
    monkeypatch.setenv("PATH", environment_first()["PATH"])
    for key, value in IDENTITY.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A committed git repository with the project's sources and tiny params; nothing run yet."""
    repo_environment(monkeypatch)
    return make_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> Path:
    """Read-only: a committed repository after `dvc repro` (and the offline plots template, as
    `make repro` leaves it): what a user has after the quick start."""
    root = make_repo(tmp_path_factory.mktemp("reproduced") / "repo")
    env = {**environment_first(clean_environment()), **IDENTITY}
    for command in ([sys.executable, "-m", "pipeline.tools.plots_template"], [sys.executable, "-m", "dvc", "repro"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "dvc repro"]):
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    SHARED["reproduced"] = (root, digest(root))
    return root


class Replicated:
    """`reproduced`'s copy with a further seed in its own experiment: `dvc exp run -n s2 -S
    seeds=[2]` (its output in `log`), then `make compare` (the configuration's summary run pooling
    the workspace's seeds 0 and 1 with the experiment's seed 2)."""

    def __init__(self, root: Path, env: dict, log: str):
        self.root, self.env, self.log = root, env, log


@pytest.fixture(scope="session")
def replicated(reproduced, tmp_path_factory) -> Replicated:
    """Read-only: a copy of `reproduced` with a third seed from another experiment."""
    root = copy_project(reproduced, tmp_path_factory.mktemp("replicated") / "repo")
    env = {**environment_first(clean_environment()), **IDENTITY}
    logs = []
    for command in ([sys.executable, "-m", "dvc", "exp", "run", "-n", "s2", "-S", "seeds=[2]"],
                    [sys.executable, "-m", "pipeline.tools.compare"]):
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        logs.append(result.stdout)
    SHARED["replicated"] = (root, digest(root))
    return Replicated(root, env, logs[0])


@pytest.fixture
def workspace(reproduced, tmp_path, monkeypatch) -> Path:
    """A copy of `reproduced` of the test's own: a committed repository whose pipeline has run."""
    repo_environment(monkeypatch)
    return copy_project(reproduced, tmp_path / "repo")


def git(root, *args):
    return run_git(*args, cwd=root, check=True).stdout


# ---------------------------------------------------------------------------------------------
# The team's machinery: PostgreSQL, an MLflow server on it, a two-node Ray cluster


@pytest.fixture(scope="session")
def team(tmp_path_factory):
    """PostgreSQL, `mlflow server` on it with served artifacts, and a two-node Ray cluster, once
    for the session; yields (server URL, cluster). A test that kills a node gets a new one started
    by `two_nodes`. Everything is stopped at the end."""
    if missing():
        pytest.fail(missing())
    folder = tmp_path_factory.mktemp("team")
    (folder / "artifacts").mkdir()
    try:
        with postgres() as database, mlflow_server(database, folder / "artifacts") as url, \
                ray_cluster(folder, nodes=2, cpus_per_node=1) as cluster:
            yield url, cluster
    except ClusterError as error:
        pytest.fail(str(error))


@pytest.fixture
def two_nodes(team):
    """The session's team with both Ray nodes alive (a node killed by an earlier test replaced)."""
    url, cluster = team
    try:
        cluster.replace_dead_nodes(cpus=1)
    except ClusterError as error:
        pytest.fail(str(error))
    return url, cluster


# ---------------------------------------------------------------------------------------------
# A browser

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


def pytest_collection_modifyitems(items):
    """The check that the shared fixtures were not changed runs after every test that uses them."""
    last = [item for item in items if item.nodeid.endswith("test_the_shared_fixtures_are_unchanged")]
    items[:] = [item for item in items if item not in last] + last

