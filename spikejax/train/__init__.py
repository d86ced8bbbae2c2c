"""Training: state, optimizers, trainers, checkpoints, mesh and sharding rules, metrics."""
