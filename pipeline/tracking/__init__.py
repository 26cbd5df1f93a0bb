"""The tracking layer: everything that talks to MLflow. `names` (every stage, experiment, tag and
headline metric name, defined once), `store` (the store, and how a stage execution becomes a
row), `rows` (the one reader that turns recorded rows back into results and configs).
The row model is explained in docs/tracking.md."""
