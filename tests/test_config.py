"""params.yaml is validated before any work: bad values name the key, the value and what is allowed."""

import os
import re

import pytest
import torch
from conftest import REPO, repo_params

from pipeline.core.config import ConfigError, flatten, load_config, merged, parse_config, parse_yaml, thread_limit


def test_repository_params_are_valid():
    config = parse_config(repo_params())
    assert config.latent_dim >= 1
    assert config.experiment_name == config.data.name  # tracking.experiment "" means the dataset's name
    assert "latent_dim" in flatten(config) and "vae.epochs" in flatten(config)


@pytest.mark.parametrize(
    "override, key, shown, allowed",
    [
        ({"latent_dim": 0}, "latent_dim", "0", "an integer >= 1"),
        ({"latent_dim": -3}, "latent_dim", "-3", "an integer >= 1"),
        ({"latent_dim": "abc"}, "latent_dim", "'abc'", "an integer >= 1"),
        ({"latent_dim": 2.5}, "latent_dim", "2.5", "an integer >= 1"),
        ({"latent_dim": True}, "latent_dim", "True", "an integer >= 1"),
        ({"data": {"name": "cifar10"}}, "data.name", "'cifar10'", "one of: mnist5k, mnist, fashion_mnist, kmnist"),
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction", "1.0", "a number > 0 and < 1"),
        ({"vae": {"epochs": -1}}, "vae.epochs", "-1", "an integer >= 1"),
        ({"vae": {"epochs": 0}}, "vae.epochs", "0", "an integer >= 1"),
        ({"vae": {"learning_rate": -0.001}}, "vae.learning_rate", "-0.001", "a number > 0"),
        ({"vae": {"learning_rate": 0}}, "vae.learning_rate", "0", "a number > 0"),
        ({"vae": {"learning_rate": "fast"}}, "vae.learning_rate", "'fast'", "a number > 0"),
        ({"vae": {"architecture": "transformer"}}, "vae.architecture", "'transformer'", "one of: mlp, conv"),
        ({"vae": {"beta": -1.0}}, "vae.beta", "-1.0", "a number >= 0"),
        ({"gan": {"epochs": 0}}, "gan.epochs", "0", "an integer >= 1"),
        ({"gan": {"learning_rate": 0}}, "gan.learning_rate", "0", "a number > 0"),
        ({"gan": {"init": "vae"}}, "gan.init", "'vae'", "one of: decoder, scratch"),
        ({"gan": {"compare_scratch": "true"}}, "gan.compare_scratch", "'true'", "true or false"),
        ({"gan": {"compare_scratch": 1}}, "gan.compare_scratch", "1", "true or false"),
        ({"gan": {"adam_beta1": 1.0}}, "gan.adam_beta1", "1.0", "a number >= 0 and < 1"),
        ({"classifier": {"feature_dim": 1}}, "classifier.feature_dim", "1", "an integer >= 2"),
        ({"evaluate": {"num_samples": 1}}, "evaluate.num_samples", "1", "an integer >= 2"),
        ({"tracking": {"experiment": "x" * 257}}, "tracking.experiment", repr("x" * 257),
         "a string of at most 256 characters"),  # MLflow's SQL schema: refused before any work, not by the store
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(override, key, shown, allowed):
    with pytest.raises(ConfigError) as error:
        parse_config(merged(repo_params(), override))
    assert f"{key} = {shown} is not allowed; expected {allowed}" in str(error.value)


def test_unknown_key_suggests_the_nearest_valid_one():
    params = repo_params()
    params["latent_dm"] = params.pop("latent_dim")
    with pytest.raises(ConfigError, match="unknown key 'latent_dm'; did you mean 'latent_dim'"):
        parse_config(params)


def test_missing_key_is_reported():
    params = repo_params()
    del params["vae"]["epochs"]
    with pytest.raises(ConfigError, match="missing key 'vae.epochs'"):
        parse_config(params)


def test_exponent_literal_in_quotes_is_a_number():
    config = parse_config(merged(repo_params(), {"vae": {"learning_rate": "1e-3"}}))
    assert config.vae.learning_rate == 0.001


def _params_text(replace: dict[str, str]) -> str:
    lines = (REPO / "params.yaml").read_text().splitlines()
    for key, value in replace.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in lines]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("literal, value", [("016", 16), ("0x10", 16), ("1e1", "10.0")])
def test_the_stages_read_every_value_as_dvc_records_it(tmp_path, literal, value):
    """YAML 1.1 (PyYAML) reads `016` as 14; DVC reads YAML 1.2, and so must the stages."""
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text(_params_text({"latent_dim": literal}))
    dvc_value = dvc_parse_yaml(path.read_text(), str(path))["latent_dim"]
    if isinstance(value, str):  # a float is not an integer: refused, not rounded
        with pytest.raises(ConfigError, match=f"latent_dim = {value} is not allowed"):
            load_config(path)
        assert dvc_value == float(value)
    else:
        assert load_config(path).latent_dim == value == dvc_value


def test_a_sexagesimal_looking_seed_is_text_and_refused_not_read_as_a_number(tmp_path):
    """`1:30` is 90 in YAML 1.1; in YAML 1.2 (DVC) it is text, so the seed list is refused."""
    path = tmp_path / "params.yaml"
    path.write_text(_params_text({"seeds": "[0, 1:30]"}))
    with pytest.raises(ConfigError, match=r"seeds = \[0, '1:30'\] is not allowed"):
        load_config(path)


def test_merge_keys_work_as_in_dvc(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("\nvae:\n", "\nvae: &vae\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text + "copy: &copy\n  <<: *vae\n")
    assert parse_yaml(path.read_text())["copy"] == parse_yaml(text)["vae"]
    with pytest.raises(ConfigError, match="unknown key 'copy'"):  # read, then validated as any key
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb: 2\na: 3\n", "params.yaml line 3, column 1: key 'a' is given twice in one mapping; keep one"),
    ("a: [1, 2\nb: 3\n", "params.yaml line 2, column 2 is not valid YAML: expected ',' or ']', but got ':' "
                          "(while parsing a flow sequence from line 1, column 4); fix the file there"),
    ("a:\n\tb: 1\n", "params.yaml line 2, column 1 is not valid YAML: found character '\\t' that cannot start"),
    ("a: \x07\n", "params.yaml is not valid YAML: unacceptable character #x0007"),
])
def test_a_file_that_is_not_yaml_is_one_line_naming_where(text, message):
    with pytest.raises(ConfigError) as error:
        parse_yaml(text)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("extra, key", [("? [a, b]\n: 1\n", "('a', 'b')"), ("1: 2\n", "1"), ("~: 1\n", "None")])
def test_a_key_that_is_not_text_is_an_unknown_key(extra, key):
    with pytest.raises(ConfigError, match=f"unknown key '{re.escape(key)}'"):
        parse_config(parse_yaml((REPO / "params.yaml").read_text() + extra))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="device = 'cuda' but this machine has no CUDA device"):
        parse_config(merged(repo_params(), {"device": "cuda"}))


