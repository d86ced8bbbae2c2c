"""Input pipeline of event-camera data sets: stored event streams -> batches of T frames.

The same sharding, order and determinism as the image pipeline (``pipeline.Dataset``: a batch
is a pure function of (seed, process, epoch, step)); the records are event streams in the
layout of ``spikejax.data.event_datasets`` and are binned into frames at read time
(``spikejax.data.events.events_to_frames``).

Batches: ``image`` float32 ``[B, T, H, W, 2]`` (batch-major; channel 0 OFF, 1 ON; event counts
or 0/1), ``label`` int32 ``[B]``, train ``target`` (one-hot, optionally smoothed), eval
``mask``. Models take time-major input: ``spikejax.data.model_input`` swaps the two axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from spikejax.data import augment as A
from spikejax.data import pipeline as P


@dataclasses.dataclass(frozen=True)
class EventSpec:
  num_classes: int
  sensor_size: tuple[int, int]  # (width, height)
  kind: str = "events"          # 'events': stored streams; 'frame_images': HAR-DVS frames
  default_size: int | None = None


EVENT_SPECS: Mapping[str, EventSpec] = {
    "event_fashion_mnist": EventSpec(10, (34, 34)),   # emulated (spikejax.data.emulate)
    "cifar10_dvs": EventSpec(10, (128, 128)),         # DVS128 recordings (dvs_datasets)
    # pre-rendered DAVIS346 frame images, the official loader's clip (spec §6.1)
    "har_dvs": EventSpec(300, (346, 260), "frame_images", 224),
}


@dataclasses.dataclass(frozen=True)
class FrameConfig:
  """How a stream becomes frames (``events.events_to_frames``).

  Attributes:
    time_steps: T, frames per example (the model's real timesteps).
    split_by: ``'time'`` (T equal time bins over the recording) or ``'count'`` (T chunks of
      equal event numbers).
    mode: ``'count'`` (events per pixel and polarity) or ``'binary'`` (1 where any).
    size: output side (square); default the sensor size (event coordinates are binned:
      ``x * size // width``).
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


def default_augment(name: str) -> P.AugmentConfig:
  """``event_fashion_mnist``: none (short budgets underfit, as for Fashion-MNIST);
  ``cifar10_dvs``: flip + random shift of up to 5 px (the official loader's roll, spec §6.4);
  ``har_dvs``: label smoothing 0.1 (spec §6.3); its clip flips every frame itself (§6.1)."""
  if name == "cifar10_dvs":
    return P.AugmentConfig(crop="pad", padding=5, flip=True)
  if name == "har_dvs":
    return P.AugmentConfig(crop="none", flip=False, label_smoothing=0.1)
  return P.AugmentConfig.none()


def _check_augment(aug: P.AugmentConfig) -> None:
  bad = [f for f, ok in (("crop='rrc'", aug.crop != "rrc"), ("randaugment", not aug.randaugment),
                         ("random erasing", aug.reprob == 0),
                         ("mixup/cutmix", aug.mixup == 0 and aug.cutmix == 0)) if not ok]
  if bad:
    raise ValueError(f"event data supports flip, crop='pad' (a random shift of up to `padding` "
                     f"pixels) and label smoothing; not {', '.join(bad)}.")


class EventDataset(P.Dataset):
  """A per-process shard of an event data set as batches of frames (module docstring)."""

  def __init__(self, name: str, *, split: str, batch_size: int, data_dir: str | None,
               train: bool, seed: int, frames: FrameConfig, augment: P.AugmentConfig | None,
               process_index: int, process_count: int, num_epochs: int | None, download: bool,
               num_workers: int | None, prefetch: int):
    import os
    if name not in EVENT_SPECS:
      raise ValueError(f"unsupported event dataset {name!r}; one of {sorted(EVENT_SPECS)}")
    P.check_sharding(batch_size, seed, process_index, process_count)
    spec = EVENT_SPECS[name]
    self.name, self.split, self.train, self.seed = name, split, train, int(seed)
    self.batch_size, self.local_batch_size = batch_size, batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.num_classes = spec.num_classes
    self.frames = frames
    self.augment = (augment or P.AugmentConfig.none()) if train else None
    if self.augment is not None:
      _check_augment(self.augment)
    self.num_epochs = num_epochs if train else 1
    self.prefetch = prefetch
    self.num_workers = num_workers or min(8, os.cpu_count() or 1)
    self._pool = None
    self._perm_cache = None

    builder = _event_builder(name, data_dir, download)
    meta = builder.info.metadata or {}
    self.sensor_size = tuple(meta.get("sensor_size", spec.sensor_size))
    self.spec = spec
    size = frames.size or spec.default_size or self.sensor_size[0]
    self.image_size = size
    self.channels = 2
    self.image_shape = (frames.time_steps, size, size, 2)
    source = P._open_source(builder, split, images=False)  # pylint: disable=protected-access
    if source is None:
      raise ValueError(f"{name} in {builder.data_dir} has no random access; prepare it with "
                       "file_format='array_record'")
    self._source = source
    self._set_shard(len(source))

  def _frames(self, record: Mapping[str, Any], index: int, epoch: int) -> np.ndarray:
    from spikejax.data import events as E  # pylint: disable=import-outside-toplevel
    f = self.frames
    if self.spec.kind == "frame_images":
      from spikejax.data import dvs_datasets  # pylint: disable=import-outside-toplevel
      rng = P._rng(self.seed, P._TAG_EXAMPLE, 0, epoch, index)  # pylint: disable=protected-access
      return dvs_datasets.hardvs_clip(record["frames"], f.time_steps, train=self.train, rng=rng,
                                      size=self.image_size,
                                      resize=round(self.image_size * 256 / 224))
    ev = record["events"]
    stream = E.EventStream.from_arrays(
        np.asarray(ev["t"], np.int64), np.asarray(ev["x"]), np.asarray(ev["y"]),
        np.asarray(ev["p"]), sensor_size=self.sensor_size)
    size = None if f.size is None else (f.size, f.size)
    return E.events_to_frames(stream, f.time_steps, split_by=f.split_by, mode=f.mode,
                              size=size)

  def get_batch(self, epoch: int, step: int) -> P.Batch:
    idx, valid = self.batch_indices(epoch, step)
    rng = P._rng(self.seed, P._TAG_BATCH, self.process_index, epoch, step)  # pylint: disable=protected-access
    global_idx = idx + self.shard[0]
    records = P._read_records(self._source, global_idx)  # pylint: disable=protected-access
    labels = np.asarray([r["label"] for r in records], np.int32)
    args = [(r, int(g), epoch) for r, g in zip(records, global_idx, strict=True)]
    x = np.stack(self._map(lambda a: self._frames(*a), args)) if records else \
        np.zeros((0,) + self.image_shape, np.float32)
    if self.train:
      x = self._augment(x, rng)
      target = A.smooth_labels(labels, self.num_classes, self.augment.label_smoothing)
      return {"image": x, "label": labels, "target": target}
    return P.eval_batch(x, labels, valid, self.local_batch_size)

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


def _event_builder(name: str, data_dir: str | None, download: bool):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  # importing registers the builders with tfds
  from spikejax.data import dvs_datasets, event_datasets  # pylint: disable=import-outside-toplevel,unused-import

  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if name == "event_fashion_mnist" and download:
      event_datasets.prepare_event_fashion_mnist(data_dir)
      return tfds.builder(name, data_dir=data_dir)
    hint = ("spikejax.data.event_datasets.prepare_event_fashion_mnist(data_dir)"
            if name == "event_fashion_mnist" else
            f"`tfds build {name} --manual_dir=<your copy> --file_format=array_record "
            "--imports spikejax.data.dvs_datasets`")
    raise FileNotFoundError(f"event data set {name!r} is not prepared in {builder.data_dir}; "
                            f"build it with {hint}")
  return builder


def model_input(x):
  """Batch-major frames ``(B, T, H, W, C)`` -> the models' time-major ``(T, B, H, W, C)``;
  images ``(B, H, W, C)`` pass unchanged. Works on numpy and JAX arrays (and in ``jit``)."""
  if x.ndim == 5:
    return x.swapaxes(0, 1)
  return x
