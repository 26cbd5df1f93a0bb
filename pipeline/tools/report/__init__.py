"""`python -m pipeline.tools.report` (`make report`): the written reflection report, built from the recorded runs.

It reads the complete result rows of the dataset's MLflow experiment (the one params.yaml records
into), picks the runs that share params.yaml's settings, and writes into `reports/`:

  reflection.md            the report: each lab question answered with a claim, then the evidence
  reflection.html          the same, for a browser, with the figures inline
  figures/*.png            its figures, drawn from the runs' metric histories and artifacts
  reflection.numbers.json  every number in the text: its run, metric (or param) and value

Which runs: among the complete rows whose params equal params.yaml's in everything but
`latent_dim` (and `device`, `tracking.experiment`, which change where, not what), the newest per
`latent_dim` form the latent_dim comparison; the one at params.yaml's `latent_dim` (else the
newest) is the main run. Rows that differ only in `vae.beta`, at the main run's `latent_dim`,
form the beta comparison. Rows recorded by older code that lack a metric the report needs are
left out, and the report says how many.

Numbers are never typed in: the text gets each one from `Numbers`, which formats it and keeps
where it came from; `tests/test_report.py` checks every entry against MLflow.
"""
