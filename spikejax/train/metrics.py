"""Metrics as JSONL and TensorBoard in the workdir, a progress bar (step, loss, img/s, ETA),
and the effective rank of features (paper Eq. 29) that the MIM evaluation tracks."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def effective_rank(features: jax.Array, *, center: bool = False) -> jax.Array:
  """Effective rank (paper Eq. 29; Roy and Vetterli, 2007) of ``features``: a matrix
  ``(N, C)``, or NHWC / ``(..., C)`` maps flattened to ``(prod(...), C)``.

  With singular values ``sigma_i`` and ``p_i = sigma_i / sum_j sigma_j``,
  ``erank = exp(-sum_i p_i log p_i)``: a continuous count of the dimensions the features
  really use, ``1 <= erank <= rank``. The paper tracks it during MIM pretraining (Fig. 10b: it
  falls with binary spikes and rises with SFA). ``center`` subtracts the column means first.
  Computed in float32; 0 for an all-zero matrix.
  """
  z = jnp.asarray(features, jnp.float32)
  if z.ndim < 2:
    raise ValueError(f"effective_rank needs a matrix (N, C) or feature maps (..., C); got shape "
                     f"{z.shape}.")
  z = z.reshape(-1, z.shape[-1])
  if center:
    z = z - jnp.mean(z, axis=0, keepdims=True)
  s = jnp.linalg.svd(z, compute_uv=False)
  total = jnp.sum(s)
  p = s / jnp.where(total > 0, total, 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def _tensorboard_writer(logdir: str):
  """clu's TensorBoard writer, or None (with a warning) when the ``tensorboard`` package is
  absent: clu's writer needs it and TensorFlow, and importing clu without it first spends
  about 7 s importing TensorFlow (measured: ``time python -c "from clu import
  metric_writers"``) and then fails."""
  import importlib.util
  import logging
  if importlib.util.find_spec("tensorboard") is None:
    logging.getLogger("spikejax").warning(
        "TensorBoard is off: the 'tensorboard' package is not installed (pip install "
        "tensorboard); metrics go to metrics.jsonl only.")
    return None
  try:
    from clu import metric_writers
    return metric_writers.SummaryWriter(logdir)
  except Exception as e:  # noqa: BLE001 - JSONL is always written
    logging.getLogger("spikejax").warning("TensorBoard is off: %s: %s", type(e).__name__, e)
    return None


class MetricWriter:
  """Appends ``{"step": s, ...}`` rows to ``metrics.jsonl``; also TensorBoard when available."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._f = open(self.path, "a")
    self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({k: float(v) for k, v in scalars.items()})
    self._f.write(json.dumps(row) + "\n")
    self._f.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), {k: np.asarray(v) for k, v in scalars.items()})

  def close(self) -> None:
    if not self.enabled:
      return
    self._f.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """tqdm bar showing step, loss, images/s and ETA (no-op when disabled)."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True):
    self._bar = None
    if enabled:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    self._last = initial

  def update(self, step: int, vals: dict[str, float]) -> None:
    if self._bar is None:
      return
    self._bar.update(step - self._last)
    self._last = step
    self._bar.set_postfix(loss=f"{vals.get('loss', float('nan')):.4f}",
                          img_s=f"{vals.get('images_per_s', 0):.0f}")

  def write(self, msg: str) -> None:
    if self._bar is not None:
      self._bar.write(msg)
    else:
      print(msg, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
