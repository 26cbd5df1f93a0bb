"""The sweep's Ray executor, `python -m pipeline.tools.sweep --executor ray [--address ADDR]`:
each experiment of the sweep becomes a Ray task that may run on any node (pipeline/tools/ray_task.py
is what it does there). docs/cluster.md explains the set-up and the steps:

1. check, before anything is queued: the git remote, the commit on it, a clean workspace, the DVC
   remote, the cluster, and that every node can reach the MLflow store;
2. the shared stages once, here, pushed with their run cache to the DVC remote;
3. one task per experiment, asking for its CPUs (and a GPU when `device` asks for CUDA); a task
   whose node dies is run again elsewhere by Ray, a task that fails is reported with its log;
4. the rows left RUNNING by attempts that died with their node are marked KILLED;
5. the experiments are pulled into this workspace, for `dvc exp show`, compare, the report.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import urllib.parse
from pathlib import Path

from pipeline.core.commands import changed_sources, git
from pipeline.core.config import THREADS_VARIABLE, Config, thread_limit
from pipeline.tools import ray_task
from pipeline.tools.dvc_cli import SHARED_STAGES, SweepError, dvc
from pipeline.tools.ray_task import Outcome, Task
from pipeline.tracking import record, store

log = logging.getLogger(__name__)

MAX_NODE_RETRIES = 3  # how many times Ray runs a task again after its node died
LOGS = Path("outputs/sweep_logs")  # each experiment's log, written back here
LOG_TAIL_LINES = 25  # of a failed experiment's log, printed
# Ray's setting that ends a dead worker's whole process group with it (docs/cluster.md): without
# it, the `dvc exp run` of a task whose worker crashed runs on while Ray runs the task again.
PROCESS_GROUP_CLEANUP = "RAY_process_group_cleanup_enabled"
# MLflow's variables that say who the user is to a server: the tasks record as the user does.
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")


def git_remote_url(remote: str) -> str:
    result = git("remote", "get-url", remote)
    if result.returncode != 0:
        raise SweepError(f"git remote {remote!r} is not set; the experiments go there: "
                           f"`git remote add {remote} URL` (a repository every node can reach), or --git-remote NAME")
    url = result.stdout.strip()
    if "://" not in url and ":" not in url.split("/")[0] and Path(url).exists():  # a local path: absolute for the nodes
        url = str(Path(url).resolve())
    return url


def check_workspace(remote: str) -> str:
    """The sweep's commit: HEAD, when the workspace holds no uncommitted change to its sources (the
    tasks run the commit, not the workspace) and the git remote has it. The results git keeps may
    differ (the shared stages rewrite dvc.lock; any `dvc exp run`, the outputs): the tasks compute
    their own."""
    changed = changed_sources()
    if changed:
        raise SweepError(f"uncommitted changes to {', '.join(changed[:5])}: the experiments run on other machines "
                           f"from the commit; commit them and `git push {remote}` first (or `git stash`)")
    commit = git("rev-parse", "HEAD").stdout.strip()
    tips = git("ls-remote", remote)
    if tips.returncode != 0:
        raise SweepError(f"git remote {remote!r} cannot be read: {tips.stderr.strip().splitlines()[-1:]}")
    for line in tips.stdout.splitlines():
        tip = line.split("\t")[0]
        if tip == commit or (git("cat-file", "-e", f"{tip}^{{commit}}").returncode == 0
                             and git("merge-base", "--is-ancestor", commit, tip).returncode == 0):
            return commit
    raise SweepError(f"commit {commit[:10]} is not on git remote {remote!r}, where the nodes clone it from: "
                       f"`git push {remote} HEAD` first")


def dvc_remote() -> tuple[str, str]:
    """The default DVC remote's name and URL (a local folder as an absolute path)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        name = repo.config["core"].get("remote")
        url = repo.config["remote"].get(name, {}).get("url") if name else None
    if not url:
        raise SweepError("no default DVC remote: the nodes fetch the shared stages' outputs from it and push each "
                           "experiment's there; `dvc remote add -d NAME URL` (storage every node can reach)")
    if "://" not in url:
        url = str(Path(url).resolve())
    return name, url


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("--executor ray needs Ray: `pip install 'ray>=2.9'` (or `pip install -e '.[ray]'`)") from None
    return ray


def local_addresses() -> set[str]:
    """This machine's names and addresses as a Ray node would report them."""
    import ray

    names = {"localhost", socket.gethostname(), ray.util.get_node_ip_address()}
    try:
        names.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    return names


def _is_local(host: str, here: set[str]) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback or host in here
    except ValueError:
        return host in here


def check_reach(uri: str, nodes: list[str], here: set[str]) -> None:
    """Refuse a store that a node elsewhere cannot reach: a local SQLite file, or a server on this
    machine's loopback address, with any node (`nodes`: their addresses) not on this machine."""
    away = sorted({node for node in nodes if not _is_local(node, here)})
    if not away:
        return
    shown = store.shown_uri()
    if store.local_store(uri) is not None:
        raise SweepError(f"the MLflow store {shown} is a file on this machine, which the Ray nodes at "
                           f"{', '.join(away)} cannot reach; set MLFLOW_TRACKING_URI to a tracking server every node "
                           f"can reach (docs/cluster.md)")
    host = urllib.parse.urlparse(uri).hostname or ""
    if uri.startswith(("http:", "https:")) and _is_local(host, {"localhost"}):
        raise SweepError(f"the MLflow server {shown} is on this machine's loopback address, which the Ray nodes at "
                           f"{', '.join(away)} cannot reach; use an address they can reach")


