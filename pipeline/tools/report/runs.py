"""Which runs the report is built from (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.core.config import parse_yaml
from pipeline.core.errors import PipelineError
from pipeline.tracking.names import (
    ENCODER_GRAD_KL,
    ENCODER_GRAD_RECONSTRUCTION,
    GAN_VAE_PRIOR_FID,
    PRIOR_HOLE,
    SEED,
    SEEDS,
    VAE_TEST_NEG_ELBO,
    discriminator_verdict,
    gan_measure,
    probe,
    probe_test,
    reparameterisation,
    score,
)
from pipeline.tracking.names import HEADLINE_METRICS as HEADLINE
from pipeline.tracking.rows import Configuration, Row, readable, replicates

# Where a run ran and under which name, not what it did; and the seed, the replicate axis.
IGNORED_PARAMS = {"device", "tracking.experiment", SEED, SEEDS}
# Metrics every run in the report must hold (older rows lack the later ones).
REQUIRED = (
    ENCODER_GRAD_RECONSTRUCTION, ENCODER_GRAD_KL, VAE_TEST_NEG_ELBO,
    gan_measure("decoder", "fid"), gan_measure("scratch", "fid"), GAN_VAE_PRIOR_FID,
    HEADLINE["recon_mse"], HEADLINE["kl"], HEADLINE["neg_elbo"], HEADLINE["iwae_nll"], HEADLINE["active_units"],
    HEADLINE["fid_decoder"], HEADLINE["fid_scratch"], score("vae_prior", "sharpness"), PRIOR_HOLE,
    reparameterisation("score_function"), probe("encoder"), discriminator_verdict("decoder", "real_train"),
    probe_test("pixels"),
)


# The most latent_dims whose runs are drawn or tabled one by one (figures with a panel or a line
# per run): evenly spread over those run, so that a study of hundreds keeps its figures readable
# and their size bounded. Figures of means over configurations take every latent_dim.
SHOWN_ONE_BY_ONE = 8


def spread(items: list, count: int) -> list:
    """At most `count` of `items`, evenly spread from the first to the last."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in sorted({round(k * (len(items) - 1) / (count - 1)) for k in range(count)})]


class ReportError(PipelineError):
    """The report cannot be built from the recorded runs."""


def usable(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """The complete rows: (those holding every REQUIRED metric, the older rest). Rows whose params
    cannot be read are left out, named in a warning (rows.readable)."""
    complete = readable([row for row in rows if row.complete and not row.is_summary])
    fit = [row for row in complete if all(key in row.metrics for key in REQUIRED)]
    return fit, [row for row in complete if row not in fit]


@dataclass
class Study:
    experiment: str
    main: Row  # the main configuration's run at the settings' seed (else its lowest): the one-run figures
    main_config: Configuration  # the configuration at the settings' latent_dim and beta, over its seeds
    by_latent_dim: list[Configuration]  # one per latent_dim, ascending
    by_beta: list[Configuration]  # one per beta at the main configuration's latent_dim, ascending
    outdated: list[Row] = field(default_factory=list)
    source: str = "`params.yaml`"  # where the settings that picked the runs came from (markdown)
    other: list[tuple[Row, list[str]]] = field(default_factory=list)  # rows left out, with the params that differ

    @property
    def configurations(self) -> list[Configuration]:
        """Every configuration the report cites, each once, the main one first."""
        seen = {}
        for configuration in [self.main_config, *self.by_latent_dim, *self.by_beta]:
            seen.setdefault(configuration.id, configuration)
        return list(seen.values())

    @property
    def runs(self) -> list[Row]:
        """Every run the report cites, each once, main run first."""
        seen = {self.main.run_id: self.main}
        for configuration in self.configurations:
            for run in configuration.rows:
                seen.setdefault(run.run_id, run)
        return list(seen.values())

    @property
    def one_per_latent_dim(self) -> list[Row]:
        """Each latent_dim's run at the main run's seed, for what one run per latent_dim shows; at
        most SHOWN_ONE_BY_ONE latent_dims, evenly spread."""
        return [self.at_main_seed(c) for c in spread(self.by_latent_dim, SHOWN_ONE_BY_ONE)]

    def at_main_seed(self, configuration: Configuration) -> Row:
        """The configuration's run at the main run's seed (else its lowest seed): where one run shows it."""
        return next((r for r in configuration.rows if r.seed == self.main.seed), configuration.rows[0])


def _matches(run: Row, reference: dict[str, str], free: set[str]) -> bool:
    keys = (set(reference) | set(run.params)) - IGNORED_PARAMS - free
    return all(run.params.get(key) == reference.get(key) for key in keys)


def _differing(run: Row, reference: dict[str, str]) -> list[str]:
    """The params (besides latent_dim and vae.beta) in which `run` differs from `reference`."""
    keys = (set(reference) | set(run.params)) - IGNORED_PARAMS - {"latent_dim", "vae.beta"}
    return sorted(key for key in keys if run.params.get(key) != reference.get(key))


def _configurations(runs: list[Row], key: Callable[[Row], float]) -> list[Configuration]:
    """One configuration per value of `key`, ascending (rows.replicates: the newest run per seed)."""
    return [configuration for _, configuration in sorted(replicates(runs, key).items())]


def select(records: list[Row], reference: dict[str, str], experiment: str,
           outdated: list[Row] | None = None, source: str = "`params.yaml`") -> Study:
    """The runs the report is built from (see the package docstring). `reference` is params.yaml
    flattened as the stages log it ({"vae.beta": "1.0", ...})."""
    by_latent_dim = _configurations([r for r in records if _matches(r, reference, {"latent_dim"})],
                                    lambda r: r.latent_dim)
    if not by_latent_dim:
        raise ReportError(f"experiment {experiment!r} holds no complete run with the settings of {source.replace('`', '')} "
                          f"({len(records)} complete run(s) differ in other params, {len(outdated or [])} were "
                          "recorded by older code): run `make repro` (or `make sweep`) first")
    at_reference = [c for c in by_latent_dim if str(c.latent_dim) == reference["latent_dim"]]
    main_config = at_reference[0] if at_reference else max(by_latent_dim, key=lambda c: c.rows[-1].start_time)
    first_seed = str(parse_yaml(reference[SEEDS])[0]) if SEEDS in reference else reference.get(SEED)
    main = next((r for r in main_config.rows if str(r.seed) == first_seed), main_config.rows[0])
    reference_at_main = {**reference, "latent_dim": str(main_config.latent_dim)}
    by_beta = _configurations([r for r in records if _matches(r, reference_at_main, {"vae.beta"})], lambda r: r.beta)
    chosen = {r.run_id for c in [*by_latent_dim, *by_beta] for r in c.rows}
    other = [(r, _differing(r, reference)) for r in records if r.run_id not in chosen]
    # No other param differs: an older run of a chosen seed (the newest counts), or latent_dim and beta both differ.
    other = [(r, keys) for r, keys in other if keys] + [
        (r, ["latent_dim", "vae.beta"]) for r, keys in other
        if not keys and not (_matches(r, reference, {"latent_dim"}) or _matches(r, reference_at_main, {"vae.beta"}))]
    return Study(experiment, main, main_config, by_latent_dim, by_beta, list(outdated or []), source, other)
