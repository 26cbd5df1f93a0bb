"""Generative models as reproducible experiments: DVC runs the stages, MLflow records the runs."""
