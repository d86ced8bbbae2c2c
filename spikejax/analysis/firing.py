"""Firing statistics of every spiking layer, collected inside the jitted eval step (spec §7).

Each neuron with ``record=True`` sows the histogram of its counts per real timestep
(``(T, top + 1)``, ``top = D`` for SFA, 1 for binary spikes) during the traced call, so one
batch costs one device-to-host transfer of a few numbers per layer, never a per-layer sync.
From the histograms, per layer:

* ``mean``: the mean integer activation per neuron and real timestep (the SOP firing rate of
  spec §7: spikes summed over the D sub-steps), in ``[0, D]``;
* ``fractions``: the fraction of counts equal to ``0..D``; ``nonzero``: ``1 - fractions[0]``;
* ``nsfr``: ``(T, D)``: NSFR per real timestep and sub-step, ``P(S_t >= d)`` (front-loaded
  trains, paper §5.3): non-increasing in ``d`` for SFA; for vanilla binary spikes one value
  per real timestep (flat over ``t``).

    stats = firing.collect(model, batches, max_batches=10)
    stats.layers['block3.0.attn.q_spike'].nsfr
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spikejax.data.event_pipeline import model_input
from spikejax.models import predict
from spikejax.spiking import record
from spikejax.spiking.neurons import Neuron as SpikeNeuron
from spikejax.spiking.record import FiringStats, LayerFiring, sown_histograms


def spiking_layers(model: nnx.Module) -> list[tuple[str, SpikeNeuron]]:
  """``(name, neuron)`` for every spiking neuron, in definition order."""
  return record.spiking_layers(model)


@functools.lru_cache(maxsize=16)
def _eval_step(graphdef):
  """(state, images, labels) -> (number correct, {layer: (T, top+1) histogram}), jitted."""

  def step(state, images, labels):
    model = nnx.merge(graphdef, state)
    model.eval()
    for _, sn in spiking_layers(model):
      sn.record = True
    out, inter = nnx.capture(predict, nnx.Intermediate)(model, images)
    hists = sown_histograms(inter)
    correct = jnp.sum(jnp.argmax(out, -1) == labels) if labels is not None else 0
    return correct, hists

  return jax.jit(step)


def firing_eval_step(model: nnx.Module):
  """The jitted eval step with firing statistics, for ``(images, labels)``; see ``collect``."""
  graphdef, state = nnx.split(model)
  fn = _eval_step(graphdef)
  return lambda images, labels=None: fn(state, images, labels)


def collect(model: nnx.Module, batches: Iterable, *, max_batches: int | None = None
            ) -> FiringStats:
  """Firing statistics of ``model`` (eval mode, running BN statistics) over ``batches``.

  ``batches`` yields arrays of images or dicts with ``image`` (and optionally ``label`` and
  ``mask``, the eval pipeline's padding mask: padded examples are only excluded from the
  accuracy, so pass unpadded data for exact statistics).
  """
  step = firing_eval_step(model)
  names = [n for n, _ in spiking_layers(model)]
  if not names:
    raise TypeError(f"{type(model).__name__} has no spiking neurons: firing statistics need a "
                    f"spiking model (spikejax.models.create_model(...)).")
  heads = {"head_spike"}   # the classification head's neuron (norm 1) of ESpikeFormer
  total: dict[str, np.ndarray] = {}
  n_batches = n_images = n_correct = 0
  have_labels = True
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    if isinstance(batch, dict):
      images, labels, mask = batch["image"], batch.get("label"), batch.get("mask")
    else:
      images, labels, mask = batch, None, None
    if labels is not None and np.ndim(labels) != 1:   # class maps: no image accuracy
      labels = None
    if mask is not None:  # drop the eval pipeline's padding rows (one extra compile at most)
      keep = np.asarray(mask).astype(bool)
      if not keep.all():
        images = np.asarray(images)[keep]
        labels = None if labels is None else np.asarray(labels)[keep]
      if not keep.any():
        continue
    if isinstance(batch, dict):  # pipeline batches of event frames are (B, T, ...)
      images = model_input(images)
    lab = None if labels is None else jnp.asarray(labels)
    correct, hists = step(jnp.asarray(images), lab)
    hists, correct = jax.device_get((hists, correct))       # one transfer per batch
    for k, v in hists.items():
      total[k] = total.get(k, 0) + np.asarray(v, np.float64)
    n_batches += 1
    n_images += int(np.shape(images)[-4])
    if labels is None:
      have_labels = False
    else:
      n_correct += int(correct)
  if n_batches == 0:
    raise ValueError("no batches: pass at least one batch of images to firing.collect.")
  layers = {n: LayerFiring(n, total[n], head=n in heads) for n in names if n in total}
  acc = n_correct / n_images if have_labels and n_images else None
  return FiringStats(layers, n_batches, n_images, acc)


def main(argv=None) -> int:
  """``python -m spikejax.analysis.firing --checkpoint DIR --batches N [--json]``: per-layer
  firing statistics of a trained model on its config's eval data."""
  import argparse
  import json
  from spikejax.analysis import cli
  p = argparse.ArgumentParser(prog="python -m spikejax.analysis.firing", description=main.__doc__)
  cli.add_model_args(p)
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  model, config = cli.load(args)
  stats = collect(model, cli.eval_batches(config, args))
  print(f"{'layer':44s} {'mean':>7s} {'nonzero':>8s}  NSFR per sub-step")
  for layer in stats.layers.values():
    print(f"{layer.name[:44]:44s} {layer.mean:7.4f} {layer.nonzero:8.4f}  "
          + " ".join(f"{v:.4f}" for v in layer.nsfr.reshape(-1)))
  acc = "" if stats.accuracy is None else f", accuracy {stats.accuracy:.4f}"
  print(f"{stats.images} images{acc}; mean rate {stats.mean_rate():.4f}; network NSFR "
        + " ".join(f"{v:.4f}" for v in stats.nsfr_curve()))
  if args.json:
    print(json.dumps(stats.as_dict()))
  return 0


if __name__ == "__main__":
  import sys
  sys.exit(main())
