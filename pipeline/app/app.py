"""The explorer: a local web page over the recorded runs. `make app` serves it on
http://127.0.0.1:8501 (`python -m streamlit run pipeline/app/app.py` from the project root).

Pages (sidebar, or `?page=<name>` in the address): Runs, Generate, Reconstruct, Latent space,
Train. The logic lives in `pipeline.app.explorer`; this file only draws it.
"""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from pipeline.app import explorer, training_job
from pipeline.core.config import load_config, resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.images import image_grid
from pipeline.tools import compare
from pipeline.tracking import store

PAGES = ("Runs", "Generate", "Reconstruct", "Latent space", "Train")
SHOWN = ["run", "dataset", "latent_dim", "beta", "seed", "recon_mse", "kl", "neg_elbo", "fid_vae", "fid_decoder",
         "fid_scratch", "dvc_exp", "started", "run_id"]
IMAGE_WIDTH = 84  # pixels per single image on the page
SLIDER_RANGE = 4.0  # latent sliders run over [-4, 4]: the prior's mass is within about 3


@st.cache_resource(show_spinner="Loading the run's models from MLflow ...", max_entries=4)
def loaded(uri: str, run_id: str, device: str) -> explorer.LoadedRun:  # uri: the cache key's store
    return explorer.load_run(run_id, device)


def literal(text: str) -> str:
    """Text from a row or from DVC (an experiment or run name) as an inline code span, which
    Streamlit shows as it is: no Markdown, LaTeX, emoji or colour directive of it is read. The
    fence is longer than any run of backticks in the text, so none of them can close it."""
    text = " ".join(str(text).split())
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


