"""Spike-driven inference: an E-SpikeFormer run as a genuinely binary network (spec §1.4).

Paper Proposition 1: SFA trains with integer activations ``S in {0..D}`` and infers with
binary spikes. Every real timestep ``t = 1..T`` expands into ``D`` sub-steps ``d = 1..D``
(the explicit ``T x D`` schedule):

* **Neurons.** Each spiking layer is an IF neuron with soft reset and threshold 1 whose
  membrane receives the layer input ``u`` once per real timestep, plus 0.5 (the bias that
  turns floor into round): ``v_1 = u + 0.5``, ``s_d = H(v_d - 1)``, ``v_{d+1} = v_d - s_d``.
  It fires on its first ``S = floor(clip(u, 0, D) + 0.5)`` sub-steps (front-loaded).
  Between real timesteps the model's ``temporal`` rule applies (independent frames, or IF/LIF
  with soft/hard reset carrying the membrane).
* **Synapses.** Every conv / linear layer after the stem receives only 0/1 spikes, sub-step
  by sub-step, with its weights scaled by ``1 / norm`` (``1/D``; the head and the DVS model use
  1). The currents of the ``D`` sub-steps are integrated on the next membrane; the layer bias
  and the BatchNorm (an affine map of the membrane, foldable into weights and bias) are applied
  once per real timestep.
* **Attention.** ``Q K^T`` is formed from all ``D^2`` sub-step pairs of the Q and K spike
  trains (spike AND spike); ``(Q K^T) V`` accumulates the V train sub-step by sub-step.
* **Membrane shortcut.** The residual stream stays real-valued (spec §1.4 (b)): every branch
  starts with its own spiking layer on it.
* The stem conv is the one layer that sees real values (the image): it does MACs.

With ``rounding='half_up'`` the result equals the integer model exactly up to the float
rounding of the sums (summation order); with the official ``half_even`` it differs where a
membrane sits exactly on a tie ``k + 0.5`` (``stats['mismatch']`` counts them per layer).

Vanilla (binary-firing) models run as they are: one binary spike per real timestep (D = 1).

    logits, stats = spike_driven.run(model, images)
    stats['spikes']['block3.0.attn.q_spike']   # (T, D): binary spikes per real timestep, sub-step
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from spikejax import spiking
from spikejax.models.espikeformer import (
    STAGES, Attention, ConvBlock, ConvBN, DownSampling, ESpikeFormer, MLP, SpikeSepConv,
    TransformerBlock)
from spikejax.models.layers import SpikeNeuron
from spikejax.spiking.neurons import _charge, _reset

Array = jax.Array


def neuron_names(model: nnx.Module) -> dict[int, str]:
  """``id(module) -> 'conv_block1_1.0.sep_conv.spike1'`` for every module of ``model``."""
  return {id(m): ".".join(str(p) for p in path) for path, m in nnx.iter_modules(model)}


@dataclasses.dataclass
class LayerRecord:
  """One weight layer (or spike matrix product) of the spike-driven network.

  ``macs``: dense multiply-accumulates per image and real timestep; ``input``: the name of the
  spiking layer whose spikes it consumes (``None``: real-valued input, i.e. the stem).
  """
  name: str
  kind: str            # 'conv', 'linear', 'matmul'
  macs: int
  input: str | None
  shape: tuple[int, ...] = ()


class _Walker:
  """Runs an ``ESpikeFormer`` sub-step by sub-step; collects spike statistics and layer records."""

  def __init__(self, model: ESpikeFormer, maps: tuple[str, ...] = ()):
    self.model = model
    self.map_names = tuple(maps)
    self.maps: dict[str, Array] = {}         # (T, D, B, H, W) channel-averaged spike maps
    self.names = neuron_names(model)
    self.T = model.spike.time_steps
    self.spikes: dict[str, Array] = {}      # (T, D) spike totals
    self.mismatch: dict[str, Array] = {}    # activations whose count differs from the model's
    self.neurons: dict[str, int] = {}       # neurons per real timestep and image
    self.layers: list[LayerRecord] = []

  # ------------------------------------------------------------------ neurons
  def sub_steps(self, sn: SpikeNeuron) -> int:
    return sn.top if sn.config.firing == "sfa" else 1

  def fire(self, sn: SpikeNeuron, u: Array) -> Array:
    """Membrane input ``u`` (T*B, ...) -> binary train (D, T*B, ...) of the IF-SR neuron."""
    c = sn.config
    name = self.names[id(sn)]
    if c.firing != "sfa":
      train = sn.counts(u)[None]                     # binary spikes: one per real timestep
    elif c.temporal == "independent":
      train = spiking.if_soft_reset_substeps(u, c.spike_max)
    else:  # IF-SR sub-steps inside each real timestep, IF/LIF reset between them (paper §4.1)
      kind, reset = c.temporal.split("_")
      dyn = spiking.NeuronDynamics(tau=c.tau if kind == "lif" else None, reset=reset,
                                   threshold=1.0, v_reset=c.v_reset, decay_input=c.decay_input)
      x_seq = u.reshape((self.T, -1) + u.shape[1:])

      def step(h, x):
        v = _charge(h, x, dyn)
        tr = spiking.if_soft_reset_substeps(v, c.spike_max)
        return _reset(v, jnp.sum(tr, axis=0), dyn), tr

      _, trains = jax.lax.scan(step, jnp.zeros_like(x_seq[0]), x_seq)  # (T, D, B, ...)
      train = jnp.moveaxis(trains, 1, 0).reshape((c.spike_max,) + u.shape)
    d = train.shape[0]
    per_t = train.reshape(d, self.T, -1)
    self.spikes[name] = jnp.sum(per_t, axis=2).T.astype(jnp.float32)        # (T, D)
    self.neurons[name] = per_t.shape[2] // (u.shape[0] // self.T)
    if name in self.map_names:
      if train.ndim != 5:
        raise ValueError(f"spike maps need a spatial layer (N, H, W, C); {name} has shape "
                         f"{u.shape}.")
      m = jnp.mean(train.astype(jnp.float32), axis=-1)               # (D, T*B, H, W)
      self.maps[name] = jnp.moveaxis(m.reshape((d, self.T, -1) + m.shape[2:]), 0, 1)
    ref = sn.counts(u)
    self.mismatch[name] = jnp.sum(jnp.sum(train, axis=0) != ref).astype(jnp.int32)
    return train

  # ------------------------------------------------------------------ synapses
  def synapse(self, layer, train: Array, sn: SpikeNeuron | None, name: str) -> Array:
    """Sub-step currents of ``layer`` (weights / norm, no bias) summed on the membrane + bias."""
    kernel = layer.kernel[...]
    bias = layer.bias[...] if getattr(layer, "bias", None) is not None else None
    scale = 1.0 / sn.norm
    layer.kernel[...] = kernel * jnp.asarray(scale, kernel.dtype)
    if bias is not None:
      layer.bias[...] = jnp.zeros_like(bias)
    try:
      current = layer(train)                          # (D, N, ...): one current per sub-step
    finally:
      layer.kernel[...] = kernel
      if bias is not None:
        layer.bias[...] = bias
    self._record(layer, current.shape[2:-1], name, self.names[id(sn)])
    u = jnp.sum(current, axis=0)
    return u if bias is None else u + bias.astype(u.dtype)

  def _record(self, layer, out_spatial, name, input_name):
    k = layer.kernel[...]
    kind = "conv" if isinstance(layer, nnx.Conv) else "linear"
    positions = 1
    for s in out_spatial:
      positions *= int(s)
    self.layers.append(LayerRecord(name, kind, int(k.size) * positions, input_name,
                                   tuple(k.shape)))

  def conv_bn(self, m: ConvBN, train, sn, name):
    return m.bn(self.synapse(m.conv, train, sn, name + ".conv"))

  # ------------------------------------------------------------------ blocks
  def sep_conv(self, m: SpikeSepConv, x, name):
    x = self.conv_bn(m.pwconv1, self.fire(m.spike1, x), m.spike1, name + ".pwconv1")
    x = self.conv_bn(m.dwconv, self.fire(m.spike2, x), m.spike2, name + ".dwconv")
    return self.conv_bn(m.pwconv2, self.fire(m.spike3, x), m.spike3, name + ".pwconv2")

  def conv_block(self, m: ConvBlock, x, name):
    x = x + self.sep_conv(m.sep_conv, x, name + ".sep_conv")
    y = m.bn1(self.synapse(m.conv1, self.fire(m.spike1, x), m.spike1, name + ".conv1"))
    y = m.bn2(self.synapse(m.conv2, self.fire(m.spike2, y), m.spike2, name + ".conv2"))
    return x + y

  def attention(self, m: Attention, x, name):
    n, h, w, _ = x.shape
    z = self.fire(m.head_spike, x)
    q = self.fire(m.q_spike, self.conv_bn(m.q_conv, z, m.head_spike, name + ".q_conv"))
    k = self.fire(m.k_spike, self.conv_bn(m.k_conv, z, m.head_spike, name + ".k_conv"))
    v = self.fire(m.v_spike, self.conv_bn(m.v_conv, z, m.head_spike, name + ".v_conv"))

    def heads(t):  # (D, n, h, w, C) -> (D, n, heads, N, C/heads)
      return t.reshape(t.shape[0], n, h * w, m.num_heads, -1).transpose(0, 1, 3, 2, 4)

    q, k, v = heads(q), heads(k), heads(v)
    # Q K^T from every (d, e) pair of sub-steps: spike AND spike, accumulated.
    pairs = jnp.einsum("dbhnc,ebhmc->debhnm", q, k)
    attn = jnp.sum(pairs, axis=(0, 1)) * jnp.asarray(
        1.0 / (m.q_spike.norm * m.k_spike.norm), q.dtype)
    # (Q K^T) V: the V train accumulated sub-step by sub-step (weights attn / norm_v).
    o = jnp.sum(jnp.einsum("bhnm,fbhmc->fbhnc", attn, v), axis=0)
    o = o * jnp.asarray(1.0 / m.v_spike.norm, o.dtype)
    tokens, ck, cv = h * w, q.shape[-1] * m.num_heads, v.shape[-1] * m.num_heads
    self.layers.append(LayerRecord(name + ".qk", "matmul", tokens * tokens * ck,
                                   self.names[id(m.q_spike)], (tokens, tokens, ck)))
    self.layers.append(LayerRecord(name + ".av", "matmul", tokens * tokens * cv,
                                   self.names[id(m.v_spike)], (tokens, tokens, cv)))
    o = o * jnp.asarray(m.scale, o.dtype)
    o = o.transpose(0, 2, 1, 3).reshape(n, h, w, -1)
    return self.conv_bn(m.proj_conv, self.fire(m.attn_spike, o), m.attn_spike,
                        name + ".proj_conv")

  def mlp(self, m: MLP, x, name):
    x = m.fc1_bn(self.synapse(m.fc1_conv, self.fire(m.fc1_spike, x), m.fc1_spike,
                              name + ".fc1_conv"))
    return m.fc2_bn(self.synapse(m.fc2_conv, self.fire(m.fc2_spike, x), m.fc2_spike,
                                 name + ".fc2_conv"))

  def block(self, m: TransformerBlock, x, name):
    branches = [lambda y: self.sep_conv(m.sep_conv, y, name + ".sep_conv"),
                lambda y: self.attention(m.attn, y, name + ".attn"),
                lambda y: self.mlp(m.mlp, y, name + ".mlp")]
    for i, branch in enumerate(branches, 1):
      out = branch(x)
      if m.has_layer_scale:
        out = out * getattr(m, f"layer_scale{i}")[...]
      x = x + out
    return x

  def downsample(self, m: DownSampling, x, name):
    if m.encode_spike is None:  # the stem: real-valued image, MACs
      y = m.encode_conv(x)
      self._record(m.encode_conv, y.shape[1:-1], name + ".encode_conv", None)
      return m.encode_bn(y)
    return m.encode_bn(self.synapse(m.encode_conv, self.fire(m.encode_spike, x),
                                    m.encode_spike, name + ".encode_conv"))

  # ------------------------------------------------------------------ network
  def __call__(self, x):
    model = self.model
    model.check_input(x)
    x, _ = model._merge_time(x)
    if model.dtype is not None:
      x = x.astype(model.dtype)
    for stage in STAGES:
      layer = getattr(model, stage)
      if isinstance(layer, nnx.List):
        for i, blk in enumerate(layer):
          fn = self.conv_block if isinstance(blk, ConvBlock) else self.block
          x = fn(blk, x, f"{stage}.{i}")
      else:
        x = self.downsample(layer, x, stage)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
    logits = self.synapse(model.head, self.fire(model.head_spike, pooled), model.head_spike,
                          "head")
    T = self.T
    return jnp.mean(logits.reshape((T, -1) + logits.shape[1:]).astype(jnp.float32), axis=0)


def _check_model(model):
  if not isinstance(model, ESpikeFormer):
    raise TypeError(f"spike-driven inference supports ESpikeFormer models (spikejax.models."
                    f"create_model('espikeformer_...')), got {type(model).__name__}.")


@functools.lru_cache(maxsize=16)
def _compiled(graphdef, maps: tuple[str, ...]):
  def fn(state, x):
    model = nnx.merge(graphdef, state)
    model.eval()
    w = _Walker(model, maps)
    logits = w(x)
    return logits, {"spikes": w.spikes, "mismatch": w.mismatch, "maps": w.maps}
  return jax.jit(fn)


def run(model: ESpikeFormer, x, *, maps: tuple[str, ...] | list[str] = ()
        ) -> tuple[Array, dict[str, Any]]:
  """Runs ``model`` spike-driven on images ``x`` (NHWC, or time-major (T, B, H, W, C)).

  Returns ``(logits, stats)``; ``stats`` has, per spiking layer name, ``spikes``: the binary
  spike totals over the batch per real timestep and sub-step ``(T, D)``; ``neurons``: neurons
  per image and real timestep; ``mismatch``: how many of the layer's counts differ from the
  integer model's own rounding of the same membrane (ties under ``half_even``); plus
  ``schedule`` ``{'time_steps': T, 'sub_steps': D}`` and ``batch``; with ``maps`` (spiking
  layer names), ``maps[name]``: the channel-averaged binary spike maps ``(T, D, B, H, W)``
  (paper Fig. 8). BatchNorm uses running statistics (inference). Jitted; the model passed
  in is not modified.
  """
  _check_model(model)
  x = jnp.asarray(x)
  model.check_input(x)
  neurons = layer_neurons(model, x.shape)
  unknown = [m for m in maps if m not in neurons]
  if unknown:
    raise ValueError(f"unknown spiking layer(s) {unknown} for maps; spiking layers are e.g. "
                     f"{list(neurons)[:4]} (all: spike_driven.layer_neurons(model, shape)).")
  graphdef, state = nnx.split(model)
  logits, stats = _compiled(graphdef, tuple(maps))(state, x)
  return logits, {"spikes": stats["spikes"], "mismatch": stats["mismatch"],
                  "maps": stats["maps"],
                  "neurons": neurons,
                  "schedule": {"time_steps": model.spike.time_steps,
                               "sub_steps": model.spike.spike_max
                               if model.spike.firing == "sfa" else 1},
                  "batch": int(x.shape[1] if x.ndim == 5 else x.shape[0])}


_TRACE_CACHE: dict[Any, _Walker] = {}


def _trace(model: ESpikeFormer, image_shape) -> _Walker:
  """Runs the walker abstractly (``jax.eval_shape``: no compute) to fill its static records."""
  _check_model(model)
  graphdef, state = nnx.split(model)
  key = (graphdef, tuple(image_shape))
  if key in _TRACE_CACHE:
    return _TRACE_CACHE[key]
  box = {}

  def fn(state, x):
    m = nnx.merge(graphdef, state)
    m.eval()
    box["w"] = w = _Walker(m)
    return w(x)

  jax.eval_shape(fn, state, jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32))
  w = box["w"]
  w.spikes, w.mismatch, w.maps, w.model = {}, {}, {}, None  # keep only the static records
  if len(_TRACE_CACHE) > 32:
    _TRACE_CACHE.clear()
  _TRACE_CACHE[key] = w
  return w


def layer_neurons(model: ESpikeFormer, image_shape) -> dict[str, int]:
  """Neurons per image and real timestep of every spiking layer, for inputs of ``image_shape``."""
  return dict(_trace(model, image_shape).neurons)


def layer_records(model: ESpikeFormer, image_shape) -> list[LayerRecord]:
  """Every weight layer and spike matrix product with its dense MACs and its input neuron."""
  return list(_trace(model, image_shape).layers)


def _as_float64(model):
  """A float64 copy of ``model``: parameters, statistics and every layer's compute dtype."""
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda a: a.astype(jnp.float64)
                       if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
  copy = nnx.merge(graphdef, state)
  for _, mod in nnx.iter_modules(copy):
    if getattr(mod, "dtype", None) is not None:
      mod.dtype = jnp.float64
  return copy


