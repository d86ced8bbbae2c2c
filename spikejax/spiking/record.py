"""Firing records that the training loop and the analysis tools both read (spec §7).

A neuron with ``record=True`` sows ``spike_hist``, the ``(T, top + 1)`` histogram of its counts
per real timestep (``top = D`` for SFA, 1 for binary spikes), as ``nnx.Intermediate`` inside the
traced call; ``sown_histograms`` reads them back by layer name. ``LayerFiring`` and
``FiringStats`` turn the histograms into rates, value fractions and the NSFR curve.
"""

from __future__ import annotations

import contextlib
import functools
import dataclasses
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx

from spikejax.spiking.spike_train import is_train


@dataclasses.dataclass
class LayerFiring:
  """Firing statistics of one spiking layer from its count histogram."""
  name: str
  histogram: np.ndarray          # (T, top + 1) counts of each value per real timestep
  head: bool = False

  @property
  def total(self) -> float:
    return float(self.histogram.sum())

  @property
  def fractions(self) -> np.ndarray:
    h = self.histogram.sum(0)
    return h / max(h.sum(), 1.0)

  @property
  def mean(self) -> float:
    """Mean integer activation (spikes per neuron and real timestep)."""
    f = self.fractions
    return float(np.dot(np.arange(f.shape[0]), f))

  @property
  def nonzero(self) -> float:
    return float(1.0 - self.fractions[0])

  @property
  def nsfr(self) -> np.ndarray:
    """``(T, top)``: ``P(S_t >= d)`` for ``d = 1..top`` (spec §7 NSFR)."""
    h = self.histogram
    tail = np.cumsum(h[:, ::-1], axis=1)[:, ::-1][:, 1:]   # counts with S >= d
    return tail / np.maximum(h.sum(1, keepdims=True), 1.0)

  def as_dict(self) -> dict[str, Any]:
    return {"mean": self.mean, "nonzero": self.nonzero,
            "fractions": self.fractions.tolist(), "nsfr": self.nsfr.tolist(),
            "neurons_seen": self.total, "head": self.head}


@dataclasses.dataclass
class FiringStats:
  """Per-layer firing of a model over some data; layer order is the forward order."""
  layers: dict[str, LayerFiring]
  batches: int
  images: int
  accuracy: float | None = None

  def body(self) -> list[LayerFiring]:
    """The spiking layers except the classification head's neuron."""
    return [l for l in self.layers.values() if not l.head]

  def mean_rate(self) -> float:
    """Mean integer activation over all body neurons (weighted by neuron count)."""
    body = self.body()
    tot = sum(l.total for l in body)
    return sum(l.mean * l.total for l in body) / max(tot, 1.0)

  def nsfr_curve(self) -> np.ndarray:
    """Network NSFR over the whole ``T x D`` schedule, in time order (length ``T * top``)."""
    body = self.body()
    tot = sum(l.total for l in body)
    curve = sum(l.nsfr * l.total for l in body) / max(tot, 1.0)
    return np.asarray(curve).reshape(-1)

  def as_dict(self) -> dict[str, Any]:
    return {"batches": self.batches, "images": self.images, "accuracy": self.accuracy,
            "mean_rate": self.mean_rate(), "nsfr_curve": self.nsfr_curve().tolist(),
            "layers": {k: v.as_dict() for k, v in self.layers.items()}}

  @classmethod
  def from_histograms(cls, hists: dict[str, np.ndarray], *, heads=("head_spike",),
                      batches: int = 0, images: int = 0, accuracy=None) -> "FiringStats":
    return cls({k: LayerFiring(k, np.asarray(v), head=k in heads) for k, v in hists.items()},
               batches, images, accuracy)


def module_name(path) -> str:
  return ".".join(str(p) for p in path)


def spiking_layers(model: nnx.Module) -> list[tuple[str, Any]]:
  """``(name, neuron)`` for every spiking neuron of ``model``, in definition order.

  Neurons are the modules whose class sets ``spiking_neuron = True``
  (``spikejax.spiking.neurons.Neuron`` and its subclasses).
  """
  return [(module_name(path), m) for path, m in nnx.iter_modules(model)
          if getattr(type(m), "spiking_neuron", False)]


