"""The MLflow UI's saved view of a result experiment: the headline numbers first.

MLflow 3.17's runs page opens with no param or metric column and a chart per metric in name
order. Its "Save & share view" feature stores a view as an experiment tag,
`mlflow.sharedViewState.<id>`, whose value is a JSON envelope `{name, createdAt, state}`, `state`
being the page's UI state as JSON (MLflow writes it deflate-compressed; plain JSON is read too).
The URL `#/experiments/<id>/runs?viewStateShareKey=<id>` opens it, and the view is listed in the
page's saved views. That format is the UI's own, not a documented API: it was read from MLflow
3.17.2 (requirements.txt's comment names the versions tested), and tests/test_stock_views.py opens
the view in a browser, so a change in a later MLflow shows up as a failing test. docs/results.md says what a user sees.
"""

from __future__ import annotations

import json

from pipeline.tracking import names

VIEW_ID = "headline"
VIEW_NAME = "Headline numbers"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
SECTION = "Headline numbers"
SHOWN_PARAMS = (names.LATENT_DIM, names.BETA, names.SEED)
HALF_WIDTH = f"/{names.CI_HALF_WIDTH}"  # the ± of a summary run's mean


def column(kind: str, key: str) -> str:
    """The UI's id of a runs-table column: kind is params, metrics, tags or attributes."""
    return f"{kind}.`{key}`"


def headline_metric_keys() -> list[str]:
    return [names.HEADLINE_METRICS[short] for short in names.SHOWN_FIRST]


def columns() -> list[str]:
    """The params, then each headline metric followed by its interval's half-width (a configuration's
    summary run holds it; a seed's row leaves it empty)."""
    metrics = [column("metrics", f"{key}{suffix}") for key in headline_metric_keys() for suffix in ("", HALF_WIDTH)]
    return [column("params", key) for key in SHOWN_PARAMS] + metrics


def state() -> dict:
    """The runs page's UI state and search facets: the shown params and the headline metrics (each with
    its half-width) as the table's columns; a first chart section with one bar chart per headline metric.
    MLflow adds every other metric's chart, in sections after it."""
    charts = [{"type": "BAR", "uuid": f"{VIEW_ID}-{short}", "metricKey": names.HEADLINE_METRICS[short],
               "metricSectionId": VIEW_ID, "runsCountToCompare": 10, "deleted": False, "isGenerated": False}
              for short in names.SHOWN_FIRST]
    return {
        # search facets
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        # UI state
        "selectedColumns": columns(),
        "columnOrder": columns(),  # the params first, then the metrics in SHOWN_FIRST's order
        "columnWidths": {key: 130 if key.endswith(f"{HALF_WIDTH}`") else 180 for key in columns()[len(SHOWN_PARAMS):]},
        "runsHiddenMode": "FIRST_10_RUNS",
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": VIEW_ID, "name": SECTION, "display": True, "isReordered": True,
                                "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,  # keep the headline section first, not in name order
        "viewMaximized": False,
        "runListHidden": False,
        "groupBy": None,
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def envelope(created_at_ms: int) -> str:
    """The tag's value (MLflow's saved-view envelope)."""
    return json.dumps({"name": VIEW_NAME, "createdAt": created_at_ms, "state": json.dumps(state())})


def is_current(tag_value: str | None) -> bool:
    """Whether an experiment's tag already holds this view (whenever it was written)."""
    try:
        saved = json.loads(tag_value or "")
        return saved["name"] == VIEW_NAME and json.loads(saved["state"]) == state()
    except (ValueError, KeyError, TypeError):
        return False


def runs_path(experiment_id: str) -> str:
    """The UI's address of an experiment's runs in this view, in the model-training sidebar (MLflow
    3.17 reads `workflowType` from the URL; without it the sidebar opens on GenAI)."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}&workflowType=machine_learning"
