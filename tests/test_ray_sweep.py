"""The sweep on Ray (`--executor ray`), recorded in a PostgreSQL-backed MLflow server: on a real
local cluster (a Ray head and a second node, each its own `ray start` process on this machine,
started once for the session: conftest's `team`), with a bare git remote and a local-folder DVC
remote; a node killed in the middle of an experiment; an experiment that fails for a real reason;
and the checks made before anything is queued. Each test's rows are told from the others' on the
shared server by its own commit and experiment names."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO, git, run_in_process

from pipeline.core.config import merged
from pipeline.tools import ray_sweep
from pipeline.tools.dvc_cli import SweepError
from pipeline.tools.local_cluster import alive, descendants, kill_tree, missing, ray_worker_of
from pipeline.tracking import experiments, names, record, store

# The cluster tests need Ray and PostgreSQL; the CI command installs both, so there they fail
# rather than skip.
needs_cluster = pytest.mark.skipif(not os.environ.get("CI") and missing() is not None,
                                   reason=str(missing()))


def cluster_test(test):
    """A test on the local cluster: slow, up to 900 s, skipped (outside CI) without Ray or PostgreSQL."""
    return needs_cluster(pytest.mark.slow(pytest.mark.timeout(900)(test)))


def dvc(root, *args) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def share(repo: Path, folder: Path) -> None:
    """Give `repo` what the Ray sweep asks for: a bare git remote holding its commit, and a
    local-folder DVC remote, committed."""
    subprocess.run(["git", "init", "-q", "--bare", str(folder / "remote.git")], check=True)
    git(repo, "remote", "add", "origin", str(folder / "remote.git"))
    dvc(repo, "remote", "add", "-d", "storage", str(folder / "dvc-remote"))
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-qm", "DVC remote")
    git(repo, "push", "-q", "origin", "HEAD")


def sweep(repo: Path, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.tools.sweep", "--executor", "ray", *args], cwd=repo,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def finish(process: subprocess.Popen, seconds: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=seconds)
    return process.returncode, out, err


def result_rows(url: str, experiment: str = "mnist5k", commit: str | None = None):
    """The experiment's rows on the server (not summaries); with `commit`, only those recorded at it."""
    client = mlflow.MlflowClient(tracking_uri=url)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return [run for run in runs if names.SUMMARY_TAG not in run.data.tags
            and (commit is None or run.data.tags.get(names.COMMIT_TAG) == commit)]


def sweep_names(out: str) -> list[str]:
    return sorted(set(re.findall(r"(sweep-\d{4}-\d{6}-ld\d+)", out)))


FIGURE = re.compile(r"^(\w+(?:\[n=\d+\])?): (-?[\d,.]+)", re.M)


@cluster_test
def test_a_sweep_on_a_two_node_ray_cluster_records_one_row_per_value_and_the_benchmark_prints_its_figures(
        repo, tmp_path, two_nodes):
    """benchmarks/ray_sweep.py on the session's server and cluster, from a committed copy of this
    working tree (`--source`): the same two-value sweep on DVC's queue and on Ray, each in a fresh
    clone where nothing has run. It prints every figure it promises (measurements, not judged), and
    the Ray sweep records one complete row per value on the server and comes back as experiments."""
    url, cluster = two_nodes
    work = tmp_path / "bench"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ray_sweep.py"), "--tiny", "--latent-dims", "2",
                             "3", "--tracking-uri", url, "--address", cluster.address, "--source", str(repo), "--work",
                             str(work)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = {name: float(value.replace(",", "")) for name, value in FIGURE.findall(result.stdout)}
    for name in ("dvc_queue_2_workers_s", "ray_2_nodes_s", "ray_task_s"):
        assert figures[name] > 0, name
    assert "Ray (2 node(s)), 1 CPU(s) each" in result.stdout

    project = work / "ray" / "project"  # the Ray sweep's
    experiments = sorted(log.stem for log in (project / "outputs" / "sweep_logs").glob("*.log"))
    assert len(experiments) == 2
    commit = git(project, "rev-parse", "HEAD").strip()
    rows = [run for run in result_rows(url) if run.data.tags.get(names.EXP_NAME_TAG) in experiments]
    points = sorted((run.data.params["latent_dim"], run.data.params["seed"]) for run in rows)
    assert points == [("2", "0"), ("2", "1"), ("3", "0"), ("3", "1")]  # one row per value and seed, none lost
    for run in rows:
        assert run.info.status == "FINISHED"
        assert run.data.tags[names.STAGES_TAG] == "train_vae,train_gan,evaluate"
        assert run.data.tags[names.THREADS_TAG] == "1"  # the task's one CPU
        assert run.data.tags[names.BASELINE_TAG] == commit
        # Artifacts went through the server: the checkpoint comes back.
        assert Path(mlflow.MlflowClient(url).download_artifacts(run.info.run_id, "vae/checkpoint.pt",
                                                                str(tmp_path / run.info.run_id))).stat().st_size > 0
    # The shared stages ran once, in the workspace, and the experiments restored them from the remote.
    assert len(result_rows(url, "datasets", commit)) == 1 and len(result_rows(url, "classifiers", commit)) == 1
    assert not (project / "mlflow.db").exists()  # nothing went to a local store

    # Back in the workspace: DVC sees both experiments, with their results.
    shown = dvc(project, "exp", "show", "--no-pager", "--csv")
    for name in experiments:
        assert name in shown
        assert (project / "outputs" / "sweep_logs" / f"{name}.log").read_text().count("$ git clone") == 1
    assert len(list((work / "ray" / "dvc-remote").rglob("*"))) > 0
    # And on the git remote, where the team sees them.
    remote_refs = git(project, "ls-remote", "origin", "refs/exps/*")
    assert all(name in remote_refs for name in experiments)