@st.cache_data(show_spinner="Reading the runs ...", max_entries=8, ttl=300)
def tables(uri: str, experiment: str, version: tuple) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs and configurations tables, read again only when the store's rows change (`version`,
    explorer.rows_version) or after five minutes: not on every click."""
    return explorer.tables(experiment)


def no_runs(experiment: str) -> None:
    st.info(f"No complete run is recorded in experiment {literal(experiment)} yet. Make one with `make repro` "
            "(about a minute on 2 CPU cores) or on the **Train** page, then come back.")


def choose_run(table: pd.DataFrame) -> str:
    """The sidebar's pickers: a configuration, then one of its seeds (its run); a run that just
    finished training is preselected."""
    if st.session_state.get("run_id") not in set(table["run_id"]):
        st.session_state["run_id"] = table["run_id"].iloc[0]
    chosen = table[table["run_id"] == st.session_state["run_id"]].iloc[0]
    newest_first = list(dict.fromkeys(table["configuration"]))
    labels = {}
    for configuration in newest_first:
        rows = table[table["configuration"] == configuration]
        labels[configuration] = (f"latent_dim {rows['latent_dim'].iloc[0]} · beta {rows['beta'].iloc[0]:g} · "
                                 f"{len(rows)} seed{'s' if len(rows) != 1 else ''} · {configuration}")
    if st.session_state.get("configuration") not in labels or (
            st.session_state.get("configuration") != chosen["configuration"]
            and st.session_state.get("followed_run") != st.session_state["run_id"]):
        st.session_state["configuration"] = chosen["configuration"]  # follow a run chosen elsewhere
    configuration = st.sidebar.selectbox("Configuration", list(labels), format_func=labels.get, key="configuration")
    rows = table[table["configuration"] == configuration].sort_values("seed")
    seeds = {row.run_id: f"seed {row.seed} · {row.run} · {row.run_id[:8]}" for row in rows.itertuples()}
    if st.session_state["run_id"] not in seeds:
        st.session_state["run_id"] = next(iter(seeds))
    run_id = st.sidebar.selectbox("Model seed", list(seeds), format_func=seeds.get, key="run_id")
    st.session_state["followed_run"] = run_id
    return run_id


PAGE_ROWS = 200  # rows of the runs table shown at once


def runs_page(table: pd.DataFrame, configurations: pd.DataFrame, experiment: str) -> None:
    st.header("Configurations")
    st.caption(f"Each configuration of experiment {literal(experiment)} over its seeds: {compare.AGGREGATE_NOTE}. "
               "A difference between two configurations is real only where their intervals say so; "
               "`make compare` prints this table, `make ui` shows it as summary runs with their seeds nested.")
    st.dataframe(configurations, hide_index=True)
    st.header("Recorded runs")
    st.caption(f"Complete rows of experiment {literal(experiment)} in {literal(store.shown_uri())}, newest first, "
               "one per seed. `make ui` opens the same rows in the MLflow UI; "
               "`python -m pipeline.tools.compare --runs` prints them.")
    pages = (len(table) - 1) // PAGE_ROWS + 1
    page = st.number_input(f"Page (of {pages}, {PAGE_ROWS} rows each)", 1, pages, 1) if pages > 1 else 1
    st.dataframe(table[SHOWN].iloc[(page - 1) * PAGE_ROWS : page * PAGE_ROWS], hide_index=True)


def generate_page(run: explorer.LoadedRun) -> None:
    st.header("Generate")
    st.caption("Every decoder of the run (the model seed picked in the sidebar) decodes the same draws of "
               "z ~ N(0, I), drawn from the noise seed.")
    seed = st.number_input("Noise seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="seed")
    count = st.slider("Samples", min_value=8, max_value=64, value=32, step=8, key="count")
    samples = explorer.generate(run, count, int(seed))
    for column, (name, images) in zip(st.columns(len(samples)), samples.items(), strict=True):
        show(image_grid(images), caption=name, width="stretch", where=column)


def reconstruct_page(run: explorer.LoadedRun) -> None:
    st.header("Reconstruct")
    st.caption("Test images beside their reconstructions from the posterior mean, with each image's "
               "mean squared error per pixel (the evaluation's `recon_mse_per_pixel`).")
    classes = ["any", *sorted({int(c) for c in run.y_test})]
    left, middle, right = st.columns(3)
    wanted = left.selectbox("Class", classes, key="class")
    pool = [i for i, c in enumerate(run.y_test) if wanted == "any" or c == wanted]
    start = int(middle.number_input(f"From the n-th of these {len(pool)} test images", min_value=0,
                                    max_value=len(pool) - 1, value=0, step=1, key=f"start-{wanted}"))
    count = right.slider("How many", min_value=1, max_value=32, value=8, key="how_many")
    picked = pool[start : start + count]
    reconstructed, mse = explorer.reconstruct(run.vae, run.x_test[picked])
    st.write(f"Mean squared error per pixel over these {len(picked)} images: **{mse.mean():.4f}**")
    show(run.x_test[picked].cpu(), caption=[f"#{i} (class {run.y_test[i]})" for i in picked])
    show(reconstructed, caption=[f"MSE {m:.4f}" for m in mse.tolist()])


def show(images, caption=None, width: int = IMAGE_WIDTH, where=st) -> None:
    """Images (N, C, H, W) as a row, or one (C, H, W) image or grid, losslessly (PNG)."""
    picture = explorer.as_picture(images)
    if images.dim() == 4:
        picture = list(picture)
    where.image(picture, caption=caption, width=width, output_format="PNG")


def test_image_input(label: str, run: explorer.LoadedRun, default: int, key: str) -> int:
    return int(st.number_input(label, min_value=0, max_value=len(run.y_test) - 1, value=default, step=1, key=key))


def latent_page(run: explorer.LoadedRun) -> None:
    st.header("Latent space")
    st.subheader("Interpolate between two test images")
    left, right, steps_column = st.columns(3)
    with left:
        a = test_image_input("From test image", run, 0, "from")
    with right:
        b = test_image_input("To test image", run, 1, "to")
    with steps_column:
        steps = st.slider("Steps", min_value=3, max_value=20, value=10, key="steps")
    path = explorer.interpolate(run.vae, run.x_test[a], run.x_test[b], steps)
    show(path, caption=[f"t = {i / (steps - 1):.2f}" for i in range(steps)])

    st.subheader("Move along the most active dimensions")
    base = test_image_input("Start from test image", run, 0, "base")
    mean = explorer.latent_means(run.vae, run.x_test[base : base + 1])[0]
    z = mean.clone()
    dims = run.most_active(min(5, run.latent_dim))
    columns = st.columns([3, 1])
    with columns[0]:
        for dim in dims:
            z[dim] = st.slider(f"z[{dim}] (KL {run.kl_per_dim[dim]:.2f} nats)", -SLIDER_RANGE, SLIDER_RANGE,
                               float(mean[dim].clamp(-SLIDER_RANGE, SLIDER_RANGE)), step=0.05,
                               key=f"dim-{run.run_id}-{base}-{dim}")
    with columns[1]:
        show(run.x_test[base].cpu(), caption=f"test image #{base}")
        show(explorer.decode(run.vae.decoder, z)[0], caption="decoded")

    if run.latent_dim == 2:
        plane_section(run)
    else:
        st.caption(f"The latent plane with a live decoder is shown for runs with latent_dim 2; this one has "
                   f"{run.latent_dim}. `dvc exp run -S latent_dim=2` (or the Train page) makes one.")


def plane_section(run: explorer.LoadedRun) -> None:
    """latent_dim 2: the test images' means by class; a click or the sliders pick the decoded point."""
    import altair as alt

    st.subheader("The latent plane")
    means = explorer.latent_means(run.vae, run.x_test)
    points = pd.DataFrame({"z1": means[:, 0].numpy(), "z2": means[:, 1].numpy(),
                           "class": [str(c) for c in run.y_test]})
    keys = (f"z1-{run.run_id}", f"z2-{run.run_id}")
    for key in keys:
        st.session_state.setdefault(key, 0.0)
    picked = alt.selection_point(name="picked", fields=["z1", "z2"], on="click", nearest=True)
    scatter = alt.Chart(points).mark_circle(size=25).encode(x="z1", y="z2", color="class:N",
                                                            tooltip=["class", "z1", "z2"]).add_params(picked)
    here = pd.DataFrame({"z1": [st.session_state[keys[0]]], "z2": [st.session_state[keys[1]]]})
    marker = alt.Chart(here).mark_point(shape="cross", size=300, color="black", strokeWidth=3).encode(x="z1", y="z2")
    left, right = st.columns([3, 1])
    with left:
        event = st.altair_chart(scatter + marker, on_select="rerun", key=f"plane-{run.run_id}")
    clicked = (event.selection.get("picked") or [None])[0] if event else None
    if clicked and clicked != st.session_state.get("clicked"):
        # A new click moves the sliders to the clicked point (before they are drawn).
        st.session_state["clicked"] = clicked
        for key, axis in zip(keys, ("z1", "z2"), strict=True):
            st.session_state[key] = max(-SLIDER_RANGE, min(SLIDER_RANGE, float(clicked[axis])))
    with right:
        z1 = st.slider("z1", -SLIDER_RANGE, SLIDER_RANGE, step=0.05, key=keys[0])
        z2 = st.slider("z2", -SLIDER_RANGE, SLIDER_RANGE, step=0.05, key=keys[1])
        show(explorer.decode(run.vae.decoder, [z1, z2])[0], caption=f"decoded at ({z1:.2f}, {z2:.2f})",
             width=2 * IMAGE_WIDTH)


