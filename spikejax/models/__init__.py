"""E-SpikeFormer model zoo (Flax NNX)."""

from spikejax.models.layers import BatchNorm, Conv, Linear, SpikeConfig, SpikeNeuron
from spikejax.models.espikeformer import ESpikeFormer, ESpikeFormerConfig, STAGES
from spikejax.models.metaspikformer import MetaSpikformer, MetaSpikformerConfig
from spikejax.models.spikformer import (LARGE_STAGES, Spikformer, SpikformerConfig,
                                        SpikformerEncoder, upsample_mask)
from spikejax.models.registry import VARIANTS, create_model, get_variant, list_models


def count_params(model) -> int:
  """Number of trainable parameters (``nnx.Param``), BN statistics excluded."""
  import jax
  from flax import nnx
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def as_dtype(model, dtype):
  """A copy of ``model`` in ``dtype``: parameters, BN statistics and every layer's compute
  dtype (``jnp.float64`` needs ``jax.enable_x64``). Float64 runs show whether a float32
  difference is a rounding tie (spec §9) or a real one."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                       state)
  copy = nnx.merge(graphdef, state)
  for _, mod in nnx.iter_modules(copy):
    if getattr(mod, "dtype", None) is not None:
      mod.dtype = dtype
  return copy


def predict(model, x):
  """The model's inference output: ``model.predict(x)`` where a family defines it (the MIM
  encoder's tokens), else ``model(x)`` (class logits). What spike-driven runs, firing
  statistics and energy counts evaluate, for every family."""
  fn = getattr(model, "predict", None)
  return fn(x) if fn is not None else model(x)
