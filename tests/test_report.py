"""The reflection report built from a few tiny runs: every number matches the run it cites, every
figure it links exists, and it adapts to one run or many."""

from __future__ import annotations

import json
import math
import re
import subprocess

import mlflow
import numpy as np
import pytest
from conftest import RESULT_STAGES, Project, copy_project

from pipeline.core import stats
from pipeline.tools import compare
from pipeline.tools.report import claims, numbers, runs, sections
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
    headings = ["## Answers", "## How the claims are tested", "## 1. Why the reparameterisation trick",
                "## 2. How the KL term", "## 3. How latent_dim", "## 4. The VAE decoder as a GAN generator",
                "## 5. The VAE encoder and the GAN discriminator", "## 6. Strengths and weaknesses",
                "## How far a rerun should agree", "## Appendix: the runs"]
    assert [text.index(h) for h in headings] == sorted(text.index(h) for h in headings)  # answers first
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
    assert "Only latent_dim" not in text
    # Every claim has a verdict in the answers and a table of its comparisons in its section.
    answers = text[text.index("## Answers"):text.index("## How the claims")]
    verdicts = re.findall(r"\| \*\*(held|contradicted|cannot tell)", answers)
    assert len(verdicts) >= 12 and text.count("| comparison | difference (95% CI) |") == len(verdicts)
    # latent_dim 4 has two seeds: its comparisons are paired; beta 4 has one seed: no interval, so the
    # beta claims cannot tell, and the one-seed limit is said once, with the command that lifts it.
    assert "paired over 2 seeds" in text
    beta = answers[answers.index("| Beta"):]
    assert beta.startswith("| Beta | a larger beta gives less KL. | **cannot tell at 1 seed** at beta 1.0 → 4.0")
    assert text.count("configuration(s) here have one seed") == 1 and text.count("dvc exp run -S latent_dim=N") == 1
    assert "A rerun with 2 new seeds" in text and "95% prediction interval for a rerun's mean" in text
    # No verdict sentence says other than its own table: each claim's verdict agrees with the outcomes below it.
    stated = re.findall(r"Verdict: \*\*(held|contradicted|cannot tell)[^\n]*\n\n((?:\|[^\n]*\n)+)", text)
    assert len(stated) >= 10
    for verdict, table in stated:
        outcomes = [row.rstrip(" |").rsplit("| ", 1)[1] for row in table.splitlines()[2:]]
        assert {"held": set(outcomes) == {"held"}, "contradicted": "contradicted" in outcomes,
                "cannot tell": "contradicted" not in outcomes and set(outcomes) != {"held"}}[verdict], (verdict, table)


