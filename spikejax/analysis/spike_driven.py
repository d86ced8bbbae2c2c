"""Spike-driven inference: any registered model run as a genuinely binary network (spec §1.4).

Paper Proposition 1: SFA trains with integer activations ``S in {0..D}`` and infers with
binary spikes. Every real timestep ``t = 1..T`` expands into ``D`` sub-steps ``d = 1..D``
(the explicit ``T x D`` schedule). Spike-driven execution is a mode of the same modules, with
no code per family (``spikejax.spiking.neurons.to_spike_driven``):

* **Neurons.** Every neuron is swapped for its ``SubstepIF`` stand-in: an IF neuron with soft
  reset and threshold 1 whose membrane receives the layer input ``u`` once per real timestep,
  plus 0.5 (the bias that turns floor into round): ``v_1 = u + 0.5``, ``s_d = H(v_d - 1)``,
  ``v_{d+1} = v_d - s_d``. It fires on its first ``S = floor(clip(u, 0, D) + 0.5)`` sub-steps
  (front-loaded) and emits a ``SpikeTrain``. Between real timesteps the neuron's own dynamics
  apply (independent frames, or IF/LIF with soft/hard reset carrying the membrane).
* **Synapses.** Every conv / linear layer fed a train (``spikejax.models.layers.Conv`` /
  ``Linear``) receives only 0/1 spikes, sub-step by sub-step, with its weights scaled by
  ``1 / norm``; the ``D`` currents are summed on the next membrane; the bias and the BatchNorm
  (an affine map of the membrane) act once per real timestep.
* **Attention.** Products of two trains (``spikejax.spiking.spike_einsum``) are formed from all
  ``D^2`` sub-step pairs (spike AND spike); a train times a real matrix accumulates the train
  sub-step by sub-step.
* **Real-valued inputs.** Layers fed real values (the stem conv on the image, RepConv's second
  conv, a non-spiked head) do MACs; the op records say which (``layer_records``).

With ``rounding='half_up'`` the result equals the integer model exactly up to the float
rounding of the sums (summation order); with the official ``half_even`` it differs where a
membrane sits exactly on a tie ``k + 0.5`` (``stats['mismatch']`` counts them per layer).
Binary-firing models run as they are: one binary spike per real timestep (D = 1).

    logits, stats = spike_driven.run(model, images)
    stats['spikes']['block3.0.attn.q_spike']   # (T, D): binary spikes per real timestep, sub-step
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from spikejax.models import as_dtype, predict
from spikejax.spiking import record
from spikejax.spiking.neurons import to_spike_driven
from spikejax.spiking.record import OpRecord as LayerRecord

Array = jax.Array


def neuron_names(model: nnx.Module) -> dict[int, str]:
  """``id(module) -> 'conv_block1_1.0.sep_conv.spike1'`` for every module of ``model``."""
  return {id(m): record.module_name(path) for path, m in nnx.iter_modules(model)}


def _check_model(model):
  if not any(True for _ in record.spiking_layers(model)):
    raise TypeError(f"spike-driven inference needs a spiking model (spikejax.models."
                    f"create_model(...)); {type(model).__name__} has no spiking neurons.")
  if getattr(model, "spike", None) is None:
    raise TypeError(f"{type(model).__name__} has no `spike` neuron spec (SpikeConfig): build "
                    f"it with spikejax.models.create_model.")


def _spike_driven_call(graphdef, state, x, maps=()):
  """Merges a private copy, swaps in sub-step neurons, runs it; returns output and recorder."""
  model = nnx.merge(graphdef, state)
  model.eval()
  to_spike_driven(model)
  T = model.spike.time_steps
  batch = int(x.shape[1] if x.ndim == 5 else x.shape[0])
  rec = record.SpikeDrivenRecorder(neuron_names(model), maps=maps, time_steps=T, batch=batch)
  with record.spike_driven_recording(rec):
    out = predict(model, x)
  return out, rec


@functools.lru_cache(maxsize=16)
def _compiled(graphdef, maps: tuple[str, ...]):
  def fn(state, x):
    out, rec = _spike_driven_call(graphdef, state, x, maps)
    return out, {"spikes": rec.spikes, "mismatch": rec.mismatch, "maps": rec.maps}
  return jax.jit(fn)


def run(model, x, *, maps: tuple[str, ...] | list[str] = ()) -> tuple[Array, dict[str, Any]]:
  """Runs ``model`` spike-driven on images ``x`` (NHWC, or time-major (T, B, H, W, C)).

  Returns ``(output, stats)``: the output of ``spikejax.models.predict`` (class logits; the
  MIM encoder's tokens); ``stats`` has, per spiking layer name, ``spikes``: the binary spike
  totals over the batch per real timestep and sub-step ``(T, D)``; ``neurons``: neurons per
  image and real timestep; ``mismatch``: how many of the layer's counts differ from the integer
  model's own rounding of the same membrane (ties under ``half_even``); plus ``schedule``
  ``{'time_steps': T, 'sub_steps': D}`` and ``batch``; with ``maps`` (spiking layer names),
  ``maps[name]``: the channel-averaged binary spike maps ``(T, D, B, H, W)`` (paper Fig. 8).
  BatchNorm uses running statistics (inference). Jitted; the model passed in is not modified.
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
  out, stats = _compiled(graphdef, tuple(maps))(state, x)
  return out, {"spikes": stats["spikes"], "mismatch": stats["mismatch"],
               "maps": stats["maps"], "neurons": neurons,
               "schedule": {"time_steps": model.spike.time_steps,
                            "sub_steps": model.spike.sub_steps},
               "batch": int(x.shape[1] if x.ndim == 5 else x.shape[0])}


_TRACE_CACHE: dict[Any, record.SpikeDrivenRecorder] = {}


def _trace(model, image_shape) -> record.SpikeDrivenRecorder:
  """Runs the spike-driven model abstractly (``jax.eval_shape``: no compute) for its records."""
  _check_model(model)
  graphdef, state = nnx.split(model)
  key = (graphdef, tuple(image_shape))
  if key in _TRACE_CACHE:
    return _TRACE_CACHE[key]
  box = {}

  def fn(state, x):
    out, box["rec"] = _spike_driven_call(graphdef, state, x)
    return out

  jax.eval_shape(fn, state, jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32))
  rec = box["rec"]
  rec.spikes, rec.mismatch, rec.maps = {}, {}, {}   # keep only the static records
  if len(_TRACE_CACHE) > 32:
    _TRACE_CACHE.clear()
  _TRACE_CACHE[key] = rec
  return rec


