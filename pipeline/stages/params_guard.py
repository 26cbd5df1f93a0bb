"""A stage stops when params.yaml changes under the DVC command that runs it.

`dvc exp run -S latent_dim=8`, started while a `dvc repro` runs in the same workspace, rewrites
params.yaml before DVC's lock refuses it; the running repro's later stages would read the new
value and record a result nobody asked for (and DVC's lock file would pair outputs with params
they were not made with). So a stage compares params.yaml
- after each training epoch, and at its end, before its row is finished and its outputs appear,
  with what it read at its start (a hijacked training stops within an epoch, not after the last);
- at its start, with what the first stage of the same DVC command read (kept in
  `.dvc/tmp/pipeline-params/`, keyed by that DVC process), and, under `dvc repro`, with the time
  that process started: an edit after it started is refused even before the first stage.
A change stops the stage with a ConfigError naming the keys that changed. Outside DVC (a stage run
by hand) only the first check applies. Finding the DVC process reads /proc (Linux).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pipeline.core.config import PARAMS_FILE, ConfigError, read_params
from pipeline.core.io import read_json, write_json

MARKERS = Path(".dvc/tmp/pipeline-params")

_started: dict[str, Any] = {}  # what this stage read at its start: {"params": ..., "command": ...}


def _process(pid: int) -> tuple[int, int, list[str]] | None:
    """(parent pid, start time in clock ticks since boot, command line) of a process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) "
    return int(fields[1]), int(fields[19]), [a.decode(errors="replace") for a in arguments if a]


def dvc_command() -> dict[str, Any] | None:
    """The `dvc repro` or `dvc exp run` process this stage runs under: pid, start (ticks since
    boot) and kind ("repro" or "exp"); None outside DVC or where /proc is missing."""
    pid = os.getppid()
    for _ in range(12):  # dvc -> shell -> python, with room for wrappers (make, nohup)
        found = _process(pid)
        if found is None or pid <= 1:
            return None
        parent, start, arguments = found
        names = [os.path.basename(a) for a in arguments[:3]]
        if "dvc" in names or any(a.endswith("/dvc/__main__.py") for a in arguments[:3]):
            if "exp" in arguments:
                return {"pid": pid, "start": start, "kind": "exp"}
            if "repro" in arguments:
                return {"pid": pid, "start": start, "kind": "repro"}
            return None
        pid = parent
    return None


def _started_at(ticks: int) -> float:
    """A process start time in clock ticks since boot, as a Unix time (to the tick, 10 ms; the
    boot time in /proc/stat is whole seconds)."""
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def _changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ, as `key: old -> new`."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [change for key in {**before, **after}
                for change in _changes(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [f"{prefix.rstrip('.') or 'the whole file'}: {before!r} -> {after!r}"]


def _named(command: dict[str, Any] | None) -> str:
    """The DVC command as messages name it: `dvc repro` (process 123)."""
    if command is None:
        return "the stage"
    return f"`dvc {'repro' if command['kind'] == 'repro' else 'exp run'}` (process {command['pid']})"


def _refuse(command: str, changes: list[str]) -> ConfigError:
    return ConfigError(f"params.yaml changed while {command} was running ({'; '.join(changes[:5])}), by an edit or "
                       "by a `dvc exp run -S` that DVC then refused (it rewrites params.yaml first); no output of "
                       "this stage was written, and a row it had opened ends FAILED, never counted as a result; "
                       "check params.yaml (`git diff params.yaml`) and run again")


# A writer (an editor, `dvc exp run -S`) empties params.yaml, then writes it: a read in between
# sees an empty or partial file. How long to wait for it to settle, in steps.
SETTLE_S, SETTLE_STEPS = 1.0, 10
STEADY_READS = 3  # a changed file is named once this many reads in a row agree


def _settled() -> Any:
    """params.yaml as read once it holds a mapping again (at most SETTLE_S later); what it holds
    then, or the error reading it, otherwise."""
    for _ in range(SETTLE_STEPS):
        try:
            params = read_params(PARAMS_FILE)
        except ConfigError:  # half written: not YAML yet
            params = None
        if isinstance(params, dict):
            return params
        time.sleep(SETTLE_S / SETTLE_STEPS)
    return read_params(PARAMS_FILE)


def started() -> None:
    """Called at a stage's start: remember params.yaml, and check it against the DVC command's."""
    params = _settled()
    command = dvc_command()
    _started.update(params=params, command=command)
    if command is None or not Path(".dvc").is_dir():
        return
    name = _named(command)
    marker = MARKERS / f"{command['pid']}-{command['start']}.json"
    if marker.exists():
        first = read_json(marker)
        if first != params:
            raise _refuse(name, _changes(first, params))
        return
    if command["kind"] == "repro":
        began = _started_at(command["start"])
        modified = PARAMS_FILE.stat().st_mtime
        if modified > began + 0.1:  # a tick is 10 ms
            raise ConfigError(
                f"params.yaml was changed at {time.strftime('%H:%M:%S', time.localtime(modified))}, after {name} "
                f"started at {time.strftime('%H:%M:%S', time.localtime(began))}, by an edit or by a `dvc exp run -S` "
                "that DVC then refused (it rewrites params.yaml first); DVC chose what to rerun from the old values; "
                "check params.yaml (`git diff params.yaml`) and run again")
    _forget_finished_commands()
    write_json(marker, params)


def unchanged() -> None:
    """Called after each training epoch and at the end of a stage's record, before its row is
    finished and its outputs appear: params.yaml still holds what the stage read at its start."""
    if "params" not in _started:
        return  # not run through pipeline.stages.cli (a test calling main)
    now = _settled()
    if now != _started["params"]:
        now = _steady(now)  # a rewrite under way (DVC writes twice): name the keys of what it settles on
        if now != _started["params"]:
            raise _refuse(_named(_started["command"]), _changes(_started["params"], now))


def _steady(params: Any) -> Any:
    """params.yaml once it has held the same values for STEADY_READS reads SETTLE_S / SETTLE_STEPS
    apart (waiting at most 2 * SETTLE_S): a refused `dvc exp run -S` first puts back the committed
    file, then writes its values over it."""
    same = 0
    for _ in range(2 * SETTLE_STEPS):
        time.sleep(SETTLE_S / SETTLE_STEPS)
        again = _settled()
        same = same + 1 if again == params else 0
        params = again
        if same >= STEADY_READS:
            break
    return params


def _forget_finished_commands() -> None:
    """Remove the markers of DVC commands that have ended."""
    for marker in MARKERS.glob("*.json") if MARKERS.is_dir() else []:
        pid, _, start = marker.stem.partition("-")
        found = _process(int(pid)) if pid.isdigit() else None
        if found is None or str(found[1]) != start:
            marker.unlink(missing_ok=True)