def compare(model: ESpikeFormer, x, *, float64: bool = False) -> dict[str, Any]:
  """Spike-driven logits against the integer model's: differences, mismatched activations.

  The two paths sum the same products in a different order (sub-step by sub-step against
  integer activations), so in float32 a membrane within rounding error of a quantiser step
  ``k + 0.5`` can land on either side and the flip propagates. ``float64=True`` runs both in
  float64 (``jax.enable_x64``), where that no longer happens in practice: with ``half_up`` the
  logits then agree to float64 rounding.
  """
  if float64:
    with jax.enable_x64(True):
      res = compare(_as_float64(model), jnp.asarray(x, jnp.float64))
    res["dtype"] = "float64"   # compute dtype (the head returns float32 logits)
    return res
  logits_sd, stats = run(model, x)
  graphdef, state = nnx.split(model)

  @jax.jit
  def integer(state, x):
    m = nnx.merge(graphdef, state)
    m.eval()
    return m(x)

  logits_int = integer(state, jnp.asarray(x))
  diff = jnp.abs(logits_sd - logits_int)
  mism = {k: int(v) for k, v in stats["mismatch"].items()}
  return {"max_abs_logit_diff": float(jnp.max(diff)),
          "max_rel_logit_diff": float(jnp.max(diff) / jnp.maximum(jnp.max(jnp.abs(logits_int)),
                                                                  1e-30)),
          "argmax_agree": float(jnp.mean(jnp.argmax(logits_sd, -1) == jnp.argmax(logits_int,
                                                                                 -1))),
          "mismatched_activations": sum(mism.values()),
          "mismatched_layers": {k: v for k, v in mism.items() if v},
          "rounding": model.spike.rounding, "dtype": str(logits_int.dtype),
          "logits_spike_driven": logits_sd, "logits_integer": logits_int}