def layer_neurons(model, image_shape) -> dict[str, int]:
  """Neurons per image and real timestep of every spiking layer, for inputs of ``image_shape``."""
  return dict(_trace(model, image_shape).neurons)


def layer_records(model, image_shape) -> list[LayerRecord]:
  """Every weight layer and spike matrix product with its dense MACs and its input neuron."""
  return list(_trace(model, image_shape).ops)


def compare(model, x, *, float64: bool = False) -> dict[str, Any]:
  """Spike-driven logits against the integer model's: differences, mismatched activations.

  The two paths sum the same products in a different order (sub-step by sub-step against
  integer activations), so in float32 a membrane within rounding error of a quantiser step
  ``k + 0.5`` can land on either side and the flip propagates. ``float64=True`` runs both in
  float64 (``jax.enable_x64``), where that no longer happens in practice: with ``half_up`` the
  logits then agree to float64 rounding.
  """
  if float64:
    with jax.enable_x64(True):
      res = compare(as_dtype(model, jnp.float64), jnp.asarray(x, jnp.float64))
    res["dtype"] = "float64"   # compute dtype (the head returns float32 logits)
    return res
  logits_sd, stats = run(model, x)
  graphdef, state = nnx.split(model)

  @jax.jit
  def integer(state, x):
    m = nnx.merge(graphdef, state)
    m.eval()
    return predict(m, x)

  logits_int = integer(state, jnp.asarray(x))
  # a structured output (a detector's boxes, scores, classes, ...): every leaf compared
  pairs = list(zip(jax.tree.leaves(logits_sd), jax.tree.leaves(logits_int), strict=True))
  diff = max(_leaf_diff(a, b) for a, b in pairs)
  scale = max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))) for _, b in pairs)
  if isinstance(logits_sd, jax.Array):
    agree = float(jnp.mean(jnp.argmax(logits_sd, -1) == jnp.argmax(logits_int, -1)))
  else:   # the integer leaves (classes, validity) equal everywhere
    agree = float(all(bool(jnp.all(a == b)) for a, b in pairs if a.dtype.kind in "biu"))
  dtype = next((b.dtype for _, b in pairs if b.dtype.kind == "f"), pairs[0][1].dtype)
  mism = {k: int(v) for k, v in stats["mismatch"].items()}
  return {"max_abs_logit_diff": diff,
          "max_rel_logit_diff": diff / max(scale, 1e-30),
          "argmax_agree": agree,
          "mismatched_activations": sum(mism.values()),
          "mismatched_layers": {k: v for k, v in mism.items() if v},
          "rounding": model.spike.rounding, "dtype": str(dtype),
          "logits_spike_driven": logits_sd, "logits_integer": logits_int}


def _leaf_diff(a, b) -> float:
  dt = jnp.float64 if jnp.float64 in (a.dtype, b.dtype) else jnp.float32
  return float(jnp.max(jnp.abs(a.astype(dt) - b.astype(dt)))) if a.size else 0.0


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
    nb = int(keep.sum())
    n += nb
    agree += res["argmax_agree"] * nb
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
