"""Mesh and sharding rules: a ``data`` axis for the batch and an ``fsdp`` axis for parameters.

One rule table: a parameter or optimizer leaf with ``ndim >= 2`` is sharded over ``fsdp`` on
its largest dimension divisible by the axis size; everything else is replicated. Batches are
sharded over every mesh axis on the leading dimension (data and fsdp both consume the batch).
"""

from __future__ import annotations


import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int]:
  """``(data, fsdp)`` sizes from a config with ``data``/``fsdp`` (-1 = the rest)."""
  data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
  if fsdp == -1 and data == -1:
    raise ValueError("mesh: at most one of mesh.data and mesh.fsdp may be -1.")
  if fsdp == -1:
    if num_devices % data:
      raise ValueError(f"mesh.data={data} does not divide the {num_devices} devices.")
    fsdp = num_devices // data
  if data == -1:
    if fsdp < 1 or num_devices % fsdp:
      raise ValueError(f"mesh.fsdp={fsdp} does not divide the {num_devices} devices.")
    data = num_devices // fsdp
  if data * fsdp != num_devices:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} = {data * fsdp} does not match the "
                     f"{num_devices} devices; set mesh.data=-1 to use the rest.")
  return data, fsdp


def make_mesh(mesh_config, num_devices: int | None = None, devices=None) -> jax.sharding.Mesh:
  """The ``(data, fsdp)`` mesh over ``devices`` (default: all of ``jax.devices()``; e.g. the
  compile-only devices of a TPU topology, ``launch/aot_compile.py``)."""
  n = num_devices or (len(devices) if devices is not None else jax.device_count())
  shape = mesh_shape(mesh_config, n)
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def leaf_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """The rule: shard the largest dimension divisible by ``fsdp`` (ndim >= 2), else replicate."""
  if fsdp <= 1 or len(shape) < 2:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp == 0:
      spec = [None] * len(shape)
      spec[d] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree, mesh):
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(np.shape(x)), fsdp)), tree)


def shard_model_and_optimizer(model, optimizer, mesh) -> None:
  """Places model and optimizer variables by the rule table (in place)."""
  for obj in (model, optimizer):
    state = nnx.state(obj)
    shardings = tree_shardings(state, mesh)
    nnx.update(obj, jax.device_put(state, shardings))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXES))


def shard_batch(batch: dict, mesh) -> dict:
  """Process-local numpy batch -> global arrays sharded over the mesh on axis 0."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