def stage_processes() -> dict[int, str]:
    """Every training stage process on this machine (a `python -m pipeline.stages.train_*`), with
    the DVC experiment it runs in."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().split(b"\0")
            if b"-m" in command and any(part.startswith(b"pipeline.stages.train_") for part in command):
                environ = dict(item.split(b"=", 1) for item in (cmdline.parent / "environ").read_bytes().split(b"\0")
                               if b"=" in item)
                found[int(cmdline.parent.name)] = environ.get(b"DVC_EXP_NAME", b"").decode()
        except OSError:
            continue
    return found


def running_stages(process: subprocess.Popen, where: dict, seconds: float = 400) -> dict[str, tuple[int, str]]:
    """For each `where` (name -> a test of a stage's PID), a training stage process it accepts, and
    its DVC experiment, looking while the sweep `process` runs, until one is found for each (the
    stages record their seeds once trained: they are found by their processes, not their rows)."""
    deadline = time.monotonic() + seconds
    found: dict = {}
    while True:
        assert process.poll() is None, finish(process)
        assert time.monotonic() < deadline, f"no stage ran where expected: found {sorted(found)} of {sorted(where)}"
        for pid, experiment in stage_processes().items():
            for name, test in where.items():
                taken = {stage for stage, _ in found.values()}
                if name not in found and pid not in taken and experiment and test(pid):
                    found[name] = (pid, experiment)
        if len(found) == len(where):
            return found
        time.sleep(0.2)


@cluster_test
def test_a_worker_and_a_node_killed_during_a_sweep_still_end_with_one_complete_row_per_value(workspace, tmp_path,
                                                                                               two_nodes):
    """Two experiments, one on each node. On the head, the Ray worker running one dies (the OOM
    killer, a crash) while the node lives on: its `dvc exp run` and stage go with it, and Ray runs
    the task again. The second node dies whole, as if its machine did: the sweep logs it and Ray
    runs its experiment again on the head. Each value ends with exactly one complete row, and each
    dead attempt's row, if it had begun recording, KILLED."""
    url, cluster = two_nodes
    repo = workspace
    share(repo, tmp_path)
    process = sweep(repo, "--address", cluster.address, "--latent-dims", "5", "6", env={"MLFLOW_TRACKING_URI": url})
    second = cluster.nodes[1]

    def on_second(pid: int) -> bool:
        return pid in [second.pid, *descendants(second.pid)]

    victims = running_stages(process, {"node": on_second,
                                       "worker": lambda pid: ray_worker_of(pid) is not None and not on_second(pid)})
    stage, worker_experiment = victims["worker"]
    os.kill(ray_worker_of(stage), signal.SIGKILL)
    kill_tree(second.pid)
    # The dead worker's `dvc exp run` and the stage it ran go with it (the node's process-group
    # clean-up), so nothing of the dead attempt runs on to record or push a second result.
    deadline = time.monotonic() + 30
    while alive(stage):
        assert time.monotonic() < deadline, "the dead worker's stage process ran on"
        time.sleep(0.5)
    code, out, err = finish(process)
    assert code == 0, f"{out}\n{err}"
    assert re.search(r"sweep: Ray node \w{8} at \S+ died: Ray runs the experiments it held again", err)

    experiments = sweep_names(out)
    rows = [run for run in result_rows(url) if run.data.tags.get(names.EXP_NAME_TAG) in experiments]
    finished = [run for run in rows if run.info.status == "FINISHED"]
    points = sorted((run.data.params["latent_dim"], run.data.params["seed"]) for run in finished)
    assert points == [("5", "0"), ("5", "1"), ("6", "0"), ("6", "1")]  # exactly one complete row each
    assert {run.info.status for run in rows} <= {"FINISHED", "KILLED"}  # nothing left RUNNING
    # the worker's experiment: the retry's rows, and the dead attempt's if it had begun to record
    statuses = [run.info.status for run in rows if run.data.tags[names.EXP_NAME_TAG] == worker_experiment]
    assert statuses.count("FINISHED") == 2 and set(statuses) <= {"FINISHED", "KILLED"}
    assert all((repo / "outputs" / "sweep_logs" / f"{name}.log").exists() for name in experiments)
    shown = dvc(repo, "exp", "show", "--no-pager", "--csv")
    assert all(name in shown for name in experiments)


@cluster_test
def test_an_experiment_that_fails_for_a_real_reason_is_reported_with_its_log_and_not_retried(workspace, tmp_path,
                                                                                               two_nodes):
    url, cluster = two_nodes
    repo = workspace
    # Valid by the params' rules, but the VAE's training diverges: train_vae refuses, on the node.
    params = merged(yaml.safe_load((repo / "params.yaml").read_text()), {"vae": {"learning_rate": 1e30}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "a learning rate that diverges")
    share(repo, tmp_path)
    code, out, err = finish(sweep(repo, "--address", cluster.address, "--latent-dims", "7",
                                  env={"MLFLOW_TRACKING_URI": url}))
    assert code == 2 and "Traceback" not in err.split("sweep: error:")[-1]
    (name,) = sweep_names(err)
    log = repo / "outputs" / "sweep_logs" / f"{name}.log"
    assert re.search(rf"sweep: error: {name} failed at dvc exp run \(log: {re.escape(str(log.relative_to(repo)))}\)",
                     err)
    assert "train_vae: error:" in log.read_text() and "train_vae: error:" in err  # the log's end is printed
    assert log.read_text().count("$ git clone") == 1  # one attempt, not retried
    assert [run for run in result_rows(url) if run.data.tags.get(names.EXP_NAME_TAG) == name] == []  # nor recorded
    assert not (repo / "outputs" / "sweep.csv").exists()


# Checks before anything is queued: no cluster needed.

def refused(repo: Path, *args: str) -> tuple[int, str, str]:
    """`sweep --executor ray <args>` in this process, as `python -m` runs it (conftest.run_in_process)."""
    result = run_in_process(repo, "sweep", "--executor", "ray", *args)
    return result.returncode, result.stdout, result.stderr


def assert_refused(result: tuple[int, str, str], message: str, repo: Path) -> None:
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: error: "), err
    assert message in lines[0]
    assert not (repo / "outputs").exists() and not (repo / "mlflow.db").exists()  # nothing was run


def test_the_ray_sweep_refuses_what_the_nodes_could_not_use_before_anything_is_queued(repo, tmp_path):
    assert_refused(refused(repo, "--latent-dims", "2"), "git remote 'origin' is not set", repo)
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], check=True)
    git(repo, "remote", "add", "origin", str(tmp_path / "remote.git"))
    assert_refused(refused(repo, "--latent-dims", "2"), "is not on git remote 'origin'", repo)
    git(repo, "push", "-q", "origin", "HEAD")
    assert_refused(refused(repo, "--latent-dims", "2"), "no default DVC remote", repo)
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote"))
    assert_refused(refused(repo, "--latent-dims", "2"), "uncommitted changes to .dvc/config", repo)
    git(repo, "commit", "-qam", "DVC remote")
    assert_refused(refused(repo, "--latent-dims", "2"), "is not on git remote 'origin'", repo)
    git(repo, "push", "-q", "origin", "HEAD")
    code, _, err = refused(repo, "--latent-dims", "2", "--jobs", "2")
    assert code == 2 and "--jobs sets DVC's queue workers" in err


