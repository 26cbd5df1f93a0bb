"""The MLflow UI's start-up time and memory: as `make ui` starts it, and as `mlflow ui` starts by default.

    python benchmarks/ui_startup.py [--store mlflow.db] [--repeat 3]

For each way of starting it: the seconds from the command to the first answer of /health, then,
once the runs page's data has been asked for once (a search of the runs), the number of processes
in the server's tree and their summed resident memory. Prints one line per start.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answered(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def measure(command: list[str], port: int, cwd: Path) -> tuple[float, int, float]:
    started = time.perf_counter()
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, cwd=cwd)
    try:
        while not answered(f"http://127.0.0.1:{port}/health"):
            if server.poll() is not None:
                raise SystemExit(f"the server exited ({server.returncode}): {' '.join(command)}")
            if time.perf_counter() - started > 300:
                raise SystemExit("no answer in 300 s")
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search",
                                         data=b'{"experiment_ids": ["1", "2"], "max_results": 100}',
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()
        time.sleep(2)
        tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        rss = sum(p.memory_info().rss for p in tree if p.is_running())
        return seconds, len(tree), rss / 2**30
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "mlflow.db", help="a project's mlflow.db")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.store.exists():
        raise SystemExit(f"no store at {args.store}: run `make repro` first")
    uri = f"sqlite:///{args.store.resolve()}"
    print(f"MLflow UI start-up on {os.cpu_count()} CPUs, store {args.store}")
    for _ in range(args.repeat):
        port = free_port()  # make ui's command, in the store's folder
        shown = measure([sys.executable, "-m", "pipeline.tools.ui", "--port", str(port)], port, args.store.parent)
        port = free_port()
        default = measure([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port)], port, args.store.parent)
        for label, (seconds, processes, gib) in (("make ui (1 worker, no job runner)", shown),
                                                 ("mlflow ui (its defaults)", default)):
            print(f"{label:36s} answers after {seconds:5.1f} s   {processes:2d} processes   {gib:4.2f} GiB resident")


if __name__ == "__main__":
    main()
