"""A few sharded training steps on a fixed global batch (shared by the sharding tests and the
two-process test). Run as a script it is one process of a ``jax.distributed`` job:

    python tests/sharded_step.py COORD NUM_PROCS PROC_ID OUT.npz
"""

import os
import sys

import numpy as np


def fixed_batch(batch=16, size=16, classes=10):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  label = rng.integers(0, classes, batch).astype(np.int32)
  target = np.eye(classes, dtype=np.float32)[label]
  return {"image": image, "label": label, "target": target}


def optimizer_config():
  """AdamW (lr 1e-3, clip 1.0, no warmup) as ``trainer.build_optimizer`` reads it."""
  import ml_collections
  return ml_collections.ConfigDict(dict(
      optimizer=dict(name="adamw", lr=1e-3, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
                     grad_clip_norm=1.0, layer_decay=1.0),
      warmup_epochs=0.0, min_lr=1e-5))


def run(mesh_data: int, mesh_fsdp: int, steps: int = 3):
  """Returns (losses, params after ``steps`` AdamW steps, gradients of the first step)."""
  import jax
  import ml_collections
  from flax import nnx
  from spikejax.models import create_model
  from spikejax.train import sharding, trainer

  cfg = ml_collections.ConfigDict({"data": mesh_data, "fsdp": mesh_fsdp})
  mesh = sharding.make_mesh(cfg)
  config = optimizer_config()
  # Built outside the mesh, then placed on it: the eager initializers compile once per
  # process, not once per mesh (the sharding tests build this model on three meshes).
  model = create_model("espikeformer_t", num_classes=10, rngs=nnx.Rngs(0),
                       embed_dims=(8, 16, 16, 16), block_depths=(1, 1),
                       strides=(1, 2, 2, 2, 1))
  optimizer, _ = trainer.build_optimizer(config, model, total_steps=10, steps_per_epoch=10)
  with jax.set_mesh(mesh):
    sharding.shard_model_and_optimizer(model, optimizer, mesh)
  model.train()
  full = fixed_batch()
  n, p = jax.process_count(), jax.process_index()
  per = full["image"].shape[0] // n
  local = {k: v[p * per:(p + 1) * per] for k, v in full.items()}
  import optax

  @nnx.jit
  def loss_and_grads(model, batch):
    def loss_fn(m):
      return optax.softmax_cross_entropy(m(batch["image"]), batch["target"]).mean()
    return nnx.value_and_grad(loss_fn)(model)

  # Gradients on a copy of the state, so the training steps below start from the same point.
  snapshot = nnx.state(model)
  _, grads = loss_and_grads(model, sharding.shard_batch(local, mesh))
  nnx.update(model, snapshot)
  gathered = _gather({"/".join(map(str, path)): var.get_value()
                      for path, var in nnx.to_flat_state(grads)}, mesh)
  runner = trainer.SplitTrainer(model, optimizer)  # the trainer's own step
  losses = []
  for _ in range(steps):
    out = runner.step(sharding.shard_batch(local, mesh))
    losses.append(float(out["loss"]))
  runner.sync()
  params = _gather({"/".join(map(str, path)): var.get_value() for path, var in
                    nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))},
                   mesh)
  return np.asarray(losses), params, gathered


def _gather(arrays: dict, mesh) -> dict:
  """Global arrays -> numpy on every process, in one program: replicating them all at once
  costs one compile and one exchange, where a ``process_allgather`` per array cost 35 s of a
  72 s two-process run (gloo collectives over loopback, ~200 arrays twice)."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  if jax.process_count() == 1:
    return {k: np.asarray(v) for k, v in arrays.items()}
  replicated = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, PartitionSpec()))(arrays)
  return {k: np.asarray(v.addressable_data(0)) for k, v in replicated.items()}


if __name__ == "__main__":
  coord, nproc, pid, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
  os.environ["XLA_FLAGS"] = (os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", "") +
                             " --xla_force_host_platform_device_count=2")
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.distributed.initialize(coord, nproc, pid)
  losses, params, grads = run(mesh_data=-1, mesh_fsdp=2)
  if pid == 0:
    np.savez(out, losses=losses, **{"p/" + k: v for k, v in params.items()},
             **{"g/" + k: v for k, v in grads.items()})
  jax.distributed.shutdown()
