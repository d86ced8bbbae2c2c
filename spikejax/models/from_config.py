"""Experiment config -> ``create_model``: the one mapping from a config to a model.

A config (``configs/*.py``, or any mapping with the same keys) names the model
(``model_name``), its options (``model``), the training mode (``mode``: ``MODES``), the neuron
options (``spike``, spec §1), the input channels (``channels``) and the compute dtype
(``dtype``: ``DTYPES``). The trainer, ``launch/aot_compile.py``, ``spikejax.bench``,
``spikejax.analysis.demo`` and ``spikejax.train.checkpoints.load_trained`` all build their
models through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from spikejax.models.layers import SpikeConfig
from spikejax.models.registry import create_model, get_variant

# The two training modes of paper §4 / Fig. 7 (neuron options; ``config.spike`` adds T, D, ...).
MODES: dict[str, dict[str, Any]] = {
    # SFA: integer firing inside each real timestep (paper §4).
    "sfa": dict(firing="sfa", temporal="independent"),
    # Vanilla direct training: binary spikes, LIF (tau 2, hard reset), image repeated over T.
    "vanilla": dict(firing="binary", temporal="lif_hard", tau=2.0, detach_reset=True),
    # The ANN twin: every spiking neuron replaced by ReLU (same synapses), the reference for
    # what the neurons cost (``launch/aot_compile.py --ann_twin``); not a training recipe.
    "ann": dict(firing="relu", temporal="independent"),
}

# ``config.dtype`` -> the compute dtype (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ConfigError(ValueError):
  """A config that cannot run; raised before anything is built or compiled."""


def _plain(node) -> dict[str, Any]:
  if node is None:
    return {}
  d = node.to_dict() if hasattr(node, "to_dict") else dict(node)
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def _get(config, key, default=None):
  return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def model_kwargs(config) -> dict[str, Any]:
  """``create_model`` keyword arguments from ``config.model``, ``config.mode``,
  ``config.spike`` and ``config.channels`` (later ones win)."""
  kw = _plain(_get(config, "model"))
  mode = _get(config, "mode")
  if mode not in MODES:
    raise ConfigError(f"config.mode must be one of {sorted(MODES)}, got {mode!r}.")
  kw.update(MODES[mode])
  kw.update(_plain(_get(config, "spike")))
  channels = _get(config, "channels")
  if channels is not None:
    kw["in_channels"] = channels
  return kw


def model_dtype(config):
  """The compute dtype named by ``config.dtype`` (default float32)."""
  name = _get(config, "dtype") or "float32"
  if name not in DTYPES:
    raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def check(config) -> None:
  """Raises ``ConfigError`` for an unknown model, mode, neuron option or dtype."""
  try:
    get_variant(_get(config, "model_name"))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  kw = model_kwargs(config)
  v = get_variant(_get(config, "model_name"))
  config_cls = getattr(v.build, "config_cls", None)
  if config_cls is not None:   # the family's own checks (e.g. SpikformerConfig.remat), no model
    fields = {f.name for f in dataclasses.fields(config_cls)}
    opts = {k: val for k, val in {**v.config, **kw}.items() if k in fields}
    try:
      config_cls(**opts)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"bad model config: {e}") from None
  spike_fields = {f.name for f in dataclasses.fields(SpikeConfig)}
  try:
    SpikeConfig(**{k: v for k, v in kw.items() if k in spike_fields})
  except (ValueError, TypeError) as e:
    raise ConfigError(f"bad neuron config: {e}") from None
  model_dtype(config)


def total_stride(config) -> int | None:
  """The product of the model's ``strides`` (its input-to-last-stage downsampling) for the
  config's model and options, or None for a family built without a ``strides`` field."""
  import math
  v = get_variant(_get(config, "model_name"))
  config_cls = getattr(v.build, "config_cls", None)
  defaults = {f.name: f.default for f in dataclasses.fields(config_cls)} if config_cls else {}
  strides = _plain(_get(config, "model")).get("strides", v.config.get("strides",
                                                                      defaults.get("strides")))
  return None if strides is None or strides is dataclasses.MISSING else math.prod(strides)


def family(config) -> str:
  """The registered family of ``config.model_name`` (``ConfigError`` if unknown)."""
  try:
    return get_variant(_get(config, "model_name")).family
  except ValueError as e:
    raise ConfigError(str(e)) from None


def create_from_config(config, *, num_classes: int, rngs, **overrides):
  """``create_model(config.model_name, ...)`` with ``model_kwargs(config)``, the config's dtype
  and ``overrides`` (e.g. ``img_size`` from the data)."""
  return create_model(_get(config, "model_name"), num_classes=num_classes, rngs=rngs,
                      dtype=model_dtype(config), **{**model_kwargs(config), **overrides})
