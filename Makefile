# Set-up and entry points. `make repro` and `make test` are the two commands in the README.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Stage commands in dvc.yaml call `python`: the project's environment must come first on PATH.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: repro plots test test-fast lint bench bench-seeds bench-load study sweep compare report default-study ui app clean

# The environment is built once; later runs reuse it (and need no network). The project itself is
# installed editable, so `import pipeline` works from any folder and edits take effect at once.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $@

# `dvc plots show` renders into this template (.dvc/config), which carries its charting library.
PLOTS_TEMPLATE := .dvc/plots/offline.html
$(PLOTS_TEMPLATE): $(VENV)/.installed pipeline/tools/plots_template.py
	python -m pipeline.tools.plots_template $@

repro: $(VENV)/.installed $(PLOTS_TEMPLATE)  ## run the pipeline on the embedded data
	dvc repro

plots: $(PLOTS_TEMPLATE)  ## draw the workspace's curves and image grids into dvc_plots/index.html (no network)
	dvc plots show

# The suite's budget is 15 minutes on 2 cores (docs/development.md): it prints its 20 slowest tests.
test: lint  ## lint, then the whole test suite (what CI runs: .ci/run), then its 20 slowest tests
	python -m pytest --durations=20

test-fast: $(VENV)/.installed  ## the inner loop: every test not marked slow (see pytest.ini)
	python -m pytest -m "not slow"

lint: $(VENV)/.installed  ## ruff, with the settings in pyproject.toml
	ruff check .

bench: $(VENV)/.installed  ## print training throughput and pipeline wall times
	python benchmarks/bench.py

bench-seeds: $(VENV)/.installed  ## time one experiment with 1 seed and with 5, then the default study, in fresh copies
	python benchmarks/seeds.py --study --jobs 2

bench-load: $(VENV)/.installed  ## time make compare, the report and the explorer over 2,000 rows
	python benchmarks/load.py

study: $(VENV)/.installed  ## GAN from the decoder vs from scratch vs VAE samples, over seeds 0-2 trained together
	python benchmarks/gan_from_decoder.py

# `make sweep JOBS=2 LATENT_DIMS="2 8 32" SEEDS="0 1 2"` (SEEDS: params.yaml's seeds when empty;
# SEEDS_PER_TASK=K splits each configuration's seeds over experiments of K); see docs/sweeps.md. On a Ray cluster:
# `make sweep EXECUTOR=ray ADDRESS=head:6379`; see docs/cluster.md.
JOBS ?= 1
LATENT_DIMS ?= 2 4 8 16 32 64
SEEDS ?=
SEEDS_PER_TASK ?=
SEED_ARGS = $(if $(strip $(SEEDS)),--seeds $(SEEDS)) $(if $(strip $(SEEDS_PER_TASK)),--seeds-per-task $(SEEDS_PER_TASK))
EXECUTOR ?= dvc
ADDRESS ?=
EXECUTOR_ARGS = --executor $(EXECUTOR) $(if $(filter ray,$(EXECUTOR)),$(if $(ADDRESS),--address $(ADDRESS)),--jobs $(JOBS))
sweep: $(VENV)/.installed  ## one DVC experiment per latent_dim with its seeds, run by JOBS queue workers (or EXECUTOR=ray), then compare
	python -m pipeline.tools.sweep --latent-dims $(LATENT_DIMS) $(SEED_ARGS) $(EXECUTOR_ARGS)

compare: $(VENV)/.installed  ## print each configuration's mean ± 95% interval over its seeds, write outputs/comparison.csv
	python -m pipeline.tools.compare

report: $(VENV)/.installed  ## write outputs/report/reflection.md (and .html, figures) from the recorded runs
	python -m pipeline.tools.report

# The study behind the published report: the latent_dim sweep, then BETAS at BETA_LATENT_DIM, each
# configuration one experiment training STUDY_SEEDS together, then the report.
BETAS ?= 0.25 4
BETA_LATENT_DIM ?= 16
STUDY_SEEDS ?= 0 1 2 3 4
default-study: $(VENV)/.installed  ## run the default study (8 configurations x 5 seeds) and write its report into reports/
	python -m pipeline.tools.sweep --latent-dims $(LATENT_DIMS) --seeds $(STUDY_SEEDS) --jobs $(JOBS)
	python -m pipeline.tools.sweep --latent-dims $(BETA_LATENT_DIM) --betas $(BETAS) --seeds $(STUDY_SEEDS) --jobs $(JOBS)
	python -m pipeline.tools.report --output reports --main-latent-dim $(BETA_LATENT_DIM)

UI_PORT ?= 5000
ui: $(VENV)/.installed  ## the MLflow UI on http://127.0.0.1:5000: prints each experiment's runs page, headline columns first
	python -m pipeline.tools.ui --host 127.0.0.1 --port $(UI_PORT)

# The explorer binds to this machine only; see the README before exposing it.
APP_PORT ?= 8501
app: $(VENV)/.installed  ## open the explorer app on http://127.0.0.1:8501 (pipeline/app/app.py)
	python -m streamlit run pipeline/app/app.py --server.address 127.0.0.1 --server.port $(APP_PORT) \
		--server.headless true --browser.gatherUsageStats false --client.toolbarMode minimal

clean:  ## remove pipeline outputs and the local MLflow store (not the environment)
	rm -rf outputs mlflow.db mlartifacts
