"""`python -m pipeline.tools.report`: write the reflection report (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from pipeline.core.config import flatten
from pipeline.core.io import atomic_dir, atomic_path, check_output
from pipeline.tools.report.numbers import Source
from pipeline.tools.report.runs import select, usable
from pipeline.tools.report.sections import FIGURES, NUMBERS, build
from pipeline.tracking import store
from pipeline.tracking.rows import read_rows

log = logging.getLogger(__name__)

REPORT_DIR = Path("outputs/report")  # make report's; only make default-study writes the published reports/
PUBLISHED_DIR = Path("reports")
MARKDOWN, HTML = "reflection.md", "reflection.html"


def to_html(markdown_text: str) -> str:
    """The report as one HTML page; images stay files beside it (figures/), shown inline."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Reflection report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
            "img{max-width:100%}code,pre{background:#f4f4f4}</style></head><body>\n" + body + "\n</body></html>\n")


def reference_config(path: Path | None):
    """The settings that pick the runs (a Config) and where they came from:
    `path`, or else params.yaml as committed at git's HEAD (the study's definition: an experiment run
    in the workspace leaves its own values in params.yaml, uncommitted), or else params.yaml."""
    import subprocess

    from pipeline.core.config import PARAMS_FILE, ConfigError, load_config, parse_config, parse_yaml

    if path is not None:
        return load_config(path), f"`{path}`"
    committed = subprocess.run(["git", "show", f"HEAD:./{PARAMS_FILE}"], capture_output=True, text=True)
    if committed.returncode != 0:
        return load_config(), f"`{PARAMS_FILE}` (not in git)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    try:
        config = parse_config(parse_yaml(committed.stdout))
    except ConfigError as error:
        raise ConfigError(f"{PARAMS_FILE} as committed at {commit} is not usable ({error}): "
                          "pass the settings with --params FILE") from None
    return config, f"`{PARAMS_FILE}` as committed at `{commit}`"


def main(argv: list[str] | None = None) -> None:
    import pipeline.tools.report as package

    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.report", description=package.__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the one the settings record into)")
    parser.add_argument("--output", type=Path, default=REPORT_DIR,
                        help=f"folder to write into (default {REPORT_DIR}; make default-study writes {PUBLISHED_DIR})")
    parser.add_argument("--params", type=Path, help="the settings that pick the runs (default: params.yaml as "
                        "committed at git's HEAD, not what an experiment left in the workspace)")
    parser.add_argument("--main-latent-dim", type=int, help="the main configuration's latent_dim (default: the settings')")
    args = parser.parse_args(argv)

    check_output(args.output, folder=True)
    config, source = reference_config(args.params)
    reference = {key: str(value) for key, value in flatten(config).items()}  # as the stages log params
    if args.main_latent_dim is not None:
        reference["latent_dim"] = str(args.main_latent_dim)
        source += f", with `latent_dim` {args.main_latent_dim} from `--main-latent-dim`"
    experiment = args.experiment or config.experiment_name
    store.check_store()
    fit, outdated = usable(read_rows(experiment))  # a missing store or experiment is refused here
    _, client = store.connect()
    study = select(fit, reference, experiment, outdated, source)
    with tempfile.TemporaryDirectory() as downloads, atomic_dir(args.output / FIGURES) as figures:
        text, numbers = build(study, Source(client, Path(downloads)), figures)
        for name, content in ((MARKDOWN, text), (HTML, to_html(text)),
                              (NUMBERS, json.dumps(numbers, indent=1) + "\n")):
            with atomic_path(args.output / name) as tmp:
                tmp.write_text(content)
    log.info("report from %d runs (main configuration %s, from %s) written to %s", len(study.runs),
             study.main_config.id, source.replace("`", ""), args.output / MARKDOWN)


if __name__ == "__main__":
    from pipeline.stages.cli import run_command

    run_command("report", main)