def main(argv=None) -> int:
  """``python -m spikejax.analysis.spike_driven --checkpoint DIR [--rounding half_up] --json``:
  spike-driven against integer logits on the eval data of the checkpoint's config."""
  import argparse
  import json
  import numpy as np
  from spikejax.analysis import cli
  from spikejax.data.event_pipeline import model_input
  p = argparse.ArgumentParser(prog="python -m spikejax.analysis.spike_driven",
                              description=main.__doc__)
  cli.add_model_args(p)
  p.add_argument("--float64", action="store_true", help="compare in float64 (jax x64)")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  model, config = cli.load(args)
  n = agree = mism = 0
  max_abs = max_rel = 0.0
  per_step = None
  for batch in cli.eval_batches(config, args):
    keep = np.asarray(batch["mask"]).astype(bool)
    x = model_input(np.asarray(batch["image"])[keep])  # event frames -> time-major
    res = compare(model, x, float64=args.float64)
    _, stats = run(model, x)
    n += len(x)
    agree += res["argmax_agree"] * len(x)
    mism += res["mismatched_activations"]
    max_abs = max(max_abs, res["max_abs_logit_diff"])
    max_rel = max(max_rel, res["max_rel_logit_diff"])
    tot = sum(np.asarray(v) for v in stats["spikes"].values())
    per_step = tot if per_step is None else per_step + tot
  out = {"checkpoint": args.checkpoint, "rounding": model.spike.rounding, "images": n,
         "float64": args.float64,
         "max_abs_logit_diff": max_abs, "max_rel_logit_diff": max_rel,
         "argmax_agree": agree / max(n, 1), "mismatched_activations": mism,
         "spikes_per_substep": np.asarray(per_step).tolist()}
  print(f"{n} images, rounding {out['rounding']}{' (float64)' if args.float64 else ''}: "
        f"max |logit diff| {max_abs:.3g} (relative "
        f"{max_rel:.3g}), predictions agree on {out['argmax_agree'] * 100:.2f} %, "
        f"{mism} activations differ from the integer model's rounding")
  if args.json:
    print(json.dumps(out))
  return 0


if __name__ == "__main__":
  import sys
  sys.exit(main())
