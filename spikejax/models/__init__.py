"""E-SpikeFormer model zoo (Flax NNX)."""

from spikejax.models.layers import BatchNorm, Conv, Linear, SpikeConfig, SpikeNeuron
from spikejax.models.espikeformer import ESpikeFormer, ESpikeFormerConfig, STAGES
from spikejax.models.spikformer import (LARGE_STAGES, Spikformer, SpikformerConfig,
                                        SpikformerEncoder, upsample_mask)
from spikejax.models.registry import VARIANTS, create_model, get_variant, list_models


def count_params(model) -> int:
  """Number of trainable parameters (``nnx.Param``), BN statistics excluded."""
  import jax
  from flax import nnx
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def predict(model, x):
  """The model's inference output: ``model.predict(x)`` where a family defines it (the MIM
  encoder's tokens), else ``model(x)`` (class logits). What spike-driven runs, firing
  statistics and energy counts evaluate, for every family."""
  fn = getattr(model, "predict", None)
  return fn(x) if fn is not None else model(x)
