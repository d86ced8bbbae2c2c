"""Training: the loop (``trainer``), tasks (``tasks``: classify, distill, mim), evaluators
(``config.evals``), the train-state builder (``state``), the split train step (``steps``),
optimizers, checkpoints, mesh and sharding rules, metrics."""
