"""Evaluators, configured per experiment (big_vision style ``config.evals``).

``config.evals`` names the evaluators run at every evaluation, as a dict ``{name: options}``
or a list of options with a ``name``::

  c.evals = {"eval": {"type": "task"},                      # the task's metrics
             "firing": {"type": "firing"},                  # per-layer firing -> firing.json
             "train_acc": {"type": "task", "split": "train[:2000]", "prefix": "train_eval"}}

Options: ``type`` (a key of ``EVALUATORS``: ``task``, ``firing``, ``spike_maps``; default: the
name), ``split`` (default
``config.eval_split``), ``batch_size`` (``config.eval_batch_size``), ``max_steps``
(``config.max_eval_steps``), ``prefix`` of the logged scalars (default ``eval``; history rows
use the task's names under ``eval``, ``<prefix>_<metric>`` otherwise). Without ``config.evals``
the evaluators are the task's own on ``config.eval_split`` plus, with
``config.firing_stats``, the firing statistics (spec §7) and the spike maps of the same pass.

Evaluators over the same data share one pass: the task's jitted eval step, with the spiking
layers sowing their count histograms when an evaluator of the pass wants them. The first
``task`` evaluator is the main one: its metric picks the best checkpoint and it is run again
on the EMA weights.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spikejax.models.from_config import ConfigError
from spikejax.spiking import record
from spikejax.train import sharding as sharding_lib

OPTIONS = ("type", "name", "split", "batch_size", "max_steps", "prefix")


@dataclasses.dataclass
class Result:
  """What an evaluator adds to one evaluation: scalars, history-row entries, JSON files, and
  histograms (``{tag: counts}``, ``counts[v]`` = how often the value ``v`` occurred)."""
  scalars: dict[str, float] = dataclasses.field(default_factory=dict)
  row: dict[str, Any] = dataclasses.field(default_factory=dict)
  files: dict[str, Any] = dataclasses.field(default_factory=dict)
  histograms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)   # uint8 pictures


class Evaluator:
  """Base class: turns one pass's task metrics (and firing histograms) into a ``Result``."""
  records_firing = False
  map_examples = 0        # > 0: the pass records spike maps of this many examples

  def __init__(self, name: str, prefix: str, task):
    self.name, self.prefix, self.task = name, prefix, task

  def key(self, metric: str, row_name: str | None = None) -> str:
    """History-row key of ``metric``: the task's row name under ``eval``, else prefixed."""
    if self.prefix == "eval":
      return row_name or metric
    return f"{self.prefix}_{metric}"

  def result(self, metrics: Mapping[str, Any], firing: Mapping[str, np.ndarray] | None,
             *, step: int, epoch: float) -> Result:
    raise NotImplementedError(f"evaluator {type(self).__name__} defines no result()")


class TaskEvaluator(Evaluator):
  """The task's own metrics (``Task.aggregate``; logged as ``Task.logged``)."""

  def result(self, metrics, firing, *, step, epoch):
    out = Result()
    present = tuple(k for k in self.task.optional_logged if k in metrics)
    for k in self.task.logged + present:
      out.scalars[f"{self.prefix}/{k}"] = metrics[k]
      out.row[self.key(k, self.task.row_name(k))] = metrics[k]
    for fname, content in self.task.result_files(metrics).items():
      if self.prefix != "eval":
        stem, dot, ext = fname.rpartition(".")
        fname = f"{stem}_{self.prefix}.{ext}" if dot else f"{fname}_{self.prefix}"
      out.files[fname] = {"step": step, "epoch": epoch, **content}
    return out


class FiringEvaluator(Evaluator):
  """Per-layer firing of the evaluation (spec §7): mean rate and network NSFR per sub-step as
  scalars, every layer's statistics in ``firing.json`` (``firing_<prefix>.json``)."""
  records_firing = True

  def result(self, metrics, firing, *, step, epoch):
    stats = record.FiringStats.from_histograms(firing or {})
    out = Result()
    out.scalars[f"{self.prefix}/firing_rate"] = stats.mean_rate()
    for i, v in enumerate(stats.nsfr_curve(), 1):
      out.scalars[f"{self.prefix}/nsfr_{i}"] = float(v)
    out.row[self.key("firing_rate")] = out.scalars[f"{self.prefix}/firing_rate"]
    fname = "firing.json" if self.prefix == "eval" else f"firing_{self.prefix}.json"
    out.files[fname] = {"step": step, "epoch": epoch,
                        "layers": {k: v.as_dict() for k, v in stats.layers.items()}}
    for k, v in stats.layers.items():   # integer activations 0..top, over T
      out.histograms[f"{self.prefix}_firing/{k}"] = v.histogram.sum(0)
    return out