@pytest.mark.slow
def test_every_number_matches_the_run_it_cites(reported):
    numbers = json.loads((reported.root / "outputs/report/reflection.numbers.json").read_text())
    from statsmodels.stats.multitest import multipletests

    store = client(reported)
    runs = {r.info.run_id: r for r in reported.runs("mnist5k")}

    def metric(run_id: str, key: str, step: int | None = None) -> float:
        if step is None:
            return runs[run_id].data.metrics[key]
        (value,) = [p.value for p in store.get_metric_history(run_id, key) if p.step == step]
        return value

    def sides(entry: dict) -> tuple[dict[int, float], dict[int, float] | float]:
        """A difference's two sides recomputed from the store: a's runs by seed, b's or the fixed value."""
        a = {int(s): metric(r, entry["a_key"]) for s, r in entry["a"].items()}
        if "b_value" in entry:
            return a, entry["b_value"]
        return a, {int(s): metric(r, entry["b_key"]) for s, r in entry["b"].items()}

    def pairing(member: dict) -> float:
        paired, welch = stats.difference(*sides(member)), stats.difference(*sides(member), pair=False)
        if not (paired.paired and paired.has_interval and welch.has_interval) or welch.half_width == 0:
            return math.nan
        return paired.half_width / welch.half_width

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
        elif entry["kind"] in ("mean", "half_width"):
            interval = stats.mean_interval([metric(run_id, entry["key"]) for run_id in entry["run_ids"]])
            expected = interval.mean if entry["kind"] == "mean" else interval.half_width
        elif entry["kind"] == "median":
            expected = float(np.median([metric(run_id, entry["key"]) for run_id in entry["run_ids"]]))
        elif entry["kind"] == "sd":
            values = [metric(run_id, entry["key"]) for run_id in entry["run_ids"]]
            expected = float(np.std(values, ddof=1))
        elif entry["kind"] == "prediction":
            interval = stats.prediction_interval([metric(run_id, entry["key"]) for run_id in entry["run_ids"]])
            expected = {"low": interval.low, "high": interval.high}[entry["bound"]]
        elif entry["kind"] == "difference":
            interval = stats.difference(*sides(entry), pair=entry["pair"])
            expected = {"mean": interval.mean, "low": interval.low, "high": interval.high}[entry["bound"]]
        elif entry["kind"] == "change":
            interval = stats.mean_interval([metric(r, entry["key"], entry["to_step"])
                                            - metric(r, entry["key"], entry["from_step"])
                                            for r in entry["run_ids"].values()])
            expected = {"mean": interval.mean, "low": interval.low, "high": interval.high}[entry["bound"]]
        elif entry["kind"] == "p_holm":
            family = [stats.p_value(*sides(member), pair=member["pair"]) for member in entry["family"]]
            tested = [i for i, p in enumerate(family) if not math.isnan(p)]
            expected = dict(zip(tested, multipletests([family[i] for i in tested], method="holm")[1]))[entry["index"]]
        elif entry["kind"] == "pairing":
            expected = float(np.nanmedian([pairing(member) for member in entry["family"]]))
        else:
            raise AssertionError(f"unknown kind {entry['kind']}")
        assert entry["value"] == pytest.approx(expected, rel=1e-12), entry
        for name in ("values", "a_values", "b_values"):  # each seed's value, as the store holds it
            if name in entry:
                runs_of = entry.get("run_ids") if name == "values" else entry[name[0]]
                ids = runs_of.values() if isinstance(runs_of, dict) else runs_of
                assert sorted(entry[name].values()) == sorted(metric(r, entry.get("key") or entry[f"{name[0]}_key"])
                                                              for r in ids) or entry["kind"] == "change", entry
        # The text shows that value, rounded to the digits it shows (a half-width, sd, p to two).
        rel = 5e-2 if entry["kind"] in ("half_width", "sd", "p_holm", "pairing") else 5e-3
        assert float(entry["text"]) == pytest.approx(expected, rel=rel, abs=5e-4), entry
    assert kinds == {"metric", "param", "count", "mean", "half_width", "sd", "prediction", "difference", "change",
                     "p_holm", "pairing", "median"}


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
    assert text.count("configuration(s) here have one seed") == 1 and "dvc exp run -S latent_dim=N" in text
    assert "no prediction can be given for a rerun" in text and "no spread to show" in text
    assert "**held**" not in text and "**contradicted**" not in text  # one seed decides nothing
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
    # Left out and named: the run at another latent_dim and beta at once; not the older run of seed 0.
    assert [(r.run_id, keys) for r, keys in study.other] == [("beta4ld8", ["latent_dim", "vae.beta"])]
    epochs = runs.select([*rows, record("epochs", 7, **{"gan.epochs": "3"})], reference, "x")
    assert [(r.run_id, keys) for r, keys in epochs.other] == [("epochs", ["gan.epochs"]),
                                                              ("beta4ld8", ["latent_dim", "vae.beta"])]
    assert runs.select(rows, {**reference, "seed": "7"}, "x").main.run_id == "new4"  # another seed: its lowest
    with pytest.raises(runs.ReportError, match="no complete run with the settings of params.yaml"):
        runs.select(rows, {**reference, "gan.epochs": "7"}, "x")


KEY = "eval/scores/vae_prior/fid"


def configuration(values: dict[int, float], name: str = "c", key: str = KEY) -> Configuration:
    made = [Row(f"{name}-{seed}", f"run{seed}", "FINISHED", seed, {"seed": str(seed)}, {key: value}, {})
            for seed, value in values.items()]
    return Configuration(name, tuple(made))


def steps(*columns: list[float]) -> list[Configuration]:
    """Configurations from value lists, one per configuration, seeds 0, 1, 2, ... in order."""
    return [configuration(dict(enumerate(values)), f"c{i}") for i, values in enumerate(columns)]


def name(c: Configuration) -> str:
    return c.id


def test_a_trend_the_data_contradicts_is_contradicted_and_names_the_cells():
    # Falls from c0 to c1 at every seed, then rises from c1 to c2 at every seed (by about 20, seed noise 1).
    configs = steps([100.0, 110.0, 95.0, 105.0], [80.0, 91.0, 74.0, 86.0], [100.0, 112.0, 95.0, 104.0])
    claim = claims.trend("t", "it falls.", configs, KEY, -1, name, name)
    assert [cell.outcome for cell in claim.cells] == [claims.HELD, claims.CONTRADICTED]
    assert claim.verdict == claims.CONTRADICTED
    said = sections.verdict(numbers.Numbers(source=None), claim)
    assert said.startswith("**contradicted** at c1 → c2; held at c0 → c1")


