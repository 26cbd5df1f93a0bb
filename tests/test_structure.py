"""The code's structure, checked from its source: imports go one way through the layers, no stage
imports another, no modules import each other in a circle, and dvc.yaml lists every project file a
stage's command imports (so that DVC reruns a stage whenever code it runs changes, and never
reports stale outputs as up to date)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline.core.commands import git as run_git
from pipeline.tracking.names import STAGES

# Lowest first: a module may import its own layer and the layers before it, never a later one.
LAYERS = ("pipeline.core", "pipeline.tracking", "pipeline.stages", "pipeline.tools", "pipeline.app")
# Libraries that belong to the edges: the pure core imports none of them.
EDGE_LIBRARIES = ("mlflow", "dvc", "dvc_task", "streamlit")


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Every module of the `pipeline` package under `root`, by dotted name."""
    files = {}
    for path in sorted((root / "pipeline").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(source: str, module: str, known: set[str]) -> set[str]:
    """The modules `source` (the text of `module`) imports anywhere in it, in functions too: project
    modules by dotted name (`from pipeline.core import latent` is pipeline.core.latent), other
    libraries by their top-level name."""
    found = set()
    package = module if module in known and any(k.startswith(module + ".") for k in known) else module.rsplit(".", 1)[0]
    tree = ast.parse(source)
    # Imports under `if TYPE_CHECKING:` are for type checkers only: they never run.
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for statement in node.body for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name if name.startswith("pipeline") else name.split(".")[0] for name in found}


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    files = module_files(root)
    return {module: imports_of(path.read_text(), module, set(files)) for module, path in files.items()}


