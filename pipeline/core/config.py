"""Typed configuration: `params.yaml` parsed once into frozen dataclasses and validated.

Every stage calls `load_config()` before doing any work, so a bad value stops the stage with a
message naming the key, the value and what is allowed, before any output or MLflow run exists.
There are no defaults here: `params.yaml` is the single source of every setting.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.data import MIRROR_VARIABLE, SOURCES
from pipeline.core.errors import PipelineError
from pipeline.core.models import ARCHITECTURES

PARAMS_FILE = Path("params.yaml")

RECONSTRUCTION_LOSSES = ("bce", "mse")
GAN_INITS = ("decoder", "scratch")

# Upper bounds on the settings that size memory and time, far above any study's values: a
# mistyped 100000 is refused before any work instead of filling the machine's memory. Seeds stay
# within what every generator (torch's, numpy's) takes.
MAX_SEED = 2**32 - 1
MAX_SEEDS = 64  # model seeds trained together in one experiment
MAX_WIDTH = 16_384  # hidden layers
MAX_LATENT_DIM = 1_024
MAX_FEATURE_DIM = 4_096
MAX_BATCH = 65_536
MAX_EPOCHS = 1_000_000
MAX_SAMPLES = 100_000  # images scored per set
MAX_IWAE_SAMPLES = 1_024  # k importance samples of every test image, decoded at once per batch


class ConfigError(PipelineError):
    """A value in params.yaml that the pipeline cannot use."""


@dataclass(frozen=True)
class Rule:
    """What one params.yaml value may be: a kind, and optionally a range or a set of choices."""

    kind: type  # int, float, str, bool, or tuple: a list of distinct integers within the bounds
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    exclusive_maximum: bool = False
    choices: tuple[str, ...] | None = None
    max_length: int | None = None  # for a string

    def describe(self) -> str:
        if self.choices is not None:
            return "one of: " + ", ".join(self.choices)
        if self.max_length is not None:
            return f"a string of at most {self.max_length} characters"
        noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                tuple: f"a list of 1 to {MAX_SEEDS} distinct integers, such as [0, 1, 2], each"}[self.kind]
        bounds = []
        shown = (lambda bound: str(int(bound))) if self.kind in (int, tuple) else (lambda bound: f"{bound:g}")
        if self.minimum is not None:
            bounds.append(f"{'>' if self.exclusive_minimum else '>='} {shown(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.exclusive_maximum else '<='} {shown(self.maximum)}")
        return " ".join([noun, " and ".join(bounds)]).strip()

    def coerce(self, value: Any) -> Any:
        """Return `value` as this rule's kind, or raise ValueError if it is not allowed."""
        if self.kind is tuple:
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_SEEDS or len(set(map(str, value))) < len(value):
                raise ValueError
            return tuple(dataclasses.replace(self, kind=int).coerce(item) for item in value)
        if self.kind is bool:
            if not isinstance(value, bool):  # true/false; `yes` is text in YAML 1.2, "true" in quotes too
                raise ValueError
            return value
        if self.kind is int:
            # bool is a subclass of int in Python; `latent_dim: true` is a mistake, not 1.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
        elif self.kind is float:
            if isinstance(value, str):
                # a number in quotes ("1e-3"): accept numeric literals only.
                value = float(value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        elif not isinstance(value, str) or (self.max_length is not None and len(value) > self.max_length):
            raise ValueError
        if self.choices is not None and value not in self.choices:
            raise ValueError
        if self.minimum is not None:
            if value < self.minimum or (self.exclusive_minimum and value == self.minimum):
                raise ValueError
        if self.maximum is not None:
            if value > self.maximum or (self.exclusive_maximum and value == self.maximum):
                raise ValueError
        return value


def rule(**kwargs: Any) -> Any:
    """A dataclass field whose metadata carries its validation rule."""
    return field(metadata={"rule": Rule(**kwargs)})


@dataclass(frozen=True)
class DataConfig:
    # The split's draws: part of the fixed ruler, not the models' seed.
    seed: int = rule(kind=int, minimum=0, maximum=MAX_SEED)
    name: str = rule(kind=str, choices=tuple(SOURCES))
    test_fraction: float = rule(kind=float, minimum=0, exclusive_minimum=True, maximum=1, exclusive_maximum=True)
    max_per_class: int = rule(kind=int, minimum=0)  # 0 keeps every image
    mirror: str = rule(kind=str)  # "" = torchvision's own URLs


@dataclass(frozen=True)
class VAEConfig:
    architecture: str = rule(kind=str, choices=tuple(ARCHITECTURES))
    hidden_dim: int = rule(kind=int, minimum=1, maximum=MAX_WIDTH)
    epochs: int = rule(kind=int, minimum=1, maximum=MAX_EPOCHS)
    batch_size: int = rule(kind=int, minimum=1, maximum=MAX_BATCH)
    learning_rate: float = rule(kind=float, minimum=0, exclusive_minimum=True)
    beta: float = rule(kind=float, minimum=0)
    kl_warmup_epochs: int = rule(kind=int, minimum=0, maximum=MAX_EPOCHS)
    reconstruction: str = rule(kind=str, choices=RECONSTRUCTION_LOSSES)


@dataclass(frozen=True)
class ClassifierConfig:
    """The CNN whose penultimate layer is the feature space of the FID-style scores."""

    # Its weights and batches: part of the fixed ruler, not the models' seed.
    seed: int = rule(kind=int, minimum=0, maximum=MAX_SEED)
    epochs: int = rule(kind=int, minimum=1, maximum=MAX_EPOCHS)
    batch_size: int = rule(kind=int, minimum=1, maximum=MAX_BATCH)
    learning_rate: float = rule(kind=float, minimum=0, exclusive_minimum=True)
    feature_dim: int = rule(kind=int, minimum=2, maximum=MAX_FEATURE_DIM)  # width of the penultimate layer


@dataclass(frozen=True)
class GANConfig:
    init: str = rule(kind=str, choices=GAN_INITS)  # generator starts from the VAE decoder or from random weights
    compare_scratch: bool = rule(kind=bool)  # with init=decoder, also train the same GAN from scratch
    epochs: int = rule(kind=int, minimum=1, maximum=MAX_EPOCHS)
    batch_size: int = rule(kind=int, minimum=1, maximum=MAX_BATCH)
    learning_rate: float = rule(kind=float, minimum=0, exclusive_minimum=True)
    adam_beta1: float = rule(kind=float, minimum=0, maximum=1, exclusive_maximum=True)
    discriminator_hidden: int = rule(kind=int, minimum=1, maximum=MAX_WIDTH)
    fid_samples: int = rule(kind=int, minimum=2, maximum=MAX_SAMPLES)  # generated images scored after every epoch
    snapshots: int = rule(kind=int, minimum=0, maximum=1_000)  # sample grids kept during training, besides the last

    @property
    def trained_inits(self) -> list[str]:
        """The GANs this config trains, named by their generator's start: decoder and/or scratch."""
        return ["decoder", "scratch"] if self.init == "decoder" and self.compare_scratch else [self.init]


@dataclass(frozen=True)
class EvaluateConfig:
    num_samples: int = rule(kind=int, minimum=2, maximum=MAX_SAMPLES)  # images per scored set, the same for every model
    iwae_samples: int = rule(kind=int, minimum=1, maximum=MAX_IWAE_SAMPLES)  # k of the importance-weighted likelihood bound
    kid_subset_size: int = rule(kind=int, minimum=2, maximum=MAX_SAMPLES)
    pr_neighbours: int = rule(kind=int, minimum=1, maximum=MAX_SAMPLES)  # k of the k-NN manifolds of precision/recall


@dataclass(frozen=True)
class TrackingConfig:
    # "" = named after the dataset; at most what every MLflow backend stores (experiments.name is
    # VARCHAR(256) in its SQL schema)
    experiment: str = rule(kind=str, max_length=256)


@dataclass(frozen=True)
class Config:
    latent_dim: int = rule(kind=int, minimum=1, maximum=MAX_LATENT_DIM)
    # The model seeds: each trains its own VAE and GANs (weights, batch order, noise), all in one run.
    seeds: tuple[int, ...] = rule(kind=tuple, minimum=0, maximum=MAX_SEED)
    device: str = rule(kind=str)  # auto, cpu, cuda or cuda:N; checked by resolve_device
    data: DataConfig
    vae: VAEConfig
    classifier: ClassifierConfig
    gan: GANConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.data.name


def _parse(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from the mapping `raw`, reporting keys as dotted paths."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: {where} must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
            raise ConfigError(
                f"params.yaml: unknown key '{prefix}{key}'{hint} (allowed here: {', '.join(fields)})"
            )
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            raise ConfigError(f"params.yaml: missing key '{key}'")
        if "rule" not in f.metadata:  # a nested section such as `vae:`
            values[name] = _parse(types[name], raw[name], key + ".")
            continue
        check: Rule = f.metadata["rule"]
        try:
            values[name] = check.coerce(raw[name])
        except (ValueError, TypeError):
            raise ConfigError(
                f"params.yaml: {key} = {raw[name]!r} is not allowed; expected {check.describe()}"
            ) from None
    return cls(**values)


def parse_config(raw: Any, check_device: bool = True) -> Config:
    """Validate a params mapping (as read from params.yaml) into a Config, or raise ConfigError.
    `check_device` also checks that this machine has the device the config names."""
    config = _parse(Config, raw, "")
    if "@" in urllib.parse.urlsplit(config.data.mirror).netloc:
        # Params are recorded in MLflow, DVC and git: a password there would be published with them.
        raise ConfigError("params.yaml: data.mirror holds a user name or password, and params are recorded in "
                          f"MLflow and git; put the credentials in ~/.netrc, or the URL in {MIRROR_VARIABLE} "
                          "(not recorded)")
    check_sample_sizes(config)
    if check_device:
        resolve_device(config.device)
    return config


def check_sample_sizes(config: Config) -> None:
    """The scores' sample counts against each other and the feature space. A Fréchet distance
    needs each set's covariance in the classifier's `feature_dim` features to have full rank,
    which takes more samples than features; with fewer it is computed from a singular matrix and
    means nothing."""
    ev, features = config.evaluate, config.classifier.feature_dim
    for key, count in (("gan.fid_samples", config.gan.fid_samples), ("evaluate.num_samples", ev.num_samples)):
        if count <= features:
            raise ConfigError(f"params.yaml: {key} = {count} is too few for a Fréchet distance in "
                              f"classifier.feature_dim = {features} features (a full-rank covariance needs more "
                              f"samples than features); use at least {features + 1}, or a smaller feature_dim")
    if ev.kid_subset_size > ev.num_samples:
        raise ConfigError(f"params.yaml: evaluate.kid_subset_size = {ev.kid_subset_size} is more than "
                          f"evaluate.num_samples = {ev.num_samples}")
    if ev.pr_neighbours >= ev.num_samples:
        raise ConfigError(f"params.yaml: evaluate.pr_neighbours = {ev.pr_neighbours} needs evaluate.num_samples "
                          f"above it, got {ev.num_samples}")


def check_data_sizes(config: Config, num_train: int, num_test: int) -> None:
    """The data against the evaluation: `num_samples` images are drawn from each split. (The whole
    test split, the real set every score compares with, then has more images than features too:
    check_sample_sizes holds num_samples above feature_dim.)"""
    ev = config.evaluate
    available = min(num_train, num_test)
    if ev.num_samples > available:
        raise ConfigError(f"params.yaml: evaluate.num_samples = {ev.num_samples} is more than the data has "
                          f"({num_train} train and {num_test} test images); use at most {available}, or "
                          "keep more images (data.max_per_class)")


def parse_yaml(text: str, name: str | Path = PARAMS_FILE) -> Any:
    """YAML text as DVC reads params.yaml: ruamel.yaml's safe loader, YAML 1.2's core schema
    (`016` is 16, `1:30` is text, `yes` is text; merge keys `<<:` work; a key given twice is an
    error). PyYAML reads YAML 1.1, where `016` is 14 and `1:30` is 90: a stage reading the file
    that way would train with a value DVC does not record. A ConfigError of one line, naming the
    line and column, when the text is not YAML."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return YAML(typ="safe").load(text)
    except DuplicateKeyError as error:
        key = re.search(r'duplicate key "(.*)" with value', error.problem or "")
        raise ConfigError(f"{name}{_where(error.problem_mark)}: key '{key.group(1) if key else '?'}' is given "
                          "twice in one mapping; keep one") from None
    except MarkedYAMLError as error:
        started = error.context_mark and f" from{_where(error.context_mark)}"
        context = error.context and f"({error.context}{started or ''})"
        what = " ".join(part for part in (error.problem, context) if part)
        raise ConfigError(f"{name}{_where(error.problem_mark or error.context_mark)} is not valid YAML: "
                          f"{what}; fix the file there") from None
    except YAMLError as error:  # the reader's errors (a control character) carry no mark
        raise ConfigError(f"{name} is not valid YAML: {' '.join(str(error).split())}; fix the file") from None


def _where(mark: Any) -> str:
    return f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def read_params(path: Path = PARAMS_FILE) -> Any:
    """params.yaml's contents as DVC reads them (`parse_yaml`), or a ConfigError saying why they
    cannot be read."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run the stage from the project root") from None
    except OSError as error:
        raise ConfigError(f"{path} could not be read ({error.strerror}); check that it is a readable file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start}); save it as UTF-8") from None
    return parse_yaml(text, path)


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied, section by section (a nested dict merges into its section);
    neither is changed."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


# Params small enough for seconds per stage, large enough that every class is in both splits and
# every score is defined (samples above feature_dim): what the tests and the benchmarks' smoke runs
# apply over params.yaml's.
TINY = {
    "latent_dim": 4,
    "seeds": [0, 1],
    "data": {"max_per_class": 30},
    "vae": {"hidden_dim": 32, "epochs": 2, "batch_size": 64},
    "classifier": {"epochs": 1, "feature_dim": 16},
    "gan": {"epochs": 2, "discriminator_hidden": 32, "fid_samples": 100, "snapshots": 1},
    "evaluate": {"num_samples": 60, "iwae_samples": 4, "kid_subset_size": 30},
}


def load_config(path: Path = PARAMS_FILE) -> Config:
    """Read and validate params.yaml."""
    return parse_config(read_params(path))


def resolve_device(name: str) -> str:
    """Map the `device` param to a torch device string: auto picks CUDA when present."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"params.yaml: device = {name!r} but this machine has no CUDA device; "
                "use 'auto' or 'cpu'"
            )
        return name
    raise ConfigError(f"params.yaml: device = {name!r} is not allowed; expected one of: auto, cpu, cuda, cuda:N")


THREADS_VARIABLE = "PIPELINE_THREADS"


def thread_limit(environ: dict[str, str]) -> int | None:
    """The CPU threads a stage may use: `PIPELINE_THREADS` when set, None (all cores) otherwise.

    An environment variable rather than a param: it changes how fast a stage runs, not what it
    computes, so it must not make DVC rerun anything. `pipeline.tools.sweep` sets it to the cores
    divided by the queue workers.
    """
    value = environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    cores = os.cpu_count() or 1
    # ASCII digits only: str.isdigit() and int() also take '²' and '٣'.
    if not re.fullmatch(r"[0-9]{1,6}", value) or not 1 <= int(value) <= cores:
        raise ConfigError(f"{THREADS_VARIABLE} = {value!r} is not allowed; expected a whole number of threads from 1 "
                          f"to {cores} (this machine's cores), or unset for all cores")
    return int(value)


SEEDS_PARAM, SEED_PARAM = "seeds", "seed"  # params.yaml's list, and the one seed of a seed's MLflow row


def seed_params(config: Config, seed: int) -> dict[str, str]:
    """A seed's MLflow params: every param as text, with `seed` in place of the list `seeds` (so a
    seed's row reads as a row of the one-seed-per-experiment code did, and both pool)."""
    params = {key: str(value) for key, value in flatten(config).items() if key != SEEDS_PARAM}
    return {**params, SEED_PARAM: str(seed)}


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """The config as flat dotted keys (`vae.epochs`), as MLflow params and DVC show them."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, f"{prefix}{f.name}."))
        else:
            flat[prefix + f.name] = list(value) if isinstance(value, tuple) else value  # seeds as [0, 1]
    return flat


def unflatten(flat: dict[str, str], cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """The inverse of `flatten` for recorded params, which are text (`"16"`, `"True"`): the nested
    mapping `parse_config` takes, each value converted to its field's kind. Keys the config does
    not have are dropped (a row may carry params of later code); missing ones stay missing, so
    `parse_config` names them."""
    raw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if "rule" not in f.metadata:
            raw[f.name] = unflatten(flat, typing.get_type_hints(cls)[f.name], key + ".")
        elif key in flat:
            raw[f.name] = _from_text(flat[key], f.metadata["rule"].kind)
    return raw


def _from_text(text: str, kind: type) -> Any:
    if kind is tuple:  # recorded as "[0, 1, 2]"
        try:
            return parse_yaml(text)
        except ConfigError:
            return text
    if kind is bool:
        return {"True": True, "False": False}.get(text, text)
    try:
        return kind(text)
    except ValueError:
        return text  # left as text, parse_config names the key and the value


def config_from_params(params: dict[str, str]) -> Config:
    """The Config a run was recorded with, from its params as MLflow keeps them (text under
    dotted keys); raises ConfigError naming a missing or malformed one. The device is not checked:
    a run made on a GPU machine can be read on any machine. A seed's row (and a row of older code,
    made with one seed per experiment) has `seed` in place of `seeds`: its config has that seed alone."""
    if SEED_PARAM in params and SEEDS_PARAM not in params:
        params = {**params, SEEDS_PARAM: f"[{params[SEED_PARAM]}]"}
    return parse_config(unflatten(params), check_device=False)
