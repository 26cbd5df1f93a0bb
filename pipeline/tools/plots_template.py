"""Write the HTML template `dvc plots show` renders into, with its charting library inside.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so offline its curve charts stay
blank. This template carries them instead, bundled by the `vl-convert-python` package (from PyPI,
no network at run time), and leaves out DVC's `{scripts}` placeholder, where those CDN tags go.
`.dvc/config` points `plots.html_template` at the file; `make` writes it (docs/results.md).

    python -m pipeline.tools.plots_template [PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.io import atomic_path

DEFAULT_PATH = Path(".dvc/plots/offline.html")  # .dvc/config: plots.html_template = plots/offline.html
VEGA_LITE = "v5.20"  # DVC's plot specs are Vega-Lite 5

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {embed}, bundled by vl-convert-python: no network -->
    <script type="text/javascript">
{bundle}
    </script>
    <script type="text/javascript">
        // DVC's page calls vegaEmbed(element, spec) once per chart: draw each as SVG, whose marks
        // can be inspected (tests/test_stock_views.py counts them) and print sharply.
        const bundledEmbed = window.vegaEmbed;
        window.vegaEmbed = (element, spec, options) =>
            bundledEmbed(element, spec, Object.assign({{renderer: "svg"}}, options));
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def page() -> str:
    """The template's text: DVC fills `{plot_divs}` (and `{refresh_tag}`); each div calls vegaEmbed."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    # Inside an inline <script>, only "</script" could end the element early; DVC replaces the
    # literal placeholders below, so the bundle must not contain them.
    if "</script" in bundle.lower() or "{plot_divs}" in bundle or "{refresh_tag}" in bundle:
        raise RuntimeError("the Vega bundle cannot be inlined into the plots template as it is")
    return PAGE.format(bundle=bundle, vega=vl_convert.get_vega_version(), vega_lite=VEGA_LITE,
                       embed=vl_convert.get_vega_embed_version())


def write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page(), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH,
                        help=f"where to write it (default: {DEFAULT_PATH})")
    args = parser.parse_args(argv)
    write(args.path)
    print(f"wrote {args.path}")


if __name__ == "__main__":
    main()
