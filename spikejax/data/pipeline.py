"""``get_dataset``: look the data set up in the registry once, hand its spec to its pipeline.

The top of ``spikejax.data``: it imports the registry (``registry.py``) and both pipelines
(``images.py`` for ``kind='image'``, ``event_pipeline.py`` for ``kind='event'``); nothing in
``spikejax.data`` imports it back. It also re-exports the names this module used to define
(``SPECS``, ``DatasetSpec``, ``AugmentConfig``, ``Dataset``, ``load_split_arrays``, ...).
"""

from __future__ import annotations

from typing import Any, Mapping

from spikejax.data import transforms as T
from spikejax.data.augment import AugmentConfig, augment_config
from spikejax.data.batching import Batch, Dataset, check_sharding, eval_batch, resolve_process
from spikejax.data.det_augment import DetPipelineConfig, det_pipeline_config
from spikejax.data.det_pipeline import DetectionDataset
from spikejax.data.event_pipeline import EventDataset, FrameConfig, frame_config
from spikejax.data.images import ImageDataset, load_split_arrays
from spikejax.data.registry import DATASETS, EVENT_SPECS, SPECS, DatasetSpec, get_spec
from spikejax.data.seg_augment import SegPipelineConfig, seg_pipeline_config
from spikejax.data.seg_pipeline import SegmentationDataset

# the dense-prediction kinds: (pipeline config from ``augment``, its class, the Dataset, the
# spec field holding the data set's default pipeline)
DENSE = {"segmentation": (seg_pipeline_config, SegPipelineConfig, SegmentationDataset, "seg"),
         "detection": (det_pipeline_config, DetPipelineConfig, DetectionDataset, "det")}

__all__ = [
    "AugmentConfig", "Batch", "DATASETS", "Dataset", "DatasetSpec", "EVENT_SPECS",
    "EventDataset", "ImageDataset", "SPECS", "check_sharding", "eval_batch", "get_dataset",
    "load_split_arrays",
]


def get_dataset(name: str | DatasetSpec, *, split: str, batch_size: int,
                data_dir: str | None = None, train: bool, seed: int = 0,
                image_size: int | None = None,
                augment: AugmentConfig | Mapping[str, Any] | str | None = "default",
                process_index: int | None = None, process_count: int | None = None,
                channels: int | None = None, crop_pct: float = T.DEFAULT_CROP_PCT,
                interpolation: str = "bicubic", num_epochs: int | None = None,
                download: bool = True, num_workers: int | None = None,
                prefetch: int = 2,
                frames: FrameConfig | Mapping[str, Any] | None = None) -> Dataset:
  """A per-process shard of split ``split`` of a registered data set as numpy batches.

  Args:
    name: a registered name (``spikejax.data.list_datasets()``: ``'fashion_mnist'``,
      ``'cifar10'``, ``'imagenet2012'``, ``'event_fashion_mnist'``, ``'cifar10_dvs'``,
      ``'har_dvs'``, and any ``register``-ed one) or a ``DatasetSpec``.
    split: e.g. ``'train'``, ``'test'``, ``'validation'``, ``'train[:90%]'`` (tfds splits).
    batch_size: *global* batch size; each process yields ``batch_size // process_count``.
    data_dir: tfds data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    train: shuffle every epoch, augment, drop the remainder, add soft ``target``s; else one
      ordered pass over the whole shard, the last batch zero-padded with ``mask`` = 0.
    seed: seed of the shuffles and augmentations (>= 0).
    image_size: output side; default ``spec.input_shape[0]`` (28 / 32 / 224 / 34 / 128 / 224).
      Images are fitted per ``spec.fit``: Fashion-MNIST zero-padded centrally (``32``: 28 ->
      32), CIFAR-10 resized, ImageNet eval resized to ``floor(image_size / crop_pct)`` and
      center-cropped. Event sets: the frame side (sets ``frames.size``).
    augment: ``'default'`` (``spec.augment``), ``None``/``'none'``, an ``AugmentConfig`` or a
      mapping of its fields. Ignored when ``train=False``. Segmentation / detection sets: a
      ``SegPipelineConfig`` / ``DetPipelineConfig`` or a mapping of its fields (eval keeps
      their non-random options: label mapping, eval resize, canvas, instance rows, masks).
    process_index, process_count: this process's shard; default ``jax.process_index()`` /
      ``jax.process_count()``.
    channels: output channels; 3 replicates a grey channel. Event sets: 2 (OFF, ON) only.
    crop_pct: center-crop fraction of ``fit='center_crop'`` sets (224/232: resize 232, crop 224).
    interpolation: PIL filter for resizes ('bicubic', 'bilinear', ...).
    num_epochs: training epochs that ``iter()`` yields (``None``: endless).
    download: prepare the data set if its builder does not find it (Fashion-MNIST from the
      local Debian files, never the network; data sets downloaded by hand never).
    num_workers: threads for per-example work (decode / RRC / RandAugment / frames).
    prefetch: batches prepared ahead on a background thread (0: synchronous).
    frames: event data sets only: a ``FrameConfig`` or a mapping of its fields
      (``time_steps``, ``split_by``, ``mode``, ``size``). Their batches are
      ``[B, T, H, W, 2]``.
  """
  spec = name if isinstance(name, DatasetSpec) else get_spec(name)
  process_index, process_count = resolve_process(process_index, process_count)
  if spec.kind in DENSE:
    if frames is not None:
      raise ValueError(f"frames= applies to event data sets, not {spec.name!r}")
    make_config, config_cls, dataset_cls, default = DENSE[spec.kind]
    # eval keeps the pipeline's non-random options (label mapping / instance rows and masks,
    # eval resize, canvas), no random op
    pipe = make_config(augment, getattr(spec, default))
    if not train:
      pipe = config_cls.none(pipe)
    return dataset_cls(spec, split=split, batch_size=batch_size, data_dir=data_dir,
                       train=train, seed=seed, image_size=image_size, augment=pipe,
                       process_index=process_index, process_count=process_count,
                       channels=channels, num_epochs=num_epochs, download=download,
                       num_workers=num_workers, prefetch=prefetch)
  augment = augment_config(augment, spec.augment) if train else None
  common = dict(split=split, batch_size=batch_size, data_dir=data_dir, train=train, seed=seed,
                augment=augment, process_index=process_index, process_count=process_count,
                num_epochs=num_epochs, download=download, num_workers=num_workers,
                prefetch=prefetch)
  if spec.kind == "event":
    if channels not in (None, 2):
      raise ValueError(f"{spec.name} frames have 2 channels (OFF, ON); got channels={channels}")
    return EventDataset(spec, frames=frame_config(frames, image_size), **common)
  if frames is not None:
    raise ValueError(f"frames= applies to event data sets ({sorted(EVENT_SPECS)}), not "
                     f"{spec.name!r}")
  return ImageDataset(spec, image_size=image_size, channels=channels, crop_pct=crop_pct,
                      interpolation=interpolation, **common)
