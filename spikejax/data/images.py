"""Image pipeline: a source of images (``DatasetSpec.kind == 'image'``) -> numpy batches.

``ImageDataset(spec, ...)`` reads the source its spec's builder returns (tfds' random-access
``data_source``: array_record files, no TensorFlow at read time; or in-memory arrays) and
transforms in numpy/PIL (``spikejax.data.augment`` / ``transforms``). Sharding, order and
determinism: ``spikejax.data.batching``.

Small data sets (``spec.in_memory``: ``fashion_mnist``, ``cifar10``) are decoded once into
uint8 arrays in memory (cached per process) and augmented batch-wise, vectorized. Others
(``imagenet2012``) are read and decoded per batch, per-example work (decode,
RandomResizedCrop, RandAugment) on a thread pool, with a background prefetch thread.
"""

from __future__ import annotations

import numpy as np

from spikejax.data import augment as A
from spikejax.data import sources as S
from spikejax.data import transforms as T
from spikejax.data.augment import AugmentConfig
from spikejax.data.batching import Batch, Dataset, eval_batch
from spikejax.data.registry import DatasetSpec, get_spec


def load_split_arrays(name: str | DatasetSpec, split: str, data_dir: str | None = None, *,
                      download: bool = True, start: int = 0,
                      end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Decode examples ``[start, end)`` of an image split into memory, cached per process.

  Returns read-only ``(images uint8 [N, H, W, C], labels int32 [N])`` in the source's (for
  tfds: the prepared) order. tfds sets are read with the random-access data source (no
  TensorFlow); one prepared as tfrecord is read with ``as_dataset`` instead (needs TensorFlow).
  """
  spec = name if isinstance(name, DatasetSpec) else get_spec(name)
  if spec.kind != "image":
    raise ValueError(f"{spec.name} is an {spec.kind} data set; load_split_arrays reads images")
  source = spec.builder(spec, split, data_dir=data_dir, download=download)
  return S.load_arrays(source, spec.channels, start, end)


class ImageDataset(Dataset):
  """Iterable of numpy batches of one process's shard of an image split (``get_dataset``).

  Batches (``B = local_batch_size = batch_size // process_count``):

  * ``image``: float32 ``[B, S, S, C]`` normalized with the data set's mean/std;
  * ``label``: int32 ``[B]`` (the un-mixed hard labels);
  * train only -- ``target``: float32 ``[B, num_classes]`` soft targets (label smoothing and
    mixup/cutmix applied; one-hot when both are off); train on these;
  * eval only -- ``mask``: float32 ``[B]``, 0 for the padding examples of the last batch.

  Attributes: those of ``batching.Dataset``, and ``image_size``, ``channels``,
  ``image_shape`` (``(S, S, C)`` of ``image``), ``mean, std``.
  """

  def __init__(self, spec: DatasetSpec, *, split: str, batch_size: int, data_dir: str | None,
               train: bool, seed: int, image_size: int | None, augment: AugmentConfig | None,
               process_index: int, process_count: int, channels: int | None,
               crop_pct: float, interpolation: str, num_epochs: int | None, download: bool,
               num_workers: int | None, prefetch: int):
    if spec.kind != "image":
      raise ValueError(f"{spec.name} is an {spec.kind} data set, not an image one")
    self._init_common(spec, split=split, batch_size=batch_size, train=train, seed=seed,
                      process_index=process_index, process_count=process_count,
                      num_epochs=num_epochs, num_workers=num_workers, prefetch=prefetch)
    self._init_pixels(spec, image_size, channels)
    self.image_shape = spec.example_shape(self.image_size, self.channels)
    self.augment = (augment or AugmentConfig.none()) if train else None
    self.crop_pct, self.interpolation = crop_pct, interpolation
    self._fill = T.fill_color(spec.mean, spec.channels)

    self._source = spec.builder(spec, split, data_dir=data_dir, download=download)
    self._set_shard(len(self._source))
    if spec.in_memory:
      self._images, self._labels = S.load_arrays(self._source, spec.channels, *self.shard)

  def get_batch(self, epoch: int, step: int) -> Batch:
    """Batch ``step`` of ``epoch``: a pure function of (seed, process, epoch, step)."""
    idx, valid = self.batch_indices(epoch, step)
    rng = self._batch_rng(epoch, step)
    global_idx = idx + self.shard[0]
    if self.spec.in_memory:
      images, labels = self._images[idx], self._labels[idx]
      if self.train:
        images = self._train_geometry_batch(images, global_idx, epoch, rng)
      else:
        images = self._fit_batch(images)
    else:
      records = self._source.read(global_idx)
      labels = np.asarray([r["label"] for r in records], np.int32)
      fn = self._train_example if self.train else self._eval_example
      args = [(r["image"], int(g), epoch) for r, g in zip(records, global_idx, strict=True)]
      images = np.stack(self._map(lambda a: fn(*a), args)) if args else np.zeros(
          (0,) + self.image_shape[:2] + (self.spec.channels,), np.uint8)
      if self.train and self.augment.crop == "pad":
        images = self._pad_crop_flip(images, rng)
    return self._finish(images, labels, valid, rng)

  # ------------------------------------------------------------------------- stages

  def _fit_batch(self, images: np.ndarray) -> np.ndarray:
    """Deterministic resize of an in-memory uint8 batch to ``image_size``."""
    s = self.image_size
    if images.shape[1:3] == (s, s):
      return images
    if self.spec.fit == "pad" and s >= images.shape[1]:
      return T.pad_to_size(images, s)
    return np.stack([T.resize(im, s, self.interpolation) for im in images]) if len(images) \
        else np.zeros((0, s, s, images.shape[-1]), np.uint8)

  def _fit_example(self, image: np.ndarray) -> np.ndarray:
    if self.spec.fit == "center_crop":
      return T.resize_center_crop(image, self.image_size, self.crop_pct, self.interpolation)
    return self._fit_batch(image[None])[0]

  def _pad_crop_flip(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    aug = self.augment
    if aug.crop == "pad":
      images = A.random_crop_with_padding(images, rng, aug.padding)
    if aug.flip:
      images = A.random_flip(images, rng)
    return images

  def _train_geometry_batch(self, images, global_idx, epoch, rng) -> np.ndarray:
    aug = self.augment
    if aug.crop != "rrc" and not aug.randaugment:  # fast, vectorized path
      return self._pad_crop_flip(self._fit_batch(images), rng)
    if aug.crop == "rrc":
      args = [(im, int(g), epoch) for im, g in zip(images, global_idx, strict=True)]
      return np.stack(self._map(lambda a: self._train_example(*a), args))
    images = self._pad_crop_flip(self._fit_batch(images), rng)
    args = [(im, int(g), epoch) for im, g in zip(images, global_idx, strict=True)]
    return np.stack(self._map(lambda a: self._randaugment_example(*a), args))

  def _randaugment_example(self, image: np.ndarray, index: int, epoch: int) -> np.ndarray:
    rng = self._example_rng(index, epoch)
    return A.rand_augment(image, rng, self.augment.randaugment, self._fill, self.interpolation)

  def _train_example(self, image, index: int, epoch: int) -> np.ndarray:
    """Per-example train transform: decode, RRC + flip (or fit), RandAugment."""
    aug = self.augment
    image = S.decode_image(image, self.spec.channels)
    rng = self._example_rng(index, epoch)
    if aug.crop == "rrc":
      image = A.random_resized_crop(image, rng, self.image_size, aug.scale, aug.ratio,
                                    self.interpolation)
      if aug.flip and rng.random() < 0.5:
        image = image[:, ::-1]
    else:  # 'pad' crop + flip happen batch-wise afterwards (streaming) or before (in memory)
      image = self._fit_example(image)
    if aug.randaugment:
      image = A.rand_augment(image, rng, aug.randaugment, self._fill, self.interpolation)
    return np.ascontiguousarray(image)

  def _eval_example(self, image, index: int, epoch: int) -> np.ndarray:
    del index, epoch
    return self._fit_example(S.decode_image(image, self.spec.channels))

  def _finish(self, images: np.ndarray, labels: np.ndarray, valid: int,
              rng: np.random.Generator) -> Batch:
    """Normalize, replicate channels, erase and mix (train) or pad + mask (eval)."""
    x = T.to_channels(T.normalize(images, self.mean, self.std), self.channels)
    labels = np.asarray(labels, np.int32)
    if self.train:
      aug = self.augment
      if aug.reprob > 0:
        x = A.random_erasing(x, rng, aug.reprob, aug.remode, aug.recount)
      if aug.mixup > 0 or aug.cutmix > 0:
        x, target, _ = A.mixup_cutmix(x, labels, rng, self.num_classes, aug.mixup, aug.cutmix,
                                      aug.mixup_prob, aug.switch_prob, aug.label_smoothing)
      else:
        target = A.smooth_labels(labels, self.num_classes, aug.label_smoothing)
      return {"image": x, "label": labels, "target": target}
    return eval_batch(x, labels, valid, self.local_batch_size)
