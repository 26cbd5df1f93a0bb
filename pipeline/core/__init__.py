"""The pure core: config, data, models, losses, metrics, training loops, latent-space operations,
checkpoints and atomic file writes. It imports neither MLflow nor DVC nor the stages' output
paths; everything above it (tracking, stages, tools, app) builds on it."""
