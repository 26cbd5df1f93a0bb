"""`python -m pipeline.tools.report` (`make report`): the written reflection report, built from the recorded runs.

It reads the complete result rows of the dataset's MLflow experiment, picks the runs that share the
study's settings (params.yaml as committed at git's HEAD, or `--params FILE`: not the values an
experiment run in the workspace leaves in params.yaml) and writes into `outputs/report/`
(`--output DIR`; `make default-study` writes the published `reports/`):

  reflection.md            the report: each lab question answered with a claim, then the evidence
  reflection.html          the same, for a browser, with the figures inline
  figures/*.png            its figures, drawn from the runs' metric histories and artifacts
  reflection.numbers.json  every number in the text: its run, metric (or param) and value

Which runs: among the complete rows whose params equal the settings' in everything but
`latent_dim` (and `device`, `tracking.experiment`, which change where, not what), the newest per
`latent_dim` form the latent_dim comparison; the configuration at the settings' `latent_dim`
(`--main-latent-dim N` overrides it; else the newest) is the main one, and the report names it and
where its settings came from. Rows that differ only in `vae.beta`, at the main run's `latent_dim`,
form the beta comparison. Rows recorded by older code that lack a metric the report needs are
left out, and the report says how many.

Numbers are never typed in: the text gets each one from `Numbers`, which formats it and keeps
where it came from; `tests/test_report.py` checks every entry against MLflow.
"""