def train_page() -> None:
    st.header("Train")
    st.caption("Runs the whole pipeline as a DVC experiment (`dvc exp run --temp`) with these params and "
               "params.yaml's others; the stages record into the same MLflow store. One training at a time.")
    config = load_config()
    defaults = {"latent_dim": config.latent_dim, "vae.epochs": config.vae.epochs,
                "vae.beta": config.vae.beta, "gan.epochs": config.gan.epochs}
    with st.form("train"):
        seeds = st.text_input("seeds (trained together)", value=", ".join(map(str, config.seeds)), key="train-seeds")
        settings = {name: st.number_input(name, min_value=0.0 if isinstance(value, float) else 0, value=value,
                                          step=0.25 if isinstance(value, float) else 1, key=f"train-{name}")
                    for name, value in defaults.items()}
        submitted = st.form_submit_button("Start training")
    if submitted:
        try:
            chosen = {k: v for k, v in settings.items() if v != defaults[k] or k == "latent_dim"}
            seed_list = training_job.parse_seeds(seeds)
            if seed_list != list(config.seeds):
                chosen["seeds"] = seed_list
            name = training_job.start_training(chosen)
            st.success(f"Started DVC experiment {literal(name)}.")
        except training_job.TrainingBusy as error:
            st.warning(f"Not started: {error}.")
        except PipelineError as error:
            st.error(f"Not started: {error}")
    status = training_job.training_status()
    st.fragment(run_every=2 if status.state == "running" else None)(training_progress)()


