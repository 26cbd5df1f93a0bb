"""`python -m pipeline.tools.report`: write the reflection report (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from pipeline.core.config import flatten
from pipeline.core.io import atomic_dir, atomic_path
from pipeline.tools.report.numbers import Source
from pipeline.tools.report.runs import select, usable
from pipeline.tools.report.sections import FIGURES, NUMBERS, build
from pipeline.tracking import store
from pipeline.tracking.rows import read_rows

log = logging.getLogger(__name__)

REPORT_DIR = Path("reports")
MARKDOWN, HTML = "reflection.md", "reflection.html"


def to_html(markdown_text: str) -> str:
    """The report as one HTML page; images stay files beside it (figures/), shown inline."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Reflection report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
            "img{max-width:100%}code,pre{background:#f4f4f4}</style></head><body>\n" + body + "\n</body></html>\n")


def main(argv: list[str] | None = None) -> None:
    import pipeline.tools.report as package
    from pipeline.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.report", description=package.__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the one params.yaml records into)")
    parser.add_argument("--output", type=Path, default=REPORT_DIR, help=f"folder to write into (default {REPORT_DIR})")
    args = parser.parse_args(argv)

    config = load_config()
    experiment = args.experiment or config.experiment_name
    store.check_server()
    fit, outdated = usable(read_rows(experiment))  # a missing store or experiment is refused here
    _, client = store.connect()
    reference = {key: str(value) for key, value in flatten(config).items()}
    study = select(fit, reference, experiment, outdated)
    with tempfile.TemporaryDirectory() as downloads, atomic_dir(args.output / FIGURES) as figures:
        text, numbers = build(study, Source(client, Path(downloads)), figures)
        for name, content in ((MARKDOWN, text), (HTML, to_html(text)),
                              (NUMBERS, json.dumps(numbers, indent=1) + "\n")):
            with atomic_path(args.output / name) as tmp:
                tmp.write_text(content)
    log.info("report from %d runs (main run %s) written to %s", len(study.runs), study.main.name,
             args.output / MARKDOWN)


if __name__ == "__main__":
    from pipeline.stages.cli import run_command

    run_command("report", main)
