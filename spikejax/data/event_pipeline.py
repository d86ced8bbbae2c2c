"""Input pipeline of event-camera data sets (``DatasetSpec.kind == 'event'``) -> batches of
T frames.

The same sharding, order and determinism as the image pipeline (``spikejax.data.batching``: a
batch is a pure function of (seed, process, epoch, step)). ``EventDataset(spec, ...)`` reads
the source of its spec's builder: records of event streams in the layout of
``spikejax.data.event_datasets`` (``spec.event_format == 'events'``), binned into frames at
read time (``spikejax.data.events.events_to_frames``), or pre-rendered frame images
(``'frame_images'``: the HAR-DVS clip, ``dvs_datasets.hardvs_clip``, spec section 6.1).

Batches: ``image`` float32 ``[B, T, H, W, 2]`` (batch-major; channel 0 OFF, 1 ON; event counts
or 0/1), ``label`` int32 ``[B]``, train ``target`` (one-hot, optionally smoothed), eval
``mask``. Models take time-major input: ``spikejax.data.model_input`` swaps the two axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from spikejax.data import augment as A
from spikejax.data.augment import AugmentConfig
from spikejax.data.batching import Batch, Dataset, eval_batch
from spikejax.data.registry import EVENT_SPECS, DatasetSpec

__all__ = ["EVENT_SPECS", "EventDataset", "FrameConfig", "frame_config", "model_input"]


@dataclasses.dataclass(frozen=True)
class FrameConfig:
  """How a stream becomes frames (``events.events_to_frames``).

  Attributes:
    time_steps: T, frames per example (the model's real timesteps).
    split_by: ``'time'`` (T equal time bins over the recording) or ``'count'`` (T chunks of
      equal event numbers).
    mode: ``'count'`` (events per pixel and polarity) or ``'binary'`` (1 where any).
    size: output side (square); default the spec's frame side (``DatasetSpec.input_shape[0]``;
      event coordinates are binned: ``x * size // width``).
  """
  time_steps: int = 4
  split_by: str = "time"
  mode: str = "count"
  size: int | None = None

  def __post_init__(self):
    if not isinstance(self.time_steps, int) or self.time_steps < 1:
      raise ValueError(f"time_steps must be an integer >= 1, got {self.time_steps!r}")
    if self.split_by not in ("time", "count"):
      raise ValueError(f"split_by must be 'time' or 'count', got {self.split_by!r}")
    if self.mode not in ("count", "binary"):
      raise ValueError(f"frame mode must be 'count' or 'binary', got {self.mode!r}")
    if self.size is not None and self.size < 1:
      raise ValueError(f"frame size must be >= 1, got {self.size!r}")


def frame_config(frames: FrameConfig | Mapping[str, Any] | None,
                 image_size: int | None = None) -> FrameConfig:
  """The ``frames=`` argument of ``get_dataset`` as a ``FrameConfig``; ``image_size`` sets
  ``size``."""
  if frames is None:
    frames = FrameConfig()
  elif hasattr(frames, "to_dict"):  # an ml_collections.ConfigDict
    frames = FrameConfig(**frames.to_dict())
  elif isinstance(frames, Mapping):
    frames = FrameConfig(**dict(frames))
  if image_size is not None:
    frames = dataclasses.replace(frames, size=image_size)
  return frames


def _check_augment(aug: AugmentConfig) -> None:
  bad = [f for f, ok in (("crop='rrc'", aug.crop != "rrc"), ("randaugment", not aug.randaugment),
                         ("random erasing", aug.reprob == 0),
                         ("mixup/cutmix", aug.mixup == 0 and aug.cutmix == 0)) if not ok]
  if bad:
    raise ValueError(f"event data supports flip, crop='pad' (a random shift of up to `padding` "
                     f"pixels) and label smoothing; not {', '.join(bad)}.")


class EventDataset(Dataset):
  """A per-process shard of an event data set as batches of frames (module docstring).

  Attributes: those of ``batching.Dataset``, and ``frames`` (the ``FrameConfig``),
  ``sensor_size`` ((width, height)), ``image_size`` (frame side S), ``channels`` (2),
  ``image_shape`` (``(T, S, S, 2)``).
  """

  def __init__(self, spec: DatasetSpec, *, split: str, batch_size: int, data_dir: str | None,
               train: bool, seed: int, frames: FrameConfig, augment: AugmentConfig | None,
               process_index: int, process_count: int, num_epochs: int | None, download: bool,
               num_workers: int | None, prefetch: int):
    if spec.kind != "event":
      raise ValueError(f"{spec.name} is an {spec.kind} data set, not an event one")
    self._init_common(spec, split=split, batch_size=batch_size, train=train, seed=seed,
                      process_index=process_index, process_count=process_count,
                      num_epochs=num_epochs, num_workers=num_workers, prefetch=prefetch)
    self.frames = frames
    self.augment = (augment or AugmentConfig.none()) if train else None
    if self.augment is not None:
      _check_augment(self.augment)

    self._source = spec.builder(spec, split, data_dir=data_dir, download=download)
    self.sensor_size = tuple(int(v) for v in self._source.metadata.get("sensor_size",
                                                                       spec.sensor_size))
    size = frames.size or spec.image_size
    self.image_size = size
    self.channels = 2
    self.image_shape = spec.example_shape(size, time_steps=frames.time_steps)
    # events_to_frames bins to (size, size); at the sensor's own size that is the identity
    self._bin_size = None if (size, size) == self.sensor_size[::-1] else (size, size)
    self._set_shard(len(self._source))

  def _frames(self, record: Mapping[str, Any], index: int, epoch: int) -> np.ndarray:
    # imported here: dvs_datasets imports tensorflow_datasets, events imports jax
    from spikejax.data import dvs_datasets  # pylint: disable=import-outside-toplevel
    from spikejax.data import events as E  # pylint: disable=import-outside-toplevel
    f = self.frames
    if self.spec.event_format == "frame_images":
      rng = self._example_rng(index, epoch)
      return dvs_datasets.hardvs_clip(record["frames"], f.time_steps, train=self.train, rng=rng,
                                      size=self.image_size,
                                      resize=round(self.image_size * 256 / 224))
    ev = record["events"]
    stream = E.EventStream.from_arrays(
        np.asarray(ev["t"], np.int64), np.asarray(ev["x"]), np.asarray(ev["y"]),
        np.asarray(ev["p"]), sensor_size=self.sensor_size)
    return E.events_to_frames(stream, f.time_steps, split_by=f.split_by, mode=f.mode,
                              size=self._bin_size)

  def get_batch(self, epoch: int, step: int) -> Batch:
    idx, valid = self.batch_indices(epoch, step)
    rng = self._batch_rng(epoch, step)
    global_idx = idx + self.shard[0]
    records = self._source.read(global_idx)
    labels = np.asarray([r["label"] for r in records], np.int32)
    args = [(r, int(g), epoch) for r, g in zip(records, global_idx, strict=True)]
    x = np.stack(self._map(lambda a: self._frames(*a), args)) if records else \
        np.zeros((0,) + self.image_shape, np.float32)
    if self.train:
      x = self._augment(x, rng)
      target = A.smooth_labels(labels, self.num_classes, self.augment.label_smoothing)
      return {"image": x, "label": labels, "target": target}
    return eval_batch(x, labels, valid, self.local_batch_size)

  def _augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same flip and shift for all T frames of an example (zeros shifted in)."""
    aug = self.augment
    b = len(x)
    if aug.flip:
      flip = rng.random(b) < 0.5
      x = np.where(flip[:, None, None, None, None], x[:, :, :, ::-1], x)
    if aug.crop == "pad" and aug.padding > 0:
      p = aug.padding
      h, w = x.shape[2:4]
      padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)))
      oy, ox = rng.integers(0, 2 * p + 1, b), rng.integers(0, 2 * p + 1, b)
      x = np.stack([padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(b)])
    return np.ascontiguousarray(x, np.float32)


def model_input(x):
  """Batch-major frames ``(B, T, H, W, C)`` -> the models' time-major ``(T, B, H, W, C)``;
  images ``(B, H, W, C)`` pass unchanged. Works on numpy and JAX arrays (and in ``jit``)."""
  if x.ndim == 5:
    return x.swapaxes(0, 1)
  return x