def training_progress() -> None:
    status = training_job.training_status()
    if status.state == "idle":
        st.caption("No training started from here yet.")
        return
    st.subheader(f"{literal(status.name)}: {status.state}")
    st.progress(status.progress, text=f"{status.activity} · {status.seconds:.0f} s")
    with st.expander("Log", expanded=status.state in ("failed", "interrupted")):
        st.code(status.log_tail or "(no output yet)", language=None)
    if status.state == "running":
        return
    if st.session_state.get("seen_job") != status.name:
        # The job ended since this page last looked: refresh the whole page (the run list included).
        st.session_state["seen_job"] = status.name
        if status.state == "finished":
            st.session_state["job_result"] = training_job.training_result(status.name)
            st.session_state["preselect"] = st.session_state["job_result"][0]
        st.rerun(scope="app")
    if status.state == "finished":
        run_id, reused = st.session_state.get("job_result", (None, False))
        if run_id is None:
            st.warning("Finished, but no result row was found for it (see the log).")
        elif reused:
            st.success(f"Finished: these params were computed before, so DVC restored their outputs and "
                       f"recorded nothing new; their run is the earlier {run_id} "
                       "(selected in the sidebar of the other pages).")
        else:
            st.success(f"Finished: its runs are in the list, its first seed's ({run_id}) selected in the sidebar of "
                       "the other pages.")
    elif status.state == "failed":
        st.error(f"The training failed (exit {status.returncode}); the log above says why.")
    else:
        st.error("The training ended without an exit code (it was killed); start it again.")


def main() -> None:
    st.set_page_config(page_title="VAE and GAN explorer", layout="wide")
    try:
        config = load_config()
        device = resolve_device(config.device)
        store.check_store()  # a damaged, locked or unusable store: its one line, not a traceback
        names = sorted({config.experiment_name, *explorer.experiments()})
    except PipelineError as error:
        st.error(str(error))
        st.stop()
    experiment = st.sidebar.selectbox("Experiment", names, index=names.index(config.experiment_name))
    asked = st.query_params.get("page", PAGES[0])
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(asked) if asked in PAGES else 0, key="page")
    st.sidebar.caption(f"Store: {store.shown_uri()}")
    if page == "Train":
        train_page()
        return
    try:
        table, configurations = tables(store.tracking_uri(), experiment, explorer.rows_version(experiment))
    except PipelineError:  # no store or no such experiment yet
        table = pd.DataFrame()
    if table.empty:
        no_runs(experiment)
        return
    if st.session_state.get("preselect") in set(table["run_id"]):
        st.session_state["run_id"] = st.session_state.pop("preselect")
    run_id = choose_run(table)
    if page == "Runs":
        runs_page(table, configurations, experiment)
        return
    try:
        run = loaded(store.tracking_uri(), run_id, device)
    except PipelineError as error:
        st.error(str(error))
        return
    {"Generate": generate_page, "Reconstruct": reconstruct_page, "Latent space": latent_page}[page](run)


main()