def test_results_left_in_the_workspace_are_not_uncommitted_changes(repo, tmp_path, monkeypatch):
    """`make repro` on another CPU or a `dvc exp run` rewrites the committed headline metrics (and
    dvc.lock): the tasks run the commit and compute their own results, so only the sources count."""
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], check=True)
    git(repo, "remote", "add", "origin", str(tmp_path / "remote.git"))
    metrics = repo / "outputs" / "eval" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"kl": 1.0}')
    git(repo, "add", "outputs")
    git(repo, "commit", "-qm", "results")
    git(repo, "push", "-q", "origin", "HEAD")
    metrics.write_text('{"kl": 2.0}')
    monkeypatch.chdir(repo)
    assert ray_sweep.check_workspace("origin") == git(repo, "rev-parse", "HEAD").strip()
    with (repo / "params.yaml").open("a") as params:
        params.write("# an edit\n")
    with pytest.raises(SweepError, match=r"uncommitted changes to params.yaml"):
        ray_sweep.check_workspace("origin")


class FakeRay:
    """Stands in for the ray module: a cluster whose nodes are at `addresses`."""

    class exceptions:  # noqa: N801 - as ray's
        RayError = RuntimeError

    def __init__(self, addresses: list[str], gpus: float = 0):
        self.addresses, self.gpus, self.queued = addresses, gpus, []

    def init(self, **kwargs):
        pass

    def shutdown(self):
        pass

    def nodes(self):
        return [{"NodeID": f"{n:056x}", "NodeManagerAddress": address, "Alive": True}
                for n, address in enumerate(self.addresses)]

    def cluster_resources(self):
        return {"CPU": 8.0, "GPU": self.gpus}

    def remote(self, function):
        self.queued.append(function)
        raise AssertionError("nothing may be queued")


