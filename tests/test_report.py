"""The reflection report built from a few tiny runs: every number matches the run it cites, every
figure it links exists, and it adapts to one run or many."""

from __future__ import annotations

import json
import re
import subprocess

import mlflow
import pytest
from conftest import RESULT_STAGES, Project, copy_project

from pipeline.core import stats
from pipeline.tools import compare
from pipeline.tools.report import numbers, runs, sections
from pipeline.tracking.rows import Configuration, Row


@pytest.fixture(scope="module")
def reported(study, tmp_path_factory) -> Project:
    """A copy of the study (latent_dim 2 and 4 at seeds 0 and 1) with a fifth run, latent_dim 4 at
    beta 4 (seed 0 alone), and the report from them, built with params.yaml back at latent_dim 4,
    beta 1, seeds 0 and 1."""
    project = Project(copy_project(study.root, tmp_path_factory.mktemp("report") / "project"))
    project.write_params({"vae": {"beta": 4.0}, "seeds": [0]})
    for stage in RESULT_STAGES:
        project.call(stage, check=True)
    project.write_params()
    project.call("report", check=True)
    return project


def client(project: Project) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.store}")


def prose(markdown: str) -> str:
    """The report's text without what is not a claim: code, figure links and headings."""
    markdown = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    markdown = re.sub(r"`[^`]*`", " ", markdown)
    markdown = re.sub(r"<code>.*?</code>", " ", markdown)  # names from the rows (sections.literal)
    markdown = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", markdown)
    return "\n".join(line for line in markdown.splitlines() if not line.startswith("#"))


NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w%])")  # not 95%: the chosen confidence


