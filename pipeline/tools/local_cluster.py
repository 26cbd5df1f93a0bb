"""A team's machinery on 127.0.0.1, for the Ray sweep's tests and benchmark (and a one-machine try
of docs/cluster.md): a throwaway PostgreSQL cluster, `mlflow server` on it with served artifacts,
and a Ray head and worker node started as separate processes (`ray start`). Every process started
here is stopped by its context manager, with everything it started."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


class ClusterError(RuntimeError):
    """A piece of the set-up could not start; the message carries its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder with Debian's PostgreSQL server programs (not on PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing() -> str | None:
    """What this machine lacks for a local cluster (Ray, PostgreSQL), or None."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (requirements-dev.txt installs it)"
    if postgres_bin() is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)"
    return None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def ray_worker_of(pid: int) -> int | None:
    """The Ray worker process (`ray::...`) that `pid` runs under, or None."""
    while pid and pid > 1:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                return pid
        except OSError:
            return None
        pid = parent(pid)
    return None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send `sig` to `pid` and everything below it (collected first: orphans move to init)."""
    pids = [pid, *descendants(pid)]
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, sig)
    return pids


def _stop(process: subprocess.Popen, wait: float = 30) -> None:
    """SIGTERM to the process and everything below it, then SIGKILL to what is left."""
    if process.poll() is None:
        kill_tree(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    kill_tree(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def wait_for(check, what: str, output, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not come up within {seconds} s:\n{output()}")
        time.sleep(0.5)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a database `mlflow`; yields its SQLAlchemy
    URI. As root it runs as the `postgres` user (PostgreSQL refuses root)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise ClusterError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    user = "postgres" if os.geteuid() == 0 else None

    def as_user(*command) -> list[str]:
        return ["runuser", "-u", user, "--", *map(str, command)] if user else [str(c) for c in command]

    if user:
        shutil.chown(folder, user)
    port = free_port()
    log = folder / "postgres.log"
    subprocess.run(as_user(bin_dir / "initdb", "-D", folder / "data", "-A", "trust", "-U", "postgres", "-E", "UTF8"),
                   check=True, capture_output=True)
    process = subprocess.Popen(as_user(bin_dir / "postgres", "-D", folder / "data", "-h", "127.0.0.1", "-p", port,
                                       "-k", folder), stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        def ready() -> bool:
            return subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                  capture_output=True).returncode == 0

        wait_for(ready, "PostgreSQL", log.read_text, 60)
        subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-q", "-c",
                        "CREATE DATABASE mlflow"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, workers: int = 2) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_uri`, serving artifacts from `artifacts`, with
    `workers` processes; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    log_path = artifacts.parent / f"mlflow-server-{url.rsplit(':', 1)[1]}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
             "--workers", str(workers), "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        try:
            def healthy() -> bool:
                if process.poll() is not None:
                    raise ClusterError(f"mlflow server exited with {process.returncode}:\n{log_path.read_text()}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                        return answer.status == 200
                except OSError:
                    return False

            wait_for(healthy, "mlflow server", log_path.read_text, 180)
            yield url
        finally:
            _stop(process)


class RayCluster:
    """A Ray head and worker nodes on this machine, each its own `ray start --block` process."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's socket paths must stay short (108 bytes): its temporary folder sits directly under /tmp.
        self.temp = Path(tempfile.mkdtemp(prefix="ray-"))
        self.nodes: list[subprocess.Popen] = []

    def _start(self, *args: str) -> subprocess.Popen:
        log = (self.folder / f"ray-node-{len(self.nodes)}.log").open("w")
        # The tasks' temporary clones go under self.temp too (TMPDIR), also those of a killed node.
        work = self.temp / "work"
        work.mkdir(exist_ok=True)
        # As docs/cluster.md starts a node: a dead worker's whole process group goes with it. Token
        # authentication off: Ray turns it on when ~/.ray/auth_token exists, and a client then
        # needs RAY_AUTH_MODE=token; this cluster is on 127.0.0.1 and lives for one test.
        process = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(work),
                                        "RAY_process_group_cleanup_enabled": "1", "RAY_AUTH_MODE": "disabled"})
        self.nodes.append(process)
        return process

    def start(self, cpus_per_node: int = 1, nodes: int = 2) -> None:
        self._start("--head", "--port", str(self.port), "--num-cpus", str(cpus_per_node), "--num-gpus", "0",
                    "--include-dashboard", "false", "--temp-dir", str(self.temp))
        for _ in range(nodes - 1):
            self.add_node(cpus_per_node)

    def add_node(self, cpus: int = 1) -> subprocess.Popen:
        return self._start("--address", self.address, "--num-cpus", str(cpus), "--num-gpus", "0")

    def replace_dead_nodes(self, cpus: int = 1) -> None:
        """Start a new worker node for each one whose process has died (killed by a test, say), and
        wait until as many nodes are alive as were started."""
        dead = [node for node in self.nodes[1:] if node.poll() is not None]
        if not dead:
            return
        self.nodes = [node for node in self.nodes if node not in dead]
        for _ in dead:
            self.add_node(cpus)
        self.wait_for_nodes(len(self.nodes))

    def wait_for_nodes(self, count: int, seconds: float = 120) -> None:
        """Until `count` nodes are alive (asked through `ray status`)."""
        def enough() -> bool:
            for node in self.nodes:
                if node.poll() is not None:
                    raise ClusterError(f"a Ray node exited with {node.returncode}:\n{self.logs()}")
            result = subprocess.run([str(BIN / "ray"), "status", "--address", self.address], capture_output=True,
                                    text=True)
            active = result.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0] if result.returncode == 0 else ""
            return active.count("node_") >= count

        wait_for(enough, f"{count} Ray nodes", self.logs, seconds)

    def logs(self) -> str:
        return "\n".join(path.read_text()[-3000:] for path in sorted(self.folder.glob("ray-node-*.log")))

    def stop(self) -> None:
        """Every node's processes, killed: nothing of a throwaway cluster needs a clean shutdown."""
        for node in reversed(self.nodes):
            kill_tree(node.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@contextlib.contextmanager
def ray_cluster(folder: Path, nodes: int = 2, cpus_per_node: int = 1) -> Iterator[RayCluster]:
    cluster = RayCluster(folder)
    try:
        cluster.start(cpus_per_node, nodes)
        cluster.wait_for_nodes(nodes)
        yield cluster
    finally:
        cluster.stop()