def test_a_trend_that_holds_at_every_step_is_held():
    configs = steps([100.0, 110.0, 95.0], [80.0, 91.0, 74.0], [60.0, 70.0, 55.0])
    claim = claims.trend("t", "it falls.", configs, KEY, -1, name, name)
    assert claim.verdict == claims.HELD and all(cell.p_adjusted < 0.05 for cell in claim.cells)
    assert sections.verdict(numbers.Numbers(source=None), claim).startswith("**held** at every comparison")


def test_a_difference_within_the_seed_noise_is_one_the_runs_cannot_tell():
    configs = steps([100.0, 110.0, 95.0], [104.0, 103.0, 96.0])  # paired differences +4, -7, +1
    claim = claims.trend("t", "it falls.", configs, KEY, -1, name, name)
    assert claim.cells[0].interval.includes(0.0) and claim.verdict == claims.CANNOT_TELL
    cited = numbers.Numbers(source=None)
    assert sections.verdict(cited, claim).startswith("**cannot tell at 3 seeds** at c0 → c1")
    # One seed a side: no interval, no test, and still "cannot tell", never a verdict from one draw.
    single = claims.trend("t", "it falls.", steps([100.0], [50.0]), KEY, -1, name, name)
    assert math.isnan(single.cells[0].p) and single.verdict == claims.CANNOT_TELL


def test_equal_at_every_seed_contradicts_a_claim_of_a_difference():
    active = configuration({0: 16.0, 1: 16.0, 2: 16.0}, key="active")
    claim = claims.Claim("a", "fewer active units.", [claims.Cell("16", active, "active", -1, against=16.0)])
    assert claim.cells[0].outcome == claims.CONTRADICTED and claim.verdict == claims.CONTRADICTED


def test_the_cells_of_a_claim_are_adjusted_together_by_holm():
    configs = steps([100.0, 110.0, 95.0, 105.0], [80.0, 91.0, 74.0, 86.0], [70.0, 75.0, 71.0, 90.0])
    claim = claims.trend("t", "it falls.", configs, KEY, -1, name, name)
    assert [cell.p_adjusted for cell in claim.cells] == pytest.approx(stats.holm([cell.p for cell in claim.cells]))


def test_a_best_that_the_correction_removes_is_not_claimed():
    # c0 is lowest. Against c1 and against c2, each alone, the paired test passes (p 0.038 and 0.032);
    # in one family with c3, Holm's step-down takes both above 0.05, so c0 cannot be named best.
    configs = steps([100.0, 110.0, 95.0, 105.0], [103.0, 113.5, 95.5, 109.0], [102.0, 114.0, 96.0, 108.5],
                    [140.0, 150.0, 137.0, 146.0])
    found = claims.best("b", "one is best.", configs, KEY, name)
    c1, c2, c3 = found.claim.cells
    assert found.best is configs[0] and (c1.label, c2.label) == ("c1 − c0", "c2 − c0")
    assert c1.p < 0.05 <= c1.p_adjusted and c2.p < 0.05 <= c2.p_adjusted and c3.outcome == claims.HELD
    assert found.tied == configs[1:3] and found.claim.verdict == claims.CANNOT_TELL
    cited = numbers.Numbers(source=None)
    said = sections.verdict(cited, found.claim)
    assert "cannot tell at 4 seeds** which is best" in said and "cannot tell it from c1, c2" in said
    assert "better than every other" not in said
    # Clearly apart from every other: named best.
    clear = claims.best("b", "one is best.", steps([100.0, 110.0, 95.0], [130.0, 141.0, 124.0], [150.0, 161.0, 146.0]),
                        KEY, name)
    assert clear.tied == [] and sections.verdict(cited, clear.claim).startswith("**held**: c0 is better than every other")


def test_a_claim_keeps_pairing_where_it_narrows_the_intervals_and_falls_back_to_welch_where_it_widens():
    # A seed effect both sides share: paired differences are steady, pairing narrows.
    shared = steps([100.0, 130.0, 90.0, 120.0], [90.0, 121.0, 79.0, 111.0])
    narrowed = claims.trend("t", "it falls.", shared, KEY, -1, name, name)
    assert narrowed.pairing < 1 and narrowed.paired and narrowed.cells[0].interval.paired
    # Seeds that move the two sides in opposite directions: pairing widens, the claim uses Welch.
    opposite = steps([100.0, 130.0, 90.0, 120.0], [120.0, 80.0, 125.0, 85.0])
    widened = claims.trend("t", "it falls.", opposite, KEY, -1, name, name)
    assert widened.pairing > 1 and not widened.paired
    cell = widened.cells[0]
    assert not cell.interval.paired and cell.interval == stats.welch_interval(
        list(opposite[1].values(KEY).values()), list(opposite[0].values(KEY).values()))
    assert cell.p == pytest.approx(stats.p_value(opposite[1].values(KEY), opposite[0].values(KEY), pair=False))