def alive_nodes(ray) -> dict[str, str]:
    """The cluster's live nodes: id -> address."""
    return {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}


def gpus_per_task(device: str, cluster_gpus: float) -> int:
    """1 when `device` asks for CUDA (auto: when the cluster has a GPU), else 0."""
    if device.startswith("cuda:") and device != "cuda:0":
        raise SweepError(f"params.yaml: device = {device!r}: under Ray each task sees only the GPU it is given; "
                           f"set device to cuda or auto")
    if device.startswith("cuda") and cluster_gpus < 1:
        raise SweepError(f"params.yaml: device = {device!r} but the Ray cluster has no GPU; set device to auto or cpu")
    return 1 if device.startswith("cuda") or (device == "auto" and cluster_gpus >= 1) else 0


def identity() -> dict[str, str]:
    """The user's git identity, for the commit `dvc exp run` makes on a node."""
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        ident = git("var", f"GIT_{role}_IDENT").stdout.strip()
        name, _, rest = ident.partition(" <")
        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = name, rest.split(">")[0]
    return env


def write_log(outcome: Outcome) -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    path = LOGS / f"{outcome.name}.log"
    path.write_text(outcome.log)
    return path


def execute(tasks: dict[str, tuple[str, ...]], *, config: Config, env: dict[str, str], address: str | None = None,
            git_remote: str = "origin", threads: int | None = None, **_) -> str:
    """Run the experiments `tasks` (name -> `-S` settings) on the Ray cluster at `address` (None:
    Ray on this machine), `threads` CPUs each (default PIPELINE_THREADS, else 1); returns how, for
    the sweep's last line. Raises SweepError for a failed experiment, after the others were pulled."""
    threads = threads or thread_limit(dict(os.environ)) or 1
    # 1. Checks, before any work.
    remote_url = git_remote_url(git_remote)
    commit = check_workspace(git_remote)
    remote = dvc_remote()
    ray = import_ray()
    store.check_store()
    uri = store.tracking_uri()
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable, as `ray.init` reads it
    try:
        if address is None:  # Ray on this machine, for this sweep only, set up as docs/cluster.md's nodes
            os.environ.setdefault(PROCESS_GROUP_CLEANUP, "1")
            ray.init(logging_level=logging.WARNING, include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise SweepError(f"could not connect to the Ray cluster at {address}: {str(error).splitlines()[0]}; is "
                         f"`ray start --head` running there? (a cluster with token authentication also needs "
                         f"RAY_AUTH_MODE=token here: docs/cluster.md)") from None
    try:
        nodes = list(alive_nodes(ray).values())
        check_reach(uri, nodes, local_addresses())
        gpus = gpus_per_task(config.device, ray.cluster_resources().get("GPU", 0))
        task_env = {"MLFLOW_TRACKING_URI": uri, THREADS_VARIABLE: str(threads), **identity(),
                    **{key: os.environ[key] for key in CREDENTIALS if key in os.environ}}

        # 2. The shared stages, once, and to the DVC remote with their run cache.
        dvc("repro", *SHARED_STAGES, env=env)
        dvc("push", "--run-cache", "--quiet", *SHARED_STAGES, env=env)

        # 3. One task per experiment.
        ray.cloudpickle.register_pickle_by_value(ray_task)  # the nodes need not have the project
        remote_run = ray.remote(ray_task.run)
        pending = {remote_run.options(num_cpus=threads, num_gpus=gpus, max_retries=MAX_NODE_RETRIES,
                                      retry_exceptions=False, name=name).remote(
                       Task(name, settings, remote_url, commit, remote, task_env)): name
                   for name, settings in tasks.items()}
        log.info("%d experiments on Ray (%d node(s)), %d CPU(s)%s each; logs in %s/", len(tasks), len(nodes), threads,
                 f" and {gpus} GPU" if gpus else "", LOGS)
        failed: dict[str, str] = {}
        alive = alive_nodes(ray)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                now = alive_nodes(ray)
                for node in alive.keys() - now.keys():
                    log.warning("Ray node %s at %s died: Ray runs the experiments it held again on other nodes (at "
                                "most %d times each)", node[:8], alive[node], MAX_NODE_RETRIES)
                alive = now
                for ref in done:
                    name = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as error:  # its node died too often, or the task itself raised
                        failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                        log.error("%s: failed: %s", name, failed[name])
                        continue
                    path = write_log(outcome)
                    if outcome.failed_step is None:
                        log.info("%s: success on %s (%.0f s)", name, outcome.host, outcome.seconds)
                    else:
                        tail = "\n".join(outcome.log.splitlines()[-LOG_TAIL_LINES:])
                        log.error("%s: failed at %s on %s; the end of %s:\n%s", name, outcome.failed_step,
                                  outcome.host, path, tail)
                        failed[name] = f"failed at {outcome.failed_step} (log: {path})"
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            log.info("interrupted: the experiments still running were cancelled")
            raise
    finally:
        ray.shutdown()

    # 4. Rows left RUNNING by attempts that died with their node.
    record.close_dead_attempts(config.experiment_name, list(tasks))
    # 5. The experiments, into this workspace.
    done = [name for name in tasks if name not in failed]
    if done:
        dvc("exp", "pull", git_remote, *done, env=env)
    if failed:
        raise SweepError("; ".join(f"{name} {reason}" for name, reason in failed.items()))
    return f"Ray ({len(nodes)} node(s)), {threads} CPU(s) each"

