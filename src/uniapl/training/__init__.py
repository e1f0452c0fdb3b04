"""The training loop and its runtime: the step's batch (shared plumbing), the update, metrics, checkpoints,
distributed helpers, stages and their validation, the stage cache."""