class SpikeMapEvaluator(Evaluator):
  """Spike maps of the first batch's first 4 examples (paper Fig. 8, as firing rates per
  position): one picture, ``<prefix>/spike_maps``, with a row per example, the input, then up
  to 8 spatial spiking layers, finest first, each scaled to its largest rate
  (``record.spike_map_grid``); its columns are named in ``spike_maps.json``
  (``spike_maps_<prefix>.json``)."""
  map_examples = 4

  def result(self, metrics, firing, *, step, epoch):
    out = Result()
    maps = metrics.get("maps") or {}
    if maps and metrics.get("map_inputs") is not None:
      picture, shown = record.spike_map_grid(metrics["map_inputs"], maps)
      out.images[f"{self.prefix}/spike_maps"] = picture
      fname = "spike_maps.json" if self.prefix == "eval" else f"spike_maps_{self.prefix}.json"
      out.files[fname] = {"step": step, "epoch": epoch, "columns": ["input", *shown],
                          "rows": len(metrics["map_inputs"])}
    return out


EVALUATORS: dict[str, type[Evaluator]] = {"task": TaskEvaluator, "firing": FiringEvaluator,
                                          "spike_maps": SpikeMapEvaluator}


def register(type_name: str, cls: type[Evaluator]) -> type[Evaluator]:
  """Adds an evaluator type (usable as ``config.evals[...].type``)."""
  EVALUATORS[type_name] = cls
  return cls


@dataclasses.dataclass
class EvalPass:
  """One pass over ``split``: the evaluators that read it."""
  split: str
  batch_size: int
  max_steps: int | None
  evaluators: list[Evaluator]

  @property
  def firing(self) -> bool:
    return any(e.records_firing for e in self.evaluators)

  @property
  def maps(self) -> int:
    return max((e.map_examples for e in self.evaluators), default=0)


def _plain(node) -> dict[str, Any]:
  return node.to_dict() if hasattr(node, "to_dict") else dict(node)


def _entries(config) -> list[dict[str, Any]]:
  evals = config.get("evals")
  if evals is None:
    out = [{"name": "eval", "type": "task"}]
    if config.get("firing_stats"):
      out.append({"name": "firing", "type": "firing"})
      out.append({"name": "spike_maps", "type": "spike_maps"})
    return out
  if hasattr(evals, "items"):
    return [{"name": name, **_plain(opts)} for name, opts in evals.items()]
  entries = [_plain(e) for e in evals]
  for e in entries:
    e.setdefault("name", e.get("type"))
  return entries


def from_config(config, task, num_devices: int | None = None) -> list[EvalPass]:
  """The evaluation passes ``config`` asks for (``ConfigError`` naming a bad entry)."""
  passes: dict[tuple, EvalPass] = {}
  seen: dict[tuple, str] = {}
  for e in _entries(config):
    name = e.get("name")
    unknown = sorted(set(e) - set(OPTIONS))
    if unknown:
      raise ConfigError(f"evals[{name!r}]: unknown option(s) {unknown}; options are "
                        f"{list(OPTIONS)}.")
    kind = e.get("type") or name
    if kind not in EVALUATORS:
      raise ConfigError(f"evals[{name!r}]: type must be one of {sorted(EVALUATORS)}, got "
                        f"{kind!r}.")
    prefix = e.get("prefix") or "eval"
    if (kind, prefix) in seen:
      raise ConfigError(f"evals[{name!r}] and evals[{seen[kind, prefix]!r}] both log {kind} "
                        f"results under {prefix!r}; give one a different prefix.")
    seen[kind, prefix] = name
    split = e.get("split") or config.eval_split
    batch_size = int(e.get("batch_size") or config.eval_batch_size)
    if num_devices and batch_size % num_devices:
      raise ConfigError(f"evals[{name!r}]: batch_size={batch_size} is not divisible by the "
                        f"{num_devices} devices.")
    max_steps = e.get("max_steps", config.get("max_eval_steps"))
    key = (split, batch_size, max_steps)
    if key not in passes:
      passes[key] = EvalPass(split, batch_size, max_steps, [])
    passes[key].evaluators.append(EVALUATORS[kind](name, prefix, task))
  return list(passes.values())