@contextlib.contextmanager
def recording(model: nnx.Module, on: bool = True, maps: int = 0) -> Iterator[None]:
  """Within the block every neuron of ``model`` sows its histogram (``record = on``) and,
  with ``maps=k``, every spatial neuron the spike map of the first ``k`` examples."""
  neurons = [m for _, m in spiking_layers(model)]
  for sn in neurons:
    sn.record = on
    sn.record_map = int(maps)
  try:
    yield
  finally:
    for sn in neurons:
      sn.record = False
      sn.record_map = 0


def sown_histograms(intermediates, kind: str = "spike_hist") -> dict[str, jax.Array]:
  """``{layer name: (T, top + 1) histogram}`` from ``nnx.capture(..., nnx.Intermediate)``;
  ``kind="spike_map"``: ``{layer name: (k, H, W) spike map}`` instead."""
  hists = {}
  for path, var in nnx.to_flat_state(intermediates):
    if path[-1] != kind:
      continue
    v = var.get_value()
    if isinstance(v, tuple):   # a neuron called more than once (a shared head): every call
      v = functools.reduce(lambda a, b: a + b, v) if kind == "spike_hist" else v[0]
    hists[module_name(path[:-1])] = v
  return hists


def spike_map_grid(images: np.ndarray, maps: dict[str, np.ndarray], *, gap: int = 2,
                   max_layers: int = 8) -> tuple[np.ndarray, list[str]]:
  """One uint8 picture of spike maps: a row per example, the input first (scaled to 0..255),
  then one map per spatial layer (nearest-upsampled to the input size; 0..255 = firing from 0
  to the column's largest value over the examples: channel-averaged rates are small, the
  absolute ones are in ``firing.json``), ``gap`` dark pixels between cells. Layers are ordered by resolution (finest first), then
  name; of more than ``max_layers``, evenly spaced ones are shown (the first and the last
  included). ``images``: ``(k, H, W, C)`` or event frames ``(k, T, H, W, C)`` (averaged over
  T and C). Returns the picture and the layers shown, in column order."""
  x = np.asarray(images, np.float32)
  x = x.mean(axis=tuple(range(1, x.ndim - 3))) if x.ndim > 4 else x
  x = x.mean(-1)
  k, H, W = x.shape
  lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
  cols = [(x - lo) / np.maximum(hi - lo, 1e-12)]
  names = sorted(maps, key=lambda n: (-np.shape(maps[n])[1] * np.shape(maps[n])[2], n))
  if len(names) > max_layers:
    names = [names[i] for i in np.linspace(0, len(names) - 1, max_layers).round().astype(int)]
  shown = names
  for name in shown:
    m = np.asarray(maps[name], np.float32)[:k]
    rows = np.minimum(np.arange(H) * m.shape[1] // H, m.shape[1] - 1)
    colx = np.minimum(np.arange(W) * m.shape[2] // W, m.shape[2] - 1)
    m = np.clip(m[:, rows][:, :, colx], 0.0, 1.0)
    cols.append(m / max(float(m.max()), 1e-12))
  n = len(cols)
  out = np.zeros((k * H + (k - 1) * gap, n * W + (n - 1) * gap), np.uint8)
  for i in range(k):
    for j, c in enumerate(cols):
      out[i * (H + gap):i * (H + gap) + H, j * (W + gap):j * (W + gap) + W] = \
          np.round(255 * c[i]).astype(np.uint8)
  return out, shown


# --------------------------------------------------------------------------- spike-driven runs


@dataclasses.dataclass
class OpRecord:
  """One weight layer (or spike matrix product) of a network run spike-driven.

  ``macs``: dense multiply-accumulates per image and real timestep; ``input``: the name of the
  spiking layer whose spikes it consumes (``None``: a real-valued input, e.g. the stem).
  """
  name: str
  kind: str            # 'conv', 'linear', 'matmul'
  macs: int
  input: str | None
  shape: tuple[int, ...] = ()


class SpikeDrivenRecorder:
  """What one traced spike-driven call records (set up by ``spikejax.analysis.spike_driven``).

  Static records (``ops``, ``neurons`` per image and real timestep) and traced statistics
  (``spikes`` ``(T, D)`` totals, ``mismatch`` counts, ``maps``) keyed by module name; modules
  are named by their path in the model through ``names`` (``id(module) -> path``).
  """

  def __init__(self, names: dict[int, str], *, maps: tuple[str, ...] = (), batch: int = 1,
               time_steps: int = 1):
    self.names = names
    self.map_names = tuple(maps)
    self.batch = batch
    self.time_steps = time_steps
    self.ops: list[OpRecord] = []
    self.neurons: dict[str, int] = {}
    self.spikes: dict[str, jax.Array] = {}
    self.mismatch: dict[str, jax.Array] = {}
    self.maps: dict[str, jax.Array] = {}

  def name(self, module) -> str:
    return self.names.get(id(module), f"<unnamed {type(module).__name__}>")

  def per_image(self, leading: int) -> int:
    """Rows of a merged leading axis per image and timestep: 1 for ``T * B`` (images), ``R``
    for the ``T * B * R`` RoIs of a detector's heads (so counts stay per image)."""
    n = int(leading) // max(self.time_steps * self.batch, 1)
    return max(n, 1)


_ACTIVE: list[SpikeDrivenRecorder] = []


@contextlib.contextmanager
def spike_driven_recording(recorder: SpikeDrivenRecorder) -> Iterator[SpikeDrivenRecorder]:
  _ACTIVE.append(recorder)
  try:
    yield recorder
  finally:
    _ACTIVE.remove(recorder)


def active_recorder() -> SpikeDrivenRecorder | None:
  return _ACTIVE[-1] if _ACTIVE else None


def synapse(layer, kind: str, inputs, output_shape) -> None:
  """Records a conv/linear layer: dense MACs per image and timestep, and its input layer."""
  rec = active_recorder()
  if rec is None:
    return
  k = layer.kernel[...]
  per_example = 1
  for s in output_shape[1:-1]:     # output positions per example (leading axis: T * B)
    per_example *= int(s)
  per_example *= rec.per_image(output_shape[0])
  source = rec.name(inputs.source) if is_train(inputs) else None
  rec.ops.append(OpRecord(rec.name(layer), kind, int(k.size) * per_example, source,
                          tuple(k.shape)))


def real_op(name: str, kind: str, macs_per_image: int, shape=()) -> None:
  """Records an operation on real values outside any layer (e.g. a detector's RoIAlign): MACs
  per image and timestep, no input neuron (so energy counts it as MACs)."""
  rec = active_recorder()
  if rec is not None:
    rec.ops.append(OpRecord(name, kind, int(macs_per_image), None, tuple(shape)))


def matmul(spec: str, a, b, *, op=None, name: str = "matmul") -> None:
  """Records a spike matrix product: MACs per image and timestep, the first train's source."""
  rec = active_recorder()
  if rec is None:
    return
  ins, _ = spec.replace(" ", "").split("->")
  sa, sb = ins.split(",")
  sizes = dict(zip(sa, a.shape))
  sizes.update(zip(sb, b.shape))
  total = 1
  for v in sizes.values():
    total *= int(v)
  per_example = total // int(a.shape[0]) * rec.per_image(a.shape[0])   # leading: T * B
  source = next(rec.name(t.source) for t in (a, b) if is_train(t))
  prefix = rec.name(op) if op is not None else ""
  shape = tuple(int(sizes[c]) for c in dict.fromkeys(sa[1:] + sb[1:]))
  rec.ops.append(OpRecord(f"{prefix}.{name}" if prefix else name, "matmul", per_example,
                          source, shape))


@contextlib.contextmanager
def paused(model: nnx.Module) -> Iterator[None]:
  """Within the block no neuron of ``model`` sows anything (histograms, spike maps); outside
  it each records as before (e.g. extra test-time views that the firing records leave out)."""
  neurons = [m for _, m in spiking_layers(model)]
  saved = [(sn.record, sn.record_map) for sn in neurons]
  for sn in neurons:
    sn.record, sn.record_map = False, 0
  try:
    yield
  finally:
    for sn, (rec, rmap) in zip(neurons, saved, strict=True):
      sn.record, sn.record_map = rec, rmap