@pytest.mark.slow
def test_report_answers_each_question_and_every_figure_it_links_exists(reported):
    out = reported.root / "outputs/report"
    text = (out / "reflection.md").read_text()
    for heading in ("## The runs", "## 1. Why the reparameterisation trick", "## 2. How the KL term",
                    "## 3. How latent_dim", "## 4. The VAE decoder as a GAN generator",
                    "## 5. The VAE encoder and the GAN discriminator", "## 6. Strengths and weaknesses"):
        assert heading in text
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", text)
    assert len(links) >= 10 and all((out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for link in links)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted({link.split("/")[1] for link in links})
    html = (out / "reflection.html").read_text()
    assert all('<img alt="' in html and f'src="{link}"' in html for link in links)
    # Five runs, named with latent_dim and commit; the sweep and beta branches were taken.
    runs = reported.runs("mnist5k")
    assert len(runs) == 5 and all(sections.literal(r.data.tags["mlflow.runName"]) in text for r in runs)
    assert all(sections.literal(r.data.tags["git.commit"][:8]) in text for r in runs)
    assert "figures/latent_scatter.png" in text and "figures/reconstructions.png" in text
    assert "The KL at beta 4.0 minus at beta 1.0 is" in text and "Only latent_dim" not in text
    # latent_dim 4 has two seeds: its numbers come with an interval, and its two GANs are paired.
    assert "the GAN from the decoder minus the GAN from scratch is" in text and "paired over 2 seeds" in text
    assert "from one seed a side: no interval can be given" in text  # beta 4 has one seed


@pytest.mark.slow
def test_every_number_matches_the_run_it_cites(reported):
    numbers = json.loads((reported.root / "outputs/report/reflection.numbers.json").read_text())
    store = client(reported)
    runs = {r.info.run_id: r for r in reported.runs("mnist5k")}

    def metric(run_id: str, key: str, step: int | None = None) -> float:
        if step is None:
            return runs[run_id].data.metrics[key]
        (value,) = [p.value for p in store.get_metric_history(run_id, key) if p.step == step]
        return value

    kinds = set()
    for entry in numbers:
        kinds.add(entry["kind"])
        if entry["kind"] == "metric":
            expected = metric(entry["run_id"], entry["key"], entry["step"])
        elif entry["kind"] == "param":
            assert entry["text"] == entry["value"] == runs[entry["run_id"]].data.params[entry["key"]]
            continue
        elif entry["kind"] == "count":
            expected = len(entry["run_ids"])
            assert len(set(entry["run_ids"])) == expected
        elif entry["kind"] == "ratio":
            expected = metric(entry["run_id"], entry["key"]) / metric(entry["over_run_id"], entry["over_key"])
        elif entry["kind"] in ("mean", "half_width"):
            interval = stats.mean_interval([metric(run_id, entry["key"]) for run_id in entry["run_ids"]])
            expected = interval.mean if entry["kind"] == "mean" else interval.half_width
        elif entry["kind"] == "difference":
            interval = stats.difference({int(s): metric(r, entry["a_key"]) for s, r in entry["a"].items()},
                                        {int(s): metric(r, entry["b_key"]) for s, r in entry["b"].items()})
            expected = {"mean": interval.mean, "low": interval.low, "high": interval.high}[entry["bound"]]
        elif entry["kind"] == "rises":
            values = [p.value for p in sorted(store.get_metric_history(entry["run_id"], entry["key"]),
                                              key=lambda p: p.step)]
            expected = sum(b > a for a, b in zip(values, values[1:]))
        else:
            raise AssertionError(f"unknown kind {entry['kind']}")
        assert entry["value"] == pytest.approx(expected, rel=1e-12), entry
        # The text shows that value, rounded to the digits it shows (a half-width to two).
        rel = 5e-2 if entry["kind"] == "half_width" else 5e-3
        assert float(entry["text"]) == pytest.approx(expected, rel=rel, abs=5e-4), entry
    assert kinds == {"metric", "param", "count", "ratio", "rises", "mean", "half_width", "difference"}


@pytest.mark.slow
def test_every_number_in_the_text_is_one_the_report_cited(reported):
    text = prose((reported.root / "outputs/report/reflection.md").read_text())
    cited = {entry["text"] for entry in json.loads((reported.root / "outputs/report/reflection.numbers.json").read_text())}
    uncited = [token for token in NUMBER.findall(text) if token not in cited]
    assert uncited == []


@pytest.mark.slow
def test_one_run_report_says_what_a_sweep_would_add(reported, tmp_path):
    store = client(reported)
    rows = [Row.from_mlflow(run) for run in store.search_runs([store.get_experiment_by_name("mnist5k").experiment_id])]
    usable, outdated = runs.usable(rows)
    assert len(usable) == 5 and outdated == []
    reference = {k: v for k, v in usable[0].params.items()}
    only = [r for r in usable if r.latent_dim == 4 and r.beta == 1.0 and r.seed == 0]
    study = runs.select(only, {**reference, "latent_dim": "4", "vae.beta": "1.0", "seed": "0"}, "mnist5k")
    assert [c.rows for c in study.by_latent_dim] == [tuple(only)] == [c.rows for c in study.by_beta]
    assert study.runs == only == [study.main]
    (tmp_path / "figures").mkdir()
    text, cited = sections.build(study, numbers.Source(store, tmp_path / "downloads"), tmp_path / "figures")
    assert "Only latent_dim 4 has been run" in text and "make sweep" in text
    assert "Every run here has beta 1.0" in text and "dvc exp run -S latent_dim=2" in text
    assert "no interval can be given" in text and 'make sweep SEEDS="0 1 2 3 4"' in text
    assert not (tmp_path / "figures/latent_dim.png").exists()
    assert {e["run_id"] for e in cited if "run_id" in e} == {study.main.run_id}


def test_selection_takes_the_newest_run_per_value_and_ignores_other_settings():
    def record(run_id, start, **params):
        base = {"latent_dim": "4", "vae.beta": "1.0", "seed": "0", "device": "auto"}
        return Row(run_id, run_id, "FINISHED", start, {**base, **params}, {}, {})

    reference = {"latent_dim": "4", "vae.beta": "1.0", "seed": "0", "device": "cpu"}
    rows = [record("old4", 1), record("new4", 2), record("ld8", 3, latent_dim="8"), record("seed1", 4, seed="1"),
            record("beta4", 5, **{"vae.beta": "4.0"}), record("beta4ld8", 6, latent_dim="8", **{"vae.beta": "4.0"})]
    study = runs.select(rows, reference, "x")
    assert study.main.run_id == "new4"  # params.yaml's seed, newest
    assert [[r.run_id for r in c.rows] for c in study.by_latent_dim] == [["new4", "seed1"], ["ld8"]]
    assert [[r.run_id for r in c.rows] for c in study.by_beta] == [["new4", "seed1"], ["beta4"]]
    assert runs.select(rows, {**reference, "seed": "7"}, "x").main.run_id == "new4"  # another seed: its lowest
    with pytest.raises(runs.ReportError, match="no complete run with the settings of params.yaml"):
        runs.select(rows, {**reference, "gan.epochs": "7"}, "x")


def configuration(values: dict[int, float], key: str = "eval/scores/vae_prior/fid") -> Configuration:
    made = [Row(f"id{seed}-{value}", f"run{seed}", "FINISHED", seed, {"seed": str(seed)}, {key: value}, {})
            for seed, value in values.items()]
    return Configuration("c", tuple(made))


def said(a: dict[int, float], b: dict[int, float]) -> tuple[str, list[dict]]:
    cited = numbers.Numbers(source=None)
    key = "eval/scores/vae_prior/fid"
    _, text = sections.contrast(cited, configuration(a), key, configuration(b), key, "at 8", "at 16")
    return text, cited.entries


def test_a_difference_whose_interval_includes_zero_is_one_the_runs_cannot_tell():
    text, cited = said({0: 565.0, 1: 708.0, 2: 479.0}, {0: 600.0, 1: 590.0, 2: 560.0})
    interval = stats.difference({0: 565.0, 1: 708.0, 2: 479.0}, {0: 600.0, 1: 590.0, 2: 560.0})
    assert interval.includes(0.0)
    assert text.startswith(f"at 8 minus at 16 is {numbers.readable(interval.mean)} (95% CI ")
    assert "paired over 3 seeds" in text and "the runs cannot tell them apart at these seeds" in text
    assert {e["bound"] for e in cited if e["kind"] == "difference"} == {"mean", "low", "high"}


def test_a_difference_whose_interval_excludes_zero_is_stated_with_its_interval():
    text, _ = said({0: 565.0, 1: 708.0, 2: 479.0}, {0: 444.0, 1: 608.0, 2: 370.0})  # the paired example
    interval = stats.difference({0: 565.0, 1: 708.0, 2: 479.0}, {0: 444.0, 1: 608.0, 2: 370.0})
    assert f"is {numbers.readable(interval.mean)} (95% CI {numbers.readable(interval.low)} to " \
           f"{numbers.readable(interval.high)}, paired over 3 seeds): the interval excludes zero" in text
    assert "cannot tell" not in text


def test_one_seed_a_side_gives_no_interval_and_says_what_a_seed_sweep_adds():
    text, _ = said({0: 565.0}, {0: 444.0})
    assert "from one seed a side: no interval can be given" in text and "make sweep SEEDS=" in text


def test_a_half_width_shows_two_significant_digits_without_an_exponent():
    assert [compare.two_digits(v) for v in (146.7, 33.14, 0.0005912, 0.0)] == ["150", "33", "0.00059", "0"]


def test_rises_counts_setbacks_and_readable_drops_the_exponent():
    assert numbers.rises([5, 4, 4.5, 3, 3.5, 3.6]) == 3 and numbers.rises([3, 2, 1]) == 0
    assert numbers.readable(119729.3) == "119729" and numbers.readable(0.0187815) == "0.01878"
    assert numbers.readable(0.9716, ".3f") == "0.972"


@pytest.mark.slow
def test_no_matching_run_is_refused_and_writes_nothing(reported):
    before = {p: p.stat().st_mtime_ns for p in (reported.root / "outputs/report").rglob("*")}
    reported.write_params({"gan": {"epochs": 3}})
    try:
        result = reported.call("report")
    finally:
        reported.write_params()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no complete run with the settings of params.yaml (not in git)" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in (reported.root / "outputs/report").rglob("*")} == before


@pytest.mark.slow
def test_the_main_configuration_comes_from_the_committed_settings_not_the_last_experiment(reported, tmp_path):
    """In git, an experiment run in the workspace leaves its values in params.yaml: the report still
    picks the study's committed settings and says so; --main-latent-dim chooses another; nothing is
    written outside --output."""
    root = reported.root
    environment = reported.environment({"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"})
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "study"]):
        subprocess.run(["git", *command], cwd=root, env=environment, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    before = {p: p.stat().st_mtime_ns for p in (root / "outputs/report").rglob("*")}
    reported.write_params({"latent_dim": 2})  # as `dvc exp run -S latent_dim=2` leaves it
    try:
        for argv, main in (([], "ld4-beta1-"), (["--main-latent-dim", "2"], "ld2-beta1-")):
            out = tmp_path / main
            result = reported.call("report", "--output", str(out), *argv, env=environment)
            assert result.returncode == 0, result.stderr
            text = (out / "reflection.md").read_text()
            assert f"the settings of `params.yaml` as committed at `{commit}`" in text
            assert re.search(rf"The main configuration, `{main}\w{{8}}`", text)
            assert ("from `--main-latent-dim`" in text) == bool(argv)
    finally:
        reported.write_params()
    assert {p: p.stat().st_mtime_ns for p in (root / "outputs/report").rglob("*")} == before
    assert not (root / "reports").exists()  # the published folder is written only when asked


def test_no_store_is_refused_without_creating_one(project):
    result = project.call("report")
    assert result.returncode == 2 and "there is no MLflow store" in result.stderr
    assert not project.store.exists() and not (project.root / "outputs/report").exists()


@pytest.mark.slow
def test_markup_in_run_names_and_tags_reaches_the_report_as_text(reported, tmp_path):
    """A run name (DVC accepts backticks and angle brackets in experiment names) and tags are shown
    as text in both the Markdown and the HTML page: nothing of them closes a code span or becomes
    an element."""
    store = client(reported)
    experiment = store.get_experiment_by_name("mnist5k").experiment_id
    hostile = {"mlflow.runName": "x`<img src=x onerror=alert(1)>`", "git.commit": "<script>alert(2)</script>",
               "dvc.exp_name": "`**bold**` | <b>cell</b>"}
    runs = store.search_runs([experiment])
    saved = {run.info.run_id: {key: run.data.tags.get(key) for key in hostile} for run in runs}
    try:
        for run in runs:
            for key, value in hostile.items():
                store.set_tag(run.info.run_id, key, value)
        result = reported.call("report", "--output", str(tmp_path))
    finally:
        for run_id, tags in saved.items():
            for key, value in tags.items():
                if value is not None:
                    store.set_tag(run_id, key, value)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "reflection.html").read_text()
    for markup in ("<img src=x", "<script>", "<b>cell", "<strong>bold"):
        assert markup not in page and markup not in (tmp_path / "reflection.md").read_text()
    assert "<code>x`&lt;img src=x onerror=alert(1)&gt;`</code>" in page
    assert "<code>&lt;script&gt;</code>" in page  # the commit column shows the tag's first 8 characters
    assert "<code>`**bold**` | &lt;b&gt;cell&lt;/b&gt;</code>" in page


@pytest.mark.slow
def test_a_row_whose_params_cannot_be_read_is_left_out_and_named(reported, tmp_path):
    """A complete-looking row with a seed that is not a number (written by other code): `make
    compare` and the report leave it out, name it, and go on with the rest."""
    store = client(reported)
    experiment = store.get_experiment_by_name("mnist5k").experiment_id
    run = store.create_run(experiment, run_name="by-hand", tags={"pipeline.stages": "train_vae,train_gan,evaluate"})
    for key, value in (("seed", "one"), ("latent_dim", "4"), ("vae.beta", "1.0")):
        store.log_param(run.info.run_id, key, value)
    store.set_terminated(run.info.run_id, "FINISHED")
    try:
        for tool, argv in (("compare", ["--csv", str(tmp_path / "c.csv")]), ("report", ["--output", str(tmp_path)])):
            result = reported.call(tool, *argv)
            assert result.returncode == 0, result.stderr
            assert f"left out 1 row(s) whose params cannot be read: by-hand ({run.info.run_id}): seed = 'one'" \
                in result.stderr
    finally:
        store.delete_run(run.info.run_id)
