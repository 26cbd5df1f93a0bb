"""Which runs the report is built from (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.core.errors import PipelineError
from pipeline.tracking.names import HEADLINE_METRICS as HEADLINE
from pipeline.tracking.rows import Row

IGNORED_PARAMS = {"device", "tracking.experiment"}  # where a run ran and under which name, not what it did
# Metrics every run in the report must hold (older rows lack the later ones).
REQUIRED = (
    "vae/encoder_grad_reconstruction", "vae/encoder_grad_kl", "vae/test_neg_elbo",
    "gan/decoder/fid", "gan/scratch/fid", "gan/vae_prior_fid",
    HEADLINE["recon_mse"], HEADLINE["kl"], HEADLINE["neg_elbo"], HEADLINE["iwae_nll"], HEADLINE["active_units"],
    HEADLINE["fid_gan_decoder"], HEADLINE["fid_gan_scratch"], "eval/scores/vae_prior/sharpness",
    "eval/reparameterisation/score_function", "eval/probes/encoder", "eval/discriminators/decoder/real_train",
)


class ReportError(PipelineError):
    """The report cannot be built from the recorded runs."""


def usable(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """The complete rows: (those holding every REQUIRED metric, the older rest)."""
    complete = [row for row in rows if row.complete]
    fit = [row for row in complete if all(key in row.metrics for key in REQUIRED)]
    return fit, [row for row in complete if row not in fit]


@dataclass
class Study:
    experiment: str
    main: Row
    by_latent_dim: list[Row]  # one per latent_dim, ascending
    by_beta: list[Row]  # one per beta at the main run's latent_dim, ascending
    outdated: list[Row] = field(default_factory=list)

    @property
    def runs(self) -> list[Row]:
        """Every run the report cites, each once, main run first."""
        seen = {}
        for run in [self.main, *self.by_latent_dim, *self.by_beta]:
            seen.setdefault(run.run_id, run)
        return list(seen.values())


def _matches(run: Row, reference: dict[str, str], free: set[str]) -> bool:
    keys = (set(reference) | set(run.params)) - IGNORED_PARAMS - free
    return all(run.params.get(key) == reference.get(key) for key in keys)


def _newest_per(runs: list[Row], key: Callable[[Row], float]) -> list[Row]:
    newest: dict[float, Row] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        newest[key(run)] = run
    return [newest[k] for k in sorted(newest)]


def select(records: list[Row], reference: dict[str, str], experiment: str,
           outdated: list[Row] | None = None) -> Study:
    """The runs the report is built from (see the package docstring). `reference` is params.yaml
    flattened as the stages log it ({"vae.beta": "1.0", ...})."""
    by_latent_dim = _newest_per([r for r in records if _matches(r, reference, {"latent_dim"})], lambda r: r.latent_dim)
    if not by_latent_dim:
        raise ReportError(f"experiment {experiment!r} holds no complete run with params.yaml's settings "
                          f"({len(records)} complete run(s) differ in other params, {len(outdated or [])} were "
                          "recorded by older code): run `make repro` (or `make sweep`) first")
    at_reference = [r for r in by_latent_dim if r.params["latent_dim"] == reference["latent_dim"]]
    main = at_reference[0] if at_reference else max(by_latent_dim, key=lambda r: r.start_time)
    reference_at_main = {**reference, "latent_dim": main.params["latent_dim"]}
    by_beta = _newest_per([r for r in records if _matches(r, reference_at_main, {"vae.beta"})], lambda r: r.beta)
    return Study(experiment, main, by_latent_dim, by_beta, list(outdated or []))