@pytest.mark.slow
def test_a_local_store_with_nodes_elsewhere_is_refused_before_anything_runs(repo, tmp_path, monkeypatch):
    share(repo, tmp_path)
    fake = FakeRay(["127.0.0.1", "10.9.8.7"])
    monkeypatch.setattr(ray_sweep, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_sweep, "local_addresses", lambda: {"127.0.0.1", "localhost"})
    monkeypatch.chdir(repo)
    from pipeline.tools import sweep

    with pytest.raises(SweepError, match=r"the MLflow store sqlite:///\S+mlflow.db is a file on this machine, which "
                                         r"the Ray nodes at 10.9.8.7 cannot reach; set MLFLOW_TRACKING_URI"):
        sweep.main(["--executor", "ray", "--address", "10.9.8.7:6379", "--latent-dims", "2"])
    assert fake.queued == [] and not (repo / "outputs").exists()  # not even the shared stages ran


def test_reach_refuses_a_store_only_this_machine_can_reach_when_a_node_is_elsewhere(monkeypatch):
    here = {"192.0.2.2", "localhost", "box"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    ray_sweep.check_reach("http://127.0.0.1:5000", ["192.0.2.2", "127.0.0.1"], here)  # every node here: fine
    with pytest.raises(SweepError, match="loopback address, which the Ray nodes at 10.0.0.5 cannot reach"):
        ray_sweep.check_reach("http://127.0.0.1:5000", ["192.0.2.2", "10.0.0.5"], here)
    with pytest.raises(SweepError, match="loopback"):
        ray_sweep.check_reach("http://localhost:5000", ["10.0.0.5"], here)
    ray_sweep.check_reach("http://mlflow.internal:5000", ["10.0.0.5"], here)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/mlflow.db")
    with pytest.raises(SweepError, match="is a file on this machine"):
        ray_sweep.check_reach("sqlite:////srv/mlflow.db", ["10.0.0.5"], here)
    ray_sweep.check_reach("sqlite:////srv/mlflow.db", ["192.0.2.2"], here)


@pytest.mark.parametrize(("device", "gpus", "expected"), [
    ("cpu", 4, 0), ("auto", 0, 0), ("auto", 2, 1), ("cuda", 1, 1), ("cuda:0", 1, 1),
    ("cuda", 0, "has no GPU"), ("cuda:1", 2, "each task sees only the GPU it is given"),
])
def test_a_task_asks_for_a_gpu_when_the_device_asks_for_cuda(device, gpus, expected):
    if isinstance(expected, int):
        assert ray_sweep.gpus_per_task(device, gpus) == expected
    else:
        with pytest.raises(SweepError, match=expected):
            ray_sweep.gpus_per_task(device, gpus)


def test_the_sweep_marks_killed_the_rows_its_dead_attempts_left_running(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, client = store.connect()
    experiment = experiments.ensure_experiment("mnist5k")

    def row(exp_name: str, status: str | None) -> str:
        run = client.create_run(experiment, tags={names.EXP_NAME_TAG: exp_name, names.HOST_TAG: "node-that-died",
                                                  names.PID_TAG: "1"})
        if status:
            client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    dead, done, other = row("sweep-a-ld2", None), row("sweep-a-ld2", "FINISHED"), row("sweep-b-ld2", None)
    assert record.close_dead_attempts("mnist5k", ["sweep-a-ld2", "sweep-a-ld3"]) == [dead]
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(dead).data.tags[names.CLOSED_BY_TAG] == "sweep: its attempt died with its node"
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(other).info.status == "RUNNING"  # another sweep's, maybe still running
    assert record.close_dead_attempts("no-such-experiment", ["sweep-a-ld2"]) == []
