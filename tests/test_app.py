"""The explorer app (pipeline/app/app.py), driven page by page with Streamlit's AppTest on the tiny
study, its logic (pipeline/app/explorer.py) checked against the runs' recorded metrics, a real
training started from it (pipeline/app/training_job.py), and one real browser rendering its sample
grid."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import mlflow
import pytest
import torch
from conftest import REPO, RESULT_STAGES, Project, free_port, mlflow_runs, open_browser, wait_until_healthy
from streamlit.testing.v1 import AppTest

from pipeline.app import explorer, training_job
from pipeline.core.config import ConfigError
from pipeline.tools.dvc_cli import SweepError

APP = str(REPO / "pipeline" / "app" / "app.py")


@pytest.fixture
def explored(study) -> Project:
    """The study, read only: four complete runs, latent_dim 2 and 4 at seeds 0 and 1, the last
    one latent_dim 4, seed 0 (the params.yaml values)."""
    return study


@pytest.fixture
def inside(monkeypatch):
    """Run the app from a project's folder, as `make app` does."""

    def enter(project: Project) -> Project:
        monkeypatch.chdir(project.root)
        for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
            monkeypatch.delenv(name, raising=False)
        return project

    return enter


def open_app(page: str | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    assert not app.exception, app.exception
    if page:
        app.sidebar.radio(key="page").set_value(page).run()
        assert not app.exception, app.exception
    return app


def run_ids(project: Project) -> dict[tuple[int, int], str]:
    """Complete result rows by (latent_dim, seed)."""
    return {(int(r.data.params["latent_dim"]), int(r.data.params["seed"])): r.info.run_id
            for r in project.runs("mnist5k") if r.data.tags.get("pipeline.stages") == ",".join(RESULT_STAGES)}


def configuration_of(run_id: str) -> str:
    """The configuration of a row of the store the app reads (the project's, `inside`)."""
    from pipeline.tracking.rows import read_row

    return read_row(run_id).configuration


def open_run_page(run_id: str, page: str) -> AppTest:
    """The app with run `run_id` chosen in the sidebar (its configuration, then its seed), on `page`."""
    app = open_app()
    app.sidebar.selectbox(key="configuration").select(configuration_of(run_id)).run()
    app.sidebar.selectbox(key="run_id").select(run_id).run()
    app.sidebar.radio(key="page").set_value(page).run()
    assert not app.exception, app.exception
    return app


def images(app: AppTest) -> list:
    """Every picture on the page, in order: (caption, url). The url names the bytes' hash."""
    return [pair for element in app.image for pair in zip(element.captions, element.value, strict=True)]


def metric(project: Project, run_id: str, key: str) -> float:
    return mlflow.MlflowClient(f"sqlite:///{project.store}").get_run(run_id).data.metrics[key]


# ---------------------------------------------------------------------------------------------
# No runs, and runs that cannot be loaded


def test_without_runs_every_page_says_how_to_make_one_and_creates_no_store(project, inside):
    inside(project)
    app = open_app()
    for page in ("Runs", "Generate", "Reconstruct", "Latent space"):
        app.sidebar.radio(key="page").set_value(page).run()
        assert not app.exception and not app.error
        assert "make repro" in app.info[0].value and "Train" in app.info[0].value
    app.sidebar.radio(key="page").set_value("Train").run()
    assert not app.exception and app.button[0].label == "Start training"
    assert not project.store.exists() and not (project.root / "mlartifacts").exists()


def test_a_damaged_store_is_named_on_the_page_not_a_traceback(project, inside):
    inside(project)
    project.store.write_bytes(b"not a database" * 100)
    app = open_app()
    assert not app.exception and "is damaged (file is not a database)" in app.error[0].value


def test_a_run_whose_models_are_missing_gets_a_message_naming_it(project, inside):
    inside(project)
    client = mlflow.MlflowClient(f"sqlite:///{project.store}")
    experiment = client.create_experiment("mnist5k", artifact_location=(project.root / "mlartifacts").as_uri())
    run = client.create_run(experiment, run_name="vae-gan-ld4-lost",
                            tags={"pipeline.stages": ",".join(RESULT_STAGES)})
    client.log_param(run.info.run_id, "latent_dim", "4")
    client.set_terminated(run.info.run_id, "FINISHED")
    app = open_app("Generate")
    assert not app.exception
    assert run.info.run_id in app.error[0].value and "could not be read from its MLflow artifacts" in app.error[0].value
    assert not images(app)


# ---------------------------------------------------------------------------------------------
# The pages on real runs


@pytest.mark.slow
def test_runs_page_lists_each_run_with_dataset_latent_dim_and_metrics(explored, inside):
    inside(explored)
    page = open_app("Runs")
    configurations, table = (frame.value for frame in page.dataframe)
    assert sorted(configurations["latent_dim"]) == [2, 4] and set(configurations["n"]) == {2}
    ids = run_ids(explored)
    assert sorted(table["latent_dim"]) == [2, 2, 4, 4] and set(table["dataset"]) == {"mnist5k"}
    assert list(table["run_id"]) == [ids[(4, 1)], ids[(4, 0)], ids[(2, 1)], ids[(2, 0)]]  # newest first
    for row in table.itertuples():
        assert row.neg_elbo == metric(explored, row.run_id, "eval/vae/neg_elbo")
        assert row.fid_decoder == metric(explored, row.run_id, "eval/scores/gan_decoder/fid")


@pytest.mark.slow
def test_generate_shows_every_decoder_from_the_same_noise_and_the_seed_controls_it(explored, inside):
    inside(explored)
    app = open_app("Generate")
    shown = images(app)
    assert [caption for caption, _ in shown] == ["VAE decoder", "GAN from decoder", "GAN from scratch"]
    app.run()
    assert images(app) == shown  # same seed: the same pictures, byte for byte
    app.number_input(key="seed").set_value(7).run()
    changed = images(app)
    assert all(old != new for (_, old), (_, new) in zip(shown, changed, strict=True))
    app.number_input(key="seed").set_value(0).run()
    assert images(app) == shown


@pytest.mark.slow
def test_the_sidebar_picks_a_configuration_then_any_of_its_seeds(explored, inside):
    """The seed picker: each configuration lists its seeds' runs; another seed's decoders draw
    other pictures from the same noise."""
    inside(explored)
    ids = run_ids(explored)
    app = open_app("Generate")
    configurations = app.sidebar.selectbox(key="configuration")  # its options as shown: labels
    assert [label.split(" · ")[-1] for label in configurations.options] == [
        configuration_of(ids[(4, 0)]), configuration_of(ids[(2, 0)])]  # newest first
    assert configurations.options[0].startswith("latent_dim 4 · beta 1 · 2 seeds")
    seeds = app.sidebar.selectbox(key="run_id")
    assert [label.split(" · ")[0] for label in seeds.options] == ["seed 0", "seed 1"]
    assert sorted(label.split(" · ")[-1] for label in seeds.options) == sorted(ids[(4, s)][:8] for s in (0, 1))
    seeds.select(ids[(4, 0)]).run()
    first = images(app)
    app.sidebar.selectbox(key="run_id").select(ids[(4, 1)]).run()
    assert not app.exception and images(app) != first
    app.sidebar.selectbox(key="configuration").select(configuration_of(ids[(2, 0)])).run()
    assert app.sidebar.selectbox(key="run_id").value in (ids[(2, 0)], ids[(2, 1)])


@pytest.mark.slow
def test_generate_feeds_every_decoder_the_same_noise(explored, inside):
    """With a GAN generator that is a copy of the VAE decoder, both must draw identical images:
    only the same noise makes that so."""
    inside(explored)
    run = explorer.load_run(run_ids(explored)[(4, 0)])
    run.generators = {"copy": run.vae.decoder}
    samples = explorer.generate(run, 16, seed=3)
    assert torch.equal(samples["VAE decoder"], samples["GAN from copy"])
    assert not torch.equal(samples["VAE decoder"], explorer.generate(run, 16, seed=4)["VAE decoder"])


@pytest.mark.slow
def test_reconstruct_shows_each_image_with_its_mse_as_the_evaluation_measures_it(explored, inside):
    inside(explored)
    ids = run_ids(explored)
    run = explorer.load_run(ids[(4, 0)])
    _, mse = explorer.reconstruct(run.vae, run.x_test)
    # The app's models and test images are the run's: its mean MSE is the evaluation's.
    assert mse.mean().item() == pytest.approx(metric(explored, ids[(4, 0)], "eval/vae/recon_mse_per_pixel"), rel=1e-5)
    assert run.kl_per_dim.sum().item() == pytest.approx(metric(explored, ids[(4, 0)], "eval/vae/kl"), rel=1e-4)

    app = open_run_page(ids[(4, 0)], "Reconstruct")
    originals, reconstructions = app.image
    assert originals.captions[:2] == [f"#0 (class {run.y_test[0]})", f"#1 (class {run.y_test[1]})"]
    assert reconstructions.captions == [f"MSE {m:.4f}" for m in mse[:8].tolist()]
    app.selectbox(key="class").select(3).run()
    app.slider(key="how_many").set_value(3).run()
    threes = [i for i, c in enumerate(run.y_test) if c == 3][:3]
    assert app.image[0].captions == [f"#{i} (class 3)" for i in threes]
    assert app.image[1].captions == [f"MSE {mse[i]:.4f}" for i in threes]


@pytest.mark.slow
def test_interpolation_runs_from_one_test_image_to_the_other(explored, inside):
    inside(explored)
    run = explorer.load_run(run_ids(explored)[(4, 0)])
    path = explorer.interpolate(run.vae, run.x_test[0], run.x_test[5], steps=6)
    ends, _ = explorer.reconstruct(run.vae, run.x_test[[0, 5]])
    assert path.shape == (6, *run.x_test.shape[1:])
    torch.testing.assert_close(path[[0, -1]], ends)


@pytest.mark.slow
def test_latent_page_sliders_follow_the_most_active_dimensions_and_decode_live(explored, inside):
    inside(explored)
    ids = run_ids(explored)
    app = open_run_page(ids[(4, 0)], "Latent space")
    run = explorer.load_run(ids[(4, 0)])
    sliders = [s for s in app.slider if s.key.startswith("dim-")]
    assert [int(s.key.rsplit("-", 1)[1]) for s in sliders] == run.most_active(4)
    kl = [float(s.label.split("KL ")[1].split()[0]) for s in sliders]
    assert kl == sorted(kl, reverse=True)
    before = images(app)
    decoded = [url for caption, url in before if caption == "decoded"]
    sliders[0].set_value(2.5).run()
    after = [url for caption, url in images(app) if caption == "decoded"]
    assert after != decoded and images(app)[: len(before) - 1] == before[:-1]  # only the decoded image moved
    assert "shown for runs with latent_dim 2" in " ".join(c.value for c in app.caption)


@pytest.mark.slow
def test_latent_dim_2_shows_the_plane_and_decodes_the_slider_position(explored, inside):
    inside(explored)
    ids = run_ids(explored)
    app = open_run_page(ids[(2, 0)], "Latent space")
    chart = app.get("vega_lite_chart")[0].proto
    assert '"picked"' in chart.spec and chart.selection_mode == ["picked"]  # a click selects a point
    app.slider(key=f"z1-{ids[(2, 0)]}").set_value(1.5).run()
    app.slider(key=f"z2-{ids[(2, 0)]}").set_value(-0.5).run()
    caption, url = images(app)[-1]
    assert caption == "decoded at (1.50, -0.50)"
    app.slider(key=f"z1-{ids[(2, 0)]}").set_value(-1.0).run()
    assert images(app)[-1][1] != url


# ---------------------------------------------------------------------------------------------
# Training from the app


def test_bad_settings_and_a_folder_without_git_start_nothing(project, inside):
    inside(project)
    assert training_job.parse_seeds("0, 1, 2") == [0, 1, 2] == training_job.parse_seeds("[0,1,2]")
    for settings, message in (({"latent_dim": 0}, "latent_dim = 0 is not allowed"),
                              ({"vae.beta": -1.0}, "vae.beta = -1.0 is not allowed"),
                              ({"seeds": training_job.parse_seeds("0, x")}, "seeds = [0, 'x'] is not allowed"),
                              ({"seeds": training_job.parse_seeds("")}, "seeds = [] is not allowed"),
                              ({"vae.lr": 0.1}, "the explorer cannot set vae.lr")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            training_job.start_training(settings)
    with pytest.raises(SweepError, match="git repository"):
        training_job.start_training({"latent_dim": 3})
    assert training_job.training_status().state == "idle" and not (project.root / ".dvc").exists()


def wait_for_training(seconds: float = 300) -> training_job.TrainingStatus:
    deadline = time.monotonic() + seconds
    while training_job.training_status().state == "running" and time.monotonic() < deadline:
        time.sleep(2)
    status = training_job.training_status()
    assert status.state == "finished", status.log_tail
    return status


@pytest.mark.slow
def test_training_from_the_app_records_a_new_run_and_refuses_a_second_at_once(workspace, inside, monkeypatch):
    """After the quick start's `dvc repro`, a training with one GAN epoch (the GAN and the
    evaluation rerun) from the Train page."""
    repo = workspace
    monkeypatch.chdir(repo)
    app = open_app("Train")
    app.number_input(key="train-gan.epochs").set_value(1)
    app.button[0].click().run()
    assert not app.exception and "Started DVC experiment ` app-" in app.success[0].value
    app.button[0].click().run()  # a second request while the first runs
    assert "Not started: a training is already running" in app.warning[0].value
    assert len(list(repo.glob(".dvc/tmp/explorer/train.json"))) == 1

    status = wait_for_training()
    app.run()
    app.run()  # the first run notices the end and reruns the page; the second shows it
    new_runs = {r.data.params["seed"]: r for r in mlflow_runs(repo / "mlflow.db", "mnist5k")
                if r.data.params["gan.epochs"] == "1"}
    assert sorted(new_runs) == ["0", "1"]  # params.yaml's seeds, trained together
    new_run = new_runs["0"]  # the first seed's run is the one the page names and selects
    assert all(r.info.status == "FINISHED" and r.data.tags["dvc.exp_name"] == status.name for r in new_runs.values())
    assert new_run.info.run_id in app.success[0].value
    app.sidebar.radio(key="page").set_value("Runs").run()
    assert app.sidebar.selectbox(key="run_id").value == new_run.info.run_id  # the new run is selected
    assert new_run.info.run_id in set(app.dataframe[1].value["run_id"])

    # The same params again: DVC restores their outputs, records nothing, and the page says so.
    app.sidebar.radio(key="page").set_value("Train").run()
    app.number_input(key="train-gan.epochs").set_value(1)
    app.button[0].click().run()
    wait_for_training()
    app.run()
    app.run()
    assert f"recorded nothing new; their run is the earlier {new_run.info.run_id}" in app.success[0].value
    assert len([r for r in mlflow_runs(repo / "mlflow.db", "mnist5k") if r.data.params["gan.epochs"] == "1"]) == 2


def test_progress_follows_the_stages_and_epochs_of_the_log():
    log = ("Stage 'download' didn't change, skipping\nRunning stage 'train_vae':\n> python -m pipeline.stages.train_vae\n"
           "train_vae: epoch 1/4  train loss 200.0\n")
    assert training_job.progress(log) == (pytest.approx((1 + 0.25) / 5), "train_vae: epoch 1/4")
    log += "Running stage 'train_classifier':\nStage 'train_classifier' is cached\nRunning stage 'train_gan':\n"
    log += "train_gan: decoder epoch 2/2  D(x) 0.5\ntrain_gan: scratch epoch 1/2  D(x) 0.5\n"
    assert training_job.progress(log) == (pytest.approx((3 + 0.75) / 5), "train_gan (scratch): epoch 1/2")
    assert training_job.progress("") == (0.0, "starting")


# ---------------------------------------------------------------------------------------------
# A real browser

@pytest.mark.slow
def test_a_real_browser_renders_the_sample_grid(explored, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    log = tmp_path / "app.log"
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP, "--server.address", "127.0.0.1",
                                   "--server.port", str(port), "--server.headless", "true",
                                   "--browser.gatherUsageStats", "false"],
                                  cwd=explored.root, env=env, stdout=output, stderr=subprocess.STDOUT)
    browser = None
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}/_stcore/health", log.read_text, seconds=60)
        browser = open_browser(tmp_path / "profile")
        browser.get(f"http://127.0.0.1:{port}/?page=Generate")

        def grids_loaded(driver):
            shown = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')
            sizes = [driver.execute_script("return arguments[0].naturalWidth", img) for img in shown]
            return sizes if len(sizes) == 3 and all(size > 0 for size in sizes) else False

        sizes = WebDriverWait(browser, 90, poll_frequency=1).until(grids_loaded)
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "Generate" in text and "VAE decoder" in text and "GAN from decoder" in text
        # A grid of 8 images per row with 2-pixel gaps: 8 * 28 + 9 * 2 pixels wide.
        assert sizes == [8 * 28 + 9 * 2] * 3
        screenshot = tmp_path / "explorer-generate.png"
        browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("EXPLORER_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["EXPLORER_SCREENSHOT"])
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)


def test_a_row_is_read_for_its_data_only_when_the_workspace_lacks_that_data(project):
    from pipeline.core.config import load_config
    from pipeline.core.data import build_splits, content_hash, save_splits
    from pipeline.core.errors import DataError
    from pipeline.tracking.rows import Row

    splits = build_splits(load_config().data, project.root)
    save_splits(project.root / "outputs/data/splits.npz", splits)
    old_row = Row("id", "old", "FINISHED", 0, {"latent_dim": "4"}, {}, {})  # recorded by older code: few params
    assert content_hash(explorer.test_split(old_row, content_hash(splits))) == content_hash(splits)
    with pytest.raises(DataError, match="the run's params are incomplete or malformed .*missing key"):
        explorer.test_split(old_row, "another-hash")