@pytest.mark.parametrize("stage", ["download", "train_vae"])
@pytest.mark.parametrize("override", [{"latent_dim": 0}, {"vae": {"learning_rate": -1.0}}, {"data": {"name": "nope"}}])
def test_stage_with_bad_params_exits_non_zero_and_writes_nothing(project, stage, override):
    """In this process, as `python -m` runs it (conftest.run_in_process)."""
    project.write_params(override)
    result = project.call(stage)
    assert result.returncode == 2
    assert "error: params.yaml:" in result.stderr and "is not allowed" in result.stderr
    assert "Traceback" not in result.stderr
    assert project.files() == []
    assert not project.store.exists()  # no MLflow run, not even an empty store


def test_a_refusal_is_one_line_and_exit_2_from_a_real_process(project):
    """The same refusal as DVC meets it: a fresh `python -m` process, its exit status and stderr."""
    project.write_params({"latent_dim": 0})
    result = project.stage("train_vae", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "train_vae: error: params.yaml: latent_dim = 0 is not allowed; expected an integer >= 1 and <= 1024"]
    assert project.files() == [] and not project.store.exists()


def test_thread_limit_comes_from_the_environment():
    assert thread_limit({}) is None and thread_limit({"PIPELINE_THREADS": ""}) is None  # all cores
    cores = os.cpu_count()
    assert thread_limit({"PIPELINE_THREADS": "1"}) == 1 and thread_limit({"PIPELINE_THREADS": str(cores)}) == cores
    # Beyond the machine's cores (99999999 crashed torch), non-ASCII digits that int() would take.
    for bad in ("0", "-1", "two", "1.5", str(cores + 1), "99999999", "\u0663", "\u00b2", "\uff11"):
        with pytest.raises(ConfigError, match=f"PIPELINE_THREADS = '{bad}' is not allowed; expected a whole "
                                              f"number of threads from 1 to {cores}"):
            thread_limit({"PIPELINE_THREADS": bad})


def test_stage_applies_the_thread_limit_and_refuses_a_bad_one(project):
    result = project.call("download", env={"PIPELINE_THREADS": "zero"})
    assert result.returncode == 2 and "PIPELINE_THREADS = 'zero' is not allowed" in result.stderr
    assert project.files() == [] and not project.store.exists()
    project.call("download", check=True, env={"PIPELINE_THREADS": "1"})
    (record,) = project.runs("datasets")
    assert record.data.tags["pipeline.threads"] == "1"


def test_a_rows_params_read_back_as_the_config_that_recorded_them():
    from pipeline.core.config import config_from_params

    config = parse_config(merged(repo_params(), {"gan": {"compare_scratch": False}, "vae": {"beta": 0.25}}))
    recorded = {key: str(value) for key, value in flatten(config).items()}  # MLflow keeps params as text
    assert config_from_params(recorded) == config
    assert config_from_params({**recorded, "added.by.later.code": "1"}) == config
    with pytest.raises(ConfigError, match="missing key 'vae.beta'"):
        config_from_params({k: v for k, v in recorded.items() if k != "vae.beta"})
    with pytest.raises(ConfigError, match="gan.compare_scratch = 'maybe' is not allowed"):
        config_from_params({**recorded, "gan.compare_scratch": "maybe"})
    # a run made on a GPU machine reads back on any machine
    assert config_from_params({**recorded, "device": "cuda:1"}).device == "cuda:1"