def layer(module: str) -> int | None:
    return next((i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")), None)


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes against the layers, or from one stage to another, or of an edge
    library by the core."""
    problems = []
    for module, imported in graph.items():
        own = layer(module)
        for name in sorted(imported):
            if name.startswith("pipeline."):
                other = layer(name)
                if own is not None and other is not None and other > own:
                    problems.append(f"{module} imports {name}, a later layer ({LAYERS[other]} after {LAYERS[own]})")
                if name.startswith("pipeline.stages.") and name.rsplit(".", 1)[1] in STAGES and name != module:
                    problems.append(f"{module} imports the stage {name}: what stages share belongs in pipeline.core")
            elif own == 0 and name in EDGE_LIBRARIES:
                problems.append(f"{module} (the core) imports {name}")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of project modules that import each other (directly or through others, in
    functions too), each as the modules along it, its first module repeated at its end. A package
    importing its own modules is not one: its `__init__` runs first either way."""
    edges = {module: sorted(name for name in imported if name in graph and not module.startswith(name + "."))
             for module, imported in graph.items()}
    found, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            circle = path[path.index(module):] + [module]
            start = circle.index(min(circle[:-1]))  # each circle once, from its smallest module
            rotated = circle[start:-1] + circle[:start] + [circle[start]]
            if rotated not in found:
                found.append(rotated)
            return
        if module in done:
            return
        path.append(module)
        for name in edges[module]:
            visit(name)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    return found


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every project module it imports, directly or not, with the packages whose
    `__init__` runs on the way."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen or module not in graph:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += [name for name in graph[module] if name.startswith("pipeline")]
    return seen


def missing_deps(stages: dict, graph: dict[str, set[str]], files: dict[str, Path], root: Path = REPO) -> list[str]:
    """For each stage of dvc.yaml's `stages`, the project files its `python -m` command imports
    that no dep (a file, or a folder holding it) covers."""
    problems = []
    for name, stage in stages.items():
        command = stage["cmd"].split()
        assert command[:2] == ["python", "-m"], f"stage {name}: expected `python -m <module>`, got {stage['cmd']!r}"
        deps = [Path(dep) for dep in stage.get("deps", [])]
        for module in sorted(closure(graph, command[2])):
            path = files[module].relative_to(root)
            if not any(path == dep or dep in path.parents for dep in deps):
                problems.append(f"stage {name} imports {path} but dvc.yaml does not list it")
    return problems


def test_imports_go_one_way_through_the_layers_and_no_stage_imports_another():
    graph = import_graph()
    assert all(layer(module) is not None for module in graph if module != "pipeline"), "a module outside the layers"
    assert layering_violations(graph) == []


def test_the_layering_check_finds_a_back_import_a_stage_to_stage_import_and_mlflow_in_the_core():
    graph = import_graph()
    graph["pipeline.core.metrics"] = graph["pipeline.core.metrics"] | {"pipeline.tracking.store", "mlflow"}
    graph["pipeline.stages.evaluate"] = graph["pipeline.stages.evaluate"] | {"pipeline.stages.train_vae"}
    problems = layering_violations(graph)
    assert any("pipeline.core.metrics imports pipeline.tracking.store" in p for p in problems)
    assert any("(the core) imports mlflow" in p for p in problems)
    assert any("imports the stage pipeline.stages.train_vae" in p for p in problems)


def test_no_modules_import_each_other_in_a_circle():
    assert import_cycles(import_graph()) == []


def test_the_circle_check_finds_two_modules_that_import_each_other():
    graph = import_graph()
    graph["pipeline.tools.dvc_cli"] = graph["pipeline.tools.dvc_cli"] | {"pipeline.tools.sweep"}
    circles = import_cycles(graph)
    assert ["pipeline.tools.dvc_cli", "pipeline.tools.sweep", "pipeline.tools.dvc_cli"] in circles
    # and the longer ones through the executors, which sweep imports and which import dvc_cli
    assert all({"pipeline.tools.dvc_cli", "pipeline.tools.sweep"} <= set(circle) for circle in circles)
    assert len(circles) == 3


def test_every_stage_module_is_a_dvc_stage_and_every_stage_runs_its_module():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {name: stage["cmd"] for name, stage in stages.items()} == {
        name: f"python -m pipeline.stages.{name}" for name in STAGES}
    modules = {p.stem for p in (REPO / "pipeline" / "stages").glob("*.py")} - {"__init__", "cli", "paths", "params_guard"}
    assert modules == set(STAGES)


def test_dvc_yaml_lists_every_project_file_each_stage_imports():
    files = module_files()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert missing_deps(stages, import_graph(), files) == []


def outputs_and_caching(stages: dict) -> dict[str, bool]:
    """Every output of dvc.yaml's `stages` (outs, metrics, plots) and whether DVC caches it."""
    found = {}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, props = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                found[path] = (props or {}).get("cache", True)
    return found


def test_git_keeps_exactly_the_outputs_dvc_does_not_cache():
    """The `cache: false` outputs (the headline metrics, the per-epoch CSVs) are committed, so a
    clone compares with them on any machine; every other output is DVC's alone, ignored by git."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outputs = outputs_and_caching(stages)
    assert [path for path, cached in outputs.items() if not cached]  # some are kept by git
    ignored = set(run_git("check-ignore", *outputs, cwd=REPO).stdout.split())
    assert {path for path, cached in outputs.items() if cached != (path in ignored)} == set()


def test_the_deps_check_names_a_file_a_stage_imports_that_dvc_yaml_leaves_out():
    files = module_files()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages["train_vae"]["deps"] = [dep for dep in stages["train_vae"]["deps"] if dep != "pipeline/core/training.py"]
    assert missing_deps(stages, import_graph(), files) == [
        "stage train_vae imports pipeline/core/training.py but dvc.yaml does not list it"]
    # a folder covers what is inside it
    stages["train_vae"]["deps"].append("pipeline/core")
    assert missing_deps(stages, import_graph(), files) == []


@pytest.mark.parametrize("source, expected", [
    ("from pipeline.core import latent", {"pipeline.core.latent"}),
    ("def f():\n    from pipeline.tracking import names, store\n", {"pipeline.tracking.names", "pipeline.tracking.store"}),
    ("from pipeline.core.config import Config", {"pipeline.core.config"}),
    ("import mlflow.pytorch", {"mlflow"}),
    ("from . import numbers", {"pipeline.tools.report.numbers"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.core.config import Config\n", {"typing"}),
])
def test_imports_are_read_in_every_form(source, expected):
    known = set(module_files())
    assert imports_of(source, "pipeline.tools.report.runs", known) == expected


def test_the_params_a_record_depends_on_are_dvc_yamls():
    """A later stage refuses an upstream row recorded with other values of exactly the params that
    DVC reruns the upstream stages for (each seed's row holds `seed`; `tracking` moves rows, it
    changes no value)."""
    from pipeline.tracking.names import RESULT_DEPENDS_ON

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage, keys in RESULT_DEPENDS_ON.items():
        expected = set()
        for earlier in STAGES[:STAGES.index(stage) + 1]:
            for param in stages[earlier].get("params", []):
                name = {"seeds": "seed"}.get(param, param)
                expected.add(f"{name}." if isinstance(params.get(param), dict) else name)
        assert set(keys) == expected - {"tracking."}, stage