def test_a_cell_cites_its_interval_and_adjusted_p_with_every_seeds_value():
    configs = steps([100.0, 110.0, 95.0], [80.0, 91.0, 74.0], [60.0, 70.0, 55.0])
    claim = claims.trend("t", "it falls.", configs, KEY, -1, name, name)
    cited = numbers.Numbers(source=None)
    text, p = cited.cell(claim, claim.cells[1])
    interval = stats.difference(configs[2].values(KEY), configs[1].values(KEY))
    assert text.startswith(f"{numbers.readable(interval.mean)} (95% CI {numbers.readable(interval.low)} to ")
    assert "paired over 3 seeds" in text and p == format(claim.cells[1].p_adjusted, ".2g")
    (entry,) = [e for e in cited.entries if e["kind"] == "p_holm"]
    assert entry["index"] == 1 and [m["a_values"] for m in entry["family"]] == [
        {str(s): v for s, v in c.values(KEY).items()} for c in configs[1:]]


def test_a_half_width_shows_two_significant_digits_without_an_exponent():
    assert [compare.two_digits(v) for v in (146.7, 33.14, 0.0005912, 0.0)] == ["150", "33", "0.00059", "0"]


def test_readable_drops_the_exponent():
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
    """Complete-looking rows with a seed that is not a number, or none (written by other code):
    `make compare` and the report leave them out, name them, and go on with the rest."""
    store = client(reported)
    experiment = store.get_experiment_by_name("mnist5k").experiment_id
    made = []
    for name, params in (("by-hand", {"seed": "one", "latent_dim": "4", "vae.beta": "1.0"}),
                         ("no-seed", {"latent_dim": "4", "vae.beta": "1.0"})):
        run = store.create_run(experiment, run_name=name, tags={"pipeline.stages": "train_vae,train_gan,evaluate"})
        for key, value in params.items():
            store.log_param(run.info.run_id, key, value)
        store.set_terminated(run.info.run_id, "FINISHED")
        made.append(run.info.run_id)
    try:
        for tool, argv in (("compare", ["--csv", str(tmp_path / "c.csv")]), ("report", ["--output", str(tmp_path)])):
            result = reported.call(tool, *argv)
            assert result.returncode == 0, result.stderr
            assert (f"left out 2 row(s) whose params cannot be read: by-hand ({made[0]}): seed = 'one'; "
                    f"no-seed ({made[1]}): no param seed") in result.stderr
    finally:
        for run_id in made:
            store.delete_run(run_id)


@pytest.mark.slow
def test_a_nan_seed_is_left_out_of_its_mean_and_named(reported, tmp_path):
    """One seed's VAE-sample score recorded as NaN (a score that diverged): the report's mean of it
    is the other seed's value, n says 1, and "How the claims are tested" names the value left out,
    where the older code wrote "from one seed a side" with n = 2 and NaN means."""
    from pipeline.tracking.names import HEADLINE_METRICS

    copy = Project(copy_project(reported.root, tmp_path / "project"))
    fid = HEADLINE_METRICS["fid_vae"]
    rows = [r for r in mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy.store}").search_runs(
        [client(copy).get_experiment_by_name("mnist5k").experiment_id])
        if r.data.params.get("latent_dim") == "4" and r.data.params.get("vae.beta") == "1.0"
        and "pipeline.summary_of" not in r.data.tags]
    nan_row = next(r for r in rows if r.data.params["seed"] == "1")
    kept = next(r for r in rows if r.data.params["seed"] == "0").data.metrics[fid]
    client(copy).log_metric(nan_row.info.run_id, fid, float("nan"), step=1)
    copy.call("report", "--output", str(tmp_path / "out"), check=True)
    text = (tmp_path / "out" / "reflection.md").read_text()
    configuration = nan_row.data.tags["pipeline.configuration"]
    assert (f"Values recorded as NaN or infinite are left out, each from its own metric's mean and tests (that "
            f"metric's n counts the other seeds): {sections.literal(f'{configuration} seed 1: {fid} = nan')}.") in text
    cited = json.loads((tmp_path / "out" / "reflection.numbers.json").read_text())
    means = [c for c in cited if c.get("kind") == "mean" and c.get("key") == fid and c.get("values") == {"0": kept}]
    assert means and all(c["value"] == kept for c in means)
