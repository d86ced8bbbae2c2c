"""Per-process sharded, deterministic numpy input pipelines over tfds datasets.

``get_dataset`` returns a ``Dataset``: an iterable of numpy batches, read through tfds' random
access ``data_source`` (array_record files; no TensorFlow needed at read time) and transformed
in numpy/PIL (``spikejax.data.augment`` / ``transforms``).

* Sharding: process ``p`` of ``P`` owns the contiguous examples ``[p*n//P, (p+1)*n//P)`` of the
  split (what ``tfds.split_for_jax_process`` / ``tfds.even_splits`` do) and reads only those.
* Determinism: batch ``(epoch, step)`` is a pure function of ``(seed, process_index, epoch,
  step)`` (the epoch's shuffle of the shard, the batch's augmentation) and of the example
  index (per-example augmentation), whatever the number of worker threads; so resuming at a
  step needs no replay (``Dataset.iterate(start_step)``).
* Small datasets (``fashion_mnist``, ``cifar10``) are decoded once into uint8 arrays in memory
  (cached per process) and augmented batch-wise, vectorized. ``imagenet2012`` is read and
  decoded per batch, per-example work (decode, RandomResizedCrop, RandAugment) on a thread pool,
  with a background prefetch thread.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import queue
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from spikejax.data import augment as A
from spikejax.data import fashion_mnist as fmnist
from spikejax.data import transforms as T

Batch = dict[str, np.ndarray]

# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentation. ``AugmentConfig.default(name)`` gives each dataset's preset.

  Attributes:
    crop: ``'pad'``: random crop with ``padding`` (small images); ``'rrc'``: RandomResizedCrop to
      ``image_size`` with ``scale``/``ratio`` (ImageNet style); ``'none'``.
    padding: pixels of zero padding on each side for ``crop='pad'``.
    flip: random horizontal flip (p = 0.5).
    scale, ratio: RandomResizedCrop area fraction / aspect-ratio ranges (timm defaults).
    randaugment: timm RandAugment spec, e.g. ``'rand-m9-mstd0.5-inc1'``; ``None`` = off.
    reprob, remode, recount: random erasing probability / mode / count (timm ``RandomErasing``).
    mixup, cutmix: Beta alphas (0 = off); ``mixup_prob``: probability to mix a batch at all;
      ``switch_prob``: probability of CutMix when both are on.
    label_smoothing: applied to the soft ``target`` of every training batch.
  """
  crop: str = "pad"
  padding: int = 4
  flip: bool = True
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  randaugment: str | None = None
  reprob: float = 0.0
  remode: str = "pixel"
  recount: int = 1
  mixup: float = 0.0
  cutmix: float = 0.0
  mixup_prob: float = 1.0
  switch_prob: float = 0.5
  label_smoothing: float = 0.0

  def __post_init__(self):
    if self.crop not in ("pad", "rrc", "none"):
      raise ValueError(f"crop must be 'pad', 'rrc' or 'none', got {self.crop!r}")
    if self.randaugment:
      A.RandAugmentConfig.parse(self.randaugment)  # validate early

  @classmethod
  def none(cls) -> "AugmentConfig":
    """No augmentation at all (plain one-hot targets)."""
    return cls(crop="none", flip=False)

  @classmethod
  def default(cls, name: str) -> "AugmentConfig":
    """Preset per dataset.

    * ``fashion_mnist``: pad-2 random crop + flip, label smoothing 0.1.
    * ``cifar10``: pad-4 random crop + flip, label smoothing 0.1.
    * ``imagenet2012`` (DeiT/timm recipe): RandomResizedCrop + flip, ``rand-m9-mstd0.5-inc1``,
      random erasing 0.25 'pixel', mixup 0.8 / cutmix 1.0 (switch 0.5), label smoothing 0.1.
    """
    if name == "fashion_mnist":
      return cls(crop="pad", padding=2, flip=True, label_smoothing=0.1)
    if name == "cifar10":
      return cls(crop="pad", padding=4, flip=True, label_smoothing=0.1)
    if name == "imagenet2012":
      return cls(crop="rrc", flip=True, randaugment="rand-m9-mstd0.5-inc1", reprob=0.25,
                 mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    raise ValueError(f"no augmentation preset for {name!r}")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about a supported tfds dataset."""
  num_classes: int
  image_size: int  # native side (small datasets) or default output side (imagenet2012)
  channels: int  # native channels
  mean: tuple[float, ...]
  std: tuple[float, ...]
  in_memory: bool  # decode the whole split once into uint8 arrays
  fit: str  # how images reach image_size: 'pad' (centered zero pad), 'resize', 'center_crop'


SPECS: Mapping[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(10, 28, 1, (fmnist.MEAN,), (fmnist.STD,), True, "pad"),
    "cifar10": DatasetSpec(10, 32, 3, T.CIFAR10_MEAN, T.CIFAR10_STD, True, "resize"),
    "imagenet2012": DatasetSpec(1000, 224, 3, T.IMAGENET_MEAN, T.IMAGENET_STD, False,
                                "center_crop"),
}

# --------------------------------------------------------------------------- tfds access

_TAG_PERM, _TAG_BATCH, _TAG_EXAMPLE = 0, 1, 2
_ARRAY_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_CACHE_LOCK = threading.Lock()


def _builder(name: str, data_dir: str | None, download: bool):
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=data_dir)
  if download and not builder.is_prepared():
    if name == "fashion_mnist":  # from the local Debian files, never the network
      fmnist.prepare_fashion_mnist(data_dir)
    else:
      builder.download_and_prepare(file_format="array_record")
    builder = tfds.builder(name, data_dir=data_dir)
  return builder


def _open_source(builder, split: str, *, images: bool = True):
  """Random-access tfds source of ``split`` (with ``images``: left encoded), or ``None`` if the
  dataset is prepared in a sequential-only format (e.g. tfrecord)."""
  import tensorflow_datasets as tfds

  decoders = {"image": tfds.decode.SkipDecoding()} if images else None
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except NotImplementedError as e:  # tfds' answer for formats without random access
    if not builder.is_prepared():
      hint = ("spikejax.data.prepare_fashion_mnist(data_dir) (from the Debian files: "
              f"{fmnist.INSTALL_HINT})" if builder.name == "fashion_mnist" else
              f"`tfds build {builder.name} --file_format=array_record --data_dir=...`")
      raise FileNotFoundError(
          f"tfds dataset {builder.name!r} is not prepared in {builder.data_dir}; pass "
          f"download=True or run {hint}") from e
    return None


def _split_size(builder, source, split: str) -> int:
  return len(source) if source is not None else builder.info.splits[split].num_examples


def _read_records(source, indices: Sequence[int]) -> list[dict[str, Any]]:
  indices = [int(i) for i in indices]
  try:
    return list(source.__getitems__(indices))  # batched read (parallel in array_record)
  except TypeError:  # tfds.testing.mock_data's data source mock breaks __getitems__
    return [source[i] for i in indices]


def load_split_arrays(name: str, split: str, data_dir: str | None = None, *,
                      download: bool = True, start: int = 0,
                      end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Decode examples ``[start, end)`` of a small tfds split into memory, cached per process.

  Returns read-only ``(images uint8 [N, H, W, C], labels int32 [N])`` in tfds' (prepared)
  order. Reads with the random-access data source (no TensorFlow); a dataset prepared as
  tfrecord is read with ``tfds.as_numpy(as_dataset(batch_size=-1))`` instead (needs TensorFlow).
  """
  builder = _builder(name, data_dir, download)
  return _load_arrays(builder, _open_source(builder, split), name, split, start, end)


def _load_arrays(builder, source, name: str, split: str, start: int,
                 end: int | None) -> tuple[np.ndarray, np.ndarray]:
  spec = SPECS[name]
  end = _split_size(builder, source, split) if end is None else end
  key = (name, os.fspath(builder.data_dir), split, start, end)
  with _CACHE_LOCK:
    if key in _ARRAY_CACHE:
      return _ARRAY_CACHE[key]
  if source is None:
    import tensorflow_datasets as tfds
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images = np.asarray(data["image"][start:end], np.uint8)
    labels = np.asarray(data["label"][start:end], np.int32)
  else:
    h = w = spec.image_size
    images = np.empty((end - start, h, w, spec.channels), np.uint8)
    labels = np.empty((end - start,), np.int32)
    chunk = 8192
    for lo in range(start, end, chunk):
      records = _read_records(source, range(lo, min(end, lo + chunk)))
      for j, rec in enumerate(records):
        images[lo - start + j] = T.decode_image(rec["image"], spec.channels)
        labels[lo - start + j] = rec["label"]
  images.setflags(write=False)
  labels.setflags(write=False)
  with _CACHE_LOCK:
    _ARRAY_CACHE[key] = (images, labels)
  return images, labels


# --------------------------------------------------------------------------- the dataset


def check_sharding(batch_size: int, seed: int, process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by process_count "
                     f"{process_count}")
  if seed < 0:
    raise ValueError("seed must be >= 0")


def _rng(*key: int) -> np.random.Generator:
  return np.random.default_rng([int(k) for k in key])


class Dataset:
  """Iterable of numpy batches of one process's shard of a tfds split (see ``get_dataset``).

  Batches (``B = local_batch_size = batch_size // process_count``):

  * ``image``: float32 ``[B, S, S, C]`` normalized with the dataset mean/std;
  * ``label``: int32 ``[B]`` (the un-mixed hard labels);
  * train only -- ``target``: float32 ``[B, num_classes]`` soft targets (label smoothing and
    mixup/cutmix applied; one-hot when both are off); train on these;
  * eval only -- ``mask``: float32 ``[B]``, 0 for the padding examples of the last batch.

  Attributes: ``name, split, train, batch_size, local_batch_size, process_index,
  process_count, num_examples`` (whole split), ``num_local_examples`` (this process's shard),
  ``shard`` (``(start, end)`` example range), ``steps_per_epoch`` (same on every process),
  ``num_classes, image_shape`` ((S, S, C) of ``image``), ``mean, std, augment, seed``.
  """

  def __init__(self, name: str, *, split: str, batch_size: int, data_dir: str | None,
               train: bool, seed: int, image_size: int | None, augment: AugmentConfig | None,
               process_index: int, process_count: int, channels: int | None,
               crop_pct: float, interpolation: str, num_epochs: int | None, download: bool,
               num_workers: int | None, prefetch: int):
    if name not in SPECS:
      raise ValueError(f"unsupported dataset {name!r}; one of {sorted(SPECS)}")
    check_sharding(batch_size, seed, process_index, process_count)
    self.spec = spec = SPECS[name]
    self.name, self.split, self.train, self.seed = name, split, train, int(seed)
    self.batch_size = batch_size
    self.local_batch_size = batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.num_classes = spec.num_classes
    self.image_size = image_size or spec.image_size
    self.channels = channels or spec.channels
    if self.channels not in (spec.channels, 3):
      raise ValueError(f"{name}: channels must be {spec.channels} or 3")
    self.image_shape = (self.image_size, self.image_size, self.channels)
    self.mean = np.broadcast_to(np.asarray(spec.mean, np.float32), (spec.channels,))
    self.std = np.broadcast_to(np.asarray(spec.std, np.float32), (spec.channels,))
    self.augment = (augment or AugmentConfig.none()) if train else None
    self.crop_pct, self.interpolation = crop_pct, interpolation
    self.num_epochs = num_epochs if train else 1
    self.prefetch = prefetch
    self.num_workers = num_workers or min(8, os.cpu_count() or 1)
    self._pool = None
    self._fill = T.fill_color(spec.mean, spec.channels)

    builder = _builder(name, data_dir, download)
    source = _open_source(builder, split)
    if source is None and not spec.in_memory:
      raise ValueError(
          f"{name} is prepared in {builder.data_dir} in a format without random access; "
          f"prepare it with file_format='array_record' (`tfds build {name} "
          "--file_format=array_record`)")
    self._source = source
    n = _split_size(builder, source, split)
    self._set_shard(n)
    if spec.in_memory:
      self._images, self._labels = _load_arrays(builder, source, name, split, *self.shard)
    self._perm_cache: tuple[int, np.ndarray] | None = None

  def _set_shard(self, n: int) -> None:
    """This process's contiguous shard of the ``n`` examples and the steps per epoch."""
    p, count = self.process_index, self.process_count
    self.num_examples = n
    self.shard = (p * n // count, (p + 1) * n // count)
    self.num_local_examples = self.shard[1] - self.shard[0]
    if self.train:
      self.steps_per_epoch = (n // count) // self.local_batch_size
      if self.steps_per_epoch == 0:
        raise ValueError(f"{self.name}[{self.split}]: {n // count} examples per process is less "
                         f"than one local batch of {self.local_batch_size}")
    else:
      self.steps_per_epoch = math.ceil(math.ceil(n / count) / self.local_batch_size)

  def __len__(self) -> int:
    return self.steps_per_epoch

  def __iter__(self) -> Iterator[Batch]:
    return self.iterate()

  def iterate(self, start_step: int = 0) -> Iterator[Batch]:
    """Batches from global step ``start_step`` on (``step = epoch * steps_per_epoch + i``).

    Train: ``num_epochs`` epochs (``None``: forever), each reshuffled. Eval: one pass.
    Prefetched on a background thread when ``prefetch > 0``.
    """
    def gen():
      total = None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch
      step = start_step
      while total is None or step < total:
        yield self.get_batch(*divmod(step, self.steps_per_epoch))
        step += 1
    return _prefetch(gen, self.prefetch) if self.prefetch > 0 else gen()

  def iter_epoch(self, epoch: int) -> Iterator[Batch]:
    """The ``steps_per_epoch`` batches of one epoch."""
    def gen():
      return (self.get_batch(epoch, s) for s in range(self.steps_per_epoch))
    return _prefetch(gen, self.prefetch) if self.prefetch > 0 else gen()

  # ------------------------------------------------------------------------- one batch

  def permutation(self, epoch: int) -> np.ndarray:
    """Local (shard-relative) example order of a training epoch."""
    if self._perm_cache is None or self._perm_cache[0] != epoch:
      rng = _rng(self.seed, _TAG_PERM, self.process_index, epoch, 0)
      self._perm_cache = (epoch, rng.permutation(self.num_local_examples))
    return self._perm_cache[1]

  def batch_indices(self, epoch: int, step: int) -> tuple[np.ndarray, int]:
    """Shard-relative example indices of a batch and how many of them are real (not padding)."""
    if not 0 <= step < self.steps_per_epoch:
      raise IndexError(f"step {step} not in [0, {self.steps_per_epoch})")
    b = self.local_batch_size
    if self.train:
      return self.permutation(epoch)[step * b:(step + 1) * b], b
    idx = np.arange(step * b, min((step + 1) * b, self.num_local_examples))
    return idx, len(idx)

  def get_batch(self, epoch: int, step: int) -> Batch:
    """Batch ``step`` of ``epoch``: a pure function of (seed, process, epoch, step)."""
    idx, valid = self.batch_indices(epoch, step)
    rng = _rng(self.seed, _TAG_BATCH, self.process_index, epoch, step)
    global_idx = idx + self.shard[0]
    if self.spec.in_memory:
      images, labels = self._images[idx], self._labels[idx]
      if self.train:
        images = self._train_geometry_batch(images, global_idx, epoch, rng)
      else:
        images = self._fit_batch(images)
    else:
      records = _read_records(self._source, global_idx)
      labels = np.asarray([r["label"] for r in records], np.int32)
      fn = self._train_example if self.train else self._eval_example
      args = [(r["image"], int(g), epoch) for r, g in zip(records, global_idx, strict=True)]
      images = np.stack(self._map(lambda a: fn(*a), args)) if args else np.zeros(
          (0,) + self.image_shape[:2] + (self.spec.channels,), np.uint8)
      if self.train and self.augment.crop == "pad":
        images = self._pad_crop_flip(images, rng)
    return self._finish(images, labels, valid, rng)

  # ------------------------------------------------------------------------- stages

  def _map(self, fn, items):
    if self.num_workers <= 1 or len(items) < 2:
      return [fn(x) for x in items]
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers)
    return list(self._pool.map(fn, items))

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

  def _example_rng(self, index: int, epoch: int) -> np.random.Generator:
    return _rng(self.seed, _TAG_EXAMPLE, 0, epoch, index)

  def _randaugment_example(self, image: np.ndarray, index: int, epoch: int) -> np.ndarray:
    rng = self._example_rng(index, epoch)
    return A.rand_augment(image, rng, self.augment.randaugment, self._fill, self.interpolation)

  def _train_example(self, image, index: int, epoch: int) -> np.ndarray:
    """Per-example train transform: decode, RRC + flip (or fit), RandAugment."""
    aug = self.augment
    if isinstance(image, bytes):
      image = T.decode_image(image, self.spec.channels)
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
    return self._fit_example(T.decode_image(image, self.spec.channels))

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


def eval_batch(x: np.ndarray, labels: np.ndarray, valid: int, b: int) -> Batch:
  """An eval batch zero-padded to ``b`` rows, with ``mask`` 1 for the ``valid`` real ones."""
  mask = np.zeros((b,), np.float32)
  mask[:valid] = 1.0
  if valid < b:
    x = np.concatenate([x, np.zeros((b - valid,) + x.shape[1:], np.float32)])
    labels = np.concatenate([labels, np.zeros((b - valid,), np.int32)])
  return {"image": x, "label": labels, "mask": mask}


# --------------------------------------------------------------------------- prefetch


class _Raised:
  def __init__(self, exc: BaseException):
    self.exc = exc


_END = object()


def _prefetch(make_iterator, size: int) -> Iterator[Any]:
  """Run ``make_iterator()`` on a daemon thread, ``size`` items ahead; same order."""
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def worker():
    try:
      for item in make_iterator():
        if not put(item):
          return
      put(_END)
    except BaseException as e:  # pylint: disable=broad-except
      put(_Raised(e))

  thread = threading.Thread(target=worker, daemon=True, name="spikejax-data-prefetch")
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _END:
        return
      if isinstance(item, _Raised):
        raise item.exc
      yield item
  finally:
    stop.set()


# --------------------------------------------------------------------------- entry point


def get_dataset(name: str, *, split: str, batch_size: int, data_dir: str | None = None,
                train: bool, seed: int = 0, image_size: int | None = None,
                augment: AugmentConfig | Mapping[str, Any] | str | None = "default",
                process_index: int | None = None, process_count: int | None = None,
                channels: int | None = None, crop_pct: float = T.DEFAULT_CROP_PCT,
                interpolation: str = "bicubic", num_epochs: int | None = None,
                download: bool = True, num_workers: int | None = None,
                prefetch: int = 2, frames: Mapping[str, Any] | Any | None = None) -> Dataset:
  """A per-process shard of tfds split ``name[split]`` as an iterable of numpy batches.

  Args:
    name: ``'fashion_mnist'``, ``'cifar10'`` or ``'imagenet2012'``.
    split: tfds split, e.g. ``'train'``, ``'test'``, ``'validation'``, ``'train[:90%]'``.
    batch_size: *global* batch size; each process yields ``batch_size // process_count``.
    data_dir: tfds data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    train: shuffle every epoch, augment, drop the remainder, add soft ``target``s; else one
      ordered pass over the whole shard, the last batch zero-padded with ``mask`` = 0.
    seed: seed of the shuffles and augmentations (>= 0).
    image_size: output side; default 28 / 32 / 224. Fashion-MNIST is zero-padded centrally to
      it (``image_size=32``: 28 -> 32), CIFAR-10 resized, ImageNet eval resized to
      ``floor(image_size / crop_pct)`` and center-cropped.
    augment: ``'default'`` (``AugmentConfig.default(name)``), ``None``/``'none'``, an
      ``AugmentConfig`` or a mapping of its fields. Ignored when ``train=False``.
    process_index, process_count: this process's shard; default ``jax.process_index()`` /
      ``jax.process_count()``.
    channels: output channels; 3 replicates Fashion-MNIST's grey channel.
    crop_pct: ImageNet eval center-crop fraction (224/232: resize 232, crop 224).
    interpolation: PIL filter for resizes ('bicubic', 'bilinear', ...).
    num_epochs: training epochs that ``iter()`` yields (``None``: endless).
    download: prepare the dataset if tfds does not find it. Fashion-MNIST is then built from
      the local Debian files (``prepare_fashion_mnist``; never the network); others use tfds'
      ``download_and_prepare(file_format='array_record')``.
    num_workers: threads for per-example work (decode / RRC / RandAugment).
    prefetch: batches prepared ahead on a background thread (0: synchronous).
    frames: event data sets only (``event_fashion_mnist``, ``cifar10_dvs``): a
      ``event_pipeline.FrameConfig`` or a mapping of its fields (``time_steps``, ``split_by``,
      ``mode``, ``size``; ``image_size`` sets ``size``). Their batches are ``[B, T, H, W, 2]``.
  """
  from spikejax.data import event_pipeline as EP  # pylint: disable=import-outside-toplevel
  if name in EP.EVENT_SPECS:
    if channels not in (None, 2):
      raise ValueError(f"{name} frames have 2 channels (OFF, ON); got channels={channels}")
    return _event_dataset(EP, name, split=split, batch_size=batch_size, data_dir=data_dir,
                          train=train, seed=seed, image_size=image_size, augment=augment,
                          process_index=process_index, process_count=process_count,
                          num_epochs=num_epochs, download=download, num_workers=num_workers,
                          prefetch=prefetch, frames=frames)
  if frames is not None:
    raise ValueError(f"frames= applies to event data sets ({sorted(EP.EVENT_SPECS)}), not "
                     f"{name!r}")
  if name not in SPECS:
    raise ValueError(f"unsupported dataset {name!r}; one of {sorted(SPECS)} or "
                     f"{sorted(EP.EVENT_SPECS)}")
  process_index, process_count = _process(process_index, process_count)
  augment = _augment_config(name, augment, train)
  return Dataset(name, split=split, batch_size=batch_size, data_dir=data_dir, train=train,
                 seed=seed, image_size=image_size, augment=augment,
                 process_index=process_index, process_count=process_count, channels=channels,
                 crop_pct=crop_pct, interpolation=interpolation, num_epochs=num_epochs,
                 download=download, num_workers=num_workers, prefetch=prefetch)


def _process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def _augment_config(name, augment, train, default=None):
  if not train:
    return None
  if isinstance(augment, str):
    if augment not in ("default", "none"):
      raise ValueError("augment must be 'default', 'none', None, an AugmentConfig or a mapping")
    if augment == "none":
      return AugmentConfig.none()
    return default(name) if default is not None else AugmentConfig.default(name)
  if augment is None:
    return AugmentConfig.none()
  if isinstance(augment, Mapping):
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in augment.items()})
  return augment


def _event_dataset(EP, name, *, image_size, augment, frames, process_index, process_count,
                   train, **kw):
  if frames is None:
    frames = EP.FrameConfig()
  elif isinstance(frames, Mapping):
    frames = EP.FrameConfig(**dict(frames))
  if image_size is not None:
    frames = dataclasses.replace(frames, size=image_size)
  process_index, process_count = _process(process_index, process_count)
  augment = _augment_config(name, augment, train, EP.default_augment)
  return EP.EventDataset(name, frames=frames, augment=augment, process_index=process_index,
                         process_count=process_count, train=train, **kw)
