"""Metrics as JSONL and TensorBoard (scalars, firing histograms) in the workdir, a progress
bar (step, loss, img/s, ETA), and the effective rank of features (paper Eq. 29) that the MIM
evaluation tracks."""

from __future__ import annotations

import json
import os
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np

from spikejax.train import paths


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


class TensorBoardWriter:
  """TensorBoard event files written with the ``tensorboard`` package's own event writer and
  protos: no TensorFlow import (``from clu import metric_writers`` spent about 7 s importing
  TensorFlow first, measured with ``time python -c ...``)."""

  def __init__(self, logdir: str):
    if paths.is_remote(logdir):
      self._writer = BucketEventFiles(logdir)
    else:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      self._writer = EventFileWriter(logdir, flush_secs=30)

  def _add(self, step: int, values) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    from tensorboard.compat.proto import summary_pb2
    self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                     for k, v in scalars.items()])

  def value_histograms(self, step: int, histograms: dict[str, np.ndarray]) -> None:
    """``{tag: counts}`` with ``counts[v]`` the number of occurrences of the integer ``v``
    (a spiking layer's activations 0..D): one bucket per value."""
    from tensorboard.compat.proto import summary_pb2
    values = []
    for tag, counts in histograms.items():
      c = np.asarray(counts, np.float64).reshape(-1)
      v = np.arange(len(c), dtype=np.float64)
      seen = np.nonzero(c)[0]
      proto = summary_pb2.HistogramProto(
          min=float(v[seen[0]]) if len(seen) else 0.0,
          max=float(v[seen[-1]]) if len(seen) else 0.0,
          num=float(c.sum()), sum=float((c * v).sum()), sum_squares=float((c * v * v).sum()),
          bucket_limit=(v + 0.5).tolist(), bucket=c.tolist())
      values.append(summary_pb2.Summary.Value(tag=tag, histo=proto))
    self._add(step, values)

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """``image``: uint8 ``[H, W]`` or ``[H, W, C]`` (C = 1, 3 or 4), stored as PNG."""
    import io
    from PIL import Image
    from tensorboard.compat.proto import summary_pb2
    a = np.asarray(image, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).save(buf, "PNG")
    proto = summary_pb2.Summary.Image(height=a.shape[0], width=a.shape[1],
                                      colorspace=1 if a.ndim == 2 else a.shape[-1],
                                      encoded_image_string=buf.getvalue())
    self._add(step, [summary_pb2.Summary.Value(tag=tag, image=proto)])

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class BucketEventFiles:
  """``EventFileWriter``'s interface for a bucket, which cannot append: the events since the
  last flush go to a new object ``events.out.tfevents.<time>.<host>.<pid>.<part>`` (TFRecord
  framing, each part opening with the file-version event). TensorBoard reads a directory's
  event files in name order, so the parts read as one file. ``add_event`` flushes by itself
  when the oldest unflushed event is ``flush_secs`` old."""

  def __init__(self, logdir: str, flush_secs: float = 120.0):
    from tensorboard.summary.writer.record_writer import RecordWriter
    import io
    self._io, self._record_writer = io, RecordWriter
    self._prefix = paths.join(logdir, "events.out.tfevents.%010d.%s.%d" % (
        time.time(), socket.gethostname(), os.getpid()))
    self.flush_secs, self._part, self._since = float(flush_secs), 0, None
    self._new_buffer()

  def _new_buffer(self) -> None:
    from tensorboard.compat.proto import event_pb2
    self._buf = self._io.BytesIO()
    self._records = self._record_writer(self._buf)
    self._pending = 0
    self._records.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
                        .SerializeToString())

  def add_event(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._pending += 1
    self._since = self._since or time.time()
    if time.time() - self._since >= self.flush_secs:
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    paths.write_bytes(f"{self._prefix}.{self._part:06d}", self._buf.getvalue())
    self._part += 1
    self._since = None
    self._new_buffer()

  def close(self) -> None:
    self.flush()


def _tensorboard_writer(logdir: str) -> TensorBoardWriter | None:
  """A ``TensorBoardWriter``, or None (with a warning) when the ``tensorboard`` package is
  absent; JSONL is written either way."""
  import importlib.util
  import logging
  if importlib.util.find_spec("tensorboard") is None:
    logging.getLogger("spikejax").warning(
        "TensorBoard is off: the 'tensorboard' package is not installed (pip install "
        "tensorboard); metrics go to metrics.jsonl only.")
    return None
  return TensorBoardWriter(logdir)


class MetricWriter:
  """Appends ``{"step": s, ...}`` rows to ``metrics.jsonl``; also TensorBoard when available."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.path = paths.join(workdir, "metrics.jsonl")
    self._f = paths.AppendLog(self.path)
    self._tb = _tensorboard_writer(paths.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({k: float(v) for k, v in scalars.items()})
    self._f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      self._tb.scalars(step, scalars)

  def flush(self) -> None:
    """Everything written so far reaches the workdir (in a bucket: uploaded now)."""
    if self.enabled:
      self._f.flush()
      if self._tb is not None:
        self._tb.flush()

  def write_histograms(self, step: int, histograms: dict[str, np.ndarray]) -> None:
    """Value histograms (``TensorBoardWriter.value_histograms``) to TensorBoard only."""
    if self.enabled and self._tb is not None and histograms:
      self._tb.value_histograms(step, histograms)
      self._tb.flush()

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """uint8 pictures (``TensorBoardWriter.image``) to TensorBoard only."""
    if self.enabled and self._tb is not None and images:
      for tag, picture in images.items():
        self._tb.image(step, tag, picture)
      self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._f.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def supersede_rows(workdir: str, step: int) -> int:
  """Moves the rows of ``metrics.jsonl`` logged after ``step`` (work lost to a crash, redone
  from the checkpoint at ``step``) to ``metrics.superseded.jsonl``; returns how many. The
  file is rewritten atomically, so the rows up to ``step`` appear exactly once."""
  path = paths.join(workdir, "metrics.jsonl")
  if not paths.exists(path):
    return 0
  lines = [line + "\n" for line in paths.read_text(path).split("\n") if line.strip()]
  keep, late = [], []
  for line in lines:
    try:
      row_step = int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):   # a line cut by the crash
      late.append(line)
      continue
    (keep if row_step <= step else late).append(line)
  if not late:
    return 0
  paths.append_text(paths.join(workdir, "metrics.superseded.jsonl"), "".join(late))
  paths.write_text(path, "".join(keep))
  return len(late)


def read_metrics(workdir: str) -> list[dict]:
  text = paths.read_text(paths.join(workdir, "metrics.jsonl"))
  return [json.loads(line) for line in text.split("\n") if line.strip()]


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

  def set_total(self, total: int) -> None:
    if self._bar is not None:
      self._bar.total = total
      self._bar.refresh()

  def write(self, msg: str) -> None:
    if self._bar is not None:
      self._bar.write(msg)
    else:
      print(msg, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