def main_evaluator(passes: list[EvalPass]) -> tuple[EvalPass, TaskEvaluator] | tuple[None, None]:
  """The first ``task`` evaluator and its pass (best checkpoint, EMA evaluation)."""
  for p in passes:
    for e in p.evaluators:
      if isinstance(e, TaskEvaluator):
        return p, e
  return None, None


@functools.lru_cache(maxsize=None)
def jit_eval_fn(fn: Callable) -> Callable:
  """``fn(model, batch, index) -> sums`` jitted, with the sown firing histograms added as
  ``firing`` (empty unless the model's neurons record; built once per ``fn``)."""

  @nnx.jit
  def eval_step(model, batch, index):
    out, inter = nnx.capture(fn, nnx.Intermediate)(model, batch, index)
    return {**out, "firing": record.sown_histograms(inter),
            "maps": record.sown_histograms(inter, "spike_map")}

  return eval_step


def _addressable(x):
  """``x`` whole on this process (an all-gather over processes where it is sharded)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils   # pylint: disable=import-outside-toplevel
    return multihost_utils.process_allgather(x, tiled=True)
  return x


def eval_step_for(task, config) -> Callable:
  return jit_eval_fn(task.eval_fn(config))


def evaluate(model, eval_step, ds, mesh, max_steps=None, *, task, firing: bool = False,
             maps: int = 0) -> dict[str, Any]:
  """``task.aggregate`` of the eval step's sums over ``ds``; with ``firing``, also every
  spiking layer's histogram of counts per real timestep (sown inside the jitted step; one host
  transfer per batch) under ``firing``. Padding rows of the last eval batch are excluded from
  the task's metrics (its eval step weighs them by ``mask``) but not from the histograms.
  Outputs named in ``task.collected`` are per-example arrays (e.g. detections), gathered from
  every process, not summed: each batch's go through ``task.collect`` (which may compact them)
  and ``aggregate`` finds the list of those under ``totals['collected']``.
  ``maps=k``: the first batch also records the spike maps of its first ``k`` examples
  (``maps``: ``{layer: (k, H, W)}``, their inputs under ``map_inputs``)."""
  totals: dict[str, Any] = {}
  collected = frozenset(getattr(task, "collected", ()))
  hists: dict[str, np.ndarray] = {}
  res_maps, map_inputs = {}, None
  model.eval()
  try:
    for i, batch in enumerate(ds):
      if max_steps is not None and i >= max_steps:
        break
      k = min(maps, len(batch["image"])) if i == 0 else 0
      with record.recording(model, firing, maps=k):
        out = eval_step(model, sharding_lib.shard_batch(batch, mesh), jnp.asarray(i, jnp.int32))
        out = jax.device_get({k: _addressable(v) if k in collected else v
                              for k, v in out.items()})
      if collected:                         # per-example outputs: kept batch by batch
        totals.setdefault("collected", []).append(
            task.collect({k: np.asarray(out[k]) for k in collected if k in out}))
      for key, v in out.items():
        if key not in ("firing", "maps") and key not in collected:   # sums (e.g. a confusion
          v = np.asarray(v, np.float64)
          totals[key] = totals.get(key, 0.0) + (float(v) if v.ndim == 0 else v)
      for key, v in out.get("firing", {}).items():
        hists[key] = hists.get(key, 0) + np.asarray(v, np.float64)
      if k:
        res_maps = {key: np.asarray(v) for key, v in out.get("maps", {}).items()}
        map_inputs = np.asarray(batch["image"][:k])
  finally:
    model.train()
  res = dict(task.aggregate(totals))
  if firing:
    res["firing"] = hists
  if maps:
    res["maps"], res["map_inputs"] = res_maps, map_inputs
  return res
